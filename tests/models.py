"""A battery of tiny CNNs used to check that channel pruning is exact.

Every model is small (hundreds to a few thousand parameters) and runs in a few milliseconds
on CPU. ``CASES`` at the bottom lists one :class:`Case` per model variant; ``build()`` returns
a freshly seeded model (in train mode) whose normalisation layers carry random, non-trivial
affine parameters and running statistics, so eval-mode comparisons are meaningful.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import spectral_norm as legacy_spectral_norm
from torch.nn.utils import weight_norm as legacy_weight_norm
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.GroupNorm,
    nn.LayerNorm,
)


@torch.no_grad()
def randomize_norms(model: nn.Module) -> nn.Module:
    """Give norm layers (and PReLU slopes) random non-trivial values, using the global RNG."""
    for m in model.modules():
        if isinstance(m, _NORMS):
            if getattr(m, "weight", None) is not None:
                m.weight.uniform_(0.5, 1.5)
            if getattr(m, "bias", None) is not None:
                m.bias.uniform_(-0.5, 0.5)
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
        elif isinstance(m, nn.PReLU):
            m.weight.uniform_(0.05, 0.5)
    return model


def default_conv(in_channels: int, out_channels: int, kernel_size: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)


# ----------------------------------------------------------------------------- EDSR / RCAN


class MeanShift(nn.Conv2d):
    """Fixed 1x1 conv that subtracts (sign=-1) or adds (sign=+1) the RGB mean."""

    def __init__(
        self, rgb_range: float = 1.0, rgb_mean=(0.4488, 0.4371, 0.4040), rgb_std=(1.0, 1.0, 1.0), sign: int = -1
    ):
        super().__init__(3, 3, kernel_size=1)
        std = torch.tensor(rgb_std)
        self.weight.data = torch.eye(3).view(3, 3, 1, 1) / std.view(3, 1, 1, 1)
        self.bias.data = sign * rgb_range * torch.tensor(rgb_mean) / std
        for p in self.parameters():
            p.requires_grad = False


class ResBlock(nn.Module):
    """EDSR residual block: conv-ReLU-conv, scaled, plus identity."""

    def __init__(self, conv, n_feats: int, kernel_size: int, res_scale: float = 1.0):
        super().__init__()
        self.body = nn.Sequential(
            conv(n_feats, n_feats, kernel_size), nn.ReLU(inplace=True), conv(n_feats, n_feats, kernel_size)
        )
        self.res_scale = res_scale

    def forward(self, x):
        res = self.body(x).mul(self.res_scale)
        res += x
        return res


class Upsampler(nn.Sequential):
    """Sub-pixel upsampler: conv to r*r*n_feats then PixelShuffle(r); x4 is two x2 stages."""

    def __init__(self, conv, scale: int, n_feats: int):
        m = []
        if scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                m += [conv(n_feats, 4 * n_feats, 3), nn.PixelShuffle(2)]
        elif scale == 3:
            m += [conv(n_feats, 9 * n_feats, 3), nn.PixelShuffle(3)]
        else:
            raise NotImplementedError(scale)
        super().__init__(*m)


class EDSR(nn.Module):
    """EDSR with a global skip; ``light_tail`` gives an LEDSR-like conv->PixelShuffle final op."""

    def __init__(
        self,
        n_resblocks: int = 2,
        n_feats: int = 8,
        scale: int = 2,
        light_tail: bool = False,
        res_scale: float = 1.0,
        conv=default_conv,
    ):
        super().__init__()
        self.sub_mean = MeanShift(sign=-1)
        self.add_mean = MeanShift(sign=1)
        self.head = nn.Sequential(conv(3, n_feats, 3))
        body = [ResBlock(conv, n_feats, 3, res_scale=res_scale) for _ in range(n_resblocks)]
        body.append(conv(n_feats, n_feats, 3))
        self.body = nn.Sequential(*body)
        if light_tail:
            self.tail = nn.Sequential(conv(n_feats, 3 * scale * scale, 3), nn.PixelShuffle(scale))
        else:
            self.tail = nn.Sequential(Upsampler(conv, scale, n_feats), conv(n_feats, 3, 3))

    def forward(self, x):
        x = self.sub_mean(x)
        x = self.head(x)
        res = self.body(x)
        res += x
        x = self.tail(res)
        return self.add_mean(x)


class CALayer(nn.Module):
    """Channel attention: global pool, squeeze/excite 1x1 convs, sigmoid gate."""

    def __init__(self, channel: int, reduction: int = 4):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channel, channel // reduction, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channel // reduction, channel, 1),
            nn.Sigmoid(),
        )

    def forward(self, x):
        y = self.avg_pool(x)
        y = self.conv_du(y)
        return x * y


class RCAB(nn.Module):
    """Residual channel-attention block."""

    def __init__(self, conv, n_feat: int, kernel_size: int, reduction: int):
        super().__init__()
        self.body = nn.Sequential(
            conv(n_feat, n_feat, kernel_size),
            nn.ReLU(inplace=True),
            conv(n_feat, n_feat, kernel_size),
            CALayer(n_feat, reduction),
        )

    def forward(self, x):
        res = self.body(x)
        res += x
        return res


class ResidualGroup(nn.Module):
    """RCABs followed by a conv, with a short skip."""

    def __init__(self, conv, n_feat: int, kernel_size: int, reduction: int, n_resblocks: int):
        super().__init__()
        body = [RCAB(conv, n_feat, kernel_size, reduction) for _ in range(n_resblocks)]
        body.append(conv(n_feat, n_feat, kernel_size))
        self.body = nn.Sequential(*body)

    def forward(self, x):
        res = self.body(x)
        res += x
        return res


class RCAN(nn.Module):
    """RCAN: residual groups, long skip, pixel-shuffle upsampler."""

    def __init__(
        self,
        n_resgroups: int = 2,
        n_resblocks: int = 2,
        n_feats: int = 8,
        reduction: int = 4,
        scale: int = 2,
        conv=default_conv,
    ):
        super().__init__()
        self.sub_mean = MeanShift(sign=-1)
        self.head = nn.Sequential(conv(3, n_feats, 3))
        body = [ResidualGroup(conv, n_feats, 3, reduction, n_resblocks) for _ in range(n_resgroups)]
        body.append(conv(n_feats, n_feats, 3))
        self.body = nn.Sequential(*body)
        self.tail = nn.Sequential(Upsampler(conv, scale, n_feats), conv(n_feats, 3, 3))
        self.add_mean = MeanShift(sign=1)

    def forward(self, x):
        x = self.sub_mean(x)
        x = self.head(x)
        res = self.body(x)
        res += x
        x = self.tail(res)
        return self.add_mean(x)


# ----------------------------------------------------------------------------- classification nets


class Bottleneck(nn.Module):
    """torchvision-style bottleneck (1x1-3x3-1x1, expansion 4)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """Tiny bottleneck ResNet: stem + maxpool, two stages, avgpool, fc."""

    def __init__(self, layers=(2, 1), widths=(4, 8), num_classes: int = 10):
        super().__init__()
        self.inplanes = 8
        self.conv1 = nn.Conv2d(3, self.inplanes, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(widths[0], layers[0], stride=1)
        self.layer2 = self._make_layer(widths[1], layers[1], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[1] * Bottleneck.expansion, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = out
        layers += [Bottleneck(out, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class ConvBNActivation(nn.Sequential):
    """Conv2d + BatchNorm2d + activation (ReLU6 by default, None for linear)."""

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation=nn.ReLU6,
    ):
        layers = [
            nn.Conv2d(in_planes, out_planes, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_planes),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """SE block: avg pool, 1x1 reduce, ReLU, 1x1 expand, gate, multiply."""

    def __init__(self, channels: int, squeeze: int, gate=nn.Hardsigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate()

    def forward(self, x):
        scale = self.fc2(self.relu(self.fc1(self.avgpool(x))))
        return x * self.gate(scale)


class InvertedResidual(nn.Module):
    """MobileNetV2 block; ``dw_multiplier`` > 1 makes the depthwise conv widen the channels."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, se_gate=None, dw_multiplier: int = 1):
        super().__init__()
        hidden = inp * expand_ratio
        dw_out = hidden * dw_multiplier
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNActivation(inp, hidden, kernel_size=1))
        layers.append(ConvBNActivation(hidden, dw_out, stride=stride, groups=hidden))
        if se_gate is not None:
            layers.append(SqueezeExcitation(dw_out, max(dw_out // 4, 2), gate=se_gate))
        layers += [nn.Conv2d(dw_out, oup, 1, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and inp == oup

    def forward(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """Tiny MobileNetV2 with SE, a depthwise x2 multiplier and a groups=2 conv."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            ConvBNActivation(3, 8, stride=2),
            InvertedResidual(8, 8, 1, expand_ratio=1, se_gate=nn.Hardsigmoid),
            InvertedResidual(8, 12, 2, expand_ratio=2, dw_multiplier=2),
            InvertedResidual(12, 12, 1, expand_ratio=2, se_gate=nn.Sigmoid),
            ConvBNActivation(12, 16, kernel_size=3, groups=2),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv, BN-ReLU-3x3 conv producing ``growth_rate`` new maps."""

    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    """Each layer sees the concatenation of all previous feature maps."""

    def __init__(self, num_layers: int, num_input_features: int, bn_size: int, growth_rate: int):
        super().__init__()
        for i in range(num_layers):
            self.add_module(
                f"denselayer{i + 1}", DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size)
            )

    def forward(self, init_features):
        features = [init_features]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    def __init__(self, num_input_features: int, num_output_features: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, 1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    """Tiny DenseNet: two dense blocks with a transition, final norm, avgpool, linear."""

    def __init__(
        self,
        growth_rate: int = 4,
        block_config=(3, 2),
        num_init_features: int = 8,
        bn_size: int = 2,
        num_classes: int = 10,
    ):
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv0", nn.Conv2d(3, num_init_features, 3, padding=1, bias=False)),
                    ("norm0", nn.BatchNorm2d(num_init_features)),
                    ("relu0", nn.ReLU(inplace=True)),
                ]
            )
        )
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            self.features.add_module(f"denseblock{i + 1}", DenseBlock(num_layers, num_features, bn_size, growth_rate))
            num_features += num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(num_features, num_features // 2))
                num_features //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)

    def forward(self, x):
        out = F.relu(self.features(x), inplace=True)
        out = torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1)
        return self.classifier(out)


class VGG(nn.Module):
    """Tiny VGG; the Linear head fixes the input at 8x8."""

    def __init__(self, cfg=(8, 8, "M", 16, "M"), num_classes: int = 10, in_size: int = 8):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch, size = 3, in_size
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                size //= 2
            else:
                layers += [nn.Conv2d(in_ch, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                in_ch = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(in_ch * size * size, 16), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(16, num_classes)
        )

    def forward(self, x):
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


# ----------------------------------------------------------------------------- dense prediction nets


class DoubleConv(nn.Sequential):
    """(conv3x3 -> BN -> ReLU) x 2."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Transposed-conv upsampling, concat with the skip, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x, skip):
        x = self.up(x)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """Two-level U-Net; spatial size must be divisible by 4."""

    def __init__(self, in_channels: int = 3, n_classes: int = 2, widths=(4, 6, 8)):
        super().__init__()
        self.inc = DoubleConv(in_channels, widths[0])
        self.down1 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(widths[0], widths[1]))
        self.down2 = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(widths[1], widths[2])
        self.up1 = Up(widths[2], widths[1])
        self.up2 = Up(widths[1], widths[0])
        self.outc = nn.Conv2d(widths[0], n_classes, kernel_size=1)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.bottleneck(self.down2(x2))
        x = self.up1(x3, x2)
        x = self.up2(x, x1)
        return self.outc(x)


class IMDModule(nn.Module):
    """Information multi-distillation block: split off distilled channels, refine the rest."""

    def __init__(self, in_channels: int = 8, distillation_rate: float = 0.25):
        super().__init__()
        self.distilled = int(in_channels * distillation_rate)
        self.remaining = in_channels - self.distilled
        self.c1 = default_conv(in_channels, in_channels, 3)
        self.c2 = default_conv(self.remaining, in_channels, 3)
        self.c3 = default_conv(self.remaining, in_channels, 3)
        self.c4 = default_conv(self.remaining, self.distilled, 3)
        self.act = nn.LeakyReLU(0.05, inplace=True)
        self.c5 = nn.Conv2d(self.distilled * 4, in_channels, 1)

    def forward(self, x):
        d, r = self.distilled, self.remaining
        out_c1 = self.act(self.c1(x))
        distilled_c1, remaining_c1 = torch.split(out_c1, (d, r), dim=1)
        out_c2 = self.act(self.c2(remaining_c1))
        distilled_c2, remaining_c2 = torch.split(out_c2, (d, r), dim=1)
        out_c3 = self.act(self.c3(remaining_c2))
        distilled_c3, remaining_c3 = out_c3[:, :d], out_c3[:, d:]
        out_c4 = self.c4(remaining_c3)
        out = torch.cat([distilled_c1, distilled_c2, distilled_c3, out_c4], dim=1)
        return self.c5(out) + x


class IMDN(nn.Module):
    """Tiny IMDN: two IMD modules, 1x1 fusion of their outputs, residual, x2 pixel shuffle."""

    def __init__(self, nf: int = 8, num_modules: int = 2, upscale: int = 2):
        super().__init__()
        self.fea_conv = default_conv(3, nf, 3)
        self.blocks = nn.ModuleList(IMDModule(nf) for _ in range(num_modules))
        self.c = nn.Sequential(nn.Conv2d(nf * num_modules, nf, 1), nn.LeakyReLU(0.05, inplace=True))
        self.LR_conv = default_conv(nf, nf, 3)
        self.upsampler = nn.Sequential(default_conv(nf, 3 * upscale * upscale, 3), nn.PixelShuffle(upscale))

    def forward(self, x):
        fea = self.fea_conv(x)
        outs, h = [], fea
        for block in self.blocks:
            h = block(h)
            outs.append(h)
        out_b = self.c(torch.cat(outs, dim=1))
        out_lr = self.LR_conv(out_b) + fea
        return self.upsampler(out_lr)


class ShapeBranchNet(nn.Module):
    """Forward branches on the input size.

    Inputs whose width is >= 16 go through ``down`` (stride-2 conv) and ``big`` (output at half
    resolution); narrower inputs go through ``small`` at full resolution. Both paths are residual.
    """

    def __init__(self, ch: int = 8):
        super().__init__()
        self.stem = default_conv(3, ch, 3)
        self.relu = nn.ReLU(inplace=True)
        self.down = nn.Conv2d(ch, ch, 3, stride=2, padding=1)
        self.big = nn.Sequential(default_conv(ch, ch, 3), nn.ReLU(inplace=True), default_conv(ch, ch, 3))
        self.small = nn.Sequential(default_conv(ch, ch, 3), nn.ReLU(inplace=True), default_conv(ch, ch, 3))
        self.head = default_conv(ch, 4, 3)

    def forward(self, x):
        x = self.relu(self.stem(x))
        if x.shape[-1] >= 16:
            x = self.down(x)
            x = x + self.big(x)
        else:
            x = x + self.small(x)
        return self.head(x)


# ----------------------------------------------------------------------------- small extras


class PReLUInstanceNormNet(nn.Module):
    """Residual block with per-channel PReLU and affine InstanceNorm2d."""

    def __init__(self, ch: int = 8):
        super().__init__()
        self.conv_in = default_conv(3, ch, 3)
        self.norm_in = nn.InstanceNorm2d(ch, affine=True)
        self.act_in = nn.PReLU(num_parameters=ch)
        self.body = nn.Sequential(
            default_conv(ch, ch, 3),
            nn.InstanceNorm2d(ch, affine=True),
            nn.PReLU(num_parameters=ch),
            default_conv(ch, ch, 3),
        )
        self.conv_out = default_conv(ch, 3, 3)

    def forward(self, x):
        x = self.act_in(self.norm_in(self.conv_in(x)))
        x = x + self.body(x)
        return self.conv_out(x)


class GroupNormNet(nn.Sequential):
    """conv -> GroupNorm(2 groups) -> ReLU -> conv: channel pruning must refuse it (or respect groups)."""

    def __init__(self, ch: int = 8):
        super().__init__(default_conv(3, ch, 3), nn.GroupNorm(2, ch), nn.ReLU(inplace=True), default_conv(ch, 4, 3))


class GroupedDeconvNet(nn.Module):
    """x2 upsampling with a grouped (groups=2) ConvTranspose2d and a residual refinement."""

    def __init__(self, ch: int = 8, up_ch: int = 12):
        super().__init__()
        self.stem = default_conv(3, ch, 3)
        self.relu = nn.ReLU(inplace=True)
        self.up = nn.ConvTranspose2d(ch, up_ch, kernel_size=4, stride=2, padding=1, groups=2)
        self.bn = nn.BatchNorm2d(up_ch)
        self.refine = nn.Sequential(default_conv(up_ch, up_ch, 3), nn.ReLU(inplace=True))
        self.out = default_conv(up_ch, 3, 3)

    def forward(self, x):
        x = self.relu(self.stem(x))
        x = self.relu(self.bn(self.up(x)))
        x = x + self.refine(x)
        return self.out(x)


class MultiIONet(nn.Module):
    """Two inputs (RGB ``a``, 1-channel ``b``) fused by addition; returns a dict of two outputs."""

    def __init__(self, ch: int = 8):
        super().__init__()
        self.enc_a = nn.Sequential(default_conv(3, ch, 3), nn.ReLU(inplace=True))
        self.enc_b = nn.Sequential(default_conv(1, ch, 3), nn.ReLU(inplace=True))
        self.fuse = nn.Sequential(default_conv(ch, ch, 3), nn.ReLU(inplace=True))
        self.head_image = default_conv(ch, 3, 3)
        self.head_mask = nn.Conv2d(2 * ch, 1, 1)

    def forward(self, a, b):
        fa, fb = self.enc_a(a), self.enc_b(b)
        shared = fa + fb
        shared = shared + self.fuse(shared)
        return {"image": self.head_image(shared) + a, "mask": self.head_mask(torch.cat([shared, fb], 1))}


class ConvNdNet(nn.Module):
    """1-D (dim=1, inputs (N, C, L)) or 3-D (dim=3, inputs (N, C, D, H, W)) residual conv net."""

    def __init__(self, dim: int, in_channels: int, ch: int):
        super().__init__()
        conv, bn = {1: (nn.Conv1d, nn.BatchNorm1d), 3: (nn.Conv3d, nn.BatchNorm3d)}[dim]
        self.stem = nn.Sequential(conv(in_channels, ch, 3, padding=1, bias=False), bn(ch), nn.ReLU(inplace=True))
        self.body = nn.Sequential(conv(ch, ch, 3, padding=1), nn.ReLU(inplace=True), conv(ch, ch, 3, padding=1))
        self.head = conv(ch, 2, 1)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.body(x)
        return self.head(x)


class WeightNormNet(nn.Module):
    """WDSR-like net with parametrized weight_norm on the head conv and one body conv."""

    def __init__(self, ch: int = 8, scale: int = 2):
        super().__init__()
        self.head = weight_norm(default_conv(3, ch, 3))
        self.body = nn.Sequential(
            weight_norm(default_conv(ch, 2 * ch, 3)), nn.ReLU(inplace=True), default_conv(2 * ch, ch, 3)
        )
        self.tail = nn.Sequential(default_conv(ch, 3 * scale * scale, 3), nn.PixelShuffle(scale))

    def forward(self, x):
        x = self.head(x)
        x = x + self.body(x)
        return self.tail(x)


class WSConv2d(nn.Conv2d):
    """Weight-standardized conv with a per-filter gain (normalizer-free ResNets): its own forward."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.rand(self.out_channels, 1, 1, 1) + 0.5)

    def forward(self, x):
        w = self.weight
        mean, var = w.mean(dim=(1, 2, 3), keepdim=True), w.var(dim=(1, 2, 3), keepdim=True)
        w = (w - mean) / torch.sqrt(var + 1e-5) * self.gain
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class WSConvNet(nn.Module):
    """A weight-standardized conv in front of a residual block: it is opaque, the block prunes."""

    def __init__(self, ch: int = 8):
        super().__init__()
        self.stem = default_conv(3, ch, 3)
        self.ws = WSConv2d(ch, ch, 3, padding=1)
        self.body = nn.Sequential(default_conv(ch, 2 * ch, 3), nn.ReLU(inplace=True), default_conv(2 * ch, ch, 3))
        self.head = default_conv(ch, 3, 3)

    def forward(self, x):
        x = torch.relu(self.ws(torch.relu(self.stem(x))))
        x = x + self.body(x)
        return self.head(x)


class LegacyWeightNormNet(nn.Module):
    """WDSR-like, with the legacy weight_norm hooks: per output channel, over everything, and on a
    ConvTranspose whose dim=0 normalizes its input channels."""

    def __init__(self, ch: int = 8):
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.head = legacy_weight_norm(default_conv(3, ch, 3))
            self.body = nn.Sequential(
                legacy_weight_norm(default_conv(ch, 2 * ch, 3)),
                nn.ReLU(inplace=True),
                legacy_weight_norm(default_conv(2 * ch, ch, 3), dim=None),
            )
            self.up = legacy_weight_norm(nn.ConvTranspose2d(ch, ch, 4, stride=2, padding=1))
        self.tail = default_conv(ch, 3, 3)

    def forward(self, x):
        x = self.head(x)
        x = x + self.body(x)
        return self.tail(torch.relu(self.up(x)))


class LegacySpectralNormNet(nn.Module):
    """Legacy spectral_norm hooks on a ConvTranspose (dim=1) and on the second conv of a residual
    block: their output channels can go, the channels they consume stay."""

    def __init__(self, ch: int = 8):
        super().__init__()
        self.up = legacy_spectral_norm(nn.ConvTranspose2d(3, ch, 4, stride=2, padding=1))
        self.mid = default_conv(ch, ch, 3)
        self.body = nn.Sequential(
            default_conv(ch, 2 * ch, 3), nn.ReLU(inplace=True), legacy_spectral_norm(default_conv(2 * ch, ch, 3))
        )
        self.tail = default_conv(ch, 3, 3)

    def forward(self, x):
        x = self.mid(torch.relu(self.up(x)))
        x = x + self.body(x)
        return self.tail(x)


class SpectralNormNet(nn.Sequential):
    """The parametrized spectral_norm on two convs of a plain chain."""

    def __init__(self, ch: int = 8):
        super().__init__(
            spectral_norm(default_conv(3, ch, 3)),
            nn.ReLU(inplace=True),
            spectral_norm(default_conv(ch, ch, 3)),
            nn.ReLU(inplace=True),
            default_conv(ch, 3, 3),
        )


class HookNet(nn.Module):
    """The user's hooks on convs: a pre-hook scales the input, a forward hook applies ReLU and scales,
    another adds 1 (its channels are no longer zero once removed, so they stay)."""

    def __init__(self, ch: int = 8):
        super().__init__()
        self.stem = default_conv(3, ch, 3)
        self.a = default_conv(ch, ch, 3)
        self.b = default_conv(ch, ch, 3)
        self.tail = default_conv(ch, 3, 3)
        self.a.register_forward_pre_hook(lambda m, args: (args[0] * 0.5,))
        self.a.register_forward_hook(lambda m, args, out: torch.relu(out) * 2)
        self.b.register_forward_hook(lambda m, args, out: out + 1)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.a(x)
        return self.tail(torch.relu(self.b(x)))


# ----------------------------------------------------------------------------- layers with a forward of their own


class BatchNormAct2d(nn.BatchNorm2d):
    """timm-style fused norm-act: a BatchNorm2d subclass whose forward calls F.batch_norm, then an activation."""

    def __init__(self, num_features: int, act=nn.ReLU):
        super().__init__(num_features)
        self.drop = nn.Identity()
        self.act = act()

    def forward(self, x):
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        x = F.batch_norm(
            x,
            self.running_mean if not self.training or self.track_running_stats else None,
            self.running_var if not self.training or self.track_running_stats else None,
            self.weight,
            self.bias,
            bn_training,
            0.0 if self.momentum is None else self.momentum,
            self.eps,
        )
        return self.act(self.drop(x))


class NormActNet(nn.Module):
    """Conv + BatchNormAct2d stem, a residual block of conv/BatchNormAct2d pairs, a conv head."""

    def __init__(self, ch: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, ch, 3, padding=1, bias=False), BatchNormAct2d(ch))
        self.block = nn.Sequential(
            nn.Conv2d(ch, 2 * ch, 1, bias=False),
            BatchNormAct2d(2 * ch, act=nn.SiLU),
            nn.Conv2d(2 * ch, 2 * ch, 3, padding=1, groups=2 * ch, bias=False),
            BatchNormAct2d(2 * ch, act=nn.Hardswish),
            nn.Conv2d(2 * ch, ch, 1, bias=False),
            BatchNormAct2d(ch, act=nn.Identity),
        )
        self.head = nn.Conv2d(ch, 4, 3, padding=1)

    def forward(self, x):
        x = self.stem(x)
        return self.head(x + self.block(x))


class FrozenBatchNorm2d(nn.Module):
    """torchvision's FrozenBatchNorm2d: statistics and affine parameters as buffers, ``x * scale + shift``."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.rand(num_features) + 0.5)
        self.register_buffer("bias", torch.rand(num_features) - 0.5)
        self.register_buffer("running_mean", torch.rand(num_features) - 0.5)
        self.register_buffer("running_var", torch.rand(num_features) + 0.5)

    def forward(self, x):
        w = self.weight.reshape(1, -1, 1, 1)
        b = self.bias.reshape(1, -1, 1, 1)
        rv = self.running_var.reshape(1, -1, 1, 1)
        rm = self.running_mean.reshape(1, -1, 1, 1)
        scale = w * (rv + self.eps).rsqrt()
        bias = b - rm * scale
        return x * scale + bias


class FrozenBNResNet(nn.Module):
    """A ResNet stage built with FrozenBatchNorm2d (detection backbones)."""

    def __init__(self, ch: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, ch, 3, padding=1, bias=False)
        self.bn1 = FrozenBatchNorm2d(ch)
        self.a = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn_a = FrozenBatchNorm2d(ch)
        self.b = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn_b = FrozenBatchNorm2d(ch)
        self.fc = nn.Linear(ch, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(x + self.bn_b(self.b(torch.relu(self.bn_a(self.a(x))))))
        return self.fc(x.mean((2, 3)))


class ScaledStdConv2d(nn.Conv2d):
    """timm's ScaledStdConv2d (NF-ResNets): the weight standardized per filter by F.batch_norm, times a gain."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.rand(self.out_channels, 1, 1, 1) + 0.5)
        self.scale = self.weight[0].numel() ** -0.5
        self.eps = 1e-6

    def forward(self, x):
        weight = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1),
            None,
            None,
            weight=(self.gain * self.scale).view(-1),
            training=True,
            momentum=0.0,
            eps=self.eps,
        ).reshape_as(self.weight)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Conv2dSame(nn.Conv2d):
    """timm's Conv2dSame: TensorFlow 'same' padding computed from the input size, then F.conv2d."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        pad_h = max((math.ceil(ih / self.stride[0]) - 1) * self.stride[0] + (kh - 1) * self.dilation[0] + 1 - ih, 0)
        pad_w = max((math.ceil(iw / self.stride[1]) - 1) * self.stride[1] + (kw - 1) * self.dilation[1] + 1 - iw, 0)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups)


class ScaledLinear(nn.Linear):
    """A Linear subclass that scales its rows by a learned per-output gain in its own forward."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.rand(self.out_features) + 0.5)

    def forward(self, x):
        return F.linear(x, self.weight * self.gain.view(-1, 1), self.bias)


class OwnForwardNet(nn.Module):
    """Weight-standardized convs with gains (one the issue's WSConv2d, one timm's F.batch_norm form), a
    depthwise Conv2dSame, a ConvTranspose2d with its own forward and a Linear subclass."""

    def __init__(self, ch: int = 8):
        super().__init__()
        self.stem = default_conv(3, ch, 3)
        self.ws = WSConv2d(ch, ch, 3, padding=1)
        self.mid = default_conv(ch, ch, 3)
        self.std = ScaledStdConv2d(ch, 2 * ch, 1)
        self.dw = Conv2dSame(2 * ch, 2 * ch, 3, stride=2, groups=2 * ch)
        self.pw = Conv2dSame(2 * ch, ch, 1)
        self.up = _ConvTransposeOwn(ch, ch, 2, stride=2)
        self.fc1 = ScaledLinear(ch, 12)
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.mid(torch.relu(self.ws(x))))
        x = torch.relu(self.pw(torch.relu(self.dw(torch.relu(self.std(x))))))
        x = torch.relu(self.up(x))
        return self.fc2(torch.relu(self.fc1(x.mean((2, 3)))))


class _ConvTransposeOwn(nn.ConvTranspose2d):
    def forward(self, x):
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding)


class PerChannelNet(nn.Module):
    """Hand-written per-channel code between convs: a ConvNeXt layer scale on a residual branch, an affine
    with the module's own Parameters, a shift, and a standardization by buffers and by instance statistics."""

    def __init__(self, ch: int = 8):
        super().__init__()
        self.stem = default_conv(3, ch, 3)
        self.pw1 = nn.Conv2d(ch, 2 * ch, 1)
        self.pw2 = nn.Conv2d(2 * ch, ch, 1)
        self.gamma = nn.Parameter(torch.rand(ch) + 0.5)
        self.a = default_conv(ch, ch, 3)
        self.w = nn.Parameter(torch.rand(ch) + 0.5)
        self.b = nn.Parameter(torch.rand(ch) - 0.5)
        self.shift = nn.Parameter(torch.randn(ch))
        self.c = default_conv(ch, ch, 3)
        self.register_buffer("mean", torch.randn(ch))
        self.register_buffer("std", torch.rand(ch) + 0.5)
        self.d = default_conv(ch, ch, 3)
        self.head = default_conv(ch, 3, 3)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.pw2(F.gelu(self.pw1(x))).mul(self.gamma.reshape(1, -1, 1, 1))
        h = self.a(x) * self.w.view(1, -1, 1, 1) + self.b.view(1, -1, 1, 1)
        h = torch.relu(h) + self.shift[:, None, None]
        h = (self.c(h) - self.mean.view(1, -1, 1, 1)) / (self.std.view(1, -1, 1, 1) + 1e-5)
        h = self.d(torch.relu(h))
        h = (h - h.mean((2, 3), keepdim=True)) / (h.std((2, 3), keepdim=True) + 1e-5)
        return self.head(h)


class SizesNet(nn.Module):
    """Channel counts used in the forward code: as sizes (followed), as numbers (their group stays)."""

    def __init__(self, ch: int = 8):
        super().__init__()
        self.stem = default_conv(3, ch, 3)
        self.a = default_conv(ch, ch, 3)
        self.b = default_conv(ch, ch, 3)
        self.c = default_conv(ch, ch, 3)
        self.head = default_conv(ch, 3, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        h = torch.relu(self.a(x))
        b, c, hh, ww = h.shape
        h = h + torch.zeros(b, c, hh, ww) + h.new_zeros(b, c, 1, 1)  # sizes: followed
        h = self.b(h.view(b, c, hh * ww).view(b, -1, hh, ww))
        h = h * h.shape[1] ** -0.5  # a number: b's channels stay
        return self.head(torch.relu(self.c(torch.relu(h))) + x)


class GroupNormAct(nn.GroupNorm):
    """timm-style GroupNormAct: F.group_norm with its own num_groups, then an activation."""

    def forward(self, x):
        return F.silu(F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps))


class GroupNormResNet(nn.Module):
    """GroupNorm in a residual stream and a GroupNormAct in the block: whole norm groups go."""

    def __init__(self, ch: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, ch, 3, padding=1)
        self.gn = nn.GroupNorm(4, ch)
        self.block = nn.Sequential(
            nn.Conv2d(ch, 2 * ch, 3, padding=1), GroupNormAct(4, 2 * ch), nn.Conv2d(2 * ch, ch, 1)
        )
        self.head = nn.Conv2d(ch, 3, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.gn(self.stem(x)))
        return self.head(x + self.block(x))


# ----------------------------------------------------------------------------- registry


def _seeded(factory: Callable[..., nn.Module], *args, **kwargs) -> Callable[[], nn.Module]:
    """Return a builder that seeds the global RNG, constructs the model and randomizes its norms."""

    def build() -> nn.Module:
        torch.manual_seed(0)
        return randomize_norms(factory(*args, **kwargs))

    return build


def _rand(*shape: int) -> Callable[[int], torch.Tensor]:
    """Return ``inputs(seed)`` drawing N(0, 1) data from a private generator."""

    def make(seed: int) -> torch.Tensor:
        return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))

    return make


def _multi_io_inputs(size: int, as_dict: bool) -> Callable[[int], object]:
    def make(seed: int):
        g = torch.Generator().manual_seed(seed)
        a, b = torch.randn(2, 3, size, size, generator=g), torch.randn(2, 1, size, size, generator=g)
        return {"a": a, "b": b} if as_dict else (a, b)

    return make


def groupnorm_model() -> tuple[nn.Module, torch.Tensor]:
    """GroupNorm model (kept out of CASES) and an example input."""
    return _seeded(GroupNormNet)(), _rand(2, 3, 8, 8)(0)


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], nn.Module]  # builds a fresh, seeded model (calls torch.manual_seed inside)
    inputs: Callable[[int], object]  # seed -> tensor, tuple of tensors (positional) or dict (kwargs)
    other_inputs: Callable[[int], object] | None  # a different spatial size, or None for fixed-size models


