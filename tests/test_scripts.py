"""Smoke runs of the benchmark and example scripts, so they do not rot."""

from __future__ import annotations

import argparse
import math
import runpy
import shutil
import sys
from pathlib import Path

import pytest

import assl

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.real_timer  # it times assl.trace itself, which refuses the counting timer's global hooks
def test_trace_slim_benchmark_smoke(tmp_path, capsys):
    from benchmarks.trace_slim import main

    rows = main(["--smoke", "--out", str(tmp_path / "r.jsonl")])
    out = capsys.readouterr().out
    assert "| LEDSR 2x8 |" in out and "trace ms" in out
    v = rows[0]["values"]
    assert v["trace_ms"] > 0 and v["slim_ms"] > 0 and len(v["samples_ms"]["slim"]) == 2


def test_trace_cost_benchmark_smoke(tmp_path, capsys):
    from benchmarks import report
    from benchmarks.results import git_state
    from benchmarks.trace_cost import main, render

    if git_state() is None:
        pytest.skip("not a git checkout: the benchmark extracts its base revision with git")
    rows = main(["--smoke", "--out", str(tmp_path / "trace_cost.jsonl")])
    out = capsys.readouterr().out
    assert "| LEDSR 2x8 |" in out and "set-up ms before" in out
    assert len(rows) == 1 and rows[0]["settings"]["base"] == "HEAD"
    v = rows[0]["values"]
    assert v["model"] == "LEDSR 2x8" and v["base"] == rows[0]["env"]["git"]["sha"]
    for k in ("trace", "setup"):
        assert v[f"{k}_ms_before"] > 0 and v[f"{k}_ms_after"] > 0
        assert v[f"{k}_ratio"] == pytest.approx(v[f"{k}_ms_after"] / v[f"{k}_ms_before"])
        assert {ver: len(s) for ver, s in v["samples_ms"][k].items()} == {"before": 1, "after": 1}
    doc = tmp_path / "page.md"  # the block the docs will hold once a measured results file is committed
    doc.write_text("<!-- table: trace_cost -->\n<!-- end table -->\n")
    table = report.Table("trace_cost", "trace_cost.jsonl", render)
    assert report.run([doc], check=False, tables=[table], results=tmp_path) == 0
    assert render(rows) in doc.read_text()


def test_trace_cost_rows_and_table(tmp_path):
    from benchmarks.results import Writer, read
    from benchmarks.trace_cost import render, row

    samples = {  # seconds: two rounds per version
        "a": {
            "before": {"trace": [0.010, 0.012], "setup": [0.020, 0.030]},
            "after": {"trace": [0.011, 0.011], "setup": [0.040, 0.050]},
        },
    }
    writer = Writer(tmp_path / "r.jsonl", "trace_cost", {"rounds": 2, "calls": 3, "base": "main"}, argv=[])
    writer.write(row("Net A", "ledsr", (1, 3, 8, 8), samples["a"], "f" * 40))
    rows = read(tmp_path / "r.jsonl")
    v = rows[0]["values"]
    assert v["trace_ms_before"] == pytest.approx(11.0) and v["trace_ms_after"] == pytest.approx(11.0)
    assert v["setup_ratio"] == pytest.approx(45.0 / 25.0) and v["samples_ms"]["setup"]["after"] == pytest.approx(
        [40, 50]
    )
    table = render(rows)
    assert "Before: fffffff" in table and "2 rounds of the median of 3 calls" in table
    assert "| Net A | 11.0 | 11.0 | 1.00 | 25.0 | 45.0 | **1.80** |" in table  # over the limit: bold


def test_trace_cost_says_what_is_missing(tmp_path, monkeypatch):
    from benchmarks.trace_cost import main

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    out = ["--out", str(tmp_path / "r.jsonl")]
    with pytest.raises(SystemExit, match="'no-such-revision' is not in the git clone"):
        main(["--smoke", "--base", "no-such-revision", *out])
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemExit, match="needs git"):
        main(["--smoke", *out])
    assert not (tmp_path / "r.jsonl").exists()


