"""The SR example's command line and model: the seed's commands parse, checkpoints load."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "sr"))

from ledsr import SRModel, load_pretrained
from options import QUICK, parse_args, parse_stage_pr, schedule
from pipeline import infer, ratio_map

import assl

SEED = (
    "--model LEDSR --scale {s} --patch_size {p} --ext sep --dir_data DATA --data_train DF2K --data_test DF2K "
    "--data_range 1-3550/3551-3555 --chop --save_results --n_resblocks 16 --n_feats 256 --method ASSL --wn "
    "--stage_pr [0-1000:0.80859375] --skip_layers *mean*,*tail* --same_pruned_wg_layers "
    "model.head.0,model.body.16,*body.2 --reg_upper_limit 0.5 --reg_granularity_prune 0.0001 "
    "--update_reg_interval 20 --stabilize_reg_interval 43150 --pre_train CKPT --same_pruned_wg_criterion reg "
    "--save main/SR/LEDSR_F256R16BIX{s}_DF2K_ASSL0.80859375_RGP0.0001_RUL0.5_Pretrain"
)


@pytest.mark.parametrize("scale, patch", [(2, 96), (3, 144), (4, 192)])
def test_the_seeds_commands_parse(scale, patch):
    args = parse_args(SEED.format(s=scale, p=patch).split())
    assert (args.scale, args.patch_size, args.n_resblocks, args.n_feats) == (scale, patch, 16, 256)
    assert args.stage_ranges == [(0, 1000, 0.80859375)]
    assert args.skip_layers == "*mean*,*tail*" and args.same_pruned_wg_layers == "model.head.0,model.body.16,*body.2"
    assert (args.reg_upper_limit, args.reg_granularity_prune, args.update_reg_interval) == (0.5, 1e-4, 20)
    assert args.stabilize_reg_interval == 43150 and args.pre_train == "CKPT" and args.dense_iters == 0
    assert args.chop and args.save_results and args.wn and args.method == "ASSL"


def test_seed_flags_drive_the_pruner_on_a_small_ledsr():
    args = parse_args(SEED.format(s=2, p=96).split())
    model = SRModel(n_resblocks=16, n_feats=8, scale=2)
    ratios = ratio_map(model, args.stage_ranges)
    pruned = set(assl.trace(model, torch.zeros(1, 3, 8, 8)).layers)
    pruner = assl.Pruner(
        model,
        torch.zeros(1, 3, 8, 8),
        ratio={k: v for k, v in ratios.items() if k in pruned},
        skip=args.skip_layers,
        groups=[args.same_pruned_wg_layers],
        schedule=assl.Schedule(align_iters=2),
    )
    assert pruner.aligned == ["model.head.0"]
    stream = pruner.graph.group("model.head.0").layers
    assert set(stream) == {"model.head.0", "model.body.16", *(f"model.body.{i}.body.2" for i in range(16))}
    assert pruner.removed["model.head.0"] == 7  # ceil(0.80859375 * 8) = 7 of 8
    assert all(v == 0 for k, v in pruner.removed.items() if "tail" in k or "mean" in k)


def test_the_seeds_commands_with_the_papers_penalty_are_the_papers_schedule():
    paper = ["--penalty_form", "gradient", "--align_loss", "authors"]
    args = parse_args([*SEED.format(s=2, p=96).split(), *paper])
    assert schedule(args) == assl.Schedule.paper() and schedule(args).total_steps == 160430
    # without it, the same numbers with the library's default penalty (valid: the limit 0.5 is below 1)
    default = schedule(parse_args(SEED.format(s=2, p=96).split()))
    assert default.penalty_form == "shrink" and default.align_loss == "consensus" and default.total_steps == 160430


def test_quick_fills_only_what_was_not_given():
    args = parse_args(["--quick", "--n_feats", "16", "--finetune_iters=7"])
    assert args.n_feats == 16 and args.finetune_iters == 7 and args.n_resblocks == QUICK["n_resblocks"]


def test_quick_sizes_its_schedule_by_steps_at_the_users_learning_rate():
    args = parse_args(["--quick"])
    assert schedule(args) == assl.Schedule.for_steps(400) and schedule(args).penalty_form == "shrink"
    assert args.scale_lr is None  # no learning rate of their own for the scales
    assert schedule(parse_args(["--quick", "--prune_steps", "120"])).total_steps == 120
    paper_form = schedule(parse_args(["--quick", "--penalty_form", "gradient"]))
    as_in_the_paper = {"penalty_form": "gradient", "guard_kept": False, "min_scale_lr": None}
    assert paper_form == assl.Schedule.for_steps(400, **as_in_the_paper)
    simple = parse_args(["--quick", "--same_pruned_wg_criterion", "simple"])
    assert schedule(simple) == assl.Schedule.for_steps(400, align=False)


def test_quick_with_the_authors_schedule_flags_builds_the_schedule_from_them():
    argv = "--quick --align_iters 10 --update_reg_interval 2 --reg_granularity_prune 0.1 --reg_upper_limit 0.5"
    s = schedule(parse_args([*argv.split(), "--stabilize_reg_interval", "5"]))
    assert (s.align_iters, s.reg_interval, s.reg_step, s.reg_limit, s.stabilize_iters) == (10, 2, 0.1, 0.5, 5)
    assert s.total_steps == 10 + 6 * 2 + 5


@pytest.mark.parametrize(
    "argv, message",
    [
        ("--prune_steps 100 --update_reg_interval 3", "--prune_steps sizes the whole schedule"),
        ("--reg_upper_limit 5 --reg_granularity_prune 0.2", "--penalty_form gradient"),  # shrink: limit < 1
        ("--prune_steps 5", "n >= 10"),
    ],
)
def test_schedules_that_cannot_work_are_refused_at_parse_time(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv.split())
    assert message in capsys.readouterr().err
    # the paper's form takes any limit
    assert schedule(parse_args("--penalty_form gradient --reg_upper_limit 5".split())).penalty_form == "gradient"


@pytest.mark.parametrize("bad", ["[0-10]", "[5-1:0.5]", "[0-10:1.0]", "[]", "0-10:x"])
def test_bad_stage_pr(bad):
    with pytest.raises(ValueError, match="stage_pr"):
        parse_stage_pr(bad)
    assert parse_stage_pr("[0-10:0.5,11-20:0.25]") == [(0, 10, 0.5), (11, 20, 0.25)]


@pytest.mark.parametrize("prefix", ["", "model."])
def test_authors_checkpoint_keys_load(prefix):
    torch.manual_seed(0)
    src = SRModel(n_resblocks=2, n_feats=8, scale=3)
    state = {prefix + k: v.clone() for k, v in src.model.state_dict().items()}
    assert "head.0.weight" in src.model.state_dict() and "body.0.body.0.weight" in src.model.state_dict()
    assert "body.2.weight" in src.model.state_dict()  # the body-end conv
    dst = SRModel(n_resblocks=2, n_feats=8, scale=3)
    load_pretrained(dst, state)
    x = torch.rand(1, 3, 6, 6) * 255
    torch.testing.assert_close(dst(x), src(x))


def test_checkpoint_of_another_shape_is_refused_clearly():
    state = SRModel(n_resblocks=2, n_feats=16, scale=2).model.state_dict()
    with pytest.raises(ValueError, match="--n_resblocks, --n_feats and --scale"):
        load_pretrained(SRModel(n_resblocks=2, n_feats=8, scale=2), state)
    with pytest.raises(ValueError, match="missing"):
        load_pretrained(SRModel(n_resblocks=3, n_feats=16, scale=2), state)


def test_module_names_match_the_authors():
    names = dict(SRModel(n_resblocks=16, n_feats=4).named_modules())
    for n in [
        "model.head.0",
        "model.body.16",
        "model.body.3.body.2",
        "model.tail.0",
        "model.sub_mean",
        "model.add_mean",
    ]:
        assert n in names


def test_chop_equals_whole_image_inference():
    torch.manual_seed(0)
    model = SRModel(n_resblocks=1, n_feats=4, scale=2).eval()
    lr = torch.rand(1, 3, 50, 70) * 255
    with torch.no_grad():
        whole = model(lr)
        tiled = infer(model, lr, chop=True, scale=2, tile=32, overlap=8)
    # the receptive field (radius 4 LR px here) is inside the overlap: tiles agree with the whole image
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-3)
