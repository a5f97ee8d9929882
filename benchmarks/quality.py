"""Quality at equal budget: ASSL against the baselines, same model, same data, same iterations.

From one dense LEDSR per seed, every method prunes to the same kept width and then fine-tunes,
with pruning + fine-tuning steps equal across methods:

* ``assl``: alignment + growing regularization on the scales, then slim and fine-tune;
* ``assl_noalign``: the same without the alignment phase (groups chosen by aggregated |g|);
* ``l1``: one-shot L1-norm pruning, aligned per residual group (group-aggregated score);
* ``l1_authors``: the authors' L1 baseline: each layer ranks its own filters, and a residual
  group, which must lose the same channels to be slimmed, takes its first layer's ranking;
* ``random``: random channels per group;
* ``scratch``: the slimmed architecture re-initialized and trained for the dense + pruning +
  fine-tuning steps.

Reports PSNR/SSIM (Y, border = scale) on held-out test images (or, with ``--eval_split val``, on
the validation split that settings are chosen on), params, MACs (1280x720 output), wall time per
method, mean and spread over seeds, as a markdown table and a PNG.

    python benchmarks/quality.py --quick --out runs/quality       # CPU, embedded photos
    python benchmarks/quality.py --dir_data DIV2K --device cuda     # the full settings
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "sr"))
from data import EmbeddedSR, SRFolder, parse_data_range
from ledsr import SRModel
from metrics import psnr, ssim

import assl

METHODS = ("assl", "assl_noalign", "l1", "l1_authors", "random", "scratch", "tp_groupnorm", "tp_growingreg")
DEFAULT_METHODS = METHODS[:6]  # Torch-Pruning's two only when asked for (an optional install)
SKIP = ["*mean*", "*tail*"]


def _stream(data, batch: int, device: torch.device, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    while True:
        loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, drop_last=True, generator=g)
        for lr, hr, _ in loader:
            yield lr.to(device), hr.to(device)


def _train(
    model: nn.Module,
    stream,
    steps: int,
    lr: float,
    *,
    pruner: assl.Pruner | None = None,
    param_groups: list | None = None,
    stop: Callable[[], bool] | None = None,
    after_step: Callable[[int], None] | None = None,
) -> int:
    """``steps`` Adam steps of L1 training (plus the alignment term); ``after_step(n)`` after the n-th."""
    opt = torch.optim.Adam(param_groups or model.parameters(), lr=lr)
    if pruner is not None:
        pruner.attach(opt)
    done = 0
    while done < steps and not (stop and stop()):
        x, y = next(stream)
        loss = (model(x) - y).abs().mean() + (pruner.alignment_loss() if pruner is not None else 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += 1
        if after_step is not None:
            after_step(done)
    return done


@torch.no_grad()
def _evaluate(model: nn.Module, data, scale: int, device: torch.device) -> tuple[float, float]:
    model.eval()
    ps, ss = [], []
    for i in range(len(data)):
        lr, hr, _ = data[i]
        sr = model(lr[None].to(device))[0].clamp(0, 255).round()
        ps.append(psnr(sr, hr.to(device), scale=scale))
        ss.append(ssim(sr, hr.to(device), scale=scale))
    model.train()
    return sum(ps) / len(ps), sum(ss) / len(ss)


def _size(model: nn.Module, scale: int, device: torch.device) -> tuple[int, float]:
    graph = assl.trace(model, torch.zeros(1, 3, 16, 16, device=device))
    return sum(p.numel() for p in model.parameters()), graph.count_macs() * (1280 / scale) * (720 / scale) / 256 / 1e9


def _plan_by_scores(graph: assl.Graph, removed: dict[str, int], score: Callable[[assl.ChannelGroup], torch.Tensor]):
    plan = {}
    for g in graph.groups:
        k = removed.get(g.name, 0)
        if k:
            s = score(g).clone()
            s[torch.as_tensor(~g.prunable)] = math.inf
            plan[g.name] = sorted(torch.argsort(s, stable=True)[:k].tolist())
    return plan


def _l1_of(model: nn.Module, layer: str, group: assl.ChannelGroup) -> torch.Tensor:
    w = model.get_submodule(layer).weight.detach().abs().flatten(1).sum(1).cpu()
    units = torch.as_tensor(group.channels(layer))
    return torch.zeros(group.size).index_add(0, units, w) / torch.bincount(units, minlength=group.size)


def _torch_pruning(method: str, model: nn.Module, a: argparse.Namespace, stream, x0: torch.Tensor) -> nn.Module:
    """Torch-Pruning's GroupNormPruner or GrowingRegPruner: regularize for --prune_iters, then prune.

    Its tracer loses the convs behind ``ReLU(inplace=True)``, so the copy it prunes uses
    out-of-place ReLUs (the same function); the mean shifts and the tail are left alone as for the
    other methods (it also mishandles PixelShuffle).
    """
    import torch_pruning as tp  # type: ignore[import-not-found]

    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    ignored = [m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and ("mean" in n or "tail" in n)]
    imp = tp.importance.GroupMagnitudeImportance(p=2)
    cls = tp.pruner.GroupNormPruner if method == "tp_groupnorm" else tp.pruner.GrowingRegPruner
    pruner = cls(model, x0, importance=imp, pruning_ratio=a.ratio, ignored_layers=ignored)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    for step in range(a.prune_iters):
        x, y = next(stream)
        loss = (model(x) - y).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        pruner.regularize(model)
        opt.step()
        if method == "tp_growingreg" and step % a.reg_interval == 0:
            pruner.update_reg()
    pruner.step()
    return model


def assl_pruner(model: nn.Module, a: argparse.Namespace, *, align: bool = True) -> tuple[assl.Pruner, list[dict]]:
    """The Pruner of the ``assl`` methods on ``model`` and Adam param groups (scales at ``--scale_lr``)."""
    sched = assl.Schedule(
        align_iters=a.align_iters if align else 0,
        align_weight=a.align_weight,
        reg_interval=a.reg_interval,
        reg_step=a.reg_step,
        reg_limit=a.reg_limit,
        stabilize_iters=a.stabilize_iters,
    )
    # pixel-like values: slim() reports the output change on these (an all-black image gives ~0 out)
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255
    pruner = assl.Pruner(
        model,
        x.to(next(model.parameters()).device),
        ratio=a.ratio,
        skip=SKIP,
        schedule=sched,
    )
    pen = {id(p) for p in pruner.penalized_parameters()}
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in pen]},
        {"params": pruner.penalized_parameters(), "lr": a.scale_lr},
    ]
    return pruner, groups


def run_method(method: str, dense: nn.Module, a: argparse.Namespace, seed: int, data, device) -> dict:
    torch.manual_seed(seed + 1000)
    model = copy.deepcopy(dense)
    stream = _stream(data["train"], a.batch_size, device, seed + 2000)
    x0 = torch.zeros(1, 3, 16, 16, device=device)
    t0 = time.time()
    total = a.prune_iters + a.finetune_iters
    if method in ("assl", "assl_noalign"):
        pruner, groups = assl_pruner(model, a, align=method == "assl")
        used = _train(model, stream, a.prune_iters, a.lr, pruner=pruner, param_groups=groups, stop=lambda: pruner.done)
        small = pruner.slim()
        finetune = total - used
    elif method.startswith("tp_"):
        small, finetune = _torch_pruning(method, model, a, stream, x0), a.finetune_iters
        try:
            small(x0)
        except RuntimeError as e:  # a broken pruned model is a result too: report it, go on
            print(f"# {method} produced a model that fails on its own example input: {e}", flush=True)
            return {
                "method": method,
                "seed": seed,
                "psnr": math.nan,
                "ssim": math.nan,
                "params": 0,
                "gmacs": 0.0,
                "wall_s": time.time() - t0,
                "error": str(e).split("\n")[0],
            }
    elif method == "scratch":
        ref = assl.Pruner(copy.deepcopy(dense), x0, ratio=a.ratio, skip=SKIP).prune_now("l1")
        small = ref
        for m in small.modules():  # same slim shapes, fresh weights
            if isinstance(m, nn.Conv2d) and m.weight.requires_grad:
                m.reset_parameters()
        finetune = a.dense_iters + total
    else:
        graph = assl.trace(model, x0)
        removed = assl.Pruner(copy.deepcopy(dense), x0, ratio=a.ratio, skip=SKIP).removed
        if method == "l1":
            score = lambda g: sum(_l1_of(model, n, g) / _l1_of(model, n, g).mean() for n in g.layers)  # noqa: E731
        elif method == "l1_authors":
            score = lambda g: _l1_of(model, g.layers[0], g)  # noqa: E731
        else:
            gen = torch.Generator().manual_seed(seed + 3000)
            score = lambda g: torch.rand(g.size, generator=gen)  # noqa: E731
        small = assl.slim(model, graph, _plan_by_scores(graph, removed, score))
        finetune = total
    _train(small, stream, finetune, a.lr)
    p, s = _evaluate(small, data["eval"], a.scale, device)
    params, gmacs = _size(small, a.scale, device)
    return {
        "method": method,
        "seed": seed,
        "psnr": p,
        "ssim": s,
        "params": params,
        "gmacs": gmacs,
        "wall_s": time.time() - t0,
    }


def _summary(rows: list[dict], a: argparse.Namespace, dense_rows: list[dict]) -> str:
    out = [
        "| method | ratio | PSNR (dB) | SSIM | params | GMACs | wall s | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def line(name: str, rs: list[dict], ratio: str) -> str:
        if any("error" in r for r in rs):
            return f"| {name} | {ratio} | failed: {rs[0].get('error', '')[:90]} | - | - | - | - | {len(rs)} |"
        ps = [r["psnr"] for r in rs]
        ss = [r["ssim"] for r in rs]
        sd = statistics.stdev(ps) if len(ps) > 1 else 0.0
        return (
            f"| {name} | {ratio} | {statistics.mean(ps):.3f} ± {sd:.3f} | {statistics.mean(ss):.4f} | "
            f"{rs[0]['params']:,} | {rs[0]['gmacs']:.2f} | {statistics.mean(r['wall_s'] for r in rs):.0f} | "
            f"{len(rs)} |"
        )

    out.append(line("dense", dense_rows, "0"))
    bic = [r["bicubic"] for r in dense_rows]
    out.append(f"| bicubic | - | {statistics.mean(bic):.3f} | - | - | - | - | {len(bic)} |")
    for m in a.methods:
        rs = [r for r in rows if r["method"] == m]
        if rs:
            out.append(line(m, rs, f"{a.ratio:g}"))
    return "\n".join(out)


def _plot(rows: list[dict], dense_rows: list[dict], path: Path, split: str = "test") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    methods = [m for m in methods if not any("error" in r for r in rows if r["method"] == m)]
    for i, m in enumerate(methods):
        ps = [r["psnr"] for r in rows if r["method"] == m]
        ax.scatter([i] * len(ps), ps, alpha=0.6)
        ax.errorbar(i, statistics.mean(ps), yerr=statistics.stdev(ps) if len(ps) > 1 else 0, fmt="k_", capsize=6)
    d = [r["psnr"] for r in dense_rows]
    ax.axhline(statistics.mean(d), color="gray", ls="--", label="dense")
    ax.axhline(statistics.mean(r["bicubic"] for r in dense_rows), color="gray", ls=":", label="bicubic")
    ax.set_xticks(range(len(methods)), methods, rotation=20)
    ax.set_ylabel(f"PSNR (Y, dB), {split} images")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser(description: str | None = __doc__) -> argparse.ArgumentParser:
    """The flags of the quality benchmark (shared by ``alignment_study.py``)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU-sized model and steps (tens of minutes)")
    p.add_argument("--smoke", action="store_true", help="seconds: used by the test suite")
    p.add_argument("--dir_data", default=None)
    p.add_argument("--data_range", default="1-800/801-810")
    p.add_argument(
        "--val_range", default=None, help="DIV2K indices for --eval_split val (must not overlap the training range)"
    )
    p.add_argument(
        "--eval_split",
        default="test",
        choices=("test", "val"),
        help="report on the held-out test images, or on the validation split used to choose settings",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--blocks", type=int, default=16)
    p.add_argument("--feats", type=int, default=64)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--patch_size", type=int, default=96)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--scale_lr", type=float, default=2e-4)
    p.add_argument("--dense_iters", type=int, default=10000)
    p.add_argument("--prune_iters", type=int, default=3000, help="pruning-stage cap (ASSL's schedule is sized to fit)")
    p.add_argument("--finetune_iters", type=int, default=5000)
    p.add_argument("--align_iters", type=int, default=500)
    p.add_argument("--align_weight", type=float, default=1.0)
    p.add_argument("--reg_interval", type=int, default=4)
    p.add_argument("--reg_step", type=float, default=0.005)
    p.add_argument("--reg_limit", type=float, default=0.5)
    p.add_argument("--stabilize_iters", type=int, default=1000)
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        choices=METHODS,
        help="tp_groupnorm / tp_growingreg need torch-pruning installed",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--dense_cache",
        default=None,
        help="folder to keep the trained dense models in and reuse them from (keyed by every setting they depend on)",
    )
    p.add_argument("--out", default="runs/quality")
    return p


