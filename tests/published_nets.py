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
* ``enhance_net_nopool``: Li-Chongyi/Zero-DCE Zero-DCE_code/model.py, low-light curve estimation in [0, 1] that
  returns a 3-tuple ``(enhance_image_1, enhance_image, r)``.
* ``RCAN`` (``CALayer``, ``RCAB``, ``ResidualGroup``) with ``MeanShift``, ``Upsampler``, ``default_conv``:
  sanghyun-son/EDSR-PyTorch src/model/rcan.py and common.py; MeanShift is a frozen constant 1x1 conv.
* ``SpectralSPADEResnetBlock``: NVlabs/SPADE architecture.py with ``'spectral' in opt.norm_G`` (hook-based
  ``torch.nn.utils.spectral_norm``, as released).
* ``WDSR``: JiahuiYu/wdsr_ntire2018 wdsr_a.py, weight normalisation through ``parametrizations.weight_norm``.
* ``DownUpSeparableNet``, ``DeepSupervisedUNet``, ``ReparamNet``: a depthwise-separable block resampling inside,
  a deep-supervision net returning ``{"out": ..., "aux": [...]}``, and convs under each re-parametrization.
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


# ---------------------------------------------------------------- Zero-DCE (Li-Chongyi/Zero-DCE, model.py)


class enhance_net_nopool(nn.Module):  # noqa: N801 - published name
    """Curve estimation for low-light enhancement; takes and returns [0, 1] and returns a 3-tuple:
    ``(enhance_image_1, enhance_image, r)`` (the image after four curve steps, the final image, the 24 curve
    maps)."""

    def __init__(self, number_f=32):
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.e_conv1 = nn.Conv2d(3, number_f, 3, 1, 1, bias=True)
        self.e_conv2 = nn.Conv2d(number_f, number_f, 3, 1, 1, bias=True)
        self.e_conv3 = nn.Conv2d(number_f, number_f, 3, 1, 1, bias=True)
        self.e_conv4 = nn.Conv2d(number_f, number_f, 3, 1, 1, bias=True)
        self.e_conv5 = nn.Conv2d(number_f * 2, number_f, 3, 1, 1, bias=True)
        self.e_conv6 = nn.Conv2d(number_f * 2, number_f, 3, 1, 1, bias=True)
        self.e_conv7 = nn.Conv2d(number_f * 2, 24, 3, 1, 1, bias=True)

    def forward(self, x):
        x1 = self.relu(self.e_conv1(x))
        x2 = self.relu(self.e_conv2(x1))
        x3 = self.relu(self.e_conv3(x2))
        x4 = self.relu(self.e_conv4(x3))
        x5 = self.relu(self.e_conv5(torch.cat([x3, x4], 1)))
        x6 = self.relu(self.e_conv6(torch.cat([x2, x5], 1)))
        x_r = torch.tanh(self.e_conv7(torch.cat([x1, x6], 1)))
        r1, r2, r3, r4, r5, r6, r7, r8 = torch.split(x_r, 3, dim=1)
        x = x + r1 * (torch.pow(x, 2) - x)
        x = x + r2 * (torch.pow(x, 2) - x)
        x = x + r3 * (torch.pow(x, 2) - x)
        enhance_image_1 = x + r4 * (torch.pow(x, 2) - x)
        x = enhance_image_1 + r5 * (torch.pow(enhance_image_1, 2) - enhance_image_1)
        x = x + r6 * (torch.pow(x, 2) - x)
        x = x + r7 * (torch.pow(x, 2) - x)
        enhance_image = x + r8 * (torch.pow(x, 2) - x)
        r = torch.cat([r1, r2, r3, r4, r5, r6, r7, r8], 1)
        return enhance_image_1, enhance_image, r


def make_zero_dce(number_f=16):
    return enhance_net_nopool(number_f)


# ---------------------------------------------------------------- Zero-DCE++ (Li-Chongyi/Zero-DCE_extension, model.py)


