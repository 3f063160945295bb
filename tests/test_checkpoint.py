"""Checkpoints: plain dicts, atomic writes, EMA preference, clear errors, older formats,
checksums against damaged files, disk-full reporting."""
import errno
import os
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch

import convert
from models import (CfgError, CheckpointError, UpstreamError, atomic_save, build_model, format_cfg,
                    load_checkpoint, load_model, make_checkpoint, model_from_checkpoint, save_checkpoint,
                    state_checksum)
from utils.errors import UserError, describe_error

ROOT = Path(__file__).resolve().parents[1]
N_CFG = ROOT / "cfg/yolov5n_v6.cfg"


@pytest.fixture(scope="module")
def tiny():
    """yolov5n with 2 classes and randomised BN statistics (so outputs depend on the weights)."""
    torch.manual_seed(0)
    model = build_model(N_CFG, nc=2)
    for _, seq in model.conv_layers():
        if "BatchNorm2d" in seq._modules:
            bn = seq.BatchNorm2d
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 1.5)
    model.names = ["hand", "cup"]
    return model.eval()


def _out(model, size: int = 64) -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        return model.eval()(x)[0]


def test_round_trip_plain_dict(tiny, tmp_path):
    path = save_checkpoint(tmp_path / "w.pt", tiny, epoch=3, hyp={"lr0": 0.01},
                           history=[{"step": "train", "epochs": 3}])
    ckpt = torch.load(path, weights_only=True)  # no pickled classes
    for key in ("cfg", "model", "ema", "names", "stride", "epoch", "best_fitness", "optimizer",
                "hyp", "opt", "history"):
        assert key in ckpt
    assert isinstance(ckpt["cfg"], str) and ckpt["names"] == ["hand", "cup"]
    assert ckpt["stride"] == [8.0, 16.0, 32.0] and ckpt["epoch"] == 3
    model = load_model(path, verbose=False)
    assert not model.training and model.names == ["hand", "cup"] and model.nc == 2
    assert torch.equal(_out(model), _out(tiny))
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values() if v.is_floating_point())


def test_trained_anchors_travel_in_the_cfg(tiny, tmp_path):
    model = build_model(N_CFG, nc=2)
    model.yolo_layers[1].anchors.mul_(1.37)
    path = save_checkpoint(tmp_path / "a.pt", model)
    loaded = load_model(path, verbose=False)
    for a, b in zip(loaded.yolo_layers, model.yolo_layers):
        assert torch.equal(a.anchors, b.anchors)


def test_load_prefers_ema(tiny, tmp_path, capsys):
    other = build_model(N_CFG, nc=2)
    path = save_checkpoint(tmp_path / "e.pt", other, ema=tiny)
    model = load_model(path)
    assert "EMA" in capsys.readouterr().out
    assert torch.equal(_out(model), _out(tiny))
    assert not torch.equal(_out(model_from_checkpoint(torch.load(path, weights_only=True),
                                                      prefer_ema=False)), _out(tiny))


