"""Generator families other projects publish, written here from their published structure (module names kept, so
state_dict keys match the released checkpoints), with random weights and small widths for the tests:

* ``SubMobileResnetGenerator`` / ``SeparableConv2d``: mit-han-lab/gan-compression
  (models/modules/resnet_architecture/sub_mobile_resnet_generator.py, models/modules/mobile_modules.py). Its
  non-affine InstanceNorms declare ``num_features`` from the config's *other* entry, so they disagree with the
  channels they receive whenever the config's entries differ, exactly as in the released compressed CycleGANs.
* ``TransformerNet``: pytorch/examples fast_neural_style/neural_style/transformer_net.py (inputs and outputs in
  [0, 255]).
* ``SRVGGNetCompact``: xinntao/Real-ESRGAN realesrgan/archs/srvgg_arch.py (inputs and outputs in [0, 1], 4x).
* ``RRDBNet``: xinntao/BasicSR basicsr/archs/rrdbnet_arch.py (ESRGAN; dense concatenations, residual scaling).
* ``AttU_Net``: the attention U-Net of Oktay et al. as LeeJunHyun/Image_Segmentation writes it (network.py).
* ``SPADEGenerator``: NVlabs/SPADE models/networks/normalization.py (SPADE) and architecture.py
  (SPADEResnetBlock), in a small generator whose input is the label map itself.
* ``ModulatedConv2d``: StyleGAN2's modulated, demodulated convolution (rosinality/stylegan2-pytorch model.py),
  whose weight is a bare Parameter used functionally and modulated per sample.
* ``InvertedResidualNet``, ``GroupedConvNet``, ``SEUNet``: MobileNetV2 inverted residuals, grouped (not depthwise)
  convolutions and squeeze-excitation gating, each as such blocks are usually written.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------- gan-compression


class SeparableConv2d(nn.Module):
    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        norm_layer=nn.InstanceNorm2d,
        use_bias=True,
        scale_factor=1,
    ):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(
                in_channels=in_channels,
                out_channels=in_channels * scale_factor,
                kernel_size=kernel_size,
                stride=stride,
                padding=padding,
                groups=in_channels,
                bias=use_bias,
            ),
            norm_layer(in_channels),
            nn.Conv2d(
                in_channels=in_channels * scale_factor,
                out_channels=out_channels,
                kernel_size=1,
                stride=1,
                bias=use_bias,
            ),
        )

    def forward(self, x):
        return self.conv(x)


class MobileResnetBlock(nn.Module):
    def __init__(self, ic, oc, padding_type, norm_layer, dropout_rate, use_bias):
        super().__init__()
        self.conv_block = self.build_conv_block(ic, oc, padding_type, norm_layer, dropout_rate, use_bias)

    def build_conv_block(self, ic, oc, padding_type, norm_layer, dropout_rate, use_bias):
        conv_block = [
            nn.ReflectionPad2d(1),
            SeparableConv2d(in_channels=ic, out_channels=oc, kernel_size=3, padding=0, stride=1),
            norm_layer(oc),
            nn.ReLU(True),
        ]
        conv_block += [nn.Dropout(dropout_rate)]
        conv_block += [
            nn.ReflectionPad2d(1),
            SeparableConv2d(in_channels=oc, out_channels=ic, kernel_size=3, padding=0, stride=1),
            norm_layer(oc),
        ]  # declares oc, receives ic: as published
        return nn.Sequential(*conv_block)

    def forward(self, x):
        return x + self.conv_block(x)


class SubMobileResnetGenerator(nn.Module):
    def __init__(
        self,
        input_nc=3,
        output_nc=3,
        config=None,
        norm_layer=nn.InstanceNorm2d,
        dropout_rate=0,
        n_blocks=9,
        padding_type="reflect",
    ):
        super().__init__()
        config = config or {"channels": [16, 24, 16, 32, 16, 16]}
        if type(norm_layer) == functools.partial:  # noqa: E721 - as published
            use_bias = norm_layer.func == nn.InstanceNorm2d
        else:
            use_bias = norm_layer == nn.InstanceNorm2d
        model = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, config["channels"][0], kernel_size=7, padding=0, bias=use_bias),
            norm_layer(config["channels"][0]),
            nn.ReLU(True),
        ]
        n_downsampling = 2
        for i in range(n_downsampling):
            mult = 2**i
            ic = config["channels"][i]
            oc = config["channels"][i + 1]
            model += [
                nn.Conv2d(ic * mult, oc * mult * 2, kernel_size=3, stride=2, padding=1, bias=use_bias),
                norm_layer(ic * mult * 2),
                nn.ReLU(True),
            ]
        mult = 2**n_downsampling
        ic = config["channels"][2]
        for i in range(n_blocks):
            offset = 0 if len(config["channels"]) == 6 else i // 3
            oc = config["channels"][offset + 3]
            model += [
                MobileResnetBlock(
                    ic * mult,
                    oc * mult,
                    padding_type=padding_type,
                    norm_layer=norm_layer,
                    dropout_rate=dropout_rate,
                    use_bias=use_bias,
                )
            ]
        offset = 4 if len(config["channels"]) == 6 else 6
        for i in range(n_downsampling):
            oc = config["channels"][offset + i]
            mult = 2 ** (n_downsampling - i)
            model += [
                nn.ConvTranspose2d(
                    ic * mult, int(oc * mult / 2), kernel_size=3, stride=2, padding=1, output_padding=1, bias=use_bias
                ),
                norm_layer(int(oc * mult / 2)),
                nn.ReLU(True),
            ]
            ic = oc
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ic, output_nc, kernel_size=7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, input):
        input = input.clamp(-1, 1)
        return self.model(input)


def make_mobile_resnet(n_blocks=3):
    """The released compressed CycleGAN layout: its InstanceNorms' declared sizes disagree with their inputs."""
    # channels[1]*2*... chosen so the downsampling norms and the blocks' second norms mismatch, as published
    return SubMobileResnetGenerator(3, 3, {"channels": [16, 24, 16, 32, 16, 16]}, n_blocks=n_blocks)


