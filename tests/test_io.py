"""assl.save / assl.load: a slimmed model comes back from a fresh dense instance, bit for bit."""

from __future__ import annotations

import io

import pytest
import torch
from models import CASES, EDSR, ResNet
from torch import nn
from torch.nn.utils import parametrize
from util import assert_same, max_rel_err, random_plan, snapshot

import assl
from assl import CheckpointError

BY_NAME = {c.name: c for c in CASES}
SIZE_ATTRS = (
    "in_channels",
    "out_channels",
    "groups",
    "in_features",
    "out_features",
    "num_features",
    "num_channels",
    "normalized_shape",
    "num_parameters",
)


def _slimmed(case):
    model = case.build().eval()
    extra = [case.other_inputs(0)] if case.other_inputs else []
    graph = assl.trace(model, case.inputs(0), extra_inputs=extra)
    plan = random_plan(graph, 0.5, seed=0)
    assert plan
    return assl.slim(model, graph, plan)


def _sizes(model: nn.Module) -> dict[str, dict[str, object]]:
    return {name: {a: getattr(m, a) for a in SIZE_ATTRS if hasattr(m, a)} for name, m in model.named_modules()}


def _assert_equal_models(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    assert _sizes(a) == _sizes(b)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    for k in pa:
        assert type(pa[k]) is nn.Parameter and pa[k].requires_grad == pb[k].requires_grad, k
    assert repr(a) == repr(b)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_round_trip_into_fresh_dense_model(case, tmp_path):
    slimmed = _slimmed(case)
    path = tmp_path / f"{case.name}.pt"
    assl.save(slimmed, path)

    fresh = case.build().eval()
    dense_params = sum(p.numel() for p in fresh.parameters())
    loaded = assl.load(fresh, path)

    assert loaded is fresh
    assert sum(p.numel() for p in fresh.parameters()) < dense_params
    assert not any(parametrize.is_parametrized(m) for m in fresh.modules())
    _assert_equal_models(slimmed, fresh)
    assert max_rel_err(slimmed, fresh, case.inputs(1)) == 0.0
    if case.other_inputs:
        assert max_rel_err(slimmed, fresh, case.other_inputs(2)) == 0.0


def test_file_is_plain_weights_only_data(tmp_path):
    slimmed = _slimmed(BY_NAME["prelu_instancenorm"])
    path = tmp_path / "m.pt"
    assl.save(slimmed, str(path))
    obj = torch.load(path, weights_only=True)
    assert set(obj) == {"format", "version", "state_dict", "sizes"}
    assert obj["format"] == "assl.slim" and obj["version"] == 1
    assert obj["state_dict"].keys() == slimmed.state_dict().keys()
    assert obj["sizes"]["conv_in"] == {"in_channels": 3, "out_channels": slimmed.conv_in.out_channels, "groups": 1}
    assert obj["sizes"]["norm_in"] == {"num_features": slimmed.norm_in.num_features}
    assert obj["sizes"]["act_in"] == {"num_parameters": slimmed.act_in.num_parameters}
    assert slimmed.act_in.num_parameters < 8  # the sizes really are the slimmed ones
    assert "body" not in obj["sizes"]  # containers are not layers


def test_linear_and_layernorm_sizes(tmp_path):
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.LayerNorm(8), nn.Linear(8, 3))
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.LayerNorm(8), nn.Linear(8, 3))
    graph = assl.trace(model, torch.randn(2, 6), approximate_norms=True)
    assl.slim(model, graph, {graph.groups[0].name: [1, 4, 6]})
    assert model[0].out_features == 5 and model[2].normalized_shape == (5,)
    buf = io.BytesIO()
    assl.save(model, buf)
    assert torch.load(io.BytesIO(buf.getvalue()), weights_only=True)["sizes"]["2"] == {"normalized_shape": [5]}
    buf.seek(0)
    assl.load(dense, buf)
    assert dense[2].normalized_shape == (5,)
    _assert_equal_models(model, dense)
    x = torch.randn(4, 6)
    assert torch.equal(model(x), dense(x))


def test_in_memory_buffer(tmp_path):
    case = BY_NAME["mobilenetv2"]
    slimmed = _slimmed(case)
    buf = io.BytesIO()
    assl.save(slimmed, buf)
    buf.seek(0)
    fresh = assl.load(case.build().eval(), buf)
    _assert_equal_models(slimmed, fresh)
    assert max_rel_err(slimmed, fresh, case.inputs(1)) == 0.0


def test_open_file_object(tmp_path):
    case = BY_NAME["grouped_deconv"]
    slimmed = _slimmed(case)
    with open(tmp_path / "m.pt", "wb") as f:
        assl.save(slimmed, f)
    with open(tmp_path / "m.pt", "rb") as f:
        fresh = assl.load(case.build().eval(), f)
    assert max_rel_err(slimmed, fresh, case.inputs(1)) == 0.0


