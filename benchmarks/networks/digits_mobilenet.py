"""A small MobileNetV2-shaped classifier for 8x8 digit scans (the MobileNetV2 classifier benchmark's network)."""

from __future__ import annotations

import torch
from torch import nn

from .classifiers import InvertedResidual

STAGES = ((1, 8, 1, 1), (6, 16, 2, 1), (6, 24, 2, 2), (6, 32, 2, 1))
"""MobileNetV2's ``(expansion t, channels c, blocks n, stride s)`` table, shrunk for 8x8 inputs."""


class DigitsMobileNetV2(nn.Module):
    """Stem conv at 16 channels, the inverted-residual stages of :data:`STAGES`, a 1x1 conv to
    ``last`` channels, pool, Linear: MobileNetV2's layout at digit-scan size."""

    def __init__(self, last: int = 128, classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(inplace=True)]
        cin = 16
        for t, c, n, s in STAGES:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))
