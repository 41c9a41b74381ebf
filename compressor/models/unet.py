"""U-Net generator, key-compatible with pytorch-CycleGAN-and-pix2pix's ``UnetGenerator``."""

from __future__ import annotations

import torch
import torch.nn as nn

from .norms import get_norm_layer, uses_bias


class UnetSkipConnectionBlock(nn.Module):
    def __init__(
        self,
        outer_nc,
        inner_nc,
        input_nc=None,
        submodule=None,
        outermost=False,
        innermost=False,
        norm_layer=nn.BatchNorm2d,
        use_dropout=False,
    ):
        super().__init__()
        self.outermost = outermost
        use_bias = uses_bias(norm_layer)
        if input_nc is None:
            input_nc = outer_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        downrelu = nn.LeakyReLU(0.2, True)
        downnorm = norm_layer(inner_nc)
        uprelu = nn.ReLU(True)
        upnorm = norm_layer(outer_nc)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            model = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv, uprelu, upconv, upnorm]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm]
            if use_dropout:
                model += [nn.Dropout(0.5)]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """``num_downs`` stride-2 levels with skip connections; sizes must be multiples of 2**num_downs."""

    def __init__(self, input_nc=3, output_nc=3, num_downs=8, ngf=64, norm="batch", use_dropout=False):
        super().__init__()
        if num_downs < 5:
            raise ValueError("num_downs must be at least 5")
        self.config = dict(
            input_nc=input_nc, output_nc=output_nc, num_downs=num_downs, ngf=ngf, norm=norm, use_dropout=use_dropout
        )
        norm_layer = get_norm_layer(norm)
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=None, norm_layer=norm_layer, innermost=True)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(
                ngf * 8, ngf * 8, submodule=block, norm_layer=norm_layer, use_dropout=use_dropout
            )
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block, norm_layer=norm_layer)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block, norm_layer=norm_layer)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block, norm_layer=norm_layer)
        self.model = UnetSkipConnectionBlock(
            output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True, norm_layer=norm_layer
        )

    @property
    def size_multiple(self) -> int:
        return 2 ** self.config["num_downs"]

    @staticmethod
    def _level(k: int) -> str:
        """Module name of the skip block at depth k (1 = outermost): the outermost block holds its submodule at
        index 1 of its Sequential, every other block at index 3."""
        if k == 1:
            return "model"
        return "model.model.1" + ".model.3" * (k - 2)

    @property
    def taps(self) -> dict[str, str]:
        """Feature taps, pre-activation: the down-path norm outputs at 1/16 (``encoder``) and 1/8 (``mid``)
        resolution. The next level's in-place LeakyReLU modifies these tensors after they are computed;
        :class:`compressor.features.FeatureTaps` records a copy, so the taps hold the norm's output."""
        return {"encoder": self._level(4) + ".model.2", "mid": self._level(3) + ".model.2"}

    def forward(self, x):
        return self.model(x)
