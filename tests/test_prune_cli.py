"""The four prune scripts end to end on a tiny checkpoint (CPU, 64 px, no evaluation)."""
import json
import shutil
from pathlib import Path

import pytest
import torch

import prune_yolov5s
import shortcut_prune_yolov5s
import slim_prune_yolov5s
import slim_prune_yolov5s_8x
from models import build_model, load_model, read_cfg, save_checkpoint
from models.cfg import format_cfg
from models.checkpoint import CheckpointError
from utils.prune import VerificationError, sparsity_layers
from utils.prune.cli import _refuse_overwrite, output_paths, output_prefix
from utils.prune.fake import fake_sparsity_

FAST = ["--no-eval", "--img_size", "64", "--device", "cpu", "--latency-runs", "1"]
SCRIPTS = {"1": prune_yolov5s, "2": shortcut_prune_yolov5s, "3": slim_prune_yolov5s, "8x": slim_prune_yolov5s_8x}
DEFAULT_PREFIX = {"1": "prune_0.5_", "2": "prune_0.6_", "3": "prune_0.6_keep_0.01_",
                  "8x": "prune_0.6_keep_0.01_8x_"}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A sparsity-trained-looking yolov5n checkpoint (and its model) in a module temp folder."""
    folder = tmp_path_factory.mktemp("src")
    model = fake_sparsity_(build_model("models/yolov5n.yaml", nc=2), img_size=64).eval()
    model.names = ["a", "b"]
    path = folder / "last.pt"
    save_checkpoint(path, model, history=[{"step": "sparsity", "prune": 1, "layers": sparsity_layers(model.cfg, 1)}])
    return path, model


def _copy(src: Path, dst_dir: Path, name: str = "last.pt") -> Path:
    dst_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst_dir / name)
    return dst_dir / name


@pytest.mark.parametrize("strategy", ["1", "2", "3", "8x"])
def test_script_writes_loadable_outputs(source, tmp_path, strategy, capsys):
    weights = _copy(source[0], tmp_path / "w")
    assert SCRIPTS[strategy].main(["--weights", str(weights), *FAST]) == 0
    prefix = DEFAULT_PREFIX[strategy]
    out = tmp_path / "w" / f"{prefix}last.pt"
    cfg_out = out.with_suffix(".cfg")  # no --cfg input: beside the pruned weights
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == sorted(
        ["last.pt", out.name, cfg_out.name, out.with_suffix(".json").name, out.with_suffix(".png").name])
    printed = capsys.readouterr().out
    assert "Metric" in printed and "Parameters" in printed and "Out after" in printed

    model = load_model(out)  # the checkpoint alone rebuilds the pruned model
    cfg = read_cfg(cfg_out)
    assert cfg.channels == model.cfg.channels and format_cfg(cfg) == format_cfg(model.to_cfg())
    assert model.names == ["a", "b"]
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in source[1].parameters())
    y, raw = model(torch.rand(1, 3, 64, 64))
    assert y.shape[0] == 1 and torch.isfinite(y).all()

    ckpt = torch.load(out, weights_only=True)
    entry = ckpt["history"][-1]
    assert [h["step"] for h in ckpt["history"]] == ["sparsity", "prune"]
    assert entry["strategy"] == strategy and entry["parent"] == str(weights.resolve())
    for layer, mask in entry["masks"].items():
        assert len(mask) == source[1].cfg.channels[int(layer)]
        assert sum(mask) == model.cfg.channels[int(layer)]
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["verification"]["max_rel_diff"] <= 1e-4
    assert report["figures"]["params"]["after"] == sum(p.numel() for p in model.parameters())
    assert {r["layer"] for r in report["layers"]} == {i for i, _ in model.conv_layers()}
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_output_names_follow_the_seed_and_only_touch_file_names():
    prefix = output_prefix("8x", 0.5, 0.01)
    assert prefix == "prune_0.5_keep_0.01_8x_"
    p = output_paths("weights/last_v6s.pt", "cfg/yolov5s_v6_hand.cfg", prefix)
    assert p["cfg"] == Path("cfg/prune_0.5_keep_0.01_8x_yolov5s_v6_hand.cfg")
    assert p["weights"] == Path("weights/prune_0.5_keep_0.01_8x_last_v6s.pt")
    assert p["json"] == Path("weights/prune_0.5_keep_0.01_8x_last_v6s.json")
    assert output_prefix(1, 0.8) == "prune_0.8_" and output_prefix("3", 0.5, 0.01) == "prune_0.5_keep_0.01_"
    absolute = output_paths("/home/user/w/last.pt", None, "prune_0.0_")
    assert absolute["weights"] == Path("/home/user/w/prune_0.0_last.pt")
    assert absolute["cfg"] == Path("/home/user/w/prune_0.0_last.cfg")
    bare = output_paths("last.pt", "my.cfg", "prune_0.3_")
    assert bare["weights"] == Path("prune_0.3_last.pt") and bare["cfg"] == Path("prune_0.3_my.cfg")
    yaml_cfg = output_paths("w/last.pt", "models/yolov5n.yaml", "prune_0.3_")
    assert yaml_cfg["cfg"] == Path("w/prune_0.3_last.cfg")
    moved = output_paths("w/last.pt", "c/x.cfg", "prune_0.3_", out_dir="o")
    assert moved["weights"] == Path("o/prune_0.3_last.pt") and moved["cfg"] == Path("o/prune_0.3_x.cfg")
    with pytest.raises(FileExistsError):
        _refuse_overwrite({"weights": Path("a.pt")}, ["./a.pt"])


def test_bare_relative_and_absolute_paths_with_cfg(source, tmp_path, monkeypatch):
    _copy(source[0], tmp_path, "last.pt")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "tiny.cfg").write_text(format_cfg(source[1].to_cfg()))
    monkeypatch.chdir(tmp_path)
    args = ["--percent", "0.3", *FAST]
    assert shortcut_prune_yolov5s.main(["--weights", "last.pt", "--cfg", "cfg/tiny.cfg", *args]) == 0
    assert (tmp_path / "prune_0.3_last.pt").is_file() and (tmp_path / "cfg" / "prune_0.3_tiny.cfg").is_file()
    out_dir = tmp_path / "abs out"
    assert shortcut_prune_yolov5s.main(["--weights", str(tmp_path / "last.pt"), "--out-dir", str(out_dir),
                                        "--cfg", str(tmp_path / "cfg" / "tiny.cfg"), *args]) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "prune_0.3_last.json", "prune_0.3_last.png", "prune_0.3_last.pt", "prune_0.3_tiny.cfg"]


@pytest.mark.parametrize("script,flag", [(prune_yolov5s, "--percent"), (slim_prune_yolov5s_8x, "--global_percent")])
@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_bad_ratio_is_a_clear_error(source, script, flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        script.main(["--weights", str(source[0]), flag, value, *FAST])
    assert e.value.code == 2 and flag in capsys.readouterr().err


def test_conflicting_and_bad_flags(source, capsys):
    for argv in (["--percent", "0.5", "--target-flops", "0.5"], ["--target-flops", "0.5", "--target-params", "0.5"],
                 ["--target-flops", "1.5"], ["--img_size", "70"]):
        with pytest.raises(SystemExit) as e:
            shortcut_prune_yolov5s.main(["--weights", str(source[0]), *FAST, *argv])
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--target-flops" in err and "--img_size" in err


def test_cfg_that_does_not_match_the_checkpoint_is_refused(source, tmp_path):
    weights = _copy(source[0], tmp_path)
    with pytest.raises(CheckpointError, match="does not match"):
        slim_prune_yolov5s.main(["--weights", str(weights), "--cfg", "models/yolov5s.yaml", *FAST])


def test_target_flops_chooses_and_reports_the_ratio(source, tmp_path, capsys):
    weights = _copy(source[0], tmp_path)
    assert slim_prune_yolov5s_8x.main(["--weights", str(weights), "--target-flops", "0.6", *FAST]) == 0
    printed = capsys.readouterr().out
    chosen = printed.split("chose --global_percent ")[1].split()[0]
    out = tmp_path / f"prune_{float(chosen)}_keep_0.01_8x_last.pt"
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["figures"]["flops"]["ratio"] <= 0.6
    assert report["settings"]["target"]["metric"] == "flops"


def test_verification_failure_writes_nothing(source, tmp_path, monkeypatch):
    import utils.prune.pipeline as pipeline

    real = pipeline.compact_state

    def corrupted(*a, **k):
        state = real(*a, **k)
        key = next(k for k in state if k.endswith("Conv2d.weight"))
        state[key] = state[key] * 1.5
        return state

    monkeypatch.setattr(pipeline, "compact_state", corrupted)
    weights = _copy(source[0], tmp_path)
    with pytest.raises(VerificationError):
        slim_prune_yolov5s.main(["--weights", str(weights), *FAST])
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_warns_without_sparsity_history(source, tmp_path, capsys):
    plain = tmp_path / "plain.pt"
    save_checkpoint(plain, source[1])
    assert prune_yolov5s.main(["--weights", str(plain), *FAST]) == 0
    assert "no sparsity-training step" in capsys.readouterr().out
    other = tmp_path / "other.pt"
    save_checkpoint(other, source[1], history=[{"step": "sparsity", "prune": 0, "layers": []}])
    assert slim_prune_yolov5s.main(["--weights", str(other), *FAST]) == 0
    assert "--prune 0" in capsys.readouterr().out


def test_upstream_checkpoint_is_accepted(refdata, tmp_path):
    upstream = refdata / "yolov5n_shapes_v62.pt"
    assert slim_prune_yolov5s_8x.main(["--weights", str(upstream), "--out-dir", str(tmp_path), *FAST]) == 0
    model = load_model(tmp_path / "prune_0.6_keep_0.01_8x_yolov5n_shapes_v62.pt")
    assert model.nc == 4 and model.names == ["circle", "rectangle", "triangle", "cross"]
    full = load_model(upstream, verbose=False)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in full.parameters())


def test_sparsity_warning_rules():
    from utils.prune.report import sparsity_warning
    from utils.prune.strategy import get_strategy

    s2, s1 = get_strategy("2"), get_strategy("1")
    ok = [{"step": "train"}, {"step": "sparsity", "sr": True, "scale": 1e-3, "prune": 1, "layers": [1, 2, 3]}]
    assert sparsity_warning(ok, s2, "w.pt", [1, 2, 3]) is None
    assert "--prune 1" in sparsity_warning(ok, s1, "w.pt", [1, 2])
    assert "not" in sparsity_warning(ok, s2, "w.pt", [1, 2, 3, 4])  # layer 4 was not regularised
    assert "-sr" in sparsity_warning([{"step": "sparsity", "sr": False, "prune": 1}], s2, "w.pt")
    assert "no sparsity" in sparsity_warning([{"step": "train"}], s2, "w.pt")