class CSDN_Tem(nn.Module):  # noqa: N801 - published name
    """A depthwise-separable convolution: depthwise 3x3 (groups = in_ch), then pointwise 1x1."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.depth_conv = nn.Conv2d(in_ch, in_ch, kernel_size=3, stride=1, padding=1, groups=in_ch)
        self.point_conv = nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=1, padding=0, groups=1)

    def forward(self, input):  # noqa: A002 - published name
        return self.point_conv(self.depth_conv(input))


class ZeroDCEpp(nn.Module):
    """Zero-DCE++ (``enhance_net_nopool(scale_factor)`` upstream): depthwise-separable blocks from the RGB input on,
    the curves estimated at 1/scale_factor of the resolution and upsampled back, one 3-channel curve map shared by
    the eight steps; returns ``(enhance_image, x_r)``, [0, 1] in and out."""

    def __init__(self, scale_factor=1, number_f=32):
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.scale_factor = scale_factor
        self.upsample = nn.UpsamplingBilinear2d(scale_factor=scale_factor)
        self.e_conv1 = CSDN_Tem(3, number_f)
        self.e_conv2 = CSDN_Tem(number_f, number_f)
        self.e_conv3 = CSDN_Tem(number_f, number_f)
        self.e_conv4 = CSDN_Tem(number_f, number_f)
        self.e_conv5 = CSDN_Tem(number_f * 2, number_f)
        self.e_conv6 = CSDN_Tem(number_f * 2, number_f)
        self.e_conv7 = CSDN_Tem(number_f * 2, 3)

    def enhance(self, x, x_r):
        for _ in range(8):
            x = x + x_r * (torch.pow(x, 2) - x)
        return x

    def forward(self, x):
        x_down = x if self.scale_factor == 1 else F.interpolate(x, scale_factor=1 / self.scale_factor, mode="bilinear")
        x1 = self.relu(self.e_conv1(x_down))
        x2 = self.relu(self.e_conv2(x1))
        x3 = self.relu(self.e_conv3(x2))
        x4 = self.relu(self.e_conv4(x3))
        x5 = self.relu(self.e_conv5(torch.cat([x3, x4], 1)))
        x6 = self.relu(self.e_conv6(torch.cat([x2, x5], 1)))
        x_r = torch.tanh(self.e_conv7(torch.cat([x1, x6], 1)))
        if self.scale_factor != 1:
            x_r = self.upsample(x_r)
        return self.enhance(x, x_r), x_r


# ---------------------------------------------------------------- RCAN (sanghyun-son/EDSR-PyTorch src/model)


def default_conv(in_channels, out_channels, kernel_size, bias=True):
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=(kernel_size // 2), bias=bias)


class MeanShift(nn.Conv2d):
    """common.py: a constant 1x1 conv that subtracts (sign -1) or adds back the dataset's mean colour; frozen."""

    def __init__(self, rgb_range, rgb_mean=(0.4488, 0.4371, 0.4040), rgb_std=(1.0, 1.0, 1.0), sign=-1):
        super().__init__(3, 3, kernel_size=1)
        std = torch.Tensor(rgb_std)
        self.weight.data = torch.eye(3).view(3, 3, 1, 1) / std.view(3, 1, 1, 1)
        self.bias.data = sign * rgb_range * torch.Tensor(rgb_mean) / std
        for p in self.parameters():
            p.requires_grad = False


class Upsampler(nn.Sequential):
    def __init__(self, conv, scale, n_feats, bn=False, act=False, bias=True):
        m = []
        if (scale & (scale - 1)) == 0:
            for _ in range(int(math.log(scale, 2))):
                m.append(conv(n_feats, 4 * n_feats, 3, bias))
                m.append(nn.PixelShuffle(2))
        else:
            raise NotImplementedError
        super().__init__(*m)


class CALayer(nn.Module):
    def __init__(self, channel, reduction=16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channel, channel // reduction, 1, padding=0, bias=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(channel // reduction, channel, 1, padding=0, bias=True),
            nn.Sigmoid(),
        )

    def forward(self, x):
        y = self.avg_pool(x)
        y = self.conv_du(y)
        return x * y


class RCAB(nn.Module):
    def __init__(self, conv, n_feat, kernel_size, reduction, bias=True, bn=False, act=nn.ReLU(True), res_scale=1):
        super().__init__()
        modules_body = []
        for i in range(2):
            modules_body.append(conv(n_feat, n_feat, kernel_size, bias=bias))
            if bn:
                modules_body.append(nn.BatchNorm2d(n_feat))
            if i == 0:
                modules_body.append(act)
        modules_body.append(CALayer(n_feat, reduction))
        self.body = nn.Sequential(*modules_body)
        self.res_scale = res_scale

    def forward(self, x):
        res = self.body(x)
        res += x
        return res