def test_interrupted_save_keeps_previous_file(tiny, tmp_path, monkeypatch):
    path = tmp_path / "w.pt"
    save_checkpoint(path, tiny)
    before = path.read_bytes()
    real_save = torch.save

    def crash(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")  # some bytes, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, build_model(N_CFG, nc=3))
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["w.pt"]  # no temporary file left behind
    assert load_model(path, verbose=False).nc == 2


def test_atomic_save_creates_folders_and_ordinary_files(tmp_path):
    path = atomic_save({"a": 1}, tmp_path / "x" / "y.pt")
    assert torch.load(path, weights_only=True) == {"a": 1}
    plain = tmp_path / "x" / "plain"
    plain.touch()
    assert path.stat().st_mode == plain.stat().st_mode  # the umask decides, not a private temp mode
    assert sorted(os.listdir(path.parent)) == ["plain", "y.pt"]


@pytest.mark.parametrize("kind", ["missing", "empty", "garbage", "text", "truncated", "half", "yaml", "cfg",
                                  "foreign"])
def test_bad_weights_name_the_file(tiny, tmp_path, kind):
    path = tmp_path / {"yaml": "model.yaml", "cfg": "model.cfg"}.get(kind, f"{kind}.pt")
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(os.urandom(1000))
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "truncated":
        save_checkpoint(path, tiny)
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "half":  # the zip directory at the end is gone
        save_checkpoint(path, tiny)
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    elif kind == "yaml":
        path.write_text((ROOT / "models/yolov5n.yaml").read_text())
    elif kind == "cfg":
        path.write_text(N_CFG.read_text())
    elif kind == "foreign":
        torch.save({"state": {"w": torch.zeros(3)}}, path)
    with pytest.raises(CheckpointError) as e:
        load_model(path, verbose=False)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg and "Traceback" not in msg


def test_cfg_that_does_not_match_is_refused(tiny, tmp_path):
    path = save_checkpoint(tmp_path / "n.pt", tiny)
    with pytest.raises(CheckpointError) as e:
        load_model(path, cfg=ROOT / "cfg/yolov5s_v6.cfg", verbose=False)
    assert "yolov5s_v6.cfg" in str(e.value) and "n.pt" in str(e.value)


def test_cfg_differing_in_classes_and_anchors_warns(tiny, tmp_path, capsys):
    model = build_model(N_CFG, nc=2)
    model.load_state_dict(tiny.state_dict())
    model.yolo_layers[0].anchors.mul_(1.5)
    path = save_checkpoint(tmp_path / "n.pt", model)
    for cfg in (N_CFG, ROOT / "models/yolov5n.yaml"):  # 80 classes, default anchors
        capsys.readouterr()
        loaded = load_model(path, cfg=cfg, verbose=False)
        assert "WARNING" in capsys.readouterr().out
        assert loaded.nc == 2
        assert torch.equal(loaded.yolo_layers[0].anchors, model.yolo_layers[0].anchors)


def test_bare_state_dict_loads_with_its_cfg(tiny, tmp_path):
    """Files of the older prune tools: a cfg plus a state dict with module_list.N.Conv2d.* keys."""
    cfg = tmp_path / "pruned.cfg"
    cfg.write_text(format_cfg(tiny.to_cfg()))
    state = {k: v.half() if v.is_floating_point() else v for k, v in tiny.state_dict().items()}
    assert any(k.startswith("module_list.") and ".Conv2d.weight" in k for k in state)
    for i, obj in enumerate([state, {"model": state, "epoch": 5}]):
        path = tmp_path / f"bare{i}.pt"
        torch.save(obj, path)
        model = load_model(path, cfg=cfg, verbose=False)
        assert (_out(model) - _out(tiny)).abs().max() < 1e-2  # fp16 weights
        ckpt = load_checkpoint(path, cfg=cfg)
        assert ckpt["history"][-1]["step"] == "import"
        with pytest.raises(CheckpointError, match="--cfg"):
            load_model(path, verbose=False)
    with pytest.raises(CheckpointError, match="bare0.pt"):
        load_model(tmp_path / "bare0.pt", cfg=N_CFG, verbose=False)  # 80-class head: other shapes


def test_make_checkpoint_is_self_describing(tiny):
    ckpt = make_checkpoint(tiny, opt={"path": Path("x"), "n": 1},
                           history=[{"step": "prune", "parent": "a.pt"}])
    assert ckpt["opt"] == {"path": "x", "n": 1}
    model = model_from_checkpoint(ckpt)
    assert torch.equal(_out(model), _out(tiny))
    assert model.cfg.layers == tiny.cfg.layers


# ---------------------------------------------------------------------------------------------
# checksum
# ---------------------------------------------------------------------------------------------
def _flip_inside_largest_tensor(path: Path, n: int = 64) -> str:
    """Invert ``n`` bytes in the middle of the largest tensor's storage record; returns its name."""
    with zipfile.ZipFile(path) as z:
        rec = max(z.infolist(), key=lambda i: i.file_size)
    assert rec.compress_type == zipfile.ZIP_STORED and rec.file_size > 4 * n
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[rec.header_offset + 26:rec.header_offset + 30])
    mid = rec.header_offset + 30 + name_len + extra_len + rec.file_size // 2
    data[mid:mid + n] = bytes(b ^ 0xFF for b in data[mid:mid + n])
    path.write_bytes(bytes(data))
    return rec.filename


def test_every_saved_checkpoint_carries_a_checksum(tiny, tmp_path):
    path = save_checkpoint(tmp_path / "w.pt", tiny, ema=tiny)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["checksum"].startswith("sha256:") and ckpt["checksum"] == state_checksum(ckpt)
    assert load_checkpoint(path)["checksum"] == ckpt["checksum"]


@pytest.mark.parametrize("with_ema", [False, True])
def test_damaged_weights_are_refused(tiny, tmp_path, with_ema):
    path = save_checkpoint(tmp_path / "w.pt", tiny, ema=tiny if with_ema else None)
    _flip_inside_largest_tensor(path)
    assert torch.load(path, weights_only=True)["names"] == ["hand", "cup"]  # torch itself notices nothing
    for load in (load_checkpoint, load_model):
        with pytest.raises(CheckpointError) as e:
            load(path, verbose=False)
        assert str(e.value) == (f"{path} is damaged: its weights do not match the checksum written with "
                                f"them; use another copy or retrain")


def test_checkpoint_without_checksum_loads(tiny, tmp_path):
    """Files written before checksums existed."""
    ckpt = make_checkpoint(tiny)
    assert "checksum" not in ckpt
    path = tmp_path / "old.pt"
    torch.save(ckpt, path)  # as the older writer did
    assert torch.equal(_out(load_model(path, verbose=False)), _out(tiny))


def test_edited_checkpoint_gets_a_new_checksum(tiny, tmp_path):
    """Stripping a finished run (EMA weights as model, no EMA) re-saves a loaded dict."""
    other = build_model(N_CFG, nc=2)
    path = save_checkpoint(tmp_path / "w.pt", other, ema=tiny)
    ckpt = load_checkpoint(path)
    ckpt["model"], ckpt["ema"] = ckpt["ema"], None
    atomic_save(ckpt, path)
    again = load_checkpoint(path)
    assert again["ema"] is None and again["checksum"] != ckpt["checksum"]
    assert torch.equal(_out(model_from_checkpoint(again)), _out(tiny))


