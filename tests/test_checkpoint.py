"""Checkpoints: plain dicts, atomic writes, EMA preference, clear errors, older formats."""
import os
from pathlib import Path

import pytest
import torch

from models import (CheckpointError, atomic_save, build_model, format_cfg, load_checkpoint,
                    load_model, make_checkpoint, model_from_checkpoint, save_checkpoint)

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


@pytest.mark.parametrize("kind", ["missing", "empty", "garbage", "truncated", "yaml", "cfg", "foreign"])
def test_bad_weights_name_the_file(tiny, tmp_path, kind):
    path = tmp_path / {"yaml": "model.yaml", "cfg": "model.cfg"}.get(kind, f"{kind}.pt")
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(os.urandom(1000))
    elif kind == "truncated":
        save_checkpoint(path, tiny)
        path.write_bytes(path.read_bytes()[:5000])
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