CASES: list[Case] = [
    Case("edsr_x2", _seeded(EDSR, 2, 8, 2), _rand(2, 3, 8, 8), _rand(2, 3, 10, 12)),
    Case("edsr_x3", _seeded(EDSR, 2, 8, 3, res_scale=0.1), _rand(2, 3, 8, 8), _rand(2, 3, 10, 10)),
    Case("edsr_x4", _seeded(EDSR, 2, 8, 4), _rand(2, 3, 8, 8), _rand(2, 3, 6, 10)),
    Case("edsr_light_x2", _seeded(EDSR, 2, 8, 2, light_tail=True), _rand(2, 3, 8, 8), _rand(2, 3, 12, 12)),
    Case("rcan", _seeded(RCAN), _rand(2, 3, 8, 8), _rand(2, 3, 10, 10)),
    Case("resnet_bottleneck", _seeded(ResNet), _rand(2, 3, 16, 16), _rand(2, 3, 12, 12)),
    Case("mobilenetv2", _seeded(MobileNetV2), _rand(2, 3, 16, 16), _rand(2, 3, 12, 12)),
    Case("densenet", _seeded(DenseNet), _rand(2, 3, 8, 8), _rand(2, 3, 12, 12)),
    Case("unet", _seeded(UNet), _rand(2, 3, 16, 16), _rand(2, 3, 8, 12)),
    Case("imdn", _seeded(IMDN), _rand(2, 3, 8, 8), _rand(2, 3, 10, 10)),
    Case("vgg", _seeded(VGG), _rand(2, 3, 8, 8), None),
    Case("shape_branch", _seeded(ShapeBranchNet), _rand(2, 3, 16, 16), _rand(2, 3, 8, 8)),
    Case("prelu_instancenorm", _seeded(PReLUInstanceNormNet), _rand(2, 3, 8, 8), _rand(2, 3, 10, 10)),
    Case("grouped_deconv", _seeded(GroupedDeconvNet), _rand(2, 3, 8, 8), _rand(2, 3, 6, 6)),
    # multi_io: inputs() gives positional (a, b), other_inputs() gives kwargs {"a": ..., "b": ...}
    Case("multi_io", _seeded(MultiIONet), _multi_io_inputs(8, as_dict=False), _multi_io_inputs(10, as_dict=True)),
    Case("conv1d", _seeded(ConvNdNet, 1, 2, 8), _rand(2, 2, 16), _rand(2, 2, 24)),
    Case("conv3d", _seeded(ConvNdNet, 3, 1, 4), _rand(2, 1, 6, 6, 6), _rand(2, 1, 4, 8, 8)),
    Case("weight_norm", _seeded(WeightNormNet), _rand(2, 3, 8, 8), _rand(2, 3, 10, 10)),
    Case("ws_conv", _seeded(WSConvNet), _rand(2, 3, 8, 8), _rand(2, 3, 10, 12)),
    Case("legacy_weight_norm", _seeded(LegacyWeightNormNet), _rand(2, 3, 8, 8), _rand(2, 3, 10, 6)),
    Case("legacy_spectral_norm", _seeded(LegacySpectralNormNet), _rand(2, 3, 8, 8), _rand(2, 3, 6, 10)),
    Case("spectral_norm", _seeded(SpectralNormNet), _rand(2, 3, 8, 8), _rand(2, 3, 10, 10)),
    Case("hooks", _seeded(HookNet), _rand(2, 3, 8, 8), _rand(2, 3, 12, 10)),
    Case("norm_act", _seeded(NormActNet), _rand(2, 3, 8, 8), _rand(2, 3, 10, 6)),
    Case("frozen_bn", _seeded(FrozenBNResNet), _rand(2, 3, 8, 8), _rand(2, 3, 12, 10)),
    Case("own_forward", _seeded(OwnForwardNet), _rand(2, 3, 9, 9), _rand(2, 3, 12, 14)),
    Case("per_channel", _seeded(PerChannelNet), _rand(2, 3, 8, 8), _rand(2, 3, 10, 12)),
    Case("sizes", _seeded(SizesNet), _rand(2, 3, 8, 8), _rand(2, 3, 6, 10)),
    Case("group_norm", _seeded(GroupNormResNet), _rand(2, 3, 8, 8), _rand(2, 3, 10, 6)),
]
