"""Upstream YOLOv5 import: equality with upstream's own outputs, the restricted unpickler, and
upstream-format files that differ from the released ones (pruned widths, moved anchors, fused convs,
train.py checkpoints with EMA and numpy values, the pip package's class prefix, P6 models)."""
import hashlib
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import convert
from models import load_model, model_from_checkpoint
from models.checkpoint import CheckpointError
from models.translate import (C3Block, ConcatBlock, ConvBlock, DetectBlock, SPPFBlock, UpsampleBlock,
                              load_yaml, yaml_blocks)
from models.upstream import (UpstreamError, _Inert, find_upstream_model, import_upstream,
                             load_upstream_pickle, resolve_global, upstream_to_model)

ROOT = Path(__file__).resolve().parents[1]
COCO_ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]


def close(a: torch.Tensor, ref: torch.Tensor) -> bool:
    """The refdata tolerance: max |a - ref| <= 1e-4 max |ref|."""
    assert a.shape == ref.shape
    return bool((a - ref).abs().max() <= 1e-4 * ref.abs().max())


def _io(refdata: Path, name: str):
    return (torch.load(refdata / "input_x.pt", weights_only=True)["x"],
            torch.load(refdata / f"{name}_io.pt", weights_only=True))


def _fresh(ckpt: dict):
    return model_from_checkpoint(ckpt)


# ---------------------------------------------------------------------------------------------
# equality with upstream's outputs
# ---------------------------------------------------------------------------------------------
def test_fixtures_are_the_recorded_files(refdata):
    """The reference files are upstream's bytes (SHA256SUMS), not a re-save or a Git LFS pointer."""
    listed = [line.split() for line in (refdata / "SHA256SUMS").read_text().splitlines() if line.strip()]
    assert {name for _, name in listed} == {p.name for p in refdata.glob("*.pt")}
    for digest, name in listed:
        actual = hashlib.sha256((refdata / name).read_bytes()).hexdigest()
        assert actual == digest, f"{refdata / name} differs from the file in SHA256SUMS: restore it from git"