QUICK = {
    "blocks": 4,
    "feats": 32,
    "patch_size": 48,
    "batch_size": 8,
    "lr": 5e-4,
    "scale_lr": 3e-2,
    "dense_iters": 2000,
    "prune_iters": 400,
    "finetune_iters": 600,
    "align_iters": 100,
    "reg_interval": 4,
    "reg_step": 0.02,
    "stabilize_iters": 168,
}
SMOKE = {
    "blocks": 1,
    "feats": 4,
    "patch_size": 16,
    "batch_size": 2,
    "dense_iters": 3,
    "prune_iters": 6,
    "finetune_iters": 2,
    "align_iters": 2,
    "reg_interval": 1,
    "reg_step": 0.25,
    "stabilize_iters": 1,
    "seeds": 1,
    "methods": ["assl", "l1", "scratch"],
}


def parse_args(p: argparse.ArgumentParser, argv: list[str] | None, smoke: dict | None = None) -> argparse.Namespace:
    """Parse with ``--quick`` / ``--smoke`` as defaults: flags given explicitly still win."""
    pre, _ = p.parse_known_args(argv)
    if pre.quick:
        p.set_defaults(**QUICK)
    if pre.smoke:
        p.set_defaults(**{**SMOKE, **(smoke or {})})
    return p.parse_args(argv)


