"""assl.save / assl.load: a slimmed model comes back from a fresh dense instance, bit for bit."""

from __future__ import annotations

import io
import re
import struct
import zipfile

import pytest
import torch
from models import CASES, EDSR, VGG, GroupedDeconvNet, ResNet
from torch import nn
from torch.nn.utils import parametrize
from util import assert_same, max_rel_err, random_plan, snapshot

import assl
from assl import CheckpointError
from assl.serialization._format import _digest

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
    return assl.apply_plan(model, graph, plan)


def _rewritten(obj: dict, digest: bool = True) -> io.BytesIO:
    """``obj`` saved as assl.save saves, its digest recomputed (or kept as it is, ``digest=False``)."""
    if digest:
        obj = dict(obj, sha256=_digest(obj["state_dict"], obj["sizes"]))
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def _sizes(model: nn.Module) -> dict[str, dict[str, object]]:
    return {name: {a: getattr(m, a) for a in SIZE_ATTRS if hasattr(m, a)} for name, m in model.named_modules()}


def _assert_equal_models(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        if not torch.is_tensor(sa[k]):  # extra state
            assert sa[k] == sb[k], k
            continue
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
    assert set(obj) == {"format", "version", "state_dict", "sizes", "sha256"}
    assert obj["format"] == "assl.slim" and obj["version"] == 2
    assert len(obj["sha256"]) == 64 and obj["sha256"] == _digest(obj["state_dict"], obj["sizes"])
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
    assl.apply_plan(model, graph, {graph.groups[0].name: [1, 4, 6]})
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
    newer = dict(obj, version=3)
    for bad, pattern in [
        (bad_dims, r"'classifier\.0\.weight' is \d+ in .* but 16 x \d+ in the model"),
        (bad_size, r"`features\.0\.out_channels` is 99 .* but 8 in the model"),
        (no_size, r"no sizes for the model's layers 'classifier\.3'"),
        (extra_size, r"modules the model lacks .*'features\.2'"),
        (newer, r"version 3; this assl reads version 2: upgrade assl"),
    ]:
        buf = _rewritten(bad)  # with a digest that matches: these files are consistent, but do not fit
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


# --- damaged and contradictory files: refused, and the model passed to load stays as it was ---


def _attrs(model: nn.Module) -> dict[str, tuple]:
    """Per module: class, plain attributes, and the very parameter, buffer and submodule objects."""
    out = {}
    for name, m in model.named_modules(remove_duplicate=False):
        plain = {k: v for k, v in vars(m).items() if k not in ("_parameters", "_buffers", "_modules")}
        out[name] = (type(m), plain, dict(m._parameters), dict(m._buffers), dict(m._modules))
    return out


def _values(model: nn.Module) -> dict[str, object]:
    """Copies of the state dict (extra state included), gradients, repr and training flags."""
    return {
        "state": {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in model.state_dict().items()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "repr": repr(model),
        "training": [m.training for m in model.modules()],
    }


def _before(model: nn.Module) -> tuple:
    return _values(model), _attrs(model)


def _assert_untouched(model: nn.Module, before: tuple) -> None:
    values, attrs = before
    now = _values(model)
    assert now["repr"] == values["repr"] and now["training"] == values["training"]
    for part in ("state", "grads"):
        assert list(now[part]) == list(values[part])
        for k, v in values[part].items():
            w = now[part][k]
            assert (torch.equal(v, w) and v.dtype == w.dtype) if torch.is_tensor(v) else v == w, k
    now_attrs = _attrs(model)
    assert list(now_attrs) == list(attrs)
    for name, (cls, plain, params, buffers, modules) in attrs.items():
        cls2, plain2, params2, buffers2, modules2 = now_attrs[name]
        assert cls2 is cls and plain2 == plain, name
        for old, new in ((params, params2), (buffers, buffers2), (modules, modules2)):
            assert list(new) == list(old) and all(new[k] is old[k] for k in old), name


def _small_vgg() -> nn.Module:
    """A narrower VGG with the dense one's module names: what slimming VGG() could give."""
    torch.manual_seed(1)
    model = VGG(cfg=(6, 4, "M", 8, "M"))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # stats that differ from a fresh model's
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.num_batches_tracked.fill_(7)
    return model.eval()


def _dense_vgg() -> nn.Module:
    torch.manual_seed(0)
    return VGG().eval()


def _refused(model: nn.Module, buf: object, pattern: str) -> CheckpointError:
    before = _before(model)
    with pytest.raises(CheckpointError, match=pattern) as info:
        assl.load(model, buf)  # type: ignore[arg-type]
    _assert_untouched(model, before)
    return info.value


def _edited(obj: dict, name: str, **attrs) -> dict:
    """``obj`` with some of the saved sizes of layer ``name`` replaced."""
    return dict(obj, sizes={**obj["sizes"], name: {**obj["sizes"][name], **attrs}})


def test_sizes_that_contradict_the_tensors_are_refused():
    small = _small_vgg()
    buf = io.BytesIO()
    assl.save(small, buf)
    obj = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)

    _assert_equal_models(small, assl.load(_dense_vgg(), _rewritten(obj)))  # rewritten unedited, it loads

    kernel = dict(obj, state_dict=dict(obj["state_dict"]))
    kernel["state_dict"]["features.0.weight"] = kernel["state_dict"]["features.0.weight"][:, :, :2, :2].clone()
    head = r"contradicts itself: its sizes give "
    for bad, pattern in [
        (
            _edited(obj, "features.0", out_channels=5),
            head + r"`features\.0` \(Conv2d\) in_channels=3, out_channels=5, groups=1; these make "
            r"'features\.0\.weight' 5 x 3 x 3 x 3, but the file's tensor is 6 x 3 x 3 x 3\. The file is damaged",
        ),
        (_edited(obj, "features.3", groups=2), r"`features\.3\.groups` is 2 in .* but 1 in the model: .* only shrinks"),
        (_edited(obj, "features.3", groups=0), r"not both multiples of groups 0"),
        (
            _edited(obj, "features.4", num_features=3),
            r"`features\.4` \(BatchNorm2d\) num_features=3; these make 'features\.",
        ),
        (
            _edited(obj, "classifier.0", in_features=16),
            r"'classifier\.0\.weight' 16 x 16, but the file's tensor is 16 x 32",
        ),
        (
            _edited(obj, "classifier.3", out_features=9),
            r"'classifier\.3\.weight' 9 x 16, but the file's tensor is 10 x 16",
        ),
        (kernel, r"'features\.0\.weight' 6 x 3 x 3 x 3, but the file's tensor is 6 x 3 x 2 x 2"),
    ]:
        _refused(_dense_vgg(), _rewritten(bad), pattern)
        # the same edit without a matching digest is refused as damaged before anything else
        _refused(_dense_vgg(), _rewritten(bad, digest=False), r"is damaged: its tensors and sizes do not match")

    torch.manual_seed(0)
    deconv = GroupedDeconvNet(ch=6, up_ch=8)  # groups=2 ConvTranspose2d 6 -> 8
    buf = io.BytesIO()
    assl.save(deconv, buf)
    obj = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    _refused(
        GroupedDeconvNet(),
        _rewritten(_edited(obj, "up", groups=1)),
        r"`up` \(ConvTranspose2d\) in_channels=6, out_channels=8, groups=1; these make 'up\.weight' 6 x 8 x 4 x 4, "
        r"but the file's tensor is 6 x 4 x 4 x 4",
    )


def test_other_layers_sizes_that_contradict_the_tensors_are_refused():
    def net(c):
        return nn.Sequential(
            nn.Linear(6, c), nn.LayerNorm(c), nn.PReLU(c), nn.GroupNorm(2, c), nn.Conv1d(c, c, 3, groups=c)
        )

    buf = io.BytesIO()
    assl.save(net(4), buf)
    obj = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    for name, attrs, pattern in [
        ("0", {"out_features": 3}, r"'0\.weight' 3 x 6, but the file's tensor is 4 x 6"),
        ("1", {"normalized_shape": [3]}, r"`1` \(LayerNorm\) normalized_shape=\[3\]; these make '1\.weight' 3,"),
        ("2", {"num_parameters": 3}, r"'2\.weight' 3, but the file's tensor is 4"),
        ("3", {"num_channels": 2}, r"'3\.weight' 2, but the file's tensor is 4"),
        ("3", {"num_channels": 3}, r"num_channels 3 is not a multiple of num_groups 2"),
        ("4", {"groups": 2}, r"'4\.weight' 4 x 2 x 3, but the file's tensor is 4 x 1 x 3"),  # depthwise, slimmed
        ("4", {"groups": 3}, r"in_channels 4 and out_channels 4 are not both multiples of groups 3"),
        ("4", {"out_channels": 2, "groups": 2}, r"'4\.weight' 2 x 2 x 3, but the file's tensor is 4 x 1 x 3"),
    ]:
        bad = dict(obj, sizes={**obj["sizes"], name: {**obj["sizes"][name], **attrs}})
        _refused(net(8), _rewritten(bad), pattern)
    loaded = assl.load(net(8), _rewritten(obj))  # the unedited file loads
    assert loaded[3].num_channels == 4 and loaded[1].normalized_shape == (4,) and loaded[2].num_parameters == 4


def _start(data: bytes, info: zipfile.ZipInfo) -> int:
    """Where the bytes of a stored (uncompressed) zip member begin."""
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len


def _payloads(data: bytes) -> list[range]:
    """Where the bytes of each tensor record lie in a torch zip file."""
    spans = []
    archive = zipfile.ZipFile(io.BytesIO(data))
    for info in archive.infolist():
        if "/data/" in info.filename:
            start = _start(data, info)
            assert data[start : start + info.file_size] == archive.read(info)
            spans.append(range(start, start + info.file_size))
    return spans


def test_truncated_files_are_refused(tmp_path):
    small = _small_vgg()
    assl.save(small, tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    cuts = sorted({k * len(data) // 20 for k in range(20)} | {len(data) - 1})
    for cut in cuts:
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(data[:cut])
        _refused(_dense_vgg(), path, rf"cut{cut}\.pt' cannot be read with .*truncated or corrupted.* again")
    _assert_equal_models(small, assl.load(_dense_vgg(), tmp_path / "m.pt"))
    with pytest.raises(FileNotFoundError):  # a missing file is not a damaged one
        assl.load(_dense_vgg(), tmp_path / "missing.pt")


def test_flipped_bits_are_refused_or_provably_harmless():
    small = _small_vgg()
    buf = io.BytesIO()
    assl.save(small, buf)
    data = buf.getvalue()
    payloads = _payloads(data)
    pickle = zipfile.ZipFile(io.BytesIO(data)).getinfo("archive/data.pkl")
    # 40 positions spread over the file, 40 over the pickle that holds names, sizes and tensor layouts
    positions = [k * len(data) // 40 + 7 for k in range(40)]
    positions += [_start(data, pickle) + k * pickle.file_size // 40 for k in range(40)]
    refused = in_payload = harmless = 0
    for k, pos in enumerate(positions):
        flipped = bytearray(data)
        flipped[pos] ^= 1 << (k % 8)
        model = _dense_vgg()
        before = _before(model)
        try:
            assl.load(model, io.BytesIO(bytes(flipped)))
        except CheckpointError as e:
            refused += 1
            assert re.search(r"again|upgrade assl", str(e)), str(e)  # says what to do
            _assert_untouched(model, before)
            continue
        # loaded: only a byte that changes nothing (zip padding and headers, an unused pickle memo slot)
        assert not any(pos in span for span in payloads), f"byte {pos} of a tensor flipped, and it loaded"
        _assert_equal_models(small, model)
        harmless += 1
    in_payload = sum(any(pos in span for span in payloads) for pos in positions)
    assert in_payload >= 15 and refused >= in_payload and refused + harmless == len(positions)


def test_files_without_a_digest_are_refused():
    buf = io.BytesIO()
    assl.save(_small_vgg(), buf)
    obj = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    old = {k: v for k, v in obj.items() if k != "sha256"}
    _refused(_dense_vgg(), _rewritten(dict(old, version=1), digest=False), r"version 1, written by an earlier assl ")
    _refused(_dense_vgg(), _rewritten(old, digest=False), r"has no integrity digest \('sha256'\).* save the model")
    _refused(_dense_vgg(), _rewritten(dict(obj, sha256=None), digest=False), r"a NoneType 'sha256' .*damaged")
    _refused(_dense_vgg(), _rewritten(dict(obj, format="assl.slin")), r"format 'assl\.slin' .*damaged; copy it again")


class _Tagged(nn.Module):
    """Extra state that a fresh model may refuse."""

    def __init__(self, tag: str, refuse: str = ""):
        super().__init__()
        self.tag, self.refuse = tag, refuse

    def forward(self, x):
        return x

    def get_extra_state(self):
        return {"tag": self.tag}

    def set_extra_state(self, state):
        if state["tag"] == self.refuse:
            raise ValueError(f"tag {self.refuse!r} refused")
        self.tag = state["tag"]


def _failing(empty, fail_at: int):
    calls = [0]

    def failing_empty(*args, **kwargs):
        calls[0] += 1
        if calls[0] == fail_at:
            raise RuntimeError("no memory left (simulated)")
        return empty(*args, **kwargs)

    return failing_empty


def _fail_after_reading(monkeypatch, empty) -> None:
    """Make ``torch.empty`` ``empty`` once assl.load has read the file (torch.load allocates too)."""
    checked = assl.serialization._format._checked

    def checked_then_fail(obj, where):
        out = checked(obj, where)
        monkeypatch.setattr(torch, "empty", empty)
        return out

    monkeypatch.setattr(assl.serialization._format, "_checked", checked_then_fail)


def test_a_failure_after_the_model_started_to_change_restores_it(monkeypatch):
    def net(c, refuse=""):
        torch.manual_seed(c)
        return nn.Sequential(
            nn.Conv2d(3, c, 3), _Tagged("a"), nn.BatchNorm2d(c), nn.Conv2d(c, 2, 1), _Tagged("b", refuse)
        )

    buf = io.BytesIO()
    small = net(4)
    small[1].tag = small[4].tag = "new"
    assl.save(small, buf)
    # in order: the first _Tagged takes its new tag, the last conv's bias (same shape) its new values in
    # place, then the last _Tagged refuses its tag: tag and values go back
    fresh = net(8, refuse="new")
    assert fresh[3].bias.shape == small[3].bias.shape and not torch.equal(fresh[3].bias, small[3].bias)
    buf.seek(0)
    e = _refused(fresh, buf, r"loading the file object into the model failed \(ValueError: tag 'new' refused\)")
    assert isinstance(e.__cause__, ValueError)
    buf.seek(0)
    loaded = assl.load(net(8), buf)
    assert loaded[1].tag == loaded[4].tag == "new" and loaded[0].out_channels == 4
    _assert_equal_models(small, loaded)

    case = BY_NAME["weight_norm"]  # parametrizations are folded, then must come back
    path = io.BytesIO()
    assl.save(_slimmed(case), path)
    for fail_at in (1, 3):  # allocating the first, or a later, new tensor fails
        fresh = case.build()
        assert any(parametrize.is_parametrized(m) for m in fresh.modules())
        _fail_after_reading(monkeypatch, _failing(torch.empty, fail_at))
        path.seek(0)
        _refused(fresh, path, r"failed \(RuntimeError: no memory left \(simulated\)\); the model is as it was")
        monkeypatch.undo()

    # a module that fails to take its weights, after the ones before it took theirs
    fresh = case.build()
    last = [m for m in fresh.modules() if list(m.parameters(recurse=False))][-1]

    def refuse(*args, **kwargs):
        raise RuntimeError("cannot copy (simulated)")

    monkeypatch.setattr(last, "_load_from_state_dict", refuse)
    path.seek(0)
    _refused(fresh, path, r"failed \(RuntimeError: cannot copy \(simulated\)\)")
    monkeypatch.undo()

    # running out of memory keeps its own type, and the model is restored all the same
    fresh = case.build()
    before = _before(fresh)
    _fail_after_reading(monkeypatch, lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    path.seek(0)
    with pytest.raises(MemoryError):
        assl.load(fresh, path)
    monkeypatch.undo()
    _assert_untouched(fresh, before)
    path.seek(0)
    assert max_rel_err(_slimmed(case), assl.load(fresh, path), case.inputs(1)) == 0.0


def test_a_groupnorm_that_lost_whole_groups_loads_with_its_num_groups():
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(4, 8), nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()

    small = net()
    x = torch.randn(2, 3, 6, 6)
    graph = assl.trace(small, x)
    assl.apply_plan(small, graph, {"0": [1, 3]})  # two of the four norm groups
    assert small[1].num_groups == 2 and small[1].num_channels == 4
    buf = io.BytesIO()
    assl.save(small, buf)
    loaded = assl.load(net(), io.BytesIO(buf.getvalue()))
    assert loaded[1].num_groups == 2 and torch.equal(loaded(x), small(x))
    buf = io.BytesIO()
    assl.save(net(), buf)
    obj = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    old = _rewritten(dict(obj, sizes={**obj["sizes"], "1": {"num_channels": 8}}))  # saved before num_groups was
    assert assl.load(net(), old)[1].num_groups == 4