# ---------------------------------------------------------------- pytorch/examples fast_neural_style


class ConvLayer(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride):
        super().__init__()
        self.reflection_pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x):
        return self.conv2d(self.reflection_pad(x))


class ResidualBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, kernel_size=3, stride=1)
        self.in1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = ConvLayer(channels, channels, kernel_size=3, stride=1)
        self.in2 = nn.InstanceNorm2d(channels, affine=True)
        self.relu = nn.ReLU()

    def forward(self, x):
        residual = x
        out = self.relu(self.in1(self.conv1(x)))
        out = self.in2(self.conv2(out))
        return out + residual


class UpsampleConvLayer(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride, upsample=None):
        super().__init__()
        self.upsample = upsample
        self.reflection_pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x):
        x_in = x
        if self.upsample:
            x_in = F.interpolate(x_in, mode="nearest", scale_factor=self.upsample)
        return self.conv2d(self.reflection_pad(x_in))


class TransformerNet(nn.Module):
    """Published widths are 32/64/128 (``c=32``); the tests use ``c=16``."""

    def __init__(self, c=32):
        super().__init__()
        self.conv1 = ConvLayer(3, c, kernel_size=9, stride=1)
        self.in1 = nn.InstanceNorm2d(c, affine=True)
        self.conv2 = ConvLayer(c, 2 * c, kernel_size=3, stride=2)
        self.in2 = nn.InstanceNorm2d(2 * c, affine=True)
        self.conv3 = ConvLayer(2 * c, 4 * c, kernel_size=3, stride=2)
        self.in3 = nn.InstanceNorm2d(4 * c, affine=True)
        self.res1 = ResidualBlock(4 * c)
        self.res2 = ResidualBlock(4 * c)
        self.res3 = ResidualBlock(4 * c)
        self.res4 = ResidualBlock(4 * c)
        self.res5 = ResidualBlock(4 * c)
        self.deconv1 = UpsampleConvLayer(4 * c, 2 * c, kernel_size=3, stride=1, upsample=2)
        self.in4 = nn.InstanceNorm2d(2 * c, affine=True)
        self.deconv2 = UpsampleConvLayer(2 * c, c, kernel_size=3, stride=1, upsample=2)
        self.in5 = nn.InstanceNorm2d(c, affine=True)
        self.deconv3 = ConvLayer(c, 3, kernel_size=9, stride=1)
        self.relu = nn.ReLU()

    def forward(self, X):
        y = self.relu(self.in1(self.conv1(X)))
        y = self.relu(self.in2(self.conv2(y)))
        y = self.relu(self.in3(self.conv3(y)))
        y = self.res1(y)
        y = self.res2(y)
        y = self.res3(y)
        y = self.res4(y)
        y = self.res5(y)
        y = self.relu(self.in4(self.deconv1(y)))
        y = self.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


