"""Smoke runs of the benchmark and example scripts, so they do not rot."""

from __future__ import annotations

import argparse
import json
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_trace_slim_benchmark_smoke(tmp_path, capsys):
    from benchmarks.trace_slim import main

    rows = main(["--smoke", "--out", str(tmp_path / "r.jsonl")])
    out = capsys.readouterr().out
    assert "| LEDSR 2x8 |" in out and "trace ms" in out
    v = rows[0]["values"]
    assert v["trace_ms"] > 0 and v["slim_ms"] > 0 and len(v["samples_ms"]["slim"]) == 2


def test_slim_demo_runs_and_is_exact(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["slim_demo.py", "--blocks", "2", "--feats", "8"])
    runpy.run_path(str(ROOT / "examples" / "slim_demo.py"), run_name="__main__")
    out = capsys.readouterr().out
    err = float(out.split("masked dense| on a new input size: ")[1].split()[0])
    assert err <= 1e-5
    assert "parameters" in out and "faster" in out


BENCHMARKS = [
    "trace_slim",
    "step_overhead",
    "quality",
    "alignment_study",
    "inference_speed",
    "bn_classifier",
    "bn_denoiser",
    "latency_budget",
    "latency_quality",
    "bn_alignment_study",
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


def test_latency_quality_benchmark_smoke(tmp_path, monkeypatch):
    import math

    import torch

    import assl

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from latency_quality import ARMS, main

    threads = torch.get_num_threads()
    try:
        rows = main(["--smoke", "--device", "cpu", "--threads", "1", "--out", str(tmp_path)])
        table = str(tmp_path / "latency_table.pt")
        again = main(["--smoke", "--device", "cpu", "--threads", "1", "--table", table, "--out", str(tmp_path / "b")])
    finally:
        torch.set_num_threads(threads)
    assert [r["arm"] for r in rows] == list(ARMS)
    for r, s in zip(rows, again):  # the saved table gives the same plans, and training the same models
        assert (r["widths"], r["predicted"], r["psnr"]) == (s["widths"], s["predicted"], s["psnr"])
    by = {r["arm"]: r for r in rows}
    assert by["latency"]["predicted"] <= 0.7 + 1e-9  # the Pruner's widths meet the target on the table
    assert abs(by["latency"]["solver_predicted"] - by["latency"]["predicted"]) < 1e-6  # same table, same prediction
    assert by["one ratio, equal latency"]["predicted"] <= 0.7 + 1e-9 and by["one ratio, equal latency"]["ratio"] > 0
    assert by["equal MACs"]["plan_macs"] <= by["latency"]["plan_macs"]  # the largest one-ratio model within them
    step = by["one ratio on the step, equal latency"]
    grid = assl.LatencyTable.load(tmp_path / "latency_table.pt").step  # the table the run measured and saved
    assert step["predicted"] <= 0.7 + 1e-9 and all(w % grid == 0 or w == 64 for w in step["widths"].values())
    # the largest one-ratio model within the latency plan's MACs; one ratio moves MACs in coarse
    # steps when the latency plan is lopsided (a noisy table can make it so)
    assert 0.7 < by["equal MACs"]["macs"] / by["latency"]["macs"] < 1.06
    for r in rows:
        assert math.isfinite(r["psnr"]) and math.isfinite(r["psnr_slim"]) and r["measured"] > 0 and r["widths"]
        assert 0 < r["macs"] < 1 and 0 < r["params"] < 1
    table = (tmp_path / "latency_quality.md").read_text()
    for arm in ARMS:
        assert f"| 0.7 | {arm} |" in table
    assert "minus `latency`, paired by seed" in table and (tmp_path / "latency_quality.json").is_file()


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


def test_quality_benchmark_smoke(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from quality import main as quality_main

    quality_main(["--smoke", "--device", "cpu", "--out", str(tmp_path)])
    table = (tmp_path / "quality.md").read_text()
    for name in ("dense", "bicubic", "assl", "l1", "scratch"):
        assert f"| {name} |" in table
    assert (tmp_path / "quality.png").is_file() and (tmp_path / "quality.json").is_file()


def test_quality_benchmark_dense_cache_and_val_split(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from quality import main as quality_main

    cache = str(tmp_path / "c")
    args = ["--smoke", "--device", "cpu", "--methods", "l1", "--eval_split", "val", "--dense_cache", cache]
    quality_main([*args, "--out", str(tmp_path / "a")])
    assert len(list((tmp_path / "c").glob("dense-*.pt"))) == 1
    quality_main([*args, "--out", str(tmp_path / "b")])  # the dense model comes from the cache
    first, second = (json.loads((tmp_path / d / "quality.json").read_text()) for d in "ab")
    assert first["dense"][0]["psnr"] == second["dense"][0]["psnr"]
    assert first["rows"][0]["psnr"] == second["rows"][0]["psnr"]
    assert len(list((tmp_path / "c").glob("dense-*.pt"))) == 1
    quality_main([*args, "--out", str(tmp_path / "d"), "--lr", "1e-3"])  # another setting: another model
    assert len(list((tmp_path / "c").glob("dense-*.pt"))) == 2
    test = json.loads((tmp_path / "a" / "quality.json").read_text())
    assert "val" in capsys.readouterr().out and test["args"]["eval_split"] == "val"


def test_alignment_study_smoke(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from alignment_study import main as study_main

    study_main(["--smoke", "--device", "cpu", "--out", str(tmp_path)])
    table = (tmp_path / "alignment_study.md").read_text()
    for setting in ("noalign", "consensus:0", "consensus:10"):
        assert f"| {setting} |" in table
    rows = json.loads((tmp_path / "alignment_study.json").read_text())["rows"]
    assert all(0 <= r["agreement_start"] <= 1 for r in rows)
    ratios = [r["grad_ratio"] for r in rows if r["weight"] is not None]
    assert ratios[0] == 0.0 and ratios[1] > 0  # weight 0: no alignment gradient; weight 10: some
    assert all(0 <= r["removed_share"] <= 1 and r["left_g"] >= 0 for r in rows)
    assert (tmp_path / "alignment_study.png").is_file()


def test_alignment_study_measures(monkeypatch):
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from alignment_study import parse_setting, removed_share

    same = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    opposite = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    assert abs(removed_share(same, [0, 1]) - 0.3) < 1e-7  # (1 + 2) / 10
    assert abs(removed_share(opposite, [3]) - 0.25) < 1e-7  # (4/10 + 1/10) / 2
    assert parse_setting("noalign") is None
    assert parse_setting("authors:1") == ("authors", 1.0) and parse_setting("consensus:0") == ("consensus", 0.0)
    for bad in ("consensus", "paper:1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_setting(bad)


def test_quality_presets_are_defaults_that_explicit_flags_override(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from _sr_args import QUICK, build_parser, parse_args

    args = parse_args(build_parser(), ["--quick", "--prune_iters", "600", "--finetune_iters", "400"])
    assert (args.prune_iters, args.finetune_iters) == (600, 400)
    assert (args.blocks, args.feats, args.align_iters) == (QUICK["blocks"], QUICK["feats"], QUICK["align_iters"])
    assert parse_args(build_parser(), ["--quick"]).prune_iters == QUICK["prune_iters"]
    assert parse_args(build_parser(), []).blocks == 16


def _bn_smoke(script: str, methods: list[str], tmp_path, monkeypatch) -> list[dict]:
    """Run a BatchNorm benchmark's ``--smoke`` preset in this process, on one thread."""
    import importlib

    import torch

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    main = importlib.import_module(script).main
    threads = torch.get_num_threads()
    try:
        return main(["--smoke", "--threads", "1", "--methods", *methods, "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)


def test_bn_classifier_smoke(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")

    methods = ["assl", "l1", "scratch"]
    rows = _bn_smoke("bn_classifier", methods, tmp_path, monkeypatch)
    assert [r["method"] for r in rows] == methods
    assert len({r["params"] for r in rows}) == 1  # every method at the same size
    assert rows[0]["liveness"] >= 0 and "liveness_groups" in rows[0]
    table = (tmp_path / "bn_classifier.md").read_text()
    for name in ("dense", *methods):
        assert f"| {name} |" in table
    assert (tmp_path / "bn_classifier-0.5.png").is_file() and (tmp_path / "bn_classifier.json").is_file()


def test_bn_classifier_says_what_is_missing_without_scikit_learn(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    for name in ("sklearn", "sklearn.datasets", "sklearn.model_selection"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    from bn_classifier import load

    with pytest.raises(SystemExit, match="scikit-learn"):
        load()


def test_bn_denoiser_smoke(tmp_path, monkeypatch):

    methods = ["assl", "l1", "scratch"]
    rows = _bn_smoke("bn_denoiser", methods, tmp_path, monkeypatch)
    assert [r["method"] for r in rows] == methods and len({r["params"] for r in rows}) == 1
    table = (tmp_path / "bn_denoiser.md").read_text()
    assert "| assl | 0.5 |" in table and "noisy test photos" in table


def test_bn_alignment_study_smoke(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from _alignment import DEFAULT_SETTINGS
    from bn_alignment_study import main as study_main

    threads = torch.get_num_threads()
    try:
        rows = study_main(["--smoke", "--threads", "1", "--out", str(tmp_path / "study")])
        classifier = _bn_smoke("bn_classifier", ["assl", "assl_noalign"], tmp_path / "classifier", monkeypatch)
    finally:
        torch.set_num_threads(threads)
    assert [r["setting"] for r in rows] == DEFAULT_SETTINGS
    by = {r["setting"]: r for r in rows}
    for r in rows:
        assert set(r["groups"]) == {"stem.0", "layer2.0.downsample.0"}  # the two streams; single layers left out
        assert r["chance"] == 0.5 and all(v == 0.5 for v in r["chance_groups"].values())
        assert 0 <= r["agreement_start"] <= 1 and 0 <= r["removed_share"] <= 1
        assert all(0 <= r[k] <= 1 for k in ("acc_before_slim", "acc_slim", "acc"))
        assert r["agreement_start"] == by["noalign"]["agreement_start"]  # the same dense model for every setting
        assert all(v > 0 for v in r["spread_groups"].values())
    assert "agreement_end" not in by["noalign"] and by["noalign"]["align_iters"] == 0
    for s in DEFAULT_SETTINGS[1:]:
        assert 0 <= by[s]["agreement_end"] <= 1 and by[s]["align_iters"] > 0 and by[s]["g_drift"] >= 0
    assert by["consensus:0"]["weight"] == 0.0 and by["authors:1"]["loss"] == "authors"
    # paired with bn_classifier.py: the default setting is its assl, noalign its assl_noalign
    same = {"consensus:1": classifier[0], "noalign": classifier[1]}
    for setting, r in same.items():
        assert (by[setting]["acc_slim"], by[setting]["acc"]) == (r["before"], r["after"])
        assert by[setting]["acc_before_slim"] == r["before_slim"]
    table = (tmp_path / "study" / "bn_alignment_study.md").read_text()
    for s in DEFAULT_SETTINGS:
        assert f"| {s} |" in table
    for s in DEFAULT_SETTINGS:
        assert (f"| 0.5 | {s} | " in table.split("minus the weight-0 control")[1]) == (s != "consensus:0")
    assert (tmp_path / "study" / "bn_alignment_study.json").is_file()


def test_alignment_paired_differences(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from _alignment import agreement_at_choice, paired

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
    out = paired(rows, [("agreement", agreement_at_choice, 2), ("acc", lambda r: r["acc"], 2)])
    assert out[2] == "| 0.5 | noalign | -0.06, +0.00 (mean -0.03) | -0.02, +0.00 (mean -0.01) |"
    assert out[3] == "| 0.5 | consensus:1 | +0.20, +0.10 (mean +0.15) | +0.04, -0.10 (mean -0.03) |"
    assert len(out) == 4 and paired([r for r in rows if r["setting"] != "consensus:0"], []) == []
