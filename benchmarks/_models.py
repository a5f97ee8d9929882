"""Standard-shaped models built in the benchmarks (no downloads)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

# the demo's EDSR-baseline (head, residual blocks, body-end conv, global skip, x2 upsampler)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from slim_demo import EDSR


def edsr(blocks: int, feats: int) -> nn.Module:
    torch.manual_seed(0)
    return EDSR(blocks, feats).eval()


class _Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += idt
        return self.relu(out)


class ResNet50Like(nn.Module):
    """ResNet-50 stage layout (3, 4, 6, 3 bottlenecks) with torchvision's widths."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        )
        layers, cin = [], 64
        for i, (n, w) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)]):
            for j in range(n):
                layers.append(_Bottleneck(cin, w, 2 if j == 0 and i > 0 else 1))
                cin = w * 4
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resnet50_like() -> nn.Module:
    torch.manual_seed(0)
    return ResNet50Like().eval()