def make_transformer_net(c=16):
    return TransformerNet(c)


# ---------------------------------------------------------------- Real-ESRGAN SRVGGNetCompact


class SRVGGNetCompact(nn.Module):
    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=16, upscale=4, act_type="prelu"):
        super().__init__()
        self.num_in_ch, self.num_out_ch, self.num_feat = num_in_ch, num_out_ch, num_feat
        self.num_conv, self.upscale, self.act_type = num_conv, upscale, act_type
        self.body = nn.ModuleList()
        self.body.append(nn.Conv2d(num_in_ch, num_feat, 3, 1, 1))
        self.body.append(self._act(act_type, num_feat))
        for _ in range(num_conv):
            self.body.append(nn.Conv2d(num_feat, num_feat, 3, 1, 1))
            self.body.append(self._act(act_type, num_feat))
        self.body.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.upsampler = nn.PixelShuffle(upscale)

    @staticmethod
    def _act(act_type, num_feat):
        if act_type == "relu":
            return nn.ReLU(inplace=True)
        if act_type == "prelu":
            return nn.PReLU(num_parameters=num_feat)
        return nn.LeakyReLU(negative_slope=0.1, inplace=True)

    def forward(self, x):
        out = x
        for i in range(0, len(self.body)):
            out = self.body[i](out)
        out = self.upsampler(out)
        base = F.interpolate(x, scale_factor=self.upscale, mode="nearest")
        out += base
        return out


def make_srvgg(num_feat=32, num_conv=4, upscale=4):
    net = SRVGGNetCompact(num_feat=num_feat, num_conv=num_conv, upscale=upscale)
    with torch.no_grad():  # PReLU starts at 0.25 everywhere; distinct slopes show which channels were kept
        for m in net.modules():
            if isinstance(m, nn.PReLU):
                m.weight.uniform_(0.05, 0.5)
    return net


# ---------------------------------------------------------------- BasicSR RRDBNet


def make_layer(basic_block, num_basic_block, **kwarg):
    return nn.Sequential(*[basic_block(**kwarg) for _ in range(num_basic_block)])


def pixel_unshuffle(x, scale):
    b, c, hh, hw = x.size()
    out_channel = c * (scale**2)
    h, w = hh // scale, hw // scale
    x_view = x.view(b, c, h, scale, w, scale)
    return x_view.permute(0, 1, 3, 5, 2, 4).reshape(b, out_channel, h, w)


class ResidualDenseBlock(nn.Module):
    def __init__(self, num_feat=64, num_grow_ch=32):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x):
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, num_feat, num_grow_ch=32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x):
        out = self.rdb1(x)
        out = self.rdb2(out)
        out = self.rdb3(out)
        return out * 0.2 + x


class RRDBNet(nn.Module):
    def __init__(self, num_in_ch=3, num_out_ch=3, scale=4, num_feat=64, num_block=23, num_grow_ch=32):
        super().__init__()
        self.scale = scale
        if scale == 2:
            num_in_ch = num_in_ch * 4
        elif scale == 1:
            num_in_ch = num_in_ch * 16
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = make_layer(RRDB, num_block, num_feat=num_feat, num_grow_ch=num_grow_ch)
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x):
        if self.scale == 2:
            feat = pixel_unshuffle(x, scale=2)
        elif self.scale == 1:
            feat = pixel_unshuffle(x, scale=4)
        else:
            feat = x
        feat = self.conv_first(feat)
        body_feat = self.conv_body(self.body(feat))
        feat = feat + body_feat
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


def make_rrdbnet(num_feat=32, num_block=1, num_grow_ch=16, scale=4):
    return RRDBNet(num_feat=num_feat, num_block=num_block, num_grow_ch=num_grow_ch, scale=scale)


