"""The SR example end to end on a tiny LEDSR: outputs, the L1 baseline, crash and resume."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "sr"))

import main as sr_main
from ledsr import SRModel
from util import checkout_env

import assl

TINY = (
    "--quick --n_resblocks 1 --n_feats 4 --patch_size 16 --batch_size 2 --max_side 48 --dense_iters 4 "
    "--prune_steps 12 --finetune_iters 3 --eval_every 2 --checkpoint_every 2 --print_every 2"
).split()
# the authors' schedule flags, shortened, with the paper's penalty
PAPER_FORM = (
    "--align_iters 2 --update_reg_interval 1 --reg_granularity_prune 0.25 --reg_upper_limit 0.5 "
    "--stabilize_reg_interval 2 --penalty_form gradient"
).split()


def _run(tmp_path: Path, *extra: str, base: list[str] = TINY) -> dict:
    return sr_main.run([*base, "--save", str(tmp_path / "run"), *extra])


def test_pipeline_writes_every_output(tmp_path, capsys):
    results = _run(tmp_path, "--save_results")
    out = tmp_path / "run"
    for name in ["log.txt", "config.json", "results.json", "plan.json", "slim.pt", "metrics-test.csv", "curves.png"]:
        assert (out / name).is_file(), name
    assert len(list((out / "results-test").glob("*.png"))) == 2
    rows = (out / "metrics-test.csv").read_text().splitlines()
    assert rows[0] == "image,psnr,ssim" and len(rows) == 3
    assert results["pruned_params"] < results["dense_params"] and results["pruned_gmacs"] < results["dense_gmacs"]
    assert 10 < results["pruned_psnr"] < 60 and 0 < results["pruned_ssim"] <= 1
    plan = json.loads((out / "plan.json").read_text())
    assert plan["removed"]["model.head.0"] == 2  # half of 4 features
    small = assl.load(SRModel(n_resblocks=1, n_feats=4, scale=2), out / "slim.pt")
    assert small.model.head[0].out_channels == 2
    table = capsys.readouterr().out
    assert "pruned PSNR / SSIM" in table and "GMACs (1280x720 out)" in table


def test_the_default_penalty_silences_the_chosen_channels_before_slimming(tmp_path):
    results = _run(tmp_path)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "pruning: align 1, regularize 8, stabilize 3 steps, shrink penalty" in log
    assert results["liveness"] < 0.1  # 12 steps: their RMS is below a tenth of the kept channels'


# the schedule's own phase boundaries on the global step axis: 4 dense steps, then align 1,
# regularize 8, stabilize 3 (the bar samples the schedule every 10 steps, which would put them elsewhere)
PHASES = [(4, "align"), (5, "regularize"), (13, "stabilize"), (16, "done")]


def test_curves_mark_the_schedules_true_phase_boundaries(tmp_path):
    from report import _boundaries

    _run(tmp_path)
    history = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["history"]
    assert [tuple(p) for p in history["phases"]] == PHASES
    stages, phases = _boundaries(history)
    assert phases == PHASES and [name for _, name in stages] == ["dense", "prune", "finetune"]
    sampled = _boundaries({**history, "phases": []})[1]  # without them: the first sampled step of each phase
    assert sampled != PHASES


def test_the_authors_schedule_flags_with_the_papers_penalty(tmp_path):
    i = TINY.index("--prune_steps")
    results = _run(tmp_path, *PAPER_FORM, base=TINY[:i] + TINY[i + 2 :])
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "pruning: align 2, regularize 3, stabilize 2 steps, gradient penalty up to 0.75" in log
    assert results["pruned_params"] < results["dense_params"] and "liveness" in results


def test_l1_baseline_runs(tmp_path):
    results = _run(tmp_path, "--method", "L1")
    assert results["pruned_params"] < results["dense_params"]


def _crash_at(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """The run's ``n``-th training batch raises KeyboardInterrupt (a Ctrl-C in that step)."""
    real = sr_main.batches
    calls = {"n": 0}

    def crashing(ctx, train):
        for batch in real(ctx, train):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(sr_main, "batches", crashing)


def test_crash_then_resume_loses_nothing(tmp_path, monkeypatch):
    real = sr_main.batches
    _crash_at(monkeypatch, 4 + 3)  # dense takes 4 batches; crash in the pruning stage
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["stage"] == "prune" and ckpt["step"] == 2 and ckpt["pruner"]["step"] == 2
    monkeypatch.setattr(sr_main, "batches", real)
    results = _run(tmp_path, "--resume")
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "resuming at stage prune step 2" in log
    assert "dense_psnr" in results and "pruned_psnr" in results  # results of the first run kept
    history = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["history"]
    assert [tuple(p) for p in history["phases"]] == PHASES  # the same boundaries after resuming mid-stage
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["stage"] == "finished"