def test_checksum_covers_values_names_dtypes_shapes_and_ema(tiny):
    ckpt = make_checkpoint(tiny)
    base = state_checksum(ckpt)
    key = next(k for k, v in ckpt["model"].items() if v.is_floating_point() and v.dim() == 4)
    t = ckpt["model"][key]

    def variant(**change) -> str:
        state = dict(ckpt["model"])
        state.update(change.get("entries", {}))
        for k in change.get("drop", ()):
            del state[k]
        return state_checksum({"model": state, "ema": change.get("ema")})

    assert variant() == base
    changed = t.clone()
    changed.view(-1)[len(changed.view(-1)) // 2] += 1e-3
    assert variant(entries={key: changed}) != base
    assert variant(entries={key: t.reshape(t.shape[0], -1)}) != base  # same bytes, other shape
    assert variant(entries={key: t.view(torch.int32)}) != base  # same bytes, other dtype
    assert variant(entries={key + "_": t}, drop=[key]) != base  # same bytes, other name
    assert variant(ema=ckpt["model"]) != base


# ---------------------------------------------------------------------------------------------
# disk full
# ---------------------------------------------------------------------------------------------
def _torch_writer_failure(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04 partial")
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1216 vs 1112")


def _disk_with_free(nbytes: int):
    real = shutil.disk_usage

    def fake(path):
        total, used, _ = real(path)
        return type(real(path))(total, used, nbytes)
    return fake


@pytest.mark.parametrize("failure", ["torch", "oserror"])
def test_disk_full_is_reported_as_no_space_for_the_target(tiny, tmp_path, monkeypatch, failure):
    path = save_checkpoint(tmp_path / "w.pt", tiny)
    before = path.read_bytes()
    if failure == "torch":
        monkeypatch.setattr(torch, "save", _torch_writer_failure)
        monkeypatch.setattr(shutil, "disk_usage", _disk_with_free(4096))
    else:
        def no_space(obj, f, *args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), getattr(f, "name", None))
        monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(OSError) as e:
        save_checkpoint(path, tiny, epoch=7)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert describe_error(e.value).startswith(f"no space left on the device while writing {path}")
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["w.pt"]


def test_other_write_failures_are_not_called_disk_full(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", _torch_writer_failure)
    monkeypatch.setattr(shutil, "disk_usage", _disk_with_free(1 << 40))
    with pytest.raises(RuntimeError, match="inline_container"):
        save_checkpoint(tmp_path / "w.pt", tiny)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# error classes and convert.py
# ---------------------------------------------------------------------------------------------
def test_error_classes_are_user_errors():
    for cls in (CfgError, CheckpointError, UpstreamError):
        assert issubclass(cls, UserError) and issubclass(cls, ValueError)
    assert issubclass(UpstreamError, CheckpointError)


@pytest.fixture
def bare_state(tiny, tmp_path) -> tuple[Path, Path]:
    """A bare cfg-model state dict and its cfg: convert.py's input without upstream files."""
    cfg = tmp_path / "m.cfg"
    cfg.write_text(format_cfg(tiny.to_cfg()))
    weights = tmp_path / "bare.pt"
    torch.save(tiny.state_dict(), weights)
    return weights, cfg


def test_convert_writes_a_checksummed_checkpoint(tiny, bare_state, tmp_path):
    weights, cfg = bare_state
    assert convert.main(["--weights", str(weights), "--cfg", str(cfg), "--save-cfg"]) == 0
    out = tmp_path / "bare_converted.pt"
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["checksum"] == state_checksum(ckpt)
    assert out.with_suffix(".cfg").read_text() == ckpt["cfg"]
    assert torch.equal(_out(load_model(out, verbose=False)), _out(tiny))


@pytest.mark.parametrize("case", ["unreadable", "no cfg", "overwrite", "disk full"])
def test_convert_errors_are_one_sentence(bare_state, tmp_path, monkeypatch, capsys, case):
    weights, cfg = bare_state
    argv = ["--weights", str(weights), "--cfg", str(cfg)]
    if case == "unreadable":
        weights.write_bytes(b"\x80\x02 not really a pickle")
    elif case == "no cfg":
        argv = argv[:2]
    elif case == "overwrite":
        argv += ["--output", str(weights)]
    else:
        monkeypatch.setattr(torch, "save", _torch_writer_failure)
        monkeypatch.setattr(shutil, "disk_usage", _disk_with_free(0))
    capsys.readouterr()
    assert convert.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("convert.py: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert str(weights) in err or case == "disk full"
    assert "()" not in err and "(32)" not in err
    if case == "disk full":
        assert f"no space left on the device while writing {tmp_path / 'bare_converted.pt'}" in err
    assert not (tmp_path / "bare_converted.pt").exists()
