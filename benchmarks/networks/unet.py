"""A small BatchNorm U-Net denoiser (the BatchNorm denoiser benchmark's network)."""

from __future__ import annotations

import torch
from torch import nn


def double_conv(cin: int, cout: int) -> nn.Sequential:
    """conv3x3 -> BN -> ReLU, twice."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def upsample(cin: int, cout: int, up: str) -> nn.Module:
    """2x up: a stride-2 ConvTranspose (``"transpose"``), or bilinear resizing then a 1x1 conv (``"bilinear"``)."""
    if up == "transpose":
        return nn.ConvTranspose2d(cin, cout, 2, stride=2)
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(cin, cout, 1))


class UNet(nn.Module):
    """Two down and two up steps with skip concatenations; the output is the input minus the predicted noise."""

    def __init__(self, width: int = 12, channels: int = 3, up: str = "transpose") -> None:
        super().__init__()
        w = width
        self.enc1, self.enc2, self.mid = double_conv(channels, w), double_conv(w, 2 * w), double_conv(2 * w, 4 * w)
        self.pool = nn.MaxPool2d(2)
        self.up2, self.dec2 = upsample(4 * w, 2 * w, up), double_conv(4 * w, 2 * w)
        self.up1, self.dec1 = upsample(2 * w, w, up), double_conv(2 * w, w)
        self.out = nn.Conv2d(w, channels, 1)
        self.init_weights()

    def init_weights(self) -> None:
        """A zero output conv: the untrained net is the identity, and learns the noise from there."""
        nn.init.zeros_(self.out.weight)
        assert self.out.bias is not None
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return x - self.out(d1)