# ---------------------------------------------------------------- Attention U-Net (Oktay et al.)


class conv_block(nn.Module):  # noqa: N801 - published name
    def __init__(self, ch_in, ch_out):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(ch_in, ch_out, 3, 1, 1, bias=True),
            nn.BatchNorm2d(ch_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(ch_out, ch_out, 3, 1, 1, bias=True),
            nn.BatchNorm2d(ch_out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.conv(x)


class up_conv(nn.Module):  # noqa: N801
    def __init__(self, ch_in, ch_out):
        super().__init__()
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2),
            nn.Conv2d(ch_in, ch_out, 3, 1, 1, bias=True),
            nn.BatchNorm2d(ch_out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.up(x)


class Attention_block(nn.Module):  # noqa: N801
    def __init__(self, F_g, F_l, F_int):
        super().__init__()
        self.W_g = nn.Sequential(nn.Conv2d(F_g, F_int, 1, 1, 0, bias=True), nn.BatchNorm2d(F_int))
        self.W_x = nn.Sequential(nn.Conv2d(F_l, F_int, 1, 1, 0, bias=True), nn.BatchNorm2d(F_int))
        self.psi = nn.Sequential(nn.Conv2d(F_int, 1, 1, 1, 0, bias=True), nn.BatchNorm2d(1), nn.Sigmoid())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, g, x):
        g1 = self.W_g(g)
        x1 = self.W_x(x)
        psi = self.relu(g1 + x1)
        psi = self.psi(psi)
        return x * psi


class AttU_Net(nn.Module):  # noqa: N801
    """Published base width is 64 with five levels; the tests use ``base=8`` and three levels."""

    def __init__(self, img_ch=3, output_ch=3, base=8):
        super().__init__()
        b = base
        self.Maxpool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.Conv1 = conv_block(img_ch, b)
        self.Conv2 = conv_block(b, 2 * b)
        self.Conv3 = conv_block(2 * b, 4 * b)
        self.Up3 = up_conv(4 * b, 2 * b)
        self.Att3 = Attention_block(F_g=2 * b, F_l=2 * b, F_int=b)
        self.Up_conv3 = conv_block(4 * b, 2 * b)
        self.Up2 = up_conv(2 * b, b)
        self.Att2 = Attention_block(F_g=b, F_l=b, F_int=b // 2)
        self.Up_conv2 = conv_block(2 * b, b)
        self.Conv_1x1 = nn.Conv2d(b, output_ch, 1, 1, 0)

    def forward(self, x):
        x1 = self.Conv1(x)
        x2 = self.Conv2(self.Maxpool(x1))
        x3 = self.Conv3(self.Maxpool(x2))
        d3 = self.Up3(x3)
        x2 = self.Att3(g=d3, x=x2)
        d3 = self.Up_conv3(torch.cat((x2, d3), dim=1))
        d2 = self.Up2(d3)
        x1 = self.Att2(g=d2, x=x1)
        d2 = self.Up_conv2(torch.cat((x1, d2), dim=1))
        return torch.tanh(self.Conv_1x1(d2))


def make_attention_unet(base=16):
    return AttU_Net(base=base)


# ---------------------------------------------------------------- MobileNetV2-style inverted residuals


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, expand_ratio):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.InstanceNorm2d(hidden, affine=True),
            nn.ReLU6(True),
            nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False),
            nn.InstanceNorm2d(hidden, affine=True),
            nn.ReLU6(True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.InstanceNorm2d(oup, affine=True),
        )

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class InvertedResidualNet(nn.Module):
    def __init__(self, ch=32, n_blocks=3, expand=4):
        super().__init__()
        self.stem = nn.Sequential(
            nn.ReflectionPad2d(3),
            nn.Conv2d(3, ch, 7),
            nn.InstanceNorm2d(ch, affine=True),
            nn.ReLU(True),
            nn.Conv2d(ch, 2 * ch, 3, 2, 1),
            nn.InstanceNorm2d(2 * ch, affine=True),
            nn.ReLU(True),
        )
        self.blocks = nn.Sequential(*[InvertedResidual(2 * ch, 2 * ch, expand) for _ in range(n_blocks)])
        self.head = nn.Sequential(
            nn.ConvTranspose2d(2 * ch, ch, 3, 2, 1, output_padding=1),
            nn.InstanceNorm2d(ch, affine=True),
            nn.ReLU(True),
            nn.ReflectionPad2d(3),
            nn.Conv2d(ch, 3, 7),
            nn.Tanh(),
        )

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


