"""What the Lightning tests share: a tiny BatchNorm residual net, its LightningModule, data and the
plain loop the callback must reproduce; run as a script, one rank of the two-process DDP test.

``python tests/lightning_net.py OUT_DIR`` fits with ``strategy="ddp"`` on 2 CPU processes (gloo);
Lightning starts the second rank by running this script again. Each rank saves what it ends with
to ``OUT_DIR/rank{rank}.pt``.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import assl
from assl.integrations.lightning import ASSLPruning

LR = 1e-2
BATCH = 4
SAMPLES = 16  # 4 batches per epoch


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity; without ``bn1``, conv-ReLU-conv-BN."""

    def __init__(self, f: int, bn1: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(f, f, 3, padding=1, bias=not bn1)
        self.bn1 = nn.BatchNorm2d(f) if bn1 else nn.Identity()
        self.conv2 = nn.Conv2d(f, f, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


class Net(nn.Sequential):
    """Stem conv-BN, two residual blocks, an output conv. The stream (the stem's BN and each
    block's second BN) is one aligned group; the first block's inner channels are carried by its
    BN, the second's by a scale the Pruner inserts on its first conv."""

    def __init__(self, f: int = 8) -> None:
        stem = nn.Conv2d(3, f, 3, padding=1, bias=False)
        super().__init__(stem, nn.BatchNorm2d(f), Block(f), Block(f, bn1=False), nn.Conv2d(f, 3, 3, padding=1))


def net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net()


def example() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def loader(samples: int = SAMPLES) -> DataLoader:
    """Fixed inputs and a teacher's outputs, in a fixed order."""
    x = torch.randn(samples, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(100).eval()(x)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH)


class LitNet(pl.LightningModule):
    """The network as ``self.net``; Adam over ``self.parameters()`` in ``configure_optimizers``."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.net = net(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=LR)


def trainer(max_steps: int, **kw: Any) -> pl.Trainer:
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return pl.Trainer(max_steps=max_steps, **{**options, **kw})


class DistilledLitNet(LitNet):
    """:class:`LitNet` with a teacher term: the dense network's frozen copy, taken in ``__init__``
    (before the callback inserts the scales), pulls the network's output towards its own."""

    def __init__(self, seed: int = 0, weight: float = 0.5) -> None:
        super().__init__(seed)
        self.teacher = assl.Teacher(self.net)
        self.weight = weight

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self.net(x)
        return F.mse_loss(out, y) + self.teacher.loss(out, x, weight=self.weight)


def plain_loop(
    steps: int, schedule: assl.Schedule, accumulate: int = 1, bf16: bool = False, distill: float = 0.0
) -> dict[str, Any]:
    """The README's loop, with Lightning's order of operations: what the callback must reproduce.

    With ``distill``, the teacher term of :class:`DistilledLitNet` joins the loss."""
    model = net(0)
    teacher = assl.Teacher(model) if distill else None
    pruner = assl.Pruner(model, example(), ratio=0.5, schedule=schedule)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    pruner.attach(opt)
    step, micro, at_slim = 0, 0, None
    while step < steps:
        for x, y in loader():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(x)
                loss = F.mse_loss(out, y) + (pruner.alignment_loss() if at_slim is None else 0)
                if teacher is not None:
                    loss = loss + teacher.loss(out, x, weight=distill)
            (loss / accumulate).backward()
            micro += 1
            if micro % accumulate:
                continue
            opt.step()
            opt.zero_grad()
            step += 1
            if at_slim is None and pruner.done:
                model = pruner.slim()
                at_slim = copy.deepcopy(model)
                opt = torch.optim.Adam(model.parameters(), lr=LR)
            if step == steps:
                break
    return {"pruner": pruner, "at_slim": at_slim, "final": model}


def ddp_main(out: Path) -> None:
    """One rank of the two-process fit: each sees its half of every batch."""
    torch.set_num_threads(1)
    schedule = assl.Schedule.for_steps(24)
    lit = LitNet()
    callback = ASSLPruning(example(), ratio=0.5, schedule=schedule, module="net")
    fit = trainer(28, devices=2, strategy="ddp", callbacks=[callback])
    fit.fit(lit, loader(2 * SAMPLES))
    pruner = callback.pruner
    assert pruner is not None
    result = {
        "rank": fit.global_rank,
        "global_step": fit.global_step,
        "pruner_steps": pruner.step_count,
        "chosen": pruner.chosen(),
        "params": {k: v.detach().clone() for k, v in lit.net.named_parameters()},
        "buffers": {k: v.detach().clone() for k, v in lit.net.named_buffers()},
        "optimizer_holds_net": {id(p) for g in fit.optimizers[0].param_groups for p in g["params"]}
        == {id(p) for p in lit.parameters()},
        "ddp_holds_net": {id(p) for p in fit.strategy.model.parameters()} == {id(p) for p in lit.parameters()},
    }
    torch.save(result, out / f"rank{fit.global_rank}.pt")


if __name__ == "__main__":
    ddp_main(Path(sys.argv[1]))
