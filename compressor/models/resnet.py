"""ResNet generator, key-compatible with pytorch-CycleGAN-and-pix2pix's ``ResnetGenerator``."""

from __future__ import annotations

import torch.nn as nn

from .norms import get_norm_layer, uses_bias


class ResnetBlock(nn.Module):
    def __init__(self, dim, padding_type, norm_layer, use_dropout, use_bias):
        super().__init__()
        self.conv_block = self.build_conv_block(dim, padding_type, norm_layer, use_dropout, use_bias)

    @staticmethod
    def _pad(padding_type):
        if padding_type == "reflect":
            return [nn.ReflectionPad2d(1)], 0
        if padding_type == "replicate":
            return [nn.ReplicationPad2d(1)], 0
        if padding_type == "zero":
            return [], 1
        raise ValueError(f"padding {padding_type!r} is not implemented")

    def build_conv_block(self, dim, padding_type, norm_layer, use_dropout, use_bias):
        block = []
        pad, p = self._pad(padding_type)
        block += pad + [nn.Conv2d(dim, dim, kernel_size=3, padding=p, bias=use_bias), norm_layer(dim), nn.ReLU(True)]
        if use_dropout:
            block += [nn.Dropout(0.5)]
        pad, p = self._pad(padding_type)
        block += pad + [nn.Conv2d(dim, dim, kernel_size=3, padding=p, bias=use_bias), norm_layer(dim)]
        return nn.Sequential(*block)

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """Two stride-2 downsamplings, ``n_blocks`` residual blocks, two transposed-conv upsamplings.

    Sizes must be multiples of 4 for the output to match the input.
    """

    size_multiple = 4

    def __init__(
        self, input_nc=3, output_nc=3, ngf=64, norm="batch", use_dropout=False, n_blocks=6, padding_type="reflect"
    ):
        assert n_blocks >= 0
        super().__init__()
        self.config = dict(
            input_nc=input_nc,
            output_nc=output_nc,
            ngf=ngf,
            norm=norm,
            use_dropout=use_dropout,
            n_blocks=n_blocks,
            padding_type=padding_type,
        )
        norm_layer = get_norm_layer(norm)
        use_bias = uses_bias(norm_layer)
        model = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=use_bias),
            norm_layer(ngf),
            nn.ReLU(True),
        ]
        n_down = 2
        for i in range(n_down):
            mult = 2**i
            model += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=use_bias),
                norm_layer(ngf * mult * 2),
                nn.ReLU(True),
            ]
        mult = 2**n_down
        for _ in range(n_blocks):
            model += [
                ResnetBlock(
                    ngf * mult,
                    padding_type=padding_type,
                    norm_layer=norm_layer,
                    use_dropout=use_dropout,
                    use_bias=use_bias,
                )
            ]
        for i in range(n_down):
            mult = 2 ** (n_down - i)
            model += [
                nn.ConvTranspose2d(
                    ngf * mult, int(ngf * mult / 2), kernel_size=3, stride=2, padding=1, output_padding=1, bias=use_bias
                ),
                norm_layer(int(ngf * mult / 2)),
                nn.ReLU(True),
            ]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    @property
    def taps(self) -> dict[str, str]:
        """Feature taps by alias, all pre-activation (no ReLU has zeroed half the values): ``encoder`` is the
        encoder's last norm output (``model.8``, 1/4 resolution, before its ReLU; as in the SRP paper, the end of
        the encoder), ``res_mid`` and ``res_out`` the outputs of the middle and last residual blocks (a sum of the
        skip and a norm's output, no activation after it)."""
        n = self.config["n_blocks"]
        first_block = 10
        taps = {"encoder": "model.8"}
        if n:
            taps["res_mid"] = f"model.{first_block + (n - 1) // 2}"
            taps["res_out"] = f"model.{first_block + n - 1}"
        return taps

    def forward(self, x):
        return self.model(x)
