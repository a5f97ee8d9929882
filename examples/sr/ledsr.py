"""LEDSR: EDSR with a light tail, named like the authors' models so their patterns apply.

``SRModel`` wraps the network as ``self.model`` like the authors' ``Model`` class, so module
names read ``model.head.0``, ``model.body.3.body.2``, ``model.body.16``, ``model.tail.0``,
``model.sub_mean``: the authors' ``--skip_layers`` and ``--same_pruned_wg_layers`` work unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

RGB_MEAN = (0.4488, 0.4371, 0.4040)


class MeanShift(nn.Conv2d):
    """A fixed 1x1 conv that subtracts (``sign=-1``) or adds back the dataset's RGB mean."""

    def __init__(self, rgb_range: float, sign: int) -> None:
        super().__init__(3, 3, kernel_size=1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(RGB_MEAN))
        for p in self.parameters():
            p.requires_grad = False


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class ResBlock(nn.Module):
    def __init__(self, feats: int, res_scale: float) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(feats, feats), nn.ReLU(inplace=True), _conv(feats, feats))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.body(x).mul(self.res_scale)
        res += x
        return res


class LEDSR(nn.Module):
    """Head conv, residual blocks, body-end conv, global skip, then one conv + PixelShuffle."""

    def __init__(
        self,
        n_resblocks: int = 16,
        n_feats: int = 256,
        scale: int = 2,
        rgb_range: float = 255.0,
        res_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.sub_mean = MeanShift(rgb_range, -1)
        self.head = nn.Sequential(_conv(3, n_feats))
        self.body = nn.Sequential(*[ResBlock(n_feats, res_scale) for _ in range(n_resblocks)], _conv(n_feats, n_feats))
        self.tail = nn.Sequential(_conv(n_feats, 3 * scale * scale), nn.PixelShuffle(scale))
        self.add_mean = MeanShift(rgb_range, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.sub_mean(x))
        res = self.body(x)
        res += x
        return self.add_mean(self.tail(res))


class SRModel(nn.Module):
    """The authors' wrapper: the network lives at ``self.model``."""

    def __init__(self, **kwargs: float) -> None:
        super().__init__()
        self.model = LEDSR(**kwargs)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def load_pretrained(model: SRModel, state: Mapping[str, torch.Tensor]) -> None:
    """Load a dense LEDSR checkpoint keyed ``head.0.weight`` ... with or without ``model.``.

    Raises:
        ValueError: Keys or shapes do not fit (names a few, and the flags to check).
    """
    inner = {k[len("model.") :] if k.startswith("model.") else k: v for k, v in state.items()}
    own = model.model.state_dict()
    missing = sorted(set(own) - set(inner))
    unexpected = sorted(set(inner) - set(own))
    shapes = [k for k in own if k in inner and tuple(inner[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:4]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:4]}")
        if shapes:
            k = shapes[0]
            parts.append(f"{k} is {tuple(inner[k].shape)} in the file, {tuple(own[k].shape)} in the model")
        raise ValueError(
            "the checkpoint does not fit this LEDSR ("
            + "; ".join(parts)
            + "): check --n_resblocks, --n_feats and --scale"
        )
    model.model.load_state_dict(inner)