def test_zoo_benchmark_smoke(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torchvision")
    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # the comparison is optional
    from benchmarks.results import read
    from benchmarks.zoo import main, render

    rows = main(["--smoke", "--out", str(tmp_path / "zoo.jsonl")])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| tv/shufflenet"))
    assert "| exact (" in row and "| - |" in row
    v = rows[0]["values"]
    assert v["model"] == "tv/shufflenet_v2_x0_5" and v["exact"] is True and 0 < v["assl"] < 1
    table = render(read(tmp_path / "zoo.jsonl")).splitlines()
    assert "1 models: 1 exact, 0 refused, 0 differing" in table[0] and table[-1] == row


def test_zoo_benchmark_without_timm_and_torchvision_says_so(tmp_path, capsys, monkeypatch):
    for name in ("timm", "torchvision", "torchvision.ops.misc", "torch_pruning"):
        monkeypatch.setitem(sys.modules, name, None)
    from benchmarks.zoo import main

    assert main(["--out", str(tmp_path / "zoo.jsonl")]) == []
    captured = capsys.readouterr()
    assert "timm is not installed" in captured.err and "torchvision is not installed" in captured.err
    assert not [line for line in captured.out.splitlines() if line.startswith("| tv/") or line.startswith("| timm/")]


def test_slim_demo_runs_and_is_exact(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["slim_demo.py", "--blocks", "2", "--feats", "8"])
    runpy.run_path(str(ROOT / "examples" / "slim_demo.py"), run_name="__main__")
    out = capsys.readouterr().out
    err = float(out.split("masked dense| on a new input size: ")[1].split()[0])
    assert err <= 1e-5
    assert "parameters" in out and "faster" in out


BENCHMARKS = [
    "trace_slim",
    "trace_cost",
    "step_overhead",
    "quality",
    "alignment_study",
    "inference_speed",
    "bn_classifier",
    "bn_denoiser",
    "latency_budget",
    "latency_batch",
    "latency_quality",
    "bn_alignment_study",
    "zoo",
]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmarks_have_help(name, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [f"benchmarks.{name}", "--help"])
    monkeypatch.delitem(sys.modules, f"benchmarks.{name}", raising=False)  # run_module runs a fresh copy
    with pytest.raises(SystemExit) as e:
        runpy.run_module(f"benchmarks.{name}", run_name="__main__", alter_sys=True)
    assert e.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_slim_demo_has_help(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["slim_demo.py", "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "examples" / "slim_demo.py"), run_name="__main__")
    assert e.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_latency_budget_benchmark_smoke(tmp_path):
    import torch

    from benchmarks.latency_budget import main, render
    from benchmarks.results import read

    threads = torch.get_num_threads()
    try:
        rows = [r["values"] for r in main(["--smoke", "--out", str(tmp_path / "r.jsonl")])]
    finally:
        torch.set_num_threads(threads)
    assert [r["plan"] for r in rows] == ["latency", "macs, same prediction", "macs = 0.7 x dense"]
    by = {r["plan"]: r for r in rows}
    # the Pruner checked its widths by timing (re-solving for a prediction moved by the miss either
    # way, so the final prediction may sit above the target when the copy measured faster)
    assert by["latency"]["checked"] is not None and 0 < by["latency"]["checked"] < 1
    assert 0 < by["latency"]["predicted"] < 1
    assert by["macs, same prediction"]["predicted"] <= 0.7 + 1e-9
    assert abs(by["macs = 0.7 x dense"]["macs"] - 0.7) < 0.05  # that plan is sized by MACs, not time
    assert all(r["measured"] > 0 and r["widths"] for r in rows)
    md = render(read(tmp_path / "r.jsonl")).splitlines()[2:]
    assert sum(line.startswith("| tiny |") for line in md) == 3 and md[0].count("|") == md[2].count("|")


def test_latency_batch_benchmark_smoke(tmp_path):
    import torch

    from benchmarks.latency_batch import main, render
    from benchmarks.results import read

    threads = torch.get_num_threads()
    try:
        rows = main(["--smoke", "--out", str(tmp_path / "r.jsonl")])
    finally:
        torch.set_num_threads(threads)
    values = [r["values"] for r in rows]
    # two batch sizes x two independent runs, each with its own table and seed
    assert [(v["batch"], v["run_index"]) for v in values] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert [r["seed"] for r in rows] == [0, 1, 0, 1]
    assert all(v["input"][0] == v["batch"] for v in values)
    for v in values:
        assert v["delivered"] > 0 and v["delivered_over_target"] == v["delivered"] / v["target"]
        assert v["dense_ms"] > 0 and v["dense_spread"] >= 0 and v["delivered_iqr"] >= 0
        assert 0 < v["predicted"] < 1 and v["checked"] is not None and v["checked"] > 0
        assert v["widths"] and v["table_step"] >= 1
    md = render(read(tmp_path / "r.jsonl")).splitlines()
    assert md[0].startswith("Measured ") and "tiny batch 2: input 2x3x8x8" in md[0]
    lines = [line for line in md[2:] if line.startswith("| tiny |")]
    assert [line.split(" | ")[1:4] for line in lines] == [["1", "0.70", "2"], ["2", "0.70", "2"]]
    assert all(line.count("|") == md[2].count("|") for line in lines)
    # the docs' generated block, as benchmarks.report writes and checks it
    from benchmarks import report

    doc = tmp_path / "latency.md"
    doc.write_text("Prose.\n\n<!-- table: latency_batch -->\n<!-- end table -->\n")
    table = report.Table("latency_batch", "r.jsonl", render)
    assert report.run([doc], check=False, tables=[table], results=tmp_path) == 0
    assert "| tiny | 2 | 0.70 | 2 |" in doc.read_text()
    assert report.run([doc], check=True, tables=[table], results=tmp_path) == 0


def _values(rows: list[dict], **match) -> list[dict]:
    """The measured values of a benchmark's rows, dense rows left out unless asked for."""
    from benchmarks.results import values

    return [v for v in values(rows, **match) if match or v.get("method") != "dense"]


def test_latency_quality_benchmark_smoke(tmp_path):
    import math

    import torch

    import assl
    from benchmarks.latency_quality import ARMS, main, render

    threads = torch.get_num_threads()
    try:
        rows = main(["--smoke", "--device", "cpu", "--threads", "1", "--out", str(tmp_path / "a.jsonl")])
        table = str(tmp_path / "a.table.pt")
        again = main(
            ["--smoke", "--device", "cpu", "--threads", "1", "--table", table, "--out", str(tmp_path / "b.jsonl")]
        )
    finally:
        torch.set_num_threads(threads)
    first, second = _values(rows), _values(again)
    assert [r["arm"] for r in first] == list(ARMS)
    for r, s in zip(first, second):  # the saved table gives the same plans, and training the same models
        assert (r["widths"], r["predicted"], r["score"]) == (s["widths"], s["predicted"], s["score"])
    by = {r["arm"]: r for r in first}
    # the Pruner's widths meet the target on the table, unless its timed check moved the prediction
    # (it solves again for a target shifted by the miss, either way): then they stay near it
    assert 0 < by["latency"]["predicted"] < 0.8
    assert abs(by["latency"]["solver_predicted"] - by["latency"]["predicted"]) < 1e-6  # same table, same prediction
    assert by["one ratio, equal latency"]["predicted"] <= 0.7 + 1e-9 and by["one ratio, equal latency"]["ratio"] > 0
    assert by["equal MACs"]["plan_macs"] <= by["latency"]["plan_macs"]  # the largest one-ratio model within them
    step = by["one ratio on the step, equal latency"]
    grid = assl.LatencyTable.load(table).step  # the table the run measured and saved
    assert step["predicted"] <= 0.7 + 1e-9 and all(w % grid == 0 or w == 64 for w in step["widths"].values())
    # the largest one-ratio model within the latency plan's MACs; one ratio moves MACs in coarse
    # steps when the latency plan is lopsided (a noisy table can make it so)
    assert 0.7 < by["equal MACs"]["macs"] / by["latency"]["macs"] < 1.06
    for r in first:
        assert math.isfinite(r["score"]) and math.isfinite(r["score_slim"]) and r["measured"] > 0 and r["widths"]
        assert 0 < r["macs_rel"] < 1 and 0 < r["params_rel"] < 1
    report = render(rows)
    for arm in ARMS:
        assert f"| 0.7 | {arm} |" in report
    assert "minus `latency`, paired by seed" in report


def test_step_overhead_benchmark_smoke(tmp_path, capsys):
    import torch

    from benchmarks.step_overhead import main

    threads = torch.get_num_threads()
    try:
        main_rows = main(["--smoke", "--threads", "1", "--out", str(tmp_path / "r.jsonl")])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    for variant in ("dense", "scales only", "align", "regularize", "stabilize"):
        assert f"| {variant} |" in out
    assert "parametrization cost" in out and "step() (stabilize, penalty on)" in out
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| dense |")]
    assert float(rows[0][2]) > 0 and float(rows[0][3]) == 1.0
    assert len(next(iter(main_rows[0]["values"]["samples_ms"].values()))) == 2
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "usage" in capsys.readouterr().out


def test_inference_speed_benchmark_smoke(tmp_path, capsys):
    from benchmarks.inference_speed import main as speed_main

    rows = speed_main(["--smoke", "--device", "cpu", "--out", str(tmp_path / "r.jsonl")])
    out = capsys.readouterr().out
    assert "| dense | 16 |" in out and "| ratio 0.5 | 8 |" in out and "realized/ideal" in out
    dense, half = (r["values"] for r in rows)
    assert dense["ideal"] == 1.0 and 3 < half["ideal"] < 4 and half["latency_ms"] > 0


def test_quality_benchmark_smoke(tmp_path):
    from benchmarks.method_table import render
    from benchmarks.quality import main as quality_main

    rows = quality_main(["--smoke", "--device", "cpu", "--threads", "1", "--out", str(tmp_path / "q.jsonl")])
    report = render(rows)
    for name in ("dense", "bicubic", "assl", "l1", "scratch"):
        assert f"| {name} |" in report
    assert "`assl` minus each method" in report
    methods = _values(rows)
    assert [v["method"] for v in methods] == ["assl", "l1", "scratch"] and len({v["params"] for v in methods}) == 1
    assert methods[0]["liveness"] >= 0 and set(methods[0]["metrics"]) == {"psnr", "ssim"}
    assert all(r["env"]["threads"] == 1 and r["settings"]["blocks"] == 1 for r in rows)


@pytest.mark.real_timer  # it times assl.trace itself, which refuses the counting timer's global hooks
def test_quality_benchmark_distilled_smoke(tmp_path):
    from benchmarks.method_table import render
    from benchmarks.quality import main as quality_main

    args = ["--smoke", "--device", "cpu", "--threads", "1", "--methods", "assl", "l1", "scratch"]
    plain = quality_main([*args, "--out", str(tmp_path / "p.jsonl")])
    distilled = quality_main([*args, "--distill", "0.5", "--out", str(tmp_path / "d.jsonl")])
    assert all(r["settings"]["distill"] == 0.5 for r in distilled)
    assert all(r["settings"]["distill"] == 0.0 for r in plain)
    assert "distilled from the dense model (weight 0.5)" in render(distilled)
    assert "distilled from the dense model" not in render(plain)
    dense = [_values(rows, method="dense")[0]["metrics"] for rows in (plain, distilled)]
    assert dense[0] == dense[1]  # the same teacher
    for p, d in zip(_values(plain), _values(distilled)):
        assert p["method"] == d["method"] and p["params"] == d["params"]
        assert p["score"] != d["score"], p["method"]  # the term reached every method's training


def test_classifier_benchmark_with_sgd_after_the_dense_model(tmp_path):
    from benchmarks.bn_classifier import main
    from benchmarks.method_table import render

    args = ["--smoke", "--threads", "1", "--methods", "assl", "scratch", "--seeds", "1"]
    adam = main([*args, "--out", str(tmp_path / "a.jsonl")])
    sgd = main([*args, "--optimizer", "sgd", "--method_lr", "0.05", "--out", str(tmp_path / "s.jsonl")])
    assert all(r["settings"]["optimizer"] == "sgd" and r["settings"]["method_lr"] == 0.05 for r in sgd)
    assert "SGD (momentum 0.9) 0.05 (the dense model: Adam" in render(sgd) and "SGD" not in render(adam)
    dense = [_values(rows, method="dense")[0]["metrics"] for rows in (adam, sgd)]
    assert dense[0] == dense[1]  # the dense model keeps Adam and --lr
    for a, s in zip(_values(adam), _values(sgd)):
        assert a["method"] == s["method"] and a["score"] != s["score"], a["method"]


def test_classifier_benchmark_distills_by_the_kind_asked(tmp_path):
    from benchmarks.bn_classifier import main
    from benchmarks.method_table import render

    args = ["--smoke", "--threads", "1", "--methods", "scratch", "--seeds", "1", "--distill", "0.5"]
    mse = main([*args, "--out", str(tmp_path / "m.jsonl")])
    kl = main([*args, "--distill_kind", "kl", "--out", str(tmp_path / "k.jsonl")])
    assert "(weight 0.5, kl)" in render(kl) and "(weight 0.5)" in render(mse)
    assert _values(mse)[0]["score"] != _values(kl)[0]["score"]


def test_training_adds_the_teacher_term():
    import torch

    from benchmarks.training import train

    torch.manual_seed(0)
    dense = torch.nn.Linear(3, 2)
    teacher = assl.Teacher(dense)
    stream = iter([(torch.randn(4, 3), torch.zeros(4, 2))] * 20)
    no_task_loss = lambda out, y: out.sum() * 0.0  # noqa: E731
    student = torch.nn.Linear(3, 2)
    x = torch.randn(16, 3)
    with torch.no_grad():
        before = float((student(x) - dense(x)).pow(2).mean())
    train(student, stream, 10, no_task_loss, 0.05, teacher=teacher, distill=0.0)
    with torch.no_grad():
        assert float((student(x) - dense(x)).pow(2).mean()) == before  # weight 0: no term
    train(student, stream, 10, no_task_loss, 0.05, teacher=teacher, distill=1.0)
    with torch.no_grad():
        assert float((student(x) - dense(x)).pow(2).mean()) < 0.5 * before


def test_a_learning_rate_schedule_keeps_each_param_groups_ratio(monkeypatch):
    import torch

    from benchmarks import training

    made = []
    adam = training.OPTIMIZERS["adam"]
    monkeypatch.setitem(training.OPTIMIZERS, "adam", lambda params, lr: made.append(adam(params, lr)) or made[-1])
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    groups = [{"params": model[0].parameters()}, {"params": model[1].parameters(), "lr": 1e-2}]
    seen = []
    stream = iter([(torch.randn(4, 3), torch.zeros(4, 2))] * 10)
    loss = lambda out, y: (out - y).pow(2).mean()  # noqa: E731
    step = lambda: seen.append([g["lr"] for g in made[-1].param_groups])  # noqa: E731
    training.train(model, stream, 5, loss, training.cosine(1e-3, 0, 4), param_groups=groups, before_step=step)
    for base, scale in seen:
        assert scale == pytest.approx(10 * base)  # the group's own rate, 10x, follows the cosine
    assert seen[0][0] == pytest.approx(1e-3) and seen[-1] == [0.0, 0.0]
    again = [{"params": model[0].parameters()}, {"params": model[1].parameters(), "lr": 5e-3}]
    training.train(model, stream, 2, loss, 1e-3, param_groups=again)
    assert [g["lr"] for g in made[-1].param_groups] == [1e-3, 5e-3]  # a constant rate leaves each group's own


def test_quality_benchmark_dense_cache_and_val_split(tmp_path, capsys):
    from benchmarks.quality import main as quality_main

    cache = tmp_path / "c"
    args = ["--smoke", "--device", "cpu", "--methods", "l1", "--eval_split", "val", "--dense_cache", str(cache)]
    first = quality_main([*args, "--out", str(tmp_path / "a.jsonl")])
    assert len(list(cache.glob("dense-*.pt"))) == 1
    second = quality_main([*args, "--out", str(tmp_path / "b.jsonl")])  # the dense model comes from the cache
    assert _values(first, method="dense")[0]["score"] == _values(second, method="dense")[0]["score"]
    assert _values(first)[0]["score"] == _values(second)[0]["score"]
    assert len(list(cache.glob("dense-*.pt"))) == 1
    quality_main([*args, "--out", str(tmp_path / "d.jsonl"), "--lr", "1e-3"])  # another setting: another model
    assert len(list(cache.glob("dense-*.pt"))) == 2
    assert "val" in capsys.readouterr().out and first[0]["settings"]["eval_split"] == "val"


def test_alignment_study_smoke(tmp_path):
    from benchmarks.alignment_study import main as study_main

    rows = study_main(["--smoke", "--device", "cpu", "--threads", "1", "--out", str(tmp_path / "s.jsonl")])
    runs = _values(rows)
    assert [r["setting"] for r in runs] == ["noalign", "consensus:0", "consensus:10"]
    assert all(0 <= r["agreement_start"] <= 1 for r in runs)
    ratios = [r["grad_ratio"] for r in runs if r["weight"] is not None]
    assert ratios[0] == 0.0 and ratios[1] > 0  # weight 0: no alignment gradient; weight 10: some
    assert all(0 <= r["removed_share"] <= 1 and r["left_g"] >= 0 for r in runs)


def test_alignment_study_measures():
    import torch

    from benchmarks.align_study import parse_setting, removed_share

    same = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    opposite = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    assert abs(removed_share(same, [0, 1]) - 0.3) < 1e-7  # (1 + 2) / 10
    assert abs(removed_share(opposite, [3]) - 0.25) < 1e-7  # (4/10 + 1/10) / 2
    assert parse_setting("noalign") is None
    assert parse_setting("authors:1") == ("authors", 1.0) and parse_setting("consensus:0") == ("consensus", 0.0)
    for bad in ("consensus", "paper:1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_setting(bad)


def test_quality_presets_are_defaults_that_explicit_flags_override():
    from benchmarks import protocol
    from benchmarks.tasks.sr import QUICK

    def parse(argv):
        return protocol.parse(protocol.parser("quality", "sr", None), argv, "sr")

    args = parse(["--quick", "--prune_iters", "600", "--finetune_iters", "400"])
    assert (args.prune_iters, args.finetune_iters) == (600, 400)
    assert (args.blocks, args.feats, args.align_iters) == (QUICK["blocks"], QUICK["feats"], QUICK["align_iters"])
    assert parse(["--quick"]).prune_iters == QUICK["prune_iters"]
    assert parse([]).blocks == 16 and parse(["--ratio", "0.75"]).ratios == [0.75]
    assert parse(["--lr_schedule", "finetune", "--scale_lr", "1e-2"]).scale_lr == 1e-2  # scaled with the schedule
    with pytest.raises(SystemExit):
        parse(["--grad_guard", "-1"])
    with pytest.raises(SystemExit):
        parse(["--grad_guard", "3", "--pace_tol", "0.5"])  # one study of the fade at a time


def _bn_smoke(script: str, methods: list[str], tmp_path, *flags: str) -> list[dict]:
    """Run a BatchNorm benchmark's ``--smoke`` preset (plus ``flags``) in this process, on one thread."""
    import importlib

    import torch

    main = importlib.import_module(f"benchmarks.{script}").main
    threads = torch.get_num_threads()
    try:
        out = str(tmp_path / f"{script}.jsonl")
        return main(["--smoke", "--threads", "1", "--methods", *methods, *flags, "--out", out])
    finally:
        torch.set_num_threads(threads)


def test_bn_classifier_smoke(tmp_path):
    pytest.importorskip("sklearn")
    from benchmarks.method_table import plot, render

    methods = ["assl", "l1", "scratch"]
    rows = _bn_smoke("bn_classifier", methods, tmp_path)
    runs = _values(rows)
    assert [r["method"] for r in runs] == methods
    assert len({r["params"] for r in runs}) == 1  # every method at the same size
    assert runs[0]["liveness"] >= 0 and "liveness_groups" in runs[0]
    # the BatchNorm statistics measured anew on a copy: another number, the model itself untouched
    assert 0 <= runs[0]["score_before_slim_refreshed"] <= 1 and "score_before_slim_refreshed" not in runs[1]
    report = render(rows)
    for name in ("dense", *methods):
        assert f"| {name} |" in report
    plot(rows, 0.5, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 0


def test_refreshed_batchnorm_statistics_score_a_copy_and_only_where_there_are_batchnorms():
    import torch
    from torch import nn

    from benchmarks.methods import refreshed_score

    class Task:  # the two things refreshed_score reads of a task
        metric = "mean"

        @staticmethod
        def batches(seed):
            g = torch.Generator().manual_seed(seed)
            while True:
                yield 3 + 2 * torch.randn(8, 4, generator=g), None

        @staticmethod
        def score(model):
            model.eval()
            with torch.no_grad():
                return {"mean": float(model(torch.full((1, 4), 3.0)).abs().mean())}

    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    stale = Task.score(model)["mean"]  # running statistics at their initial 0 and 1
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = refreshed_score(Task, model, 0)
    assert fresh is not None and abs(fresh - stale) > 0.1  # the statistics of the data, not the initial ones
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert refreshed_score(Task, nn.Sequential(nn.Linear(4, 4)), 0) is None


def test_bn_classifier_prunes_the_mobilenet_expansions(tmp_path):
    pytest.importorskip("sklearn")
    rows = _bn_smoke("bn_classifier", ["assl", "scratch"], tmp_path, "--net", "mobilenet")
    (dense,) = _values(rows, method="dense")
    assl_run, scratch = _values(rows)
    assert dense["task"]["name"] == "BN MobileNetV2 on digits"
    assert assl_run["params"] == scratch["params"] < dense["params"] / 2  # ratio 0.5: about a quarter left
    expansions = [g for g in assl_run["removed"] if g.endswith("conv.0")]  # each block's 1x1 expansion
    assert expansions and all(assl_run["removed"][g] > 0 for g in expansions)


def test_bn_classifier_says_what_is_missing_without_scikit_learn(monkeypatch):
    from benchmarks.tasks.digits import load

    for name in ("sklearn", "sklearn.datasets", "sklearn.model_selection"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    with pytest.raises(SystemExit, match="scikit-learn"):
        load()


def test_bn_denoiser_smoke(tmp_path):
    from benchmarks.method_table import render

    methods = ["assl", "l1", "scratch"]
    rows = _bn_smoke("bn_denoiser", methods, tmp_path)
    runs = _values(rows)
    assert [r["method"] for r in runs] == methods and len({r["params"] for r in runs}) == 1
    report = render(rows)
    assert "| assl | 0.5 |" in report and "| noisy input |" in report


def test_learned_widths_and_global_pruning_at_the_ratios_parameter_count(tmp_path):
    from benchmarks import tp_adapter

    methods = ["l1", "assl_learned", "assl_learned_macs", "scratch_learned", "tp_global"]
    rows = _values(_bn_smoke("bn_denoiser", methods, tmp_path))
    by = {r["method"]: r for r in rows}
    # the U-Net has no align phase: the learned widths from scratch are ASSL's own, re-initialized
    assert by["scratch_learned"]["params"] == by["assl_learned"]["params"] and by["scratch_learned"]["steps"] > 0
    assert by["assl_learned"]["params"] <= by["l1"]["params"] and by["assl_learned"]["liveness"] >= 0
    assert by["assl_learned_macs"]["macs"] <= by["l1"]["macs"] * (1 + 1e-9)  # the ratio's MACs, as a budget
    removed = by["assl_learned"]["removed"]
    assert len({k for k in removed.values() if k}) > 1  # the groups lose different shares, not one ratio
    if tp_adapter.installed():
        assert by["tp_global"]["params"] <= by["l1"]["params"]
    else:
        assert "tp_global" not in by  # skipped, said so
    # a ratio whose parameter count the floor of 1/8 cannot meet: learned widths fail, the run goes on
    failed, l1 = _values(_bn_smoke("bn_denoiser", ["assl_learned", "l1"], tmp_path, "--ratios", "0.95"))
    assert "min_width" in failed["error"] and l1["method"] == "l1" and "error" not in l1
    # a floor of half at ratio 0.5 leaves no group a choice: every one loses at most half its units
    (floored,) = _values(_bn_smoke("bn_denoiser", ["assl_learned"], tmp_path, "--min_width", "0.5"))
    assert floored["removed"]["enc1.0"] <= 6 and floored["removed"]["mid.0"] <= 24


def test_bn_alignment_study_smoke(tmp_path):
    pytest.importorskip("sklearn")
    import torch

    from benchmarks.align_study import DEFAULT_SETTINGS, render
    from benchmarks.bn_alignment_study import main as study_main

    threads = torch.get_num_threads()
    try:
        rows = study_main(["--smoke", "--threads", "1", "--out", str(tmp_path / "study.jsonl")])
        classifier = _values(_bn_smoke("bn_classifier", ["assl", "assl_noalign"], tmp_path))
    finally:
        torch.set_num_threads(threads)
    runs = _values(rows)
    assert [r["setting"] for r in runs] == DEFAULT_SETTINGS
    by = {r["setting"]: r for r in runs}
    for r in runs:
        assert set(r["groups"]) == {"stem.0", "layer2.0.downsample.0"}  # the two streams; single layers left out
        assert r["chance"] == 0.5 and all(v == 0.5 for v in r["chance_groups"].values())
        assert 0 <= r["agreement_start"] <= 1 and 0 <= r["removed_share"] <= 1
        assert all(0 <= r[k] <= 1 for k in ("score_before_slim", "score_slim", "score"))
        assert r["agreement_start"] == by["noalign"]["agreement_start"]  # the same dense model for every setting
        assert all(v > 0 for v in r["spread_groups"].values())
    assert "agreement_end" not in by["noalign"] and by["noalign"]["align_iters"] == 0
    for s in DEFAULT_SETTINGS[1:]:
        assert 0 <= by[s]["agreement_end"] <= 1 and by[s]["align_iters"] > 0 and by[s]["g_drift"] >= 0
    assert by["consensus:0"]["weight"] == 0.0 and by["authors:1"]["loss"] == "authors"
    # paired with bn_classifier: the default setting is its assl, noalign its assl_noalign
    same = {"consensus:1": classifier[0], "noalign": classifier[1]}
    for setting, r in same.items():
        for key in ("score_before_slim", "score_slim", "score"):
            assert by[setting][key] == r[key]
    report = render(rows)
    for s in DEFAULT_SETTINGS:
        assert f"| {s} |" in report
    for s in DEFAULT_SETTINGS:
        assert (f"| 0.5 | {s} | " in report.split("minus the weight-0 control")[1]) == (s != "consensus:0")


def test_alignment_paired_differences():
    from benchmarks.align_study import agreement_at_choice, paired_with_control

    rows = [
        {"setting": s, "ratio": 0.5, "seed": seed, "agreement_start": 0.5, "acc": acc, **end}
        for s, seed, acc, end in [
            ("noalign", 0, 0.90, {}),
            ("consensus:0", 0, 0.92, {"agreement_end": 0.56}),
            ("consensus:1", 0, 0.96, {"agreement_end": 0.76}),
            ("noalign", 1, 0.80, {}),
            ("consensus:0", 1, 0.80, {"agreement_end": 0.50}),
            ("consensus:1", 1, 0.70, {"agreement_end": 0.60}),
        ]
    ]
    out = paired_with_control(rows, [("agreement", agreement_at_choice, 2), ("acc", lambda r: r["acc"], 2)])
    lines = out.splitlines()
    assert lines[0] == "| ratio | setting | agreement - control | acc - control |"
    assert lines[2] == "| 0.5 | noalign | -0.06, +0.00 (mean -0.03) | -0.02, +0.00 (mean -0.01) |"
    assert lines[3] == "| 0.5 | consensus:1 | +0.20, +0.10 (mean +0.15) | +0.04, -0.10 (mean -0.03) |"
    assert len(lines) == 4 and paired_with_control([r for r in rows if r["setting"] != "consensus:0"], []) == ""


def test_levers_table_pairs_each_variant_with_its_scratch(tmp_path):
    from benchmarks.levers import render, variant
    from benchmarks.quality import main as quality_main
    from benchmarks.results import read

    out = str(tmp_path / "levers.jsonl")
    args = ["--smoke", "--device", "cpu", "--threads", "1", "--seeds", "2", "--out", out]
    plain = quality_main([*args, "--methods", "assl", "scratch"])
    quality_main([*args, "--methods", "assl", "--scale_lr", "0.01", "--append"])
    distilled = quality_main([*args, "--methods", "assl", "scratch", "--distill", "0.5", "--append"])
    both = quality_main([*args, "--methods", "assl", "--distill", "0.5", "--scale_lr", "0.01", "--append"])
    first = plain[0]["settings"]
    assert variant(first, first) == "defaults" and variant(both[0]["settings"], first) == "distill 0.5, scale_lr 0.01"
    md = {
        tuple(c.strip() for c in line.split("|")[1:3]): line for line in render(read(out)).splitlines() if "|" in line
    }
    assert {
        ("defaults", "assl"),
        ("defaults", "scratch"),
        ("scale_lr 0.01", "assl"),
        ("distill 0.5", "scratch"),
    } <= set(md)
    scratch = {v["seed"]: v["score"] for v in _values(distilled) if v["method"] == "scratch"}
    expect = [v["score"] - scratch[v["seed"]] for v in sorted(_values(both), key=lambda v: v["seed"])]
    cells = md[("distill 0.5, scale_lr 0.01", "assl")].split("|")
    assert [float(x) for x in cells[7].split(",")] == pytest.approx(expect, abs=2e-3)  # against the distilled scratch
    assert cells[8].strip().startswith(f"{sum(x > 0 for x in expect)} of 2")
    assert md[("defaults", "scratch")].split("|")[7].strip() == "-"


def test_tables_name_a_method_that_failed_on_some_seeds_or_on_all(tmp_path):
    import copy

    from benchmarks import levers, method_table
    from benchmarks.quality import main as quality_main

    args = ["--smoke", "--device", "cpu", "--threads", "1", "--seeds", "2", "--methods", "assl", "scratch"]
    rows = quality_main([*args, "--out", str(tmp_path / "q.jsonl")])
    assl = [r for r in rows if r["values"]["method"] == "assl"]
    broken = []
    for name, failing in (("tp_global", {1}), ("l1", {0, 1})):  # fails on seed 1; on both seeds
        for r in assl:
            seed = r["values"]["seed"]
            row = copy.deepcopy(r)
            row["values"]["method"] = name
            if seed in failing:
                row["values"] = {"method": name, "ratio": 0.5, "seed": seed, "error": f"ValueError: seed {seed}"}
            broken.append(row)
    score = next(r["values"]["score"] for r in assl if r["values"]["seed"] == 0)

    def cells(md: str, *key: str) -> list[str]:
        line = next(x for x in md.splitlines() if [c.strip() for c in x.split("|")[1 : 1 + len(key)]] == list(key))
        return [c.strip() for c in line.split("|")[1:-1]]

    lever_md = levers.render(rows + broken)
    partial = cells(lever_md, "defaults", "tp_global")[3]
    assert partial.startswith(f"{score:.3f} ± 0.000") and partial.endswith("(failed on seed 1: ValueError: seed 1)")
    assert cells(lever_md, "defaults", "l1")[3] == "failed on every seed: ValueError: seed 0"
    method_md = method_table.table(rows + broken)
    assert cells(method_md, "tp_global", "0.5")[3].endswith(" (failed on seed 1: ValueError: seed 1)")
    assert cells(method_md, "l1", "0.5")[2] == "failed: ValueError: seed 0"


def test_the_scales_rate_floor_is_a_lever_of_assl_and_old_runs_ran_without_it():
    from benchmarks import protocol
    from benchmarks.levers import ABSENT_EVERYWHERE, NOT_ASSL, variant

    def parse(argv):
        return protocol.parse(protocol.parser("quality", "sr", None), argv, "sr")

    assert parse([]).min_scale_lr == "auto" and parse(["--min_scale_lr", "none"]).min_scale_lr is None
    assert parse(["--min_scale_lr", "5e-3"]).min_scale_lr == 5e-3
    with pytest.raises(SystemExit):
        parse(["--min_scale_lr", "fast"])
    first = {"min_scale_lr": "auto"}
    assert variant({"min_scale_lr": None}, first) == "no scale-rate floor"
    assert variant({"min_scale_lr": 5e-3}, first) == "min_scale_lr 0.005"
    old: dict = {}  # recorded before the floor existed
    assert variant(old, first, absent=ABSENT_EVERYWHERE) == "no scale-rate floor"
    assert variant(old, first) == "defaults" and variant({"min_scale_lr": None}, first, NOT_ASSL) == "defaults"


def test_clip_bounds_each_step_and_is_a_lever_of_scratch_too():
    import torch
    from torch import nn

    from benchmarks.levers import SCRATCH_LEVERS, variant
    from benchmarks.training import train

    def first_step(clip: float) -> float:
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        before = torch.cat([p.detach().clone().flatten() for p in model.parameters()])
        stream = iter([(torch.randn(8, 4) * 100, torch.randn(8, 2))] * 2)
        train(model, stream, 1, nn.functional.mse_loss, 1.0, optimizer="sgd", clip=clip)
        return float((torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm())

    # SGD's first step moves the parameters by lr x the gradient: the clipped one by at most the clip
    assert first_step(1e-3) == pytest.approx(1e-3, rel=1e-4) and first_step(0.0) > 1.0
    assert "clip" in SCRATCH_LEVERS and variant({"clip": 1.0}, {}) == "clip 1"


def test_recovery_pace_slows_the_penalty_while_the_loss_is_high_and_still_ends_the_fade():
    import torch
    from torch import nn

    import assl
    from benchmarks.pace import RecoveryPace

    def paced(losses):
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
        pruner = assl.Pruner(model, torch.randn(2, 3, 8, 8), ratio=0.5, steps=100)
        plain = pruner.schedule
        pace = RecoveryPace(pruner, lambda: losses[pace.step], tol=0.5, slow=0.25)
        trace = []
        for _ in range(100):
            pace.before_step()
            trace.append(
                (pruner.penalty, plain.penalty(pace.step - 1, False), pace.schedule.clock)
            )  # as step() reads it
        return pace, trace

    pace, trace = paced([1.0] * 100)  # the loss never rises: the schedule's own pace
    assert all(p == q for p, q, _ in trace) and pace.slowed == 0
    pace, trace = paced([1.0] * 10 + [3.0] * 90)  # far above its level from step 10 on
    _, reg_end, _ = pace.schedule.bounds(False)
    assert all(p <= q for p, q, _ in trace) and any(p < q for p, q, _ in trace[10:50])
    assert pace.slowed > 0 and trace[pace.deadline][2] >= reg_end  # the fade still ends by the deadline


def test_gradient_guard_bounds_the_norm_during_the_fade_relative_to_its_level_before():
    import torch
    from torch import nn

    import assl
    from benchmarks.pace import WARMUP, GradGuard

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    pruner = assl.Pruner(model, torch.randn(2, 3, 8, 8), ratio=0.5, steps=100)
    guard = GradGuard(pruner, model, factor=3.0)
    assert guard.start >= WARMUP

    def step(size: float) -> float:
        for p in model.parameters():
            p.grad = torch.full_like(p, size)
        guard.before_step()
        return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))

    n = sum(p.numel() for p in model.parameters()) ** 0.5
    sizes = [1.0, 2.0, 3.0] + [2.0] * (guard.start - 3)
    assert [step(s) for s in sizes] == pytest.approx([s * n for s in sizes])  # measured, left alone
    reference = 2.0 * n  # the median before the fade
    assert step(2.5) == pytest.approx(2.5 * n)  # under 3x: left alone
    assert step(100.0) == pytest.approx(3 * reference)  # over: scaled down to 3x the reference
    grads = [p.grad.clone() for p in model.parameters()]
    assert all(torch.allclose(g, torch.full_like(g, 6.0)) for g in grads)  # every entry alike: direction kept
    assert guard.end() == {"guard_scaled": 1, "guard_reference": pytest.approx(reference)}
    with pytest.raises(ValueError, match="positive"):
        GradGuard(pruner, model, factor=0.0)


def test_gradient_guard_runs_in_the_harness_and_reports_its_scaled_steps(tmp_path):
    (plain,) = _values(_bn_smoke("bn_denoiser", ["assl"], tmp_path))
    (guarded,) = _values(_bn_smoke("bn_denoiser", ["assl"], tmp_path, "--grad_guard", "1e-6"))
    assert "guard_scaled" not in plain
    assert guarded["guard_scaled"] > 0 and guarded["guard_reference"] > 0  # a tiny factor binds every step
    assert guarded["params"] == plain["params"] and math.isfinite(guarded["score"])
    assert guarded["score"] != plain["score"]  # the scaled gradients changed the run
