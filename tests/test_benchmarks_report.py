"""The benchmarks' harness: the results format, the MAC cross-check, the docs' generated tables."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
from torch import nn

from benchmarks import networks, report, results, tables
from benchmarks.macs import MACsMismatch, count_macs, flop_counter_macs


def test_results_round_trip(tmp_path):
    path = tmp_path / "sub" / "r.jsonl"
    settings = argparse.Namespace(ratio=0.5, out=path, sizes=(1, 2))
    writer = results.Writer(path, "demo", settings, argv=["--ratio", "0.5"])
    first = writer.write({"psnr": 34.0, "curve": [(0, 1.0)], "nan": math.nan}, seed=0)
    writer.write({"psnr": 33.5}, seed=1)
    rows = results.read(path)
    assert [r["seed"] for r in rows] == [0, 1] and rows[0]["values"]["curve"] == [[0, 1.0]]
    assert math.isnan(rows[0]["values"]["nan"]) and rows[0]["values"]["psnr"] == first["values"]["psnr"]
    for r in rows:
        assert r["schema"] == results.SCHEMA and r["benchmark"] == "demo" and r["run"] == writer.run
        assert r["settings"] == {"ratio": 0.5, "out": str(path), "sizes": [1, 2]} and r["argv"] == ["--ratio", "0.5"]
        env = r["env"]
        assert env["torch"] == torch.__version__ and env["threads"] >= 1 and env["cpu"] and env["python"]
        assert env["git"] is None or len(env["git"]["sha"]) == 40
    assert results.values(rows, psnr=33.5) == [{"psnr": 33.5}]
    again = results.Writer(path, "demo", {}, append=True)  # a second run adds to the file
    again.write({"psnr": 1.0})
    assert len(results.read(path)) == 3 and results.read(path)[2]["run"] != writer.run
    results.Writer(path, "demo", {}).write({"psnr": 2.0})  # without append, a run starts the file afresh
    assert [r["values"]["psnr"] for r in results.read(path)] == [2.0]


def test_results_record_paths_inside_the_repository_relative_to_it(tmp_path):
    inside = results.REPO / "runs" / "cache"
    settings = {"dense_cache": str(inside), "elsewhere": str(tmp_path), "ratio": 0.5}
    row = results.Writer(tmp_path / "r.jsonl", "demo", settings, argv=["--dense_cache", str(inside)]).write({})
    assert row["settings"] == {"dense_cache": "runs/cache", "elsewhere": str(tmp_path), "ratio": 0.5}
    assert row["argv"] == ["--dense_cache", "runs/cache"]


def test_results_read_rejects_other_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"psnr": 1}) + "\n")
    with pytest.raises(ValueError, match=r"r\.jsonl:1"):
        results.read(path)


@pytest.mark.parametrize(
    ("name", "kwargs", "shape"),
    [
        ("ledsr", {"blocks": 2, "feats": 16}, (1, 3, 16, 16)),
        ("resnet50_like", {}, (1, 3, 32, 32)),
        ("mobilenetv2_like", {}, (1, 3, 32, 32)),
        ("digits_resnet", {}, (2, 1, 8, 8)),
        ("digits_mobilenet", {}, (2, 1, 8, 8)),
        ("unet", {"up": "transpose"}, (1, 3, 16, 16)),
        ("unet", {"up": "bilinear"}, (1, 3, 16, 16)),
    ],
)
def test_macs_agree_with_torch_flop_counter(name, kwargs, shape):
    model = networks.build(name, seed=0, **kwargs).eval()
    x = torch.randn(shape)
    macs = count_macs(model, x)
    assert macs == flop_counter_macs(model, x) > 0


def test_macs_mismatch_is_an_error(monkeypatch):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    x = torch.randn(1, 3, 8, 8)
    assert count_macs(model, x) == 3 * 9 * 4 * 36 + 144 * 2
    monkeypatch.setattr("benchmarks.macs.flop_counter_macs", lambda m, i: 1)
    with pytest.raises(MACsMismatch, match="flop counter"):
        count_macs(model, x)


def test_table_command_leaves_out_where_files_went():
    argv = ["--repeats", "5", "--out", "x.jsonl", "--append", "--plot=a.png", "--dense_cache", "/tmp/d", "--quick"]
    row = {"benchmark": "trace_slim", "argv": argv}
    assert tables.command(row) == "python -m benchmarks.trace_slim --repeats 5 --quick"
    assert tables.markdown(["a", "b"], [[1, "x"]]) == "| a | b |\n|---|---|\n| 1 | x |"


def _rows(tmp_path, values):
    writer = results.Writer(tmp_path / "t.jsonl", "demo", {})
    for v in values:
        writer.write({"v": v})


def test_report_regenerates_and_checks_marked_tables(tmp_path, capsys):
    _rows(tmp_path, [1, 2])
    table = report.Table("demo", "t.jsonl", lambda rows: "\n".join(f"| {r['values']['v']} |" for r in rows))
    doc = tmp_path / "page.md"
    doc.write_text("Prose.\n\n<!-- table: demo -->\nold\n<!-- end table -->\n\nMore prose.\n")
    assert report.run([doc], check=True, tables=[table], results=tmp_path) == 1
    assert "old" in doc.read_text() and "differ" in capsys.readouterr().err
    assert report.run([doc], check=False, tables=[table], results=tmp_path) == 0
    text = doc.read_text()
    assert text == "Prose.\n\n<!-- table: demo -->\n\n| 1 |\n| 2 |\n\n<!-- end table -->\n\nMore prose.\n"
    assert report.run([doc], check=True, tables=[table], results=tmp_path) == 0
    _rows(tmp_path, [3])  # new results: the committed table is stale
    assert report.run([doc], check=True, tables=[table], results=tmp_path) == 1
    other = report.Table("other", "t.jsonl", table.render)  # registered, in no document
    assert report.run([doc], check=True, tables=[table, other], results=tmp_path) == 1
    assert "other appears in no document" in capsys.readouterr().err
    doc.write_text("<!-- table: nosuch -->\n<!-- end table -->\n")
    assert report.run([doc], check=True, tables=[table], results=tmp_path) == 1
    assert "names no table" in capsys.readouterr().err


def test_committed_docs_tables_match_the_committed_results(capsys):
    """``python -m benchmarks.report --check``: every generated table is what its results give."""
    assert report.main(["--check"]) == 0, capsys.readouterr().err
    for table in report.TABLES:
        rows = results.read(results.RESULTS / table.results)
        assert rows and all(r["env"]["torch"] and r["env"]["cpu"] for r in rows)
        assert not any(r["settings"].get("smoke") for r in rows), f"{table.results} holds a smoke run"