@pytest.mark.parametrize("crash", [3, 4 + 7, 4 + 12 + 2], ids=["dense", "prune", "finetune"])
def test_a_resumed_run_ends_bit_for_bit_where_the_uninterrupted_one_does(tmp_path, monkeypatch, crash):
    """The same batches, patches, Pruner state and optimizer state after a crash: the same final weights."""
    real = sr_main.batches
    whole = sr_main.run([*TINY, "--save", str(tmp_path / "whole")])
    _crash_at(monkeypatch, crash)
    with pytest.raises(KeyboardInterrupt):
        sr_main.run([*TINY, "--save", str(tmp_path / "cut")])
    monkeypatch.setattr(sr_main, "batches", real)
    resumed = sr_main.run([*TINY, "--save", str(tmp_path / "cut"), "--resume"])
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in ("whole", "cut"))
    assert a["stage"] == b["stage"] == "finished" and a["global_step"] == b["global_step"] == 4 + 12 + 3
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [x[1:] for x in a["history"]["loss"]] == [x[1:] for x in b["history"]["loss"]]
    assert resumed["pruned_psnr"] == whole["pruned_psnr"]


def test_batch_order_is_a_function_of_the_batch_number():
    from pipeline import BatchOrder

    def first(order: BatchOrder, k: int) -> list[list[tuple[int, int]]]:
        it = iter(order)
        return [next(it) for _ in range(k)]

    n, bs = 11, 3  # 3 batches a pass, 2 items left out of each
    run = first(BatchOrder(n, bs, seed=5), 10)
    for start in (1, 3, 7):
        assert first(BatchOrder(n, bs, seed=5, start=start), 10 - start) == run[start:]
    for p in range(3):  # within a pass every item at most once, with one patch seed per pass
        items = [i for batch in run[3 * p : 3 * p + 3] for i, _ in batch]
        assert len(set(items)) == 9
    assert run[:3] != run[3:6] and run != first(BatchOrder(n, bs, seed=6), 10)
    two = [first(BatchOrder(n, 2, seed=5, rank=r, world=2), 2) for r in (0, 1)]  # 2 processes: 2 batches a pass each
    mine = [{i for batch in two[r] for i, _ in batch} for r in (0, 1)]
    assert len(mine[0]) == len(mine[1]) == 4 and not mine[0] & mine[1]
    with pytest.raises(ValueError, match="cannot fill one batch of 8 per process"):
        BatchOrder(11, 8, seed=0, world=2)


def test_a_keyed_item_is_the_same_patch_every_time():
    from data import EmbeddedSR

    train = EmbeddedSR("train", 2, patch_size=16, max_side=48)
    a, b = train[(3, 12345)], train[(3, 12345)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    seen = {train[(3, s)][1].sum().item() for s in range(8)}
    assert len(seen) > 1  # other seeds: other patches


def test_two_processes_with_torchrun(tmp_path):
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = Path(__file__).resolve().parents[1] / "examples" / "sr" / "main.py"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        str(script),
        *TINY,
        "--cpu",
        "--save",
        str(tmp_path / "ddp"),
    ]
    env = checkout_env(OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["pruned_params"] < results["dense_params"]
    assert "pruned PSNR / SSIM" in proc.stdout


def test_the_console_shows_the_pruners_progress_and_the_librarys_warnings(tmp_path, capsys):
    _run(tmp_path, "--prune_steps", "10", "--max_prune_iters", "4")
    err = capsys.readouterr().err
    assert "phase=" in err and "left=" in err  # the Pruner's progress in the prune stage's bar
    assert "ASSLWarning: slimming in phase" in err  # cut short: the library says so on the console


def test_latency_flag_prunes_to_a_planned_width_and_resumes_without_timing_again(tmp_path, monkeypatch):
    """``--latency``: widths from a latency table (synthetic here: no timing in tests); a resumed
    run takes the first run's widths instead of measuring again."""
    from test_latency import synthetic_table

    measured = []

    def fake_measure(cls, model, x, **kwargs):
        measured.append(tuple(x.shape))
        return synthetic_table(model, x, step=4)

    monkeypatch.setattr(assl.LatencyTable, "measure", classmethod(fake_measure))
    real = sr_main.batches
    calls = {"n": 0}

    def crashing(ctx, train):
        for batch in real(ctx, train):
            calls["n"] += 1
            if calls["n"] == 4 + 3:  # crash in the pruning stage
                raise KeyboardInterrupt
            yield batch

    flags = ["--n_feats", "16", "--latency", "0.6", "--latency_size", "8x12"]
    monkeypatch.setattr(sr_main, "batches", crashing)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, *flags)
    assert measured == [(1, 3, 8, 12)]  # one table, on one input of --latency_size
    first = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["results"]["latency_plan"]
    assert any(w < 16 for w in first["widths"].values())
    monkeypatch.setattr(sr_main, "batches", real)
    results = _run(tmp_path, *flags, "--resume")
    assert measured == [(1, 3, 8, 12)]  # not timed again
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert results["latency_plan"]["widths"] == first["widths"]
    cut = {g: k for g, k in plan["removed"].items() if k}  # the slimmed widths are the planned ones
    assert cut and all(first["widths"][g] == 16 - k for g, k in cut.items())
    assert results["pruned_params"] < results["dense_params"]