def _train_rows(maps: list[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """The raw (B, 3, H, W, no) training maps as (B, sum 3HW, no) in inference row order, at ``rows``."""
    return torch.cat([p.flatten(1, 3) for p in maps], 1)[:, rows]


def test_refdata_yolov5s_random(refdata):
    x, io = _io(refdata, "yolov5s_random_v62")
    ckpt = import_upstream(refdata / "yolov5s_random_v62.pt", verbose=False)
    rows = io["rows"]
    with torch.no_grad():
        y, _ = _fresh(ckpt).eval()(x)
        assert y.shape == (2, 6300, 85)
        assert close(y[:, rows], io["eval_y_rows"])
        train = _fresh(ckpt).train()(x)
        assert [tuple(p.shape) for p in train] == [(2, 3, s, s, 85) for s in (40, 20, 10)]
        assert close(_train_rows(train, rows), io["train_p_rows"])
        y, _ = _fresh(ckpt).eval().fuse()(x)
        assert close(y[:, rows], io["fused_y_rows"])


def test_refdata_yolov5s_with_bn_statistics(refdata):
    """Upstream's recipe: model.float().load_state_dict(bnvar, strict=False) on the upstream model."""
    x, io = _io(refdata, "yolov5s_random_v62")
    bnvar = torch.load(refdata / "yolov5s_random_v62_bnvar.pt", weights_only=True)
    upstream, _ = find_upstream_model(load_upstream_pickle(refdata / "yolov5s_random_v62.pt"))
    result = upstream.float().load_state_dict(bnvar, strict=False)
    assert not result.unexpected_keys
    model, _ = upstream_to_model(upstream)
    rows = io["rows"]
    with torch.no_grad():
        y, _ = model.eval()(x)
        assert close(y[:, rows], io["bnvar_eval_y_rows"])
        y_fused, _ = model.fuse()(x)
        assert close(y_fused[:, rows], io["bnvar_fused_y_rows"])
    # with these statistics the output depends on the weights: the reference is not trivial
    plain, _ = upstream_to_model(find_upstream_model(load_upstream_pickle(refdata / "yolov5s_random_v62.pt"))[0])
    with torch.no_grad():
        assert not close(plain.eval()(x)[0][:, rows], io["bnvar_eval_y_rows"])


def test_refdata_yolov5n_trained(refdata):
    x, io = _io(refdata, "yolov5n_shapes_v62")
    ckpt = import_upstream(refdata / "yolov5n_shapes_v62.pt", verbose=False)
    with torch.no_grad():
        y, raw = _fresh(ckpt).eval()(x)
        assert close(y, io["eval_y"])
        for k, r in enumerate(raw):
            assert close(r, io[f"eval_raw{k}"])
        for k, p in enumerate(_fresh(ckpt).train()(x)):
            assert close(p, io[f"train_p{k}"])
        y, _ = _fresh(ckpt).eval().fuse()(x)
        assert close(y, io["fused_y"])


def test_import_metadata(refdata, tmp_path, capsys):
    ckpt = import_upstream(refdata / "yolov5n_shapes_v62.pt")
    assert "model weights" in capsys.readouterr().out  # says which weights it used
    assert ckpt["names"] == ["circle", "rectangle", "triangle", "cross"]
    assert ckpt["stride"] == [8.0, 16.0, 32.0]
    assert ckpt["ema"] is None and ckpt["epoch"] == -1
    assert isinstance(ckpt["hyp"], dict) and "lr0" in ckpt["hyp"]
    entry = ckpt["history"][-1]
    assert entry["step"] == "import" and entry["weights"] == "model"
    assert entry["upstream_class"] == "models.yolo.DetectionModel"
    assert entry["source"] == str(refdata / "yolov5n_shapes_v62.pt")
    model = model_from_checkpoint(ckpt)
    assert model.nc == 4 and model.names == ckpt["names"]
    assert [m.anchors.flatten().tolist() for m in model.yolo_layers] == COCO_ANCHORS
    # our file is a plain dict of tensors and Python values
    torch.save(ckpt, tmp_path / "c.pt")
    again = torch.load(tmp_path / "c.pt", weights_only=True)
    assert again["cfg"] == ckpt["cfg"] and again["history"] == ckpt["history"]


def test_load_model_reads_upstream_files(refdata):
    x, io = _io(refdata, "yolov5n_shapes_v62")
    model = load_model(refdata / "yolov5n_shapes_v62.pt", verbose=False)
    assert not model.training and model.stride.tolist() == [8, 16, 32]
    with torch.no_grad():
        assert close(model(x)[0], io["eval_y"])


# ---------------------------------------------------------------------------------------------
# the restricted unpickler
# ---------------------------------------------------------------------------------------------
class _SystemCall:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _GetattrEscape:
    def __reduce__(self):
        import collections
        return getattr, (collections.OrderedDict, "fromkeys")  # an allowed object, a foreign attribute


class _Eval:
    def __reduce__(self):
        return eval, ("1 + 1",)


@pytest.mark.parametrize("zip_format", [True, False])
def test_malicious_pickle_is_refused(tmp_path, zip_format):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    torch.save({"model": _SystemCall(marker), "epoch": 1}, path, _use_new_zipfile_serialization=zip_format)
    name = f"{os.system.__module__}.system"
    for loader in (import_upstream, lambda p: load_model(p, verbose=False)):
        with pytest.raises(UpstreamError) as e:
            loader(path)
        assert name in str(e.value) and str(path) in str(e.value)
        assert isinstance(e.value, CheckpointError)
    assert not marker.exists()


@pytest.mark.parametrize("payload, name", [(_GetattrEscape(), "builtins.getattr"), (_Eval(), "builtins.eval")])
def test_other_globals_refused(tmp_path, payload, name):
    torch.save({"model": payload}, tmp_path / "x.pt")
    with pytest.raises(UpstreamError, match=name.replace(".", r"\.")):
        import_upstream(tmp_path / "x.pt")


def _legacy_file(path: Path, payload: bytes) -> Path:
    """A torch legacy-format (pre-zip) file whose main pickle is ``payload``."""
    from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION
    info = {"protocol_version": PROTOCOL_VERSION, "little_endian": sys.byteorder == "little",
            "type_sizes": {"short": 2, "int": 4, "long": 4}}
    head = b"".join(pickle.dumps(v, protocol=2) for v in (MAGIC_NUMBER, PROTOCOL_VERSION, info))
    path.write_bytes(head + payload + pickle.dumps([], protocol=2))
    return path


def test_state_cannot_be_set_on_allowed_functions(tmp_path):
    """BUILD on an allowed global would change it for the whole process (here its defaults)."""
    name = b"__defaults__"
    payload = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n"  # GLOBAL (allowed)
               b"N}X" + len(name).to_bytes(4, "little") + name +  # state (None, {name: (7,)})
               b"K\x07\x85s\x86b.")  # BUILD
    before = torch._utils._rebuild_tensor_v2.__defaults__
    with pytest.raises(UpstreamError, match=r"_rebuild_tensor_v2"):
        import_upstream(_legacy_file(tmp_path / "build.pt", payload))
    assert torch._utils._rebuild_tensor_v2.__defaults__ == before


def test_allow_list():
    assert resolve_global("collections", "OrderedDict") is __import__("collections").OrderedDict
    assert resolve_global("torch.nn.modules.conv", "Conv2d") is nn.Conv2d
    assert resolve_global("__builtin__", "set") is set
    assert resolve_global("torch", "HalfStorage") is torch.HalfStorage
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        assert callable(resolve_global(module, "_reconstruct"))
        assert callable(resolve_global(module, "scalar"))
    assert resolve_global("numpy", "dtype") is np.dtype
    assert resolve_global("numpy.dtypes", "Float64DType") is type(np.dtype("f8"))
    assert issubclass(resolve_global("models.yolo", "Model"), _Inert)
    assert issubclass(resolve_global("yolov5.models.common", "C3"), _Inert)
    for module, name in [("os", "system"), ("posix", "system"), ("builtins", "eval"),
                         ("builtins", "exec"), ("builtins", "__import__"), ("numpy", "load"),
                         ("numpy.core.multiarray", "fromfile"), ("numpy.testing", "run"),
                         ("torch", "load"), ("torch._utils", "_rebuild_from_type"),
                         ("torch.nn.modules.module", "Module"), ("subprocess", "Popen"),
                         ("models.common", "Focus"), ("models.yolo", "Segment"),
                         ("utils.general", "check_file"), ("torch.nn.modules.conv", "Conv3d")]:
        with pytest.raises(pickle.UnpicklingError) as e:
            resolve_global(module, name)
        assert f"{module}.{name}" in str(e.value)


# ---------------------------------------------------------------------------------------------
# writing upstream-format files without upstream code (inert look-alike classes)
# ---------------------------------------------------------------------------------------------
_UPSTREAM_CLASSES = {"yolo": ("DetectionModel", "Detect"),
                     "common": ("Conv", "C3", "Bottleneck", "SPPF", "Concat")}


def forward_fuse(self, x):  # named like upstream's method: a bound method pickles by its name
    return x


def _lookalike_modules(prefix: str) -> dict[str, types.ModuleType]:
    """Importable modules ``<prefix>.yolo`` / ``<prefix>.common`` holding classes with upstream names."""
    mods = {}
    parts = prefix.split(".")
    for k in range(1, len(parts)):
        mods[".".join(parts[:k])] = types.ModuleType(".".join(parts[:k]))
    for sub, names in _UPSTREAM_CLASSES.items():
        mod = types.ModuleType(f"{prefix}.{sub}")
        for name in names:
            cls = type(name, (nn.Module,), {"__module__": mod.__name__, "__qualname__": name,
                                            "forward_fuse": forward_fuse})
            setattr(mod, name, cls)
        mods[mod.__name__] = mod
    return mods


def _as_upstream(obj, monkeypatch, prefix: str = "models"):
    """Re-class every stand-in in ``obj`` to a look-alike named ``<prefix>.*`` (importable)."""
    mods = _lookalike_modules(prefix)
    for name, mod in mods.items():
        if name != "models":  # our own package stays; only the submodules are added
            monkeypatch.setitem(sys.modules, name, mod)
    trees = [v for v in (obj.values() if isinstance(obj, dict) else [obj]) if isinstance(v, nn.Module)]
    for tree in trees:
        for m in tree.modules():
            if isinstance(m, _Inert):
                name = type(m).upstream_name.rsplit(".", 1)[1].replace("Model", "DetectionModel") \
                    if type(m).upstream_name.endswith(".Model") else type(m).upstream_name.rsplit(".", 1)[1]
                sub = "yolo" if name in _UPSTREAM_CLASSES["yolo"] else "common"
                m.__class__ = getattr(mods[f"{prefix}.{sub}"], name)
    return obj


def _save_upstream(obj, path: Path, monkeypatch, prefix: str = "models") -> Path:
    torch.save(_as_upstream(obj, monkeypatch, prefix), path)
    return path


def _load_tree(refdata: Path, name: str = "yolov5n_shapes_v62"):
    obj = load_upstream_pickle(refdata / f"{name}.pt")
    return obj, find_upstream_model(obj)[0].float()


def _slice_out(conv_module, keep: int) -> None:
    """Keep the first ``keep`` output channels of an upstream Conv (conv + bn)."""
    conv = conv_module.conv
    conv.weight = nn.Parameter(conv.weight[:keep].clone())
    conv.out_channels = keep
    bn = conv_module.bn
    bn.weight, bn.bias = nn.Parameter(bn.weight[:keep].clone()), nn.Parameter(bn.bias[:keep].clone())
    bn.running_mean, bn.running_var = bn.running_mean[:keep].clone(), bn.running_var[:keep].clone()
    bn.num_features = keep


def _slice_in(conv_module, keep_idx: torch.Tensor) -> None:
    conv = conv_module.conv
    conv.weight = nn.Parameter(conv.weight[:, keep_idx].clone())
    conv.in_channels = len(keep_idx)


def _fuse(conv_module) -> None:
    conv, bn = conv_module.conv, conv_module.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, groups=conv.groups, bias=True)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
    conv_module.conv = fused
    del conv_module._modules["bn"]
    conv_module.forward = conv_module.forward_fuse  # as upstream's fuse() leaves it


