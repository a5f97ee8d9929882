"""DistributedDataParallel on CPU (gloo): the Pruner comes before the wrap, and ranks stay identical.

Two ranks, each on its half of a global batch, end with the same chosen channels and
bit-identical slimmed weights, and match one process on the whole batch (DDP averages the
gradients, as the mean over the global batch does).
"""

from __future__ import annotations

import datetime
import gc
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from models import EDSR
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import assl

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)

TESTS = str(Path(__file__).resolve().parent)
SKIP = ["*mean*", "*tail*"]
STREAM = ["head.0", "body.0.body.2", "body.1.body.2", "body.2"]  # EDSR's residual stream: one aligned group
WEAK = [1, 3, 4, 6]  # units of the residual stream that start at half strength
# align 6 + regularize 4 increments * 2 + stabilize 4 = 18 steps
SCHEDULE = assl.Schedule(align_iters=6, reg_interval=2, reg_step=0.1, reg_limit=0.3, stabilize_iters=4)
GLOBAL_BATCH = 4
WORLD = 2
TIMEOUT_S = 180.0  # the whole two-process run; it takes a few seconds
ORDER = "create the Pruner on the bare model first, then wrap it"


def _edsr(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return EDSR(n_resblocks=2, n_feats=8, scale=2)


def _x() -> torch.Tensor:
    return torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))


# --- order of wrapping ---------------------------------------------------------------------


def _wrapping_order(rank: int, world: int) -> dict[str, Any]:
    """A Pruner on a DDP-wrapped model, then the right order in the same group: what happened."""
    model = _edsr(0)
    with pytest.raises(TypeError) as refused:
        assl.Pruner(DistributedDataParallel(model), _x(), ratio=0.5, skip=SKIP, schedule=SCHEDULE)
    scaled_after_refusal = any(nn.utils.parametrize.is_parametrized(m) for m in model.modules())

    # the right order: Pruner, wrap, optimizer over the wrapped parameters
    pruner = assl.Pruner(model, _x(), ratio=0.5, skip=SKIP, schedule=SCHEDULE)
    wrapped = DistributedDataParallel(model)
    opt = torch.optim.Adam(wrapped.parameters(), lr=1e-2)
    pruner.attach(opt)
    wrapped(_x()).abs().mean().backward()
    opt.step()
    return {"error": str(refused.value), "scaled_after_refusal": scaled_after_refusal, "steps": pruner.step_count}


def test_pruner_on_a_ddp_wrapped_model_names_the_right_order(tmp_path):
    # in a child process with a deadline: a gloo group torn down in the test process itself once
    # hung in its destructor, which would stall the whole suite
    (result,) = _spawn(tmp_path, _wrapping_order, world=1)
    assert f"already wrapped in DistributedDataParallel: {ORDER}" in result["error"]
    assert not result["scaled_after_refusal"]
    assert result["steps"] == 1  # attached to the optimizer of the wrapped model, the Pruner counts its step


def test_pruner_on_a_data_parallel_model_names_the_right_order():
    model = _edsr(0)
    with pytest.raises(TypeError, match=f"already wrapped in DataParallel: {ORDER}"):
        assl.Pruner(nn.DataParallel(model), _x(), ratio=0.5, schedule=SCHEDULE)
    assert not any(nn.utils.parametrize.is_parametrized(m) for m in model.modules())


# --- two ranks -----------------------------------------------------------------------------


def _train(rank: int, world: int) -> dict[str, Any]:
    """The whole schedule on this rank's share of each global batch; ``world == 1``: no DDP."""
    teacher = _edsr(100)
    model = _edsr(0)
    with torch.no_grad():  # clear scores: the aligned group's choice must not hang on reduction order
        for name in STREAM:
            for i in WEAK:
                model.get_submodule(name).weight[i].mul_(0.5)
    pruner = assl.Pruner(model, _x(), ratio=0.5, skip=SKIP, schedule=SCHEDULE)  # before the wrap
    net = DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    pruner.attach(opt)
    share = GLOBAL_BATCH // world
    step = 0
    while not pruner.done:
        batch = torch.randn(GLOBAL_BATCH, 3, 8, 8, generator=torch.Generator().manual_seed(1000 + step))
        x = batch[rank * share : (rank + 1) * share]
        with torch.no_grad():
            y = teacher(x)
        loss = (net(x) - y).abs().mean() + pruner.alignment_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
    small = pruner.slim()
    return {
        "steps": step,
        "chosen": pruner.chosen(),
        "state": {k: v.detach().clone() for k, v in small.state_dict().items()},
    }


def _worker(rank: int, world: int, init_method: str, out_dir: str, job: Any) -> None:
    """``job(rank, world)`` inside a gloo group of ``world`` processes; its result goes to ``rank{rank}.pt``."""
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=init_method, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60)
    )
    try:
        result = job(rank, world)
    finally:
        gc.collect()  # DDP holds the group (maybe from a reference cycle): free it before the group goes
        dist.destroy_process_group()
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")


def _spawn(tmp_path: Path, job: Any, world: int = WORLD) -> list[dict[str, Any]]:
    """Run ``job`` in ``world`` fresh processes (see ``_worker``) with a deadline; their results by rank."""
    # a file rendezvous: no TCP port to collide with another run
    init_method = (tmp_path / "rendezvous").as_uri()
    ctx = mp.start_processes(
        _worker, args=(world, init_method, str(tmp_path), job), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=0.1):  # raises, naming the rank, if a worker failed
            if time.monotonic() > deadline:
                pytest.fail(f"the {world} DDP worker(s) did not finish within {TIMEOUT_S:.0f} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
                p.join(5)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]


def test_two_ranks_agree_with_each_other_and_with_one_process(tmp_path):
    ranks = _spawn(tmp_path, _train)
    single = _train(0, 1)
    assert single["steps"] == ranks[0]["steps"] == ranks[1]["steps"] == SCHEDULE.bounds(True)[2] == 18
    assert single["chosen"]["head.0"] == WEAK
    assert ranks[0]["chosen"] == ranks[1]["chosen"] == single["chosen"]
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert a.keys() == b.keys() == single["state"].keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # the ranks saw different data: only the all-reduce keeps them equal
    assert a["head.0.weight"].shape == (4, 3, 3, 3) and a["body.0.body.0.weight"].shape == (4, 4, 3, 3)
    for k in a:
        # one process sums in another order; Adam carries those last bits along (4e-5 on a bias
        # on an AVX-512 CPU); the ranks' agreement with each other above is exact
        torch.testing.assert_close(a[k], single["state"][k], rtol=1e-3, atol=2e-4, msg=lambda m, k=k: f"{k}: {m}")
