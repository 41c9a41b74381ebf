"""Non-zoo generators for the prune tests: depthwise-separable + InstanceNorm, PixelShuffle upsampling, and a
U-Net-style concatenation with an attention-like multiply."""

import torch
import torch.nn as nn


class DepthwiseSeparableNet(nn.Module):
    def __init__(self, ch=32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, ch, 3, padding=1), nn.InstanceNorm2d(ch), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(ch * 2), nn.ReLU())
        self.dw = nn.Sequential(
            nn.Conv2d(ch * 2, ch * 2, 3, padding=1, groups=ch * 2),
            nn.Conv2d(ch * 2, ch * 2, 1),
            nn.InstanceNorm2d(ch * 2),
            nn.ReLU(),
        )
        self.up = nn.Sequential(
            nn.ConvTranspose2d(ch * 2, ch, 4, stride=2, padding=1), nn.InstanceNorm2d(ch), nn.ReLU()
        )
        self.head = nn.Conv2d(ch, 3, 3, padding=1)

    def forward(self, x):
        h = self.down(self.stem(x))
        h = h + self.dw(h)
        return torch.tanh(self.head(self.up(h)))


class PixelShuffleNet(nn.Module):
    def __init__(self, ch=32):
        super().__init__()
        self.enc = nn.Sequential(
            nn.Conv2d(3, ch, 3, stride=2, padding=1),
            nn.BatchNorm2d(ch),
            nn.ReLU(),
            nn.Conv2d(ch, ch * 2, 3, padding=1),
            nn.BatchNorm2d(ch * 2),
            nn.ReLU(),
        )
        self.up = nn.Sequential(nn.Conv2d(ch * 2, ch * 4, 3, padding=1), nn.PixelShuffle(2), nn.ReLU())
        self.head = nn.Conv2d(ch, 3, 3, padding=1)

    def forward(self, x):
        return torch.tanh(self.head(self.up(self.enc(x))))


class AttentionUNet(nn.Module):
    def __init__(self, ch=32):
        super().__init__()
        self.e1 = nn.Sequential(nn.Conv2d(3, ch, 3, padding=1), nn.ReLU())
        self.e2 = nn.Sequential(nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1), nn.ReLU())
        self.gate = nn.Sequential(nn.Conv2d(ch * 2, ch * 2, 1), nn.Sigmoid())
        self.d2 = nn.Sequential(nn.ConvTranspose2d(ch * 2, ch, 4, stride=2, padding=1), nn.ReLU())
        self.d1 = nn.Sequential(nn.Conv2d(ch * 2, ch, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(ch, 3, 1)

    def forward(self, x):
        a = self.e1(x)
        b = self.e2(a)
        b = b * self.gate(b)
        u = self.d2(b)
        return torch.tanh(self.head(self.d1(torch.cat([a, u], 1))))


def make_depthwise(ch=32):
    return DepthwiseSeparableNet(ch)


def make_pixelshuffle(ch=32):
    return PixelShuffleNet(ch)


def make_attention_unet(ch=32):
    return AttentionUNet(ch)