def test_keeps_dtype_and_requires_grad_of_the_model(tmp_path):
    case = BY_NAME["edsr_x2"]
    slimmed = _slimmed(case)
    assl.save(slimmed, tmp_path / "m.pt")
    fresh = case.build().double()
    fresh.head[0].weight.requires_grad_(False)  # MeanShift's are frozen too
    before = dict(fresh.named_parameters())
    assl.load(fresh, tmp_path / "m.pt")
    assert all(t.dtype == torch.float64 for t in fresh.state_dict().values() if t.is_floating_point())
    replaced = kept = 0
    for name, p in fresh.named_parameters():
        old = before[name]
        assert p.requires_grad == old.requires_grad and p.dtype == old.dtype and p.device == old.device, name
        if p.shape == old.shape:
            assert p is old, name  # unchanged shapes keep their Parameter, the values are copied in
            kept += 1
        else:
            replaced += 1
    assert replaced and kept
    assert not fresh.head[0].weight.requires_grad and fresh.head[0].weight.shape[0] < 8
    assert not fresh.sub_mean.weight.requires_grad and fresh.sub_mean.weight.shape[0] < 3
    x = case.inputs(1)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x.double()).float(), slimmed(x), rtol=1e-5, atol=1e-5)


def test_different_architecture_raises_and_leaves_model_alone(tmp_path):
    slimmed = _slimmed(BY_NAME["edsr_x2"])
    assl.save(slimmed, tmp_path / "m.pt")
    other = ResNet()
    before = snapshot(other)
    with pytest.raises(
        CheckpointError,
        match=r"different architecture; state dict keys missing from the file: .*; not in the model: .*class and",
    ):
        assl.load(other, tmp_path / "m.pt")
    assert_same(before, snapshot(other))

    # same module names, one block fewer: only the keys of the missing block differ
    torch.manual_seed(0)
    shallower = EDSR(1, 8, 2)
    before = snapshot(shallower)
    with pytest.raises(
        assl.ASSLError,
        match=r"missing from the file: 'body\.1\.bias', 'body\.1\.weight'; not in the model: 'body\.1\.body\.0\.bias'",
    ):
        assl.load(shallower, tmp_path / "m.pt")
    assert_same(before, snapshot(shallower))


def test_larger_tensor_in_file_raises_and_leaves_model_alone(tmp_path):
    torch.manual_seed(0)
    assl.save(EDSR(2, 16, 2), tmp_path / "wide.pt")  # a dense, unslimmed model is a valid file
    narrow = BY_NAME["edsr_x2"].build()  # 8 features
    narrow.train()
    narrow(torch.randn(1, 3, 6, 6)).sum().backward()  # gradients must survive too
    before = snapshot(narrow)
    with pytest.raises(
        CheckpointError, match=r"'head\.0\.weight' is 16 x 3 x 3 x 3 in .* but 8 x 3 x 3 x 3 .*only shrinks"
    ):
        assl.load(narrow, tmp_path / "wide.pt")
    assert_same(before, snapshot(narrow))


def test_other_dims_or_sizes_raise_and_leave_model_alone(tmp_path):
    case = BY_NAME["vgg"]
    assl.save(_slimmed(case), tmp_path / "m.pt")
    obj = torch.load(tmp_path / "m.pt", weights_only=True)

    bad_dims = dict(obj, state_dict=dict(obj["state_dict"]))
    bad_dims["state_dict"]["classifier.0.weight"] = bad_dims["state_dict"]["classifier.0.weight"].flatten()
    bad_size = dict(obj, sizes={**obj["sizes"], "features.0": {"in_channels": 3, "out_channels": 99, "groups": 1}})
    no_size = dict(obj, sizes={k: v for k, v in obj["sizes"].items() if k != "classifier.3"})
    extra_size = dict(obj, sizes={**obj["sizes"], "features.2": {"num_features": 4}})  # a ReLU
    newer = dict(obj, version=2)
    for bad, pattern in [
        (bad_dims, r"'classifier\.0\.weight' is \d+ in .* but 16 x \d+ in the model"),
        (bad_size, r"`features\.0\.out_channels` is 99 .* but 8 in the model"),
        (no_size, r"no sizes for the model's layers 'classifier\.3'"),
        (extra_size, r"modules the model lacks .*'features\.2'"),
        (newer, r"version 2; this assl reads version 1: upgrade assl"),
    ]:
        buf = io.BytesIO()
        torch.save(bad, buf)
        buf.seek(0)
        model = case.build()
        before = snapshot(model)
        with pytest.raises(CheckpointError, match=pattern):
            assl.load(model, buf)
        assert_same(before, snapshot(model))


def test_saving_a_parametrized_model_raises(tmp_path):
    model = BY_NAME["weight_norm"].build()
    with pytest.raises(CheckpointError, match=r"'head' still has parametrizations \(weight\).*slim"):
        assl.save(model, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


def test_plain_state_dict_file_raises(tmp_path):
    case = BY_NAME["unet"]
    model = case.build()
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    before = snapshot(model)
    with pytest.raises(CheckpointError, match=r"plain\.pt' is not an assl\.save file: .*format 'assl\.slim'"):
        assl.load(model, tmp_path / "plain.pt")
    assert_same(before, snapshot(model))

    torch.save(model, tmp_path / "pickled.pt")  # a whole pickled model is refused by weights_only
    with pytest.raises(CheckpointError, match=r"weights_only=True.*format 'assl\.slim'"):
        assl.load(model, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="the file object cannot be read"):
        assl.load(model, io.BytesIO(b"not a torch file"))
    assert_same(before, snapshot(model))


def test_not_a_module():
    with pytest.raises(TypeError, match=r"nn\.Module"):
        assl.save({"weight": torch.zeros(1)}, io.BytesIO())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"nn\.Module"):
        assl.load("model", io.BytesIO())  # type: ignore[arg-type]