# ---------------------------------------------------------------- grouped convolutions


class GroupedConvNet(nn.Module):
    """ResNeXt-style blocks: 3x3 convs with ``groups=4`` (not depthwise) and GroupNorm."""

    def __init__(self, ch=32, groups=4, n_blocks=2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, ch, 3, 1, 1), nn.GroupNorm(groups, ch), nn.ReLU(True))
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(ch, ch, 3, 1, 1, groups=groups),
                nn.GroupNorm(groups, ch),
                nn.ReLU(True),
                nn.Conv2d(ch, ch, 1),
                nn.GroupNorm(groups, ch),
            )
            for _ in range(n_blocks)
        )
        self.out = nn.Conv2d(ch, 3, 3, 1, 1)

    def forward(self, x):
        h = self.stem(x)
        for b in self.blocks:
            h = F.relu(h + b(h))
        return torch.tanh(self.out(h))


# ---------------------------------------------------------------- squeeze-excitation U-Net


class SELayer(nn.Module):
    def __init__(self, channel, reduction=4):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Conv2d(channel, channel // reduction, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channel // reduction, channel, 1),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.fc(self.avg_pool(x))


class SEUNet(nn.Module):
    def __init__(self, ch=32):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, ch, 3, 1, 1), nn.BatchNorm2d(ch), nn.LeakyReLU(0.2))
        self.enc2 = nn.Sequential(
            nn.Conv2d(ch, 2 * ch, 4, 2, 1), nn.BatchNorm2d(2 * ch), nn.LeakyReLU(0.2), SELayer(2 * ch)
        )
        self.dec2 = nn.Sequential(
            nn.ConvTranspose2d(2 * ch, ch, 4, 2, 1), nn.BatchNorm2d(ch), nn.ReLU(True), SELayer(ch)
        )
        self.dec1 = nn.Sequential(
            nn.Conv2d(2 * ch, ch, 3, 1, 1), nn.BatchNorm2d(ch), nn.ReLU(True), nn.Conv2d(ch, 3, 3, 1, 1), nn.Tanh()
        )

    def forward(self, x):
        e1 = self.enc1(x)
        d2 = self.dec2(self.enc2(e1))
        return self.dec1(torch.cat([e1, d2], 1))


# ---------------------------------------------------------------- SPADE


class SPADE(nn.Module):
    def __init__(self, norm_nc, label_nc, nhidden=128):
        super().__init__()
        self.param_free_norm = nn.InstanceNorm2d(norm_nc, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, nhidden, kernel_size=3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(nhidden, norm_nc, kernel_size=3, padding=1)
        self.mlp_beta = nn.Conv2d(nhidden, norm_nc, kernel_size=3, padding=1)

    def forward(self, x, segmap):
        normalized = self.param_free_norm(x)
        segmap = F.interpolate(segmap, size=x.size()[2:], mode="nearest")
        actv = self.mlp_shared(segmap)
        gamma = self.mlp_gamma(actv)
        beta = self.mlp_beta(actv)
        return normalized * (1 + gamma) + beta


class SPADEResnetBlock(nn.Module):
    def __init__(self, fin, fout, label_nc=3, nhidden=32):
        super().__init__()
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        self.conv_0 = nn.Conv2d(fin, fmiddle, kernel_size=3, padding=1)
        self.conv_1 = nn.Conv2d(fmiddle, fout, kernel_size=3, padding=1)
        if self.learned_shortcut:
            self.conv_s = nn.Conv2d(fin, fout, kernel_size=1, bias=False)
        self.norm_0 = SPADE(fin, label_nc, nhidden)
        self.norm_1 = SPADE(fmiddle, label_nc, nhidden)
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, label_nc, nhidden)

    def forward(self, x, seg):
        x_s = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(self.actvn(self.norm_0(x, seg)))
        dx = self.conv_1(self.actvn(self.norm_1(dx, seg)))
        return x_s + dx

    def actvn(self, x):
        return F.leaky_relu(x, 2e-1)


