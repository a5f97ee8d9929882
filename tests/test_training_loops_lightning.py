"""The ASSLPruning callback's refusals and retries change nothing (CPU Trainer).

A fit refused before the first pruning step leaves the LightningModule as it was, so a corrected
retry works, with the same callback or a new one; ``validate`` with the callback inserts nothing;
``steps=n`` slims after exactly n optimizer steps. The rules are in docs/pruner.md ("What the
Pruner refuses, leaves unchanged and warns about").
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

from lightning_net import LR, LitNet, example, loader, trainer  # noqa: E402
from util import assert_same, snapshot  # noqa: E402

import assl  # noqa: E402
from assl.integrations.lightning import ASSLPruning  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers:UserWarning",
    "ignore:.*number of training batches.*:UserWarning",
    "ignore:You defined a `validation_step` but have no `val_dataloader`",
)


class EarlyOptimizer(LitNet):
    """Builds its optimizer in ``__init__``, before the callback inserts the scales."""

    def __init__(self) -> None:
        super().__init__()
        self.early = torch.optim.Adam(self.parameters(), lr=LR)

    def configure_optimizers(self) -> Any:
        return self.early


def _no_scales(module: torch.nn.Module) -> bool:
    return not any(hasattr(m, "parametrizations") for m in module.modules())


@pytest.mark.parametrize("same_callback", [True, False], ids=["same_callback", "new_callback"])
def test_a_refused_fit_leaves_the_module_as_it_was_and_the_corrected_retry_works(same_callback):
    lit = EarlyOptimizer()
    before = snapshot(lit)
    pruning = ASSLPruning(example(), ratio=0.5, steps=12, module="net")
    with pytest.raises(assl.ArgumentError, match="configure_optimizers"):
        trainer(12, callbacks=[pruning]).fit(lit, loader())
    assert _no_scales(lit) and pruning.pruner is None
    assert_same(before, snapshot(lit))  # bit-identical: no scale, no step, no changed method
    assert "training_step" not in lit.__dict__
    LitNet().load_state_dict(lit.state_dict())  # still the plain network's state dict

    lit.configure_optimizers = lambda: torch.optim.Adam(lit.parameters(), lr=LR)  # the fix
    retry = pruning if same_callback else ASSLPruning(example(), ratio=0.5, steps=12, module="net")
    trainer(12, callbacks=[retry]).fit(lit, loader())
    assert retry.slimmed and retry.pruner is not None and retry.pruner.step_count == 12


def test_validate_with_the_callback_inserts_nothing():
    lit = LitNet()
    before = snapshot(lit)
    pruning = ASSLPruning(example(), ratio=0.5, steps=12, module="net")
    trainer(12, callbacks=[pruning]).validate(lit, loader(), verbose=False)
    assert pruning.pruner is None and _no_scales(lit)
    assert_same(before, snapshot(lit))
    LitNet().load_state_dict(lit.state_dict())
    # and the same callback prunes a fit afterwards
    trainer(12, callbacks=[pruning]).fit(lit, loader())
    assert pruning.slimmed and pruning.pruner.step_count == 12


def test_steps_take_the_schedules_options_but_not_its_phase_lengths():
    with pytest.raises(assl.ArgumentError, match="not both"):
        ASSLPruning(example(), ratio=0.5, steps=12, schedule=assl.Schedule.for_steps(12))
    with pytest.raises(assl.ArgumentTypeError, match=r"schedule must be an assl\.Schedule"):
        ASSLPruning(example(), ratio=0.5, schedule={"guard_kept": False})
    lit = LitNet()
    pruning = ASSLPruning(example(), ratio=0.5, steps=12, module="net", schedule=assl.Schedule(guard_kept=False))
    trainer(12, callbacks=[pruning]).fit(lit, loader())
    assert pruning.slimmed and pruning.pruner.step_count == 12 and not pruning.pruner.schedule.guard_kept
    with pytest.raises(assl.ArgumentError, match="n >= 10"):
        ASSLPruning(example(), ratio=0.5, steps=3)
