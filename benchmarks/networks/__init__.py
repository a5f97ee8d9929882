"""The networks the benchmarks build, by name; none is downloaded, every one starts from random weights.

The EDSR-shaped network of every benchmark is the SR example's LEDSR (``examples/sr/ledsr.py``, in
its authors' wrapper, so layers read ``model.head.0``, ``model.body.3.body.2``, ``model.tail.0``):
the benchmarks import the example; the library never does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from examples.sr.ledsr import SRModel

from .classifiers import DenseNetLike, MobileNetV2Like, ResNet50Like
from .digits_mobilenet import DigitsMobileNetV2
from .digits_resnet import DigitsResNet
from .unet import UNet

LEDSR_SKIP = ["*mean*", "*tail*"]
"""What LEDSR keeps whole when pruned: the fixed mean shifts and the upsampling tail."""


def ledsr(blocks: int = 16, feats: int = 64, scale: int = 2) -> nn.Module:
    """LEDSR with ``blocks`` residual blocks of ``feats`` channels, x``scale`` (16x64 x2: EDSR-baseline's size)."""
    return SRModel(n_resblocks=blocks, n_feats=feats, scale=scale)


NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "ledsr": ledsr,
    "resnet50_like": ResNet50Like,
    "mobilenetv2_like": MobileNetV2Like,
    "densenet121_like": DenseNetLike,
    "digits_resnet": DigitsResNet,
    "digits_mobilenet": DigitsMobileNetV2,
    "unet": UNet,
}


def build(name: str, *, seed: int | None = None, **kwargs: object) -> nn.Module:
    """The network ``name`` of :data:`NETWORKS`, built with ``kwargs``, after ``torch.manual_seed(seed)`` if given."""
    if seed is not None:
        torch.manual_seed(seed)
    return NETWORKS[name](**kwargs)