class SPADEGenerator(nn.Module):
    """SPADE's generator, shortened: the label map (here the input image) is downsampled, then SPADE blocks
    upsample it back, each modulated by the label map."""

    def __init__(self, nf=16, label_nc=3, nhidden=32):
        super().__init__()
        self.fc = nn.Conv2d(label_nc, 2 * nf, 3, padding=1)
        self.head_0 = SPADEResnetBlock(2 * nf, 2 * nf, label_nc, nhidden)
        self.up_0 = SPADEResnetBlock(2 * nf, nf, label_nc, nhidden)
        self.conv_img = nn.Conv2d(nf, 3, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2)

    def forward(self, input):
        seg = input
        x = F.interpolate(seg, size=(input.shape[2] // 2, input.shape[3] // 2))
        x = self.fc(x)
        x = self.head_0(x, seg)
        x = self.up(x)
        x = self.up_0(x, seg)
        x = self.conv_img(F.leaky_relu(x, 2e-1))
        return torch.tanh(x)


# ---------------------------------------------------------------- StyleGAN2 modulated convolution


class EqualLinear(nn.Module):
    def __init__(self, in_dim, out_dim, bias_init=0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim).fill_(bias_init))
        self.scale = 1 / math.sqrt(in_dim)

    def forward(self, input):
        return F.linear(input, self.weight * self.scale, bias=self.bias)


class ModulatedConv2d(nn.Module):
    def __init__(self, in_channel, out_channel, kernel_size, style_dim, demodulate=True):
        super().__init__()
        self.eps = 1e-8
        self.kernel_size, self.in_channel, self.out_channel = kernel_size, in_channel, out_channel
        fan_in = in_channel * kernel_size**2
        self.scale = 1 / math.sqrt(fan_in)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)
        self.demodulate = demodulate

    def forward(self, input, style):
        batch, in_channel, height, width = input.shape
        style = self.modulation(style).view(batch, 1, in_channel, 1, 1)
        weight = self.scale * self.weight * style
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
            weight = weight * demod.view(batch, self.out_channel, 1, 1, 1)
        weight = weight.view(batch * self.out_channel, in_channel, self.kernel_size, self.kernel_size)
        input = input.view(1, batch * in_channel, height, width)
        out = F.conv2d(input, weight, padding=self.padding, groups=batch)
        return out.view(batch, self.out_channel, height, width)


class StyledImageNet(nn.Module):
    """An image-to-image net with one StyleGAN2 modulated conv; the style comes from the image's pooled features."""

    def __init__(self, ch=32, style_dim=16):
        super().__init__()
        self.enc = nn.Sequential(
            nn.Conv2d(3, ch, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(ch, ch, 3, 1, 1), nn.LeakyReLU(0.2)
        )
        self.to_style = nn.Linear(ch, style_dim)
        self.conv = ModulatedConv2d(ch, ch, 3, style_dim)
        self.dec = nn.Sequential(
            nn.LeakyReLU(0.2), nn.Conv2d(ch, ch, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(ch, 3, 3, 1, 1)
        )

    def forward(self, x):
        h = self.enc(x)
        style = self.to_style(h.mean((2, 3)))
        return torch.tanh(self.dec(self.conv(h, style)))


# ---------------------------------------------------------------- the small encoder-decoder


class AffineEncoderDecoder(nn.Module):
    """A small custom encoder-decoder with affine InstanceNorms, the second failure the issue quotes."""

    def __init__(self, ch=32):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, ch, 3, 1, 1),
            nn.InstanceNorm2d(ch, affine=True),
            nn.ReLU(True),
            nn.Conv2d(ch, 2 * ch, 4, 2, 1),
            nn.InstanceNorm2d(2 * ch, affine=True),
            nn.ReLU(True),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * ch, ch, 4, 2, 1),
            nn.InstanceNorm2d(ch, affine=True),
            nn.ReLU(True),
            nn.Conv2d(ch, 3, 3, 1, 1),
            nn.Tanh(),
        )

    def forward(self, x):
        return self.decoder(self.encoder(x))
