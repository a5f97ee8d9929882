"""The ASSLPruning callback in a real Lightning Trainer (CPU): it does what the plain loop does.

A Lightning fit with the callback and the README's loop written by hand end bit-identical: the same
chosen channels, the same slimmed network at slimming and after fine-tuning, with gradient
accumulation, bfloat16 autocast and a GradScaler that skips steps. Checkpoints resume
bit-identically before and after slimming, and two DDP processes end with the same network.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

from lightning.pytorch.plugins.precision import MixedPrecision  # noqa: E402
from lightning_net import (  # noqa: E402
    LR,
    DistilledLitNet,
    LitNet,
    Net,
    example,
    loader,
    net,
    plain_loop,
    trainer,
)
from util import checkout_env  # noqa: E402

import assl  # noqa: E402
from assl._slim import max_rel_err  # noqa: E402
from assl.integrations.lightning import ASSLPruning, load_slimmed, shrink_to_checkpoint  # noqa: E402
from assl.pruning.schedule import PHASES  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers:UserWarning",
    "ignore:.*number of training batches.*:UserWarning",
    "ignore:You defined a `validation_step` but have no `val_dataloader`",
    "ignore:Be aware that when using `ckpt_path`, callbacks used to create the checkpoint",
)

SCHEDULE = assl.Schedule.for_steps(24)  # align 3, regularize 15, stabilize 6
STEPS = 30  # 24 of pruning, 6 of fine-tuning
DENSE = sum(p.numel() for p in Net().parameters())


class Recorder(pl.Callback):
    """Before ASSLPruning in the callback list: the Pruner's step count against the Trainer's at the
    end of every batch until slimming, the masked reference when the schedule is done, and the
    network as slimmed (at the next batch's start, before any update)."""

    def __init__(self, pruning: ASSLPruning) -> None:
        self.pruning = pruning
        self.counts: list[tuple[int, int]] = []
        self.masked: torch.nn.Module | None = None
        self.at_slim: torch.nn.Module | None = None
        self.optimized: set[int] = set()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        pruner = self.pruning.pruner
        if not self.pruning.slimmed:
            self.counts.append((pruner.step_count, trainer.global_step))
            if pruner.done:
                self.masked = assl.masked_copy(pruner.model, pruner.graph, pruner.chosen())

    def on_train_batch_start(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        if self.pruning.slimmed and self.at_slim is None:
            self.at_slim = copy.deepcopy(pl_module.net)
            self.optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}


def _equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    ("accumulate", "precision"),
    [(1, "32-true"), (2, "32-true"), (1, "bf16-mixed")],
    ids=["fp32", "accumulate2", "bf16"],
)
def test_fit_prunes_slims_and_finetunes_as_the_plain_loop_does(accumulate, precision):
    lit = LitNet()
    pruning = ASSLPruning(example(), ratio=0.5, schedule=SCHEDULE, module="net", liveness_every_n_steps=10)
    seen = Recorder(pruning)
    fit = trainer(STEPS, callbacks=[seen, pruning], accumulate_grad_batches=accumulate, precision=precision)
    fit.fit(lit, loader())
    ref = plain_loop(STEPS, SCHEDULE, accumulate=accumulate, bf16=precision == "bf16-mixed")

    pruner = pruning.pruner
    assert pruning.slimmed and pruner.done and pruner.step_count == SCHEDULE.total_steps == 24
    assert fit.global_step == STEPS
    # one Pruner step per optimizer step, whatever the number of batches behind it
    assert len(seen.counts) == 24 * accumulate and all(mine == steps for mine, steps in seen.counts)
    assert pruner.chosen() == ref["pruner"].chosen()
    assert _equal(seen.at_slim, ref["at_slim"])  # bit-identical at slimming ...
    assert _equal(lit.net, ref["final"])  # ... and after fine-tuning
    # the slimmed network is smaller and computes what the dense one does with the chosen channels zeroed
    assert sum(p.numel() for p in lit.net.parameters()) < DENSE / 2
    x = torch.randn(3, 3, 12, 10)
    assert max_rel_err(seen.masked, seen.at_slim, x) < 1e-5
    # the fine-tuning optimizer holds the slimmed parameters, and they trained
    assert seen.optimized == {id(p) for p in lit.parameters()}
    assert not _equal(lit.net, seen.at_slim)
    logged = fit.callback_metrics
    assert {"assl/phase", "assl/penalty", "assl/steps_left", "assl/alive", "assl/params"} <= logged.keys()
    assert logged["assl/phase"] == 3 and logged["assl/params"] == sum(p.numel() for p in lit.net.parameters())
    assert {"assl/penalty", "assl/alive"} <= fit.progress_bar_metrics.keys()  # the phase: as a word, below