def configure(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads``; return the device."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.device(args.device)


def load_data(args: argparse.Namespace) -> dict:
    """``train`` patches and the ``eval`` images (``--eval_split``: test or validation)."""
    side = {"max_side": 48} if args.smoke else {}
    if args.dir_data:
        tr, te = parse_data_range(args.data_range)
        if args.eval_split == "val":
            if not args.val_range:
                raise SystemExit("--eval_split val with --dir_data needs --val_range, e.g. 781-800 (outside training)")
            te = parse_data_range(f"1-1/{args.val_range}")[1]
            if te[0] <= tr[1] and tr[0] <= te[1]:
                raise SystemExit(f"--val_range {args.val_range} overlaps the training range of --data_range")
        return {
            "train": SRFolder(args.dir_data, tr, args.scale, patch_size=args.patch_size, repeat=20),
            "eval": SRFolder(args.dir_data, te, args.scale, train=False),
        }
    return {
        "train": EmbeddedSR("train", args.scale, patch_size=args.patch_size, repeat=50, **side),
        "eval": EmbeddedSR(args.eval_split, args.scale, train=False, **side),
    }


def _dense_key(args: argparse.Namespace, seed: int) -> str:
    fields = ("blocks", "feats", "scale", "patch_size", "batch_size", "lr", "dense_iters", "dir_data", "data_range")
    text = json.dumps([seed, torch.__version__, args.device, args.smoke, *(getattr(args, f) for f in fields)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def train_dense(args: argparse.Namespace, seed: int, data: dict, device: torch.device) -> tuple[nn.Module, dict]:
    """The dense LEDSR of ``seed`` (trained, or loaded from ``--dense_cache``) and its table row."""
    torch.manual_seed(seed)
    dense = SRModel(n_resblocks=args.blocks, n_feats=args.feats, scale=args.scale).to(device)
    t0 = time.time()
    cached = Path(args.dense_cache) / f"dense-{_dense_key(args, seed)}.pt" if args.dense_cache else None
    if cached is not None and cached.is_file():
        saved = torch.load(cached, map_location=device, weights_only=True)
        dense.load_state_dict(saved["state"])
        wall = saved["wall_s"]
    else:
        _train(dense, _stream(data["train"], args.batch_size, device, seed), args.dense_iters, args.lr)
        wall = time.time() - t0
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"state": dense.state_dict(), "wall_s": wall}, cached)
    dp, ds = _evaluate(dense, data["eval"], args.scale, device)
    bic = []
    for i in range(len(data["eval"])):
        lr_, hr_, _ = data["eval"][i]
        up = nn.functional.interpolate(lr_[None], scale_factor=args.scale, mode="bicubic")[0]
        bic.append(psnr(up[:, : hr_.shape[1], : hr_.shape[2]].clamp(0, 255).round(), hr_, scale=args.scale))
    params, gmacs = _size(dense, args.scale, device)
    row = {
        "method": "dense",
        "seed": seed,
        "psnr": dp,
        "ssim": ds,
        "params": params,
        "gmacs": gmacs,
        "wall_s": wall,
        "bicubic": sum(bic) / len(bic),
    }
    return dense, row


def describe(args: argparse.Namespace, device: torch.device) -> str:
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return (
        f"LEDSR {args.blocks}x{args.feats} x{args.scale}, ratio {args.ratio}, {what}, torch {torch.__version__}, "
        f"{args.seeds} seeds, scored on the {args.eval_split} images"
    )


def sweep(
    args: argparse.Namespace, data: dict, device: torch.device, runs: Callable[[nn.Module, int], Iterator[dict]]
) -> tuple[list[dict], list[dict]]:
    """For each seed, the dense model and then the rows ``runs(dense, seed)`` yields, each printed as
    JSON as it comes (a cut-short run keeps what it printed). Returns (rows, dense rows)."""
    rows, dense_rows = [], []
    for seed in range(args.seeds):
        dense, row = train_dense(args, seed, data, device)
        dense_rows.append(row)
        for r in runs(dense, seed):
            rows.append(r)
            print(json.dumps(r), flush=True)
    return rows, dense_rows


def save(out: Path, stem: str, table: str, args: argparse.Namespace, rows: list[dict], dense_rows: list[dict]) -> None:
    """Print ``table`` and write it and the raw rows as ``out/stem.md`` and ``out/stem.json``."""
    print(table)
    (out / f"{stem}.md").write_text(table + "\n")
    (out / f"{stem}.json").write_text(json.dumps({"args": vars(args), "dense": dense_rows, "rows": rows}, indent=1))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(build_parser(), argv)
    device = configure(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(args)
    print(f"# quality: {describe(args, device)}", flush=True)
    rows, dense_rows = sweep(
        args, data, device, lambda dense, seed: (run_method(m, dense, args, seed, data, device) for m in args.methods)
    )
    save(out, "quality", _summary(rows, args, dense_rows), args, rows, dense_rows)
    _plot(rows, dense_rows, out / "quality.png", args.eval_split)


if __name__ == "__main__":
    main()