@pytest.mark.parametrize("flags, message", [(["--latency", "1.5"], "fraction"), (["--latency_size", "9"], "HxW")])
def test_bad_latency_flags_are_refused_at_parse_time(flags, message, capsys):
    with pytest.raises(SystemExit):
        sr_main.parse_args(["--quick", *flags])
    assert message in capsys.readouterr().err


class _Recorded(assl.Teacher):
    """``assl.Teacher`` that keeps every instance and counts the terms it adds, with their arguments."""

    made: ClassVar[list[_Recorded]] = []

    def __init__(self, model):
        super().__init__(model)
        self.calls: list[tuple[tuple, float, str]] = []
        _Recorded.made.append(self)

    def loss(self, student_output, inputs, **kwargs):
        self.calls.append((tuple(inputs.shape), kwargs["weight"], kwargs["kind"]))
        return super().loss(student_output, inputs, **kwargs)


@pytest.fixture
def recorded(monkeypatch):
    _Recorded.made = []
    monkeypatch.setattr(assl, "Teacher", _Recorded)
    return _Recorded.made


def test_distill_adds_the_dense_models_term_to_pruning_and_fine_tuning(tmp_path, recorded, capsys):
    plain = _run(tmp_path / "plain")
    assert plain["distill"] == 0 and not recorded  # off by default: no teacher built
    results = _run(tmp_path / "distilled", "--distill", "1", "--distill_kind", "l1")
    assert results["distill"] == 1.0 and results["distill_kind"] == "l1"
    saved = json.loads((tmp_path / "distilled" / "run" / "results.json").read_text())
    assert saved["distill"] == 1.0 and saved["distill_kind"] == "l1"
    assert "distilled (l1, weight 1)" in capsys.readouterr().out
    (teacher,) = recorded
    # one term per step of the pruning stage (12) and of fine-tuning (3), on the LR batch
    assert teacher.calls == [((2, 3, 8, 8), 1.0, "l1")] * (12 + 3)
    # the same dense model (the teacher draws no random numbers), another pruned one
    assert results["dense_psnr"] == plain["dense_psnr"]
    assert results["slimmed_psnr"] != plain["slimmed_psnr"]
    dense = SRModel(n_resblocks=1, n_feats=4, scale=2)
    dense.load_state_dict(torch.load(tmp_path / "distilled" / "run" / "dense.pt", weights_only=True))
    x = torch.rand(1, 3, 8, 8) * 255
    assert torch.equal(teacher(x), dense.eval()(x))  # the teacher is the dense model, frozen
    assert "distill " in (tmp_path / "distilled" / "run" / "log.txt").read_text()  # the term in the log


def _crash_in_finetuning(monkeypatch):
    real = sr_main.batches
    calls = {"n": 0}

    def crashing(ctx, train):
        for batch in real(ctx, train):
            calls["n"] += 1
            if calls["n"] == 4 + 12 + 3:  # dense 4 batches, pruning 12; crash after 2 fine-tuning steps
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(sr_main, "batches", crashing)
    return real


def test_resuming_fine_tuning_with_distill_rebuilds_the_teacher_from_dense_pt(tmp_path, recorded, monkeypatch):
    real = _crash_in_finetuning(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "--distill", "1")
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["stage"] == "finetune" and ckpt["step"] == 2
    monkeypatch.setattr(sr_main, "batches", real)
    results = _run(tmp_path, "--distill", "1", "--resume")
    first, resumed = recorded  # built from the model in memory, then from dense.pt
    assert len(first.calls) == 12 + 2 and len(resumed.calls) == 1  # the last fine-tuning step
    x = torch.rand(2, 3, 8, 8) * 255
    assert torch.equal(first(x), resumed(x))  # bit for bit the same dense function
    for (k, a), (k2, b) in zip(first.state_dict().items(), resumed.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert "the teacher is the dense model of" in (tmp_path / "run" / "log.txt").read_text()
    assert results["distill"] == 1.0 and "pruned_psnr" in results


def test_resuming_with_distill_without_dense_pt_says_so(tmp_path, monkeypatch):
    real = _crash_in_finetuning(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "--distill", "1")
    (tmp_path / "run" / "dense.pt").unlink()
    monkeypatch.setattr(sr_main, "batches", real)
    with pytest.raises(FileNotFoundError, match=r"resuming at the finetune stage needs the dense model.*dense\.pt"):
        _run(tmp_path, "--distill", "1", "--resume")
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["stage"] == "finetune"  # untouched


def test_a_negative_distill_weight_is_refused_at_parse_time(capsys):
    with pytest.raises(SystemExit):
        sr_main.parse_args(["--quick", "--distill", "-1"])
    assert "--distill is the weight" in capsys.readouterr().err