def test_the_scale_rate_floor_acts_in_a_fit_as_in_the_plain_loop():
    """Lightning steps the Pruner by hand inside the optimizer's closure: the floor's global hook
    scales the update there as the attached optimizer's hook does in the plain loop."""
    import dataclasses

    floored = dataclasses.replace(SCHEDULE, min_scale_lr=5e-2)  # above the test's Adam rate: it acts
    fits = {}
    for schedule in (floored, dataclasses.replace(SCHEDULE, min_scale_lr=None)):
        lit = LitNet()
        pruning = ASSLPruning(example(), ratio=0.5, schedule=schedule, module="net")
        seen = Recorder(pruning)
        trainer(STEPS, callbacks=[seen, pruning]).fit(lit, loader())
        fits[schedule.min_scale_lr] = seen.at_slim
    assert _equal(fits[5e-2], plain_loop(STEPS, floored)["at_slim"])
    assert not _equal(fits[5e-2], fits[None])  # the floor changed the run


def test_16_mixed_grad_scaler_skips_steps_as_in_the_plain_loop():
    """Under a GradScaler Lightning steps through scaler.step; steps it skips for inf gradients
    (a large initial scale overflows float16 at first) are not counted, as in the plain loop."""
    init = 2.0**20
    lit = LitNet()
    pruning = ASSLPruning(example(), ratio=0.5, schedule=SCHEDULE, module="net")
    scaler = torch.amp.GradScaler("cpu", init_scale=init)
    fit = trainer(STEPS + 6, callbacks=[pruning], plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    fit.fit(lit, loader())

    model = net(0)
    pruner = assl.Pruner(model, example(), ratio=0.5, schedule=SCHEDULE)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    pruner.attach(opt)
    ref_scaler = torch.amp.GradScaler("cpu", init_scale=init)
    step = 0
    while step < STEPS + 6:
        for x, y in loader():
            with torch.autocast("cpu", dtype=torch.float16):
                loss = torch.nn.functional.mse_loss(model(x), y) + pruner.alignment_loss()
            ref_scaler.scale(loss).backward()
            ref_scaler.unscale_(opt)
            ref_scaler.step(opt)
            ref_scaler.update()
            opt.zero_grad()
            step += 1
            if pruner.done and model is pruner.model:
                model = pruner.slim()
                opt = torch.optim.Adam(model.parameters(), lr=LR)
            if step == STEPS + 6:
                break

    skipped = round(math.log2(init / scaler.get_scale()))
    assert skipped > 0 and scaler.get_scale() == ref_scaler.get_scale()
    assert pruning.slimmed and pruning.pruner.step_count == pruner.step_count == 24
    assert pruning.pruner.chosen() == pruner.chosen()
    assert _equal(lit.net, model)


@pytest.fixture(scope="module", params=["net", None], ids=["submodule", "whole_module"])
def uninterrupted(request, tmp_path_factory):
    """A fit with a checkpoint every 4 optimizer steps, at the last batch of each epoch (Lightning
    resumes exactly from a checkpoint taken at the end of a batch; with a plain DataLoader, only
    from one at the end of an epoch). The callback prunes ``lit.net``, or ``lit`` itself."""
    folder = tmp_path_factory.mktemp("checkpoints")
    lit = LitNet()
    pruning = ASSLPruning(example(), ratio=0.5, schedule=SCHEDULE, module=request.param)
    every = pl.callbacks.ModelCheckpoint(folder, filename="{step}", save_top_k=-1, every_n_train_steps=4)
    trainer(STEPS, callbacks=[pruning, every], enable_checkpointing=True).fit(lit, loader())
    return folder, lit, pruning.pruner.chosen(), request.param


@pytest.mark.parametrize(("step", "phase"), [(8, "regularize"), (28, "done")], ids=["mid_regularize", "after_slimming"])
def test_resume_from_a_checkpoint_is_bit_identical(uninterrupted, step, phase):
    folder, ref, chosen, module = uninterrupted
    path = folder / f"step={step}.ckpt"
    saved = torch.load(path, map_location="cpu", weights_only=False)["callbacks"]["ASSLPruning"]
    assert saved["pruner"]["step"] == min(step, 24) and SCHEDULE.phase(saved["pruner"]["step"], True) == phase
    assert saved["slimmed"] == (phase == "done")

    lit = LitNet(seed=7)  # other weights: everything comes from the checkpoint
    pruning = ASSLPruning(example(), ratio=0.5, schedule=SCHEDULE, module=module)
    fit = trainer(STEPS, callbacks=[pruning])
    fit.fit(lit, loader(), ckpt_path=path)
    assert fit.global_step == STEPS and pruning.slimmed
    assert _equal(lit.net, ref.net)
    if phase == "done":  # the slimmed network was rebuilt from the checkpoint; the Pruner's work was done
        assert pruning.pruner is None
    else:
        assert pruning.pruner.chosen() == chosen


def test_a_slimmed_checkpoint_loads_outside_the_trainer_and_through_assl_load(uninterrupted, tmp_path):
    folder, ref, _, module = uninterrupted
    lit = load_slimmed(LitNet(seed=9), folder / "step=28.ckpt")
    saved = torch.load(folder / "step=28.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert lit.state_dict().keys() == saved.keys() and all(torch.equal(lit.state_dict()[k], saved[k]) for k in saved)
    with pytest.raises(ValueError, match="not taken after ASSLPruning slimmed"):
        load_slimmed(LitNet(), folder / "step=8.ckpt")
    # validating a slimmed checkpoint with the callback: the network is shrunk before the weights load
    fresh = LitNet(seed=3)
    pruning = ASSLPruning(example(), ratio=0.5, schedule=SCHEDULE, module=module)
    trainer(1, callbacks=[pruning]).validate(fresh, loader(), ckpt_path=folder / "step=28.ckpt", verbose=False)
    assert pruning.slimmed and _equal(fresh, lit)

    assl.save(ref.net, tmp_path / "small.pt")
    small = assl.load(Net(), tmp_path / "small.pt")
    assert _equal(small, ref.net)


class SelfLoading(LitNet):
    """A LightningModule whose own checkpoint hook shrinks the network to a slimmed checkpoint."""

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        shrink_to_checkpoint(self, checkpoint)


def test_lightnings_own_loader_loads_a_slimmed_checkpoint_through_the_modules_hook(uninterrupted):
    folder, _, _, module = uninterrupted
    path = folder / "step=28.ckpt"
    lit = SelfLoading.load_from_checkpoint(path, seed=9)  # builds the dense network, then the hook shrinks it
    assert _equal(lit, load_slimmed(LitNet(seed=9), path))
    with pytest.raises(RuntimeError, match="size mismatch"):  # without the hook: Lightning's own error
        LitNet.load_from_checkpoint(path)
    # the hook and the callback together: the network is shrunk once, the weights load
    fresh = SelfLoading(seed=3)
    pruning = ASSLPruning(example(), ratio=0.5, schedule=SCHEDULE, module=module)
    trainer(1, callbacks=[pruning]).validate(fresh, loader(), ckpt_path=path, verbose=False)
    assert pruning.slimmed and _equal(fresh, lit)
    assert not shrink_to_checkpoint(LitNet(), torch.load(folder / "step=8.ckpt", weights_only=False))  # not slimmed


class BarProbe(pl.Callback):
    """After ASSLPruning in the callback list: what the progress bar shows at the end of each batch."""

    def __init__(self) -> None:
        self.shown: list[Any] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        self.shown.append(trainer.progress_bar_callback.get_metrics(trainer, pl_module).get("assl/phase"))


def test_the_progress_bar_shows_the_phase_as_a_word():
    pruning, probe = ASSLPruning(example(), ratio=0.5, schedule=SCHEDULE, module="net"), BarProbe()
    bar = pl.callbacks.TQDMProgressBar(refresh_rate=1000)
    fit = trainer(STEPS, callbacks=[pruning, probe, bar], enable_progress_bar=True)
    fit.fit(LitNet(), loader())
    assert probe.shown[0] == "align" and probe.shown[-1] == "slimmed"
    assert {"align", "regularize", "stabilize", "slimmed"} <= set(probe.shown) <= {*PHASES, "slimmed"}
    assert "get_metrics" not in vars(bar)  # given back after fit
    assert "assl/phase" in fit.logged_metrics and "assl/phase" not in fit.progress_bar_metrics  # loggers: a number


def test_the_whole_lightning_module_pruned_in_place_then_stop():
    lit = LitNet()
    lit.first = lit.net[2]  # an alias: it must stay one
    pruning = ASSLPruning(example(), ratio=0.5, schedule=SCHEDULE, on_done="stop")  # module=None: lit itself
    seen = Recorder(pruning)
    net = lit.net
    fit = trainer(100, callbacks=[seen, pruning])
    fit.fit(lit, loader())
    assert fit.global_step == 24 and pruning.slimmed  # stopped right after slimming
    assert lit.net is net and lit.first is lit.net[2]  # the same containers, with slimmed layers in them
    assert lit.net[0].out_channels < 8 and lit.net[1].num_features == lit.net[0].out_channels
    assert max_rel_err(seen.masked.net, lit.net, torch.randn(3, 3, 12, 10)) < 1e-5
    assert {id(p) for g in fit.optimizers[0].param_groups for p in g["params"]} == {id(p) for p in lit.parameters()}
    assert "training_step" not in lit.__dict__ and "on_load_checkpoint" not in lit.__dict__  # given back


def test_a_teacher_in_the_lightning_module_distils_as_in_the_plain_loop():
    lit = DistilledLitNet(weight=0.5)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        dense_out = net(0).eval()(x)
    pruning = ASSLPruning(example(), ratio=0.5, schedule=SCHEDULE, module="net")
    fit = trainer(STEPS, callbacks=[pruning])
    fit.fit(lit, loader())
    ref = plain_loop(STEPS, SCHEDULE, distill=0.5)
    assert pruning.slimmed and _equal(lit.net, ref["final"])  # the term acted, through slimming, as by hand
    assert not _equal(lit.net, plain_loop(STEPS, SCHEDULE)["final"])
    assert torch.equal(lit.teacher(x), dense_out)  # the teacher is still the dense network
    assert not any(k.startswith("teacher") for k in lit.state_dict())  # and not in the checkpoint


class EagerOptimizer(LitNet):
    """Builds its optimizer in __init__, before the callback inserted the scales."""

    def __init__(self) -> None:
        super().__init__()
        self.opt = torch.optim.Adam(self.parameters(), lr=LR)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.opt


def test_clear_errors():
    with pytest.raises(ValueError, match="no optimizer from configure_optimizers updates the scales"):
        trainer(5, callbacks=[ASSLPruning(example(), ratio=0.5, module="net")]).fit(EagerOptimizer(), loader())
    with pytest.raises(ValueError, match=r"has no such submodule \(its children: \['net'\]\)"):
        trainer(5, callbacks=[ASSLPruning(example(), ratio=0.5, module="model")]).fit(LitNet(), loader())
    with pytest.raises(ValueError, match="on_done must be one of"):
        ASSLPruning(example(), ratio=0.5, on_done="slim")


def test_two_ddp_processes_end_with_the_same_slimmed_network(tmp_path):
    """strategy="ddp" on 2 CPU processes (gloo), each on its own share of the data: only DDP's
    averaging keeps them equal. The parameters match bit for bit; BatchNorm's running statistics
    are each rank's own under DDP, so only their sizes are compared."""
    script = Path(__file__).with_name("lightning_net.py")
    env = checkout_env(OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert a["rank"] == 0 and b["rank"] == 1
    assert a["global_step"] == b["global_step"] == 28 and a["pruner_steps"] == b["pruner_steps"] == 24
    assert a["chosen"] == b["chosen"]
    assert a["params"].keys() == b["params"].keys()
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), k
    assert {k: v.shape for k, v in a["buffers"].items()} == {k: v.shape for k, v in b["buffers"].items()}
    assert sum(v.numel() for v in a["params"].values()) < DENSE / 2
    assert a["optimizer_holds_net"] and a["ddp_holds_net"] and b["optimizer_holds_net"] and b["ddp_holds_net"]
