"""The SR example's command line and model: the seed's commands parse, checkpoints load."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "sr"))

from ledsr import SRModel, load_pretrained
from options import QUICK, parse_args, parse_stage_pr
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


def test_quick_fills_only_what_was_not_given():
    args = parse_args(["--quick", "--n_feats", "16", "--finetune_iters=7"])
    assert args.n_feats == 16 and args.finetune_iters == 7 and args.n_resblocks == QUICK["n_resblocks"]


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