class ResidualGroup(nn.Module):
    def __init__(self, conv, n_feat, kernel_size, reduction, act, res_scale, n_resblocks):
        super().__init__()
        modules_body = [
            RCAB(conv, n_feat, kernel_size, reduction, bias=True, bn=False, act=nn.ReLU(True), res_scale=1)
            for _ in range(n_resblocks)
        ]
        modules_body.append(conv(n_feat, n_feat, kernel_size))
        self.body = nn.Sequential(*modules_body)

    def forward(self, x):
        res = self.body(x)
        res += x
        return res


class RCAN(nn.Module):
    """rcan.py with its ``args`` spelled out; inputs and outputs in [0, rgb_range]."""

    def __init__(self, n_resgroups=2, n_resblocks=2, n_feats=16, reduction=4, scale=2, rgb_range=255, n_colors=3):
        super().__init__()
        conv = default_conv
        kernel_size = 3
        act = nn.ReLU(True)
        rgb_mean = (0.4488, 0.4371, 0.4040)
        rgb_std = (1.0, 1.0, 1.0)
        self.sub_mean = MeanShift(rgb_range, rgb_mean, rgb_std)
        modules_head = [conv(n_colors, n_feats, kernel_size)]
        modules_body = [
            ResidualGroup(conv, n_feats, kernel_size, reduction, act=act, res_scale=1, n_resblocks=n_resblocks)
            for _ in range(n_resgroups)
        ]
        modules_body.append(conv(n_feats, n_feats, kernel_size))
        modules_tail = [Upsampler(conv, scale, n_feats, act=False), conv(n_feats, n_colors, kernel_size)]
        self.add_mean = MeanShift(rgb_range, rgb_mean, rgb_std, 1)
        self.head = nn.Sequential(*modules_head)
        self.body = nn.Sequential(*modules_body)
        self.tail = nn.Sequential(*modules_tail)

    def forward(self, x):
        x = self.sub_mean(x)
        x = self.head(x)
        res = self.body(x)
        res += x
        x = self.tail(res)
        x = self.add_mean(x)
        return x


# ---------------------------------------------------------------- SPADE with spectral norm (NVlabs/SPADE)


class SpectralSPADEResnetBlock(SPADEResnetBlock):
    """architecture.py's SPADEResnetBlock with ``'spectral' in opt.norm_G`` (the released models' setting): its
    convolutions wrapped by the hook-based ``torch.nn.utils.spectral_norm``."""

    def __init__(self, fin, fout, label_nc=3, nhidden=32):
        super().__init__(fin, fout, label_nc, nhidden)
        sn = torch.nn.utils.spectral_norm
        self.conv_0 = sn(self.conv_0)
        self.conv_1 = sn(self.conv_1)
        if self.learned_shortcut:
            self.conv_s = sn(self.conv_s)


class SpectralSPADEGenerator(SPADEGenerator):
    def __init__(self, nf=16, label_nc=3, nhidden=16):
        super().__init__(nf, label_nc, nhidden)
        self.head_0 = SpectralSPADEResnetBlock(2 * nf, 2 * nf, label_nc, nhidden)
        self.up_0 = SpectralSPADEResnetBlock(2 * nf, nf, label_nc, nhidden)


# ---------------------------------------------------------------- WDSR-A (JiahuiYu/wdsr_ntire2018 wdsr_a.py)