def test_pruned_moved_anchors_fused(refdata, tmp_path, monkeypatch):
    """A pruned model in upstream format (stale yaml) imports with the widths of its tensors."""
    x = torch.load(refdata / "input_x.pt", weights_only=True)["x"][:1, :, :128, :128]
    _, ref_tree = _load_tree(refdata)
    obj, tree = _load_tree(refdata)
    for t in (ref_tree, tree):  # autoanchor moved the anchors
        t.model[24].anchors.mul_(torch.tensor([1.1, 0.9]))
    # the channels removed below contribute nothing in the reference
    c3, c3b = ref_tree.model[2], ref_tree.model[4]
    half, width = c3.cv2.conv.out_channels // 2, c3.cv2.conv.out_channels
    with torch.no_grad():
        c3.cv3.conv.weight[:, width + half:] = 0  # concat(m, cv2): cv2 channels come second
        hidden = c3b.m[0].cv1.conv.out_channels
        c3b.m[0].cv2.conv.weight[:, hidden // 2:] = 0
    # prune: model.2.cv2 keeps half its outputs, model.4.m.0.cv1 keeps half; fuse model.0
    p3, p3b = tree.model[2], tree.model[4]
    _slice_out(p3.cv2, half)
    _slice_in(p3.cv3, torch.arange(width + half))
    _slice_out(p3b.m[0].cv1, hidden // 2)
    _slice_in(p3b.m[0].cv2, torch.arange(hidden // 2))
    obj["model"] = tree
    _as_upstream(obj, monkeypatch)
    _fuse(tree.model[0])
    path = tmp_path / "pruned.pt"
    torch.save(obj, path)
    ckpt = import_upstream(path, verbose=False)
    model = model_from_checkpoint(ckpt).eval()
    reference, keymap = upstream_to_model(ref_tree)
    assert model.cfg.layers[keymap["model.2.cv2"]].options["filters"] == half
    assert model.cfg.layers[keymap["model.4.m.0.cv1"]].options["filters"] == hidden // 2
    assert not model.cfg.layers[keymap["model.0"]].bn and model.module_list[0].Conv2d.bias is not None
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in reference.parameters())
    moved = (torch.tensor(COCO_ANCHORS, dtype=torch.float32).view(3, 3, 2) * torch.tensor([1.1, 0.9]))
    for level, m in enumerate(model.yolo_layers):
        assert torch.allclose(m.anchors, moved[level], rtol=1e-6)
    with torch.no_grad():
        y_ref, _ = reference.eval()(x)
        y, _ = model(x)
    assert close(y, y_ref)


def test_train_checkpoint_with_ema_numpy_and_pip_prefix(refdata, tmp_path, monkeypatch):
    """An unstripped train.py last.pt: model + EMA, optimizer, numpy values; v7.0 dict names."""
    obj, ema = _load_tree(refdata)
    _, raw = _load_tree(refdata)
    with torch.no_grad():
        for p in raw.parameters():
            p.mul_(0.5)  # the non-EMA weights differ
    ema.names = {0: "circle", 1: "rectangle", 2: "triangle", 3: "cross"}
    opt_state = torch.optim.SGD(raw.parameters(), lr=0.01, momentum=0.9).state_dict()
    last = {"epoch": 29, "best_fitness": np.array([0.1234]), "model": raw, "ema": ema,
            "updates": np.int64(960), "optimizer": opt_state, "wandb_id": None,
            "opt": {"epochs": 30, "hyp": {"lr0": np.float64(0.01)}}, "date": "2024-01-01"}
    path = _save_upstream(last, tmp_path / "last.pt", monkeypatch, prefix="yolov5.models")
    ckpt = import_upstream(path, verbose=False)
    entry = ckpt["history"][-1]
    assert entry["weights"] == "ema" and entry["upstream_epoch"] == 29
    assert entry["upstream_class"] == "yolov5.models.yolo.DetectionModel"
    assert ckpt["names"] == ["circle", "rectangle", "triangle", "cross"]
    x, io = _io(refdata, "yolov5n_shapes_v62")
    with torch.no_grad():
        assert close(model_from_checkpoint(ckpt).eval()(x)[0], io["eval_y"])
    torch.save(ckpt, tmp_path / "ours.pt")
    assert torch.load(tmp_path / "ours.pt", weights_only=True)["names"] == ckpt["names"]


def test_unsupported_upstream_module_named(tmp_path, monkeypatch):
    mods = _lookalike_modules("models")
    focus_mod = types.ModuleType("models.common")
    focus = type("Focus", (nn.Module,), {"__module__": "models.common", "__qualname__": "Focus"})
    focus_mod.Focus = focus
    monkeypatch.setitem(sys.modules, "models.common", focus_mod)
    monkeypatch.setitem(sys.modules, "models.yolo", mods["models.yolo"])
    model = mods["models.yolo"].DetectionModel()
    model.model = nn.Sequential(focus())
    torch.save({"model": model}, tmp_path / "v5.pt")
    with pytest.raises(UpstreamError, match=r"models\.common\.Focus.*not supported"):
        import_upstream(tmp_path / "v5.pt")


def test_untranslatable_layer_is_named(refdata):
    _, tree = _load_tree(refdata)
    tree.model[10] = nn.Identity()
    tree.model[10].f, tree.model[10].i = -1, 10
    with pytest.raises(UpstreamError, match=r"model\.10 \(Identity\)"):
        upstream_to_model(tree, "t.pt")


def test_inconsistent_widths_are_reported(refdata):
    _, tree = _load_tree(refdata)
    _slice_out(tree.model[2].cv2, 8)  # its consumer cv3 still expects the full width
    with pytest.raises(UpstreamError, match=r"w\.pt.*inconsistent"):
        upstream_to_model(tree, "w.pt")


def _upstream_tree_from_yaml(path: Path, mods: dict, prefix: str = "models") -> nn.Module:
    """An upstream-layout module tree (random weights) for a model yaml, built with look-alikes."""
    yolo, common = mods[f"{prefix}.yolo"], mods[f"{prefix}.common"]

    def conv(c1, spec):
        m = common.Conv()
        m.conv = nn.Conv2d(c1, spec.c2, spec.k, spec.s, spec.padding, groups=spec.g, bias=False)
        m.bn, m.act = nn.BatchNorm2d(spec.c2, eps=1e-3, momentum=0.03), nn.SiLU()
        return m

    blocks, layers, chs = yaml_blocks(load_yaml(path)), [], []
    for i, b in enumerate(blocks):
        c1 = 3 if i == 0 else chs[b.f] if isinstance(b.f, int) else None
        if isinstance(b, ConvBlock):
            m, c2 = conv(c1, b.conv), b.conv.c2
        elif isinstance(b, C3Block):
            m = common.C3()
            m.cv1, m.cv2, m.cv3 = conv(c1, b.cv1), conv(c1, b.cv2), conv(b.cv1.c2 + b.cv2.c2, b.cv3)
            m.m = nn.Sequential(*[common.Bottleneck() for _ in b.m])
            for bott, (s1, s2) in zip(m.m, b.m):
                bott.cv1, bott.cv2, bott.add = conv(b.cv1.c2, s1), conv(s1.c2, s2), b.shortcut
            c2 = b.cv3.c2
        elif isinstance(b, SPPFBlock):
            m = common.SPPF()
            m.cv1, m.cv2 = conv(c1, b.cv1), conv(4 * b.cv1.c2, b.cv2)
            m.m, c2 = nn.MaxPool2d(b.k, 1, b.k // 2), b.cv2.c2
        elif isinstance(b, UpsampleBlock):
            m, c2 = nn.Upsample(None, b.scale, "nearest"), c1
        elif isinstance(b, ConcatBlock):
            m, c2 = common.Concat(), sum(chs[j] for j in b.f)
            m.d = 1
        else:
            assert isinstance(b, DetectBlock)
            m, c2 = yolo.Detect(), 0
            m.nc, m.nl, m.na = b.nc, len(b.anchors), len(b.anchors[0])
            m.m = nn.ModuleList(nn.Conv2d(chs[j], m.na * (5 + b.nc), 1) for j in b.f)
            m.stride = torch.tensor([8.0, 16.0, 32.0, 64.0][:m.nl])
            m.register_buffer("anchors", torch.tensor(b.anchors).view(m.nl, -1, 2) / m.stride.view(-1, 1, 1))
        m.f, m.i = (list(b.f) if isinstance(b.f, list) else b.f), i
        layers.append(m)
        chs.append(c2)
    model = yolo.DetectionModel()
    model.model, model.stride, model.names = nn.Sequential(*layers), layers[-1].stride, ["a"] * 80
    return model


def test_p6_upstream_layout(tmp_path, monkeypatch):
    mods = _lookalike_modules("models")
    for name in ("models.yolo", "models.common"):
        monkeypatch.setitem(sys.modules, name, mods[name])
    tree = _upstream_tree_from_yaml(ROOT / "models/yolov5n6.yaml", mods)
    torch.save({"model": tree.half(), "ema": None}, tmp_path / "n6.pt")
    ckpt = import_upstream(tmp_path / "n6.pt", verbose=False)
    model = model_from_checkpoint(ckpt)
    assert sum(p.numel() for p in model.parameters()) == 3_246_940
    assert ckpt["stride"] == [8.0, 16.0, 32.0, 64.0]
    assert model.yolo_layers[3].anchors.tolist() == [[436, 615], [739, 380], [925, 792]]
    assert torch.equal(model.module_list[model.cfg.layers[model.yolo_indices[3]].inputs[0]].Conv2d.weight,
                       tree.model[33].m[3].weight.float())


# ---------------------------------------------------------------------------------------------
# the conversion command
# ---------------------------------------------------------------------------------------------
def test_convert_command(refdata, tmp_path, capsys):
    src = tmp_path / "yolov5n_shapes.pt"
    src.write_bytes((refdata / "yolov5n_shapes_v62.pt").read_bytes())
    assert convert.main(["--weights", str(src), "--save-cfg"]) == 0
    out = tmp_path / "yolov5n_shapes_converted.pt"
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["names"][0] == "circle" and (tmp_path / "yolov5n_shapes_converted.cfg").read_text() == ckpt["cfg"]
    x, io = _io(refdata, "yolov5n_shapes_v62")
    with torch.no_grad():
        assert close(load_model(out, verbose=False)(x)[0], io["eval_y"])
    assert convert.main(["--weights", str(src), "--output", str(tmp_path / "o" / "ours.pt")]) == 0
    assert (tmp_path / "o" / "ours.pt").is_file()
    assert convert.main(["--weights", str(src), "--output", str(src)]) == 2
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02 not really a pickle")
    capsys.readouterr()
    assert convert.main(["--weights", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err
    assert not (tmp_path / "bad_converted.pt").exists()