class WDSRBlock(nn.Module):
    def __init__(self, n_feats, kernel_size, block_feats, wn, res_scale=1, act=nn.ReLU(True)):
        super().__init__()
        self.res_scale = res_scale
        body = []
        body.append(wn(nn.Conv2d(n_feats, block_feats, kernel_size, padding=kernel_size // 2)))
        body.append(act)
        body.append(wn(nn.Conv2d(block_feats, n_feats, kernel_size, padding=kernel_size // 2)))
        self.body = nn.Sequential(*body)

    def forward(self, x):
        res = self.body(x) * self.res_scale
        res += x
        return res


class WDSR(nn.Module):
    """wdsr_a.py's MODEL with its ``args`` spelled out, in [0, 255]; weight normalisation in its current form,
    ``torch.nn.utils.parametrizations.weight_norm`` (the release uses the deprecated hook form)."""

    def __init__(self, scale=2, n_resblocks=2, n_feats=16, block_feats=32, res_scale=1.0, n_colors=3):
        super().__init__()
        kernel_size = 3
        act = nn.ReLU(True)

        def wn(x):
            return torch.nn.utils.parametrizations.weight_norm(x)

        self.register_buffer("rgb_mean", torch.FloatTensor([0.4488, 0.4371, 0.4040]).view([1, 3, 1, 1]), False)
        head = [wn(nn.Conv2d(n_colors, n_feats, 3, padding=3 // 2))]
        body = [
            WDSRBlock(n_feats, kernel_size, block_feats, wn=wn, res_scale=res_scale, act=act)
            for _ in range(n_resblocks)
        ]
        out_feats = scale * scale * n_colors
        tail = [wn(nn.Conv2d(n_feats, out_feats, 3, padding=3 // 2)), nn.PixelShuffle(scale)]
        skip = [wn(nn.Conv2d(n_colors, out_feats, 5, padding=5 // 2)), nn.PixelShuffle(scale)]
        self.head = nn.Sequential(*head)
        self.body = nn.Sequential(*body)
        self.tail = nn.Sequential(*tail)
        self.skip = nn.Sequential(*skip)

    def forward(self, x):
        x = (x - self.rgb_mean * 255) / 127.5
        s = self.skip(x)
        x = self.head(x)
        x = self.body(x)
        x = self.tail(x)
        x += s
        x = x * 127.5 + self.rgb_mean * 255
        return x


# ---------------------------------------------------------------- depthwise-separable, internal down/up-sampling


class DownUpSeparableBlock(nn.Module):
    """A depthwise-separable block that works at half resolution inside (stride-2 depthwise conv, pointwise conv,
    bilinear x2 back), with a residual add, as lightweight enhancement and matting networks write it."""

    def __init__(self, channels, expand=2):
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.pw = nn.Conv2d(channels, channels * expand, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels * expand)
        self.act = nn.ReLU6(inplace=True)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.project = nn.Conv2d(channels * expand, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)

    def forward(self, x):
        y = self.act(self.bn2(self.pw(self.bn1(self.dw(x)))))
        return x + self.bn3(self.project(self.up(y)))


class DownUpSeparableNet(nn.Module):
    def __init__(self, c=16, n_blocks=2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*[DownUpSeparableBlock(c) for _ in range(n_blocks)])
        self.head = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x):
        return torch.tanh(self.head(self.blocks(self.stem(x))))


# ---------------------------------------------------------------- a dict-returning network


class DeepSupervisedUNet(nn.Module):
    """A small U-Net with deep supervision that returns ``{"out": image, "aux": [coarse image]}`` (the
    ``{"out": ...}`` convention of torchvision's segmentation models, with auxiliary heads in a list)."""

    def __init__(self, c=16):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU(inplace=True))
        self.enc2 = nn.Sequential(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.aux_head = nn.Conv2d(2 * c, 3, 1)
        self.up = nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1)
        self.dec = nn.Sequential(nn.Conv2d(2 * c, c, 3, padding=1), nn.ReLU(inplace=True))
        self.out_conv = nn.Conv2d(c, 3, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        d = self.dec(torch.cat([self.up(e2), e1], 1))
        return {"out": torch.tanh(self.out_conv(d)), "aux": [torch.tanh(self.aux_head(e2))]}


class ReparamNet(nn.Module):
    """Three convs wrapped by one re-parametrization ``kind``: ``spectral`` (torch.nn.utils.parametrizations
    .spectral_norm), ``weight_norm`` (its weight_norm), ``spectral_hook`` / ``weight_norm_hook`` (the older
    hook-based torch.nn.utils.spectral_norm / weight_norm)."""

    def __init__(self, kind="spectral", c=16):
        super().__init__()
        wrap = {
            "spectral": torch.nn.utils.parametrizations.spectral_norm,
            "weight_norm": torch.nn.utils.parametrizations.weight_norm,
            "spectral_hook": torch.nn.utils.spectral_norm,
            "weight_norm_hook": torch.nn.utils.weight_norm,
        }[kind]
        self.conv1 = wrap(nn.Conv2d(3, c, 3, padding=1))
        self.conv2 = wrap(nn.Conv2d(c, c, 3, padding=1))
        self.up = wrap(nn.ConvTranspose2d(c, c, 4, stride=2, padding=1))
        self.down = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x):
        y = F.relu(self.conv2(F.relu(self.conv1(x))))
        return torch.tanh(self.out(self.down(F.relu(self.up(y)))))
