"""The four prune scripts end to end on a tiny checkpoint (CPU, 64 px, no evaluation)."""
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import prune_yolov5s
import shortcut_prune_yolov5s
import slim_prune_yolov5s
import slim_prune_yolov5s_8x
import utils.prune.cli as prune_cli
import utils.prune.pipeline as pipeline
from models import build_model, load_model, read_cfg, save_checkpoint
from models.cfg import format_cfg
from utils.prune import PruneError, analyse, model_from_state, sparsity_layers
from utils.prune.absorb import absorb
from utils.prune.cli import _refuse_overwrite, output_paths, output_prefix
from utils.prune.fake import fake_sparsity_
from utils.prune.report import sparsity_warning
from utils.prune.strategy import get_strategy
from utils.synthetic import make_shapes_dataset

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


def _error(capsys, script: str) -> str:
    """The one line a failed run printed on stderr (asserts there is exactly one)."""
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), lines
    assert "Traceback" not in lines[0]
    return lines[0]


def _files(folder: Path) -> list[str]:
    """Every file name in ``folder``, hidden temporary files included."""
    return sorted(os.listdir(folder))


@torch.no_grad()
def _assert_compact_equals_absorbed(source_model, pruned, masks, size=64):
    """Independent of the script's own verification: rebuild the absorbed full-size model from the
    source weights and the masks the checkpoint records, and compare raw outputs level by level."""
    cfg = source_model.to_cfg()
    keep = {int(i): torch.tensor(m) for i, m in masks.items()}
    absorbed = model_from_state(cfg, absorb(analyse(cfg), source_model.state_dict(), keep))
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(5))
    ref, out = absorbed.eval()(x)[1], pruned.eval()(x)[1]
    assert len(ref) == len(out)
    for a, b in zip(ref, out):
        assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max())


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
    _assert_compact_equals_absorbed(source[1], model, entry["masks"])
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["figures"]["params"]["after"] == sum(p.numel() for p in model.parameters())
    assert {r["layer"] for r in report["layers"]} == {i for i, _ in model.conv_layers()}
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_output_names_follow_the_original_and_only_touch_file_names():
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
    with pytest.raises(PruneError, match="overwrite the input"):
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


@pytest.mark.parametrize("script,argv,flag,says", [
    (prune_yolov5s, ["--percent", "1.0"], "--percent", "every channel"),
    (prune_yolov5s, ["--percent", "-0.1"], "--percent", "[0, 1)"),
    (slim_prune_yolov5s_8x, ["--global_percent", "1"], "--global_percent", "[0, 1)"),
    (slim_prune_yolov5s, ["--layer_keep", "1"], "--layer_keep", "nothing would be pruned"),
    (slim_prune_yolov5s, ["--layer_keep", "0"], "--layer_keep", "(0, 1)"),
    (slim_prune_yolov5s, ["--layer_keep", "1.5"], "--layer_keep", "(0, 1)"),
    (shortcut_prune_yolov5s, ["--round-to", "0"], "--round-to", "at least 1"),
    (shortcut_prune_yolov5s, ["--target-flops", "0"], "--target-flops", "(0, 1]"),
    (shortcut_prune_yolov5s, ["--target-params", "1.5"], "--target-params", "(0, 1]"),
    (shortcut_prune_yolov5s, ["--latency-runs", "0"], "--latency-runs", "at least 1"),
    (shortcut_prune_yolov5s, ["--percent", "0.5", "--target-flops", "0.5"], "--target-flops", "not both"),
    (shortcut_prune_yolov5s, ["--target-flops", "0.5", "--target-params", "0.5"], "--target-params", "not both"),
])
def test_flag_ranges_are_checked_at_parse_time(tmp_path, script, argv, flag, says, capsys):
    """Refused before anything is loaded: the weights file does not even exist."""
    with pytest.raises(SystemExit) as e:
        script.main(["--weights", str(tmp_path / "missing.pt"), *FAST, *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and flag in err and says in err, err
    assert "Traceback" not in err


def test_img_size_is_rounded_up_to_the_stride_and_zero_refused(source, tmp_path, capsys, caplog):
    weights = _copy(source[0], tmp_path)
    argv = ["--weights", str(weights), "--no-eval", "--device", "cpu", "--latency-runs", "1"]
    assert shortcut_prune_yolov5s.main([*argv, "--img_size", "70"]) == 0
    report = json.loads((tmp_path / "prune_0.6_last.json").read_text())
    assert report["settings"]["img_size"] == 96
    warned = caplog.text + capsys.readouterr().err
    assert "--img_size 70x70 is not a multiple of the model stride 32; using 96x96" in warned
    assert shortcut_prune_yolov5s.main([*argv, "--img_size", "0"]) == 2
    assert "--img_size 0" in _error(capsys, "shortcut_prune_yolov5s.py")


def test_missing_inputs_are_one_sentence(source, tmp_path, capsys):
    weights = _copy(source[0], tmp_path)
    assert prune_yolov5s.main(["--weights", str(tmp_path / "nope.pt"), *FAST]) == 2
    assert "nope.pt" in _error(capsys, "prune_yolov5s.py")
    assert prune_yolov5s.main(["--weights", str(weights), "--cfg", str(tmp_path / "nope.cfg"), *FAST]) == 2
    assert "nope.cfg" in _error(capsys, "prune_yolov5s.py")
    assert prune_yolov5s.main(["--weights", str(weights), "--data", str(tmp_path / "nope.yaml"),
                               "--img_size", "64", "--device", "cpu"]) == 2
    assert "nope.yaml" in _error(capsys, "prune_yolov5s.py")
    assert _files(tmp_path) == ["last.pt"]


def test_cfg_that_does_not_match_the_checkpoint_is_refused(source, tmp_path, capsys):
    weights = _copy(source[0], tmp_path)
    assert slim_prune_yolov5s.main(["--weights", str(weights), "--cfg", "models/yolov5s.yaml", *FAST]) == 2
    assert "does not match" in _error(capsys, "slim_prune_yolov5s.py")
    assert _files(tmp_path) == ["last.pt"]


def test_evaluation_on_the_dataset_the_model_was_trained_on(tmp_path, capsys):
    """--data with the model's classes: original, masked and compact models are evaluated."""
    root = make_shapes_dataset(tmp_path / "shapes", n_train=2, n_val=4, img_size=64, seed=1, workers=1)
    model = fake_sparsity_(build_model("models/yolov5n.yaml", nc=5), img_size=64).eval()
    weights = save_checkpoint(tmp_path / "five.pt", model, history=[{"step": "sparsity", "prune": 1}])
    assert slim_prune_yolov5s.main(["--weights", str(weights), "--data", str(root / "dataset.yaml"),
                                    "--img_size", "64", "--device", "cpu", "--latency-runs", "1",
                                    "--workers", "0", "--batch-size", "4"]) == 0
    assert "mAP@.5" in capsys.readouterr().out
    report = json.loads((tmp_path / "prune_0.6_keep_0.01_five.json").read_text())
    for key in ("mAP50", "mAP50_95"):
        assert set(report["figures"][key]) == {"original", "masked", "compact"}
        assert all(0.0 <= v <= 1.0 for v in report["figures"][key].values())


def test_class_mismatch_is_refused_before_pruning(source, tmp_path, monkeypatch, capsys):
    (tmp_path / "images").mkdir()
    data = tmp_path / "three.yaml"
    data.write_text(f"path: {tmp_path}\ntrain: images\nval: images\nnc: 3\nnames: [x, y, z]\n")
    weights = _copy(source[0], tmp_path)

    def no_pruning(*a, **k):
        raise AssertionError("pruned before checking the classes")

    monkeypatch.setattr(prune_cli, "prune", no_pruning)
    monkeypatch.setattr(prune_cli, "search_ratio", no_pruning)
    assert slim_prune_yolov5s_8x.main(["--weights", str(weights), "--data", str(data), "--img_size", "64",
                                       "--device", "cpu", "--target-flops", "0.5"]) == 2
    err = _error(capsys, "slim_prune_yolov5s_8x.py")
    assert "2 classes" in err and "has 3" in err and "--no-eval" in err and "--single-cls" not in err
    assert _files(tmp_path) == ["images", "last.pt", "three.yaml"]


def test_unreachable_target_names_the_best_reachable_value(source, tmp_path, capsys):
    weights = _copy(source[0], tmp_path)
    assert prune_yolov5s.main(["--weights", str(weights), "--target-flops", "0.0001", *FAST]) == 2
    err = _error(capsys, "prune_yolov5s.py")
    assert "--target-flops 0.0001 cannot be reached" in err
    reachable = float(err.split("ask for --target-flops ")[1].split()[0])
    assert 0.0001 < reachable <= 1.0
    assert prune_yolov5s.main(["--weights", str(weights), "--target-flops", str(reachable), *FAST]) == 0


def _read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write: chmod 555, or (as root, which ignores modes) /sys."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").touch()
    except PermissionError:
        return folder
    (folder / "probe").unlink()
    folder.chmod(0o755)
    try:
        (Path("/sys") / "probe").touch()
    except OSError:
        return Path("/sys")
    pytest.skip("no read-only folder available (root on a writable /sys)")


def test_read_only_output_folder_fails_before_pruning(source, tmp_path, monkeypatch, capsys):
    weights = _copy(source[0], tmp_path / "w")
    folder = _read_only_folder(tmp_path)

    def no_pruning(*a, **k):
        raise AssertionError("pruned although the output folder is not writable")

    monkeypatch.setattr(prune_cli, "prune", no_pruning)
    code = slim_prune_yolov5s.main(["--weights", str(weights), "--out-dir", str(folder), *FAST])
    assert code == 2
    err = _error(capsys, "slim_prune_yolov5s.py")
    assert f"cannot write the outputs into {folder} (Permission denied)" in err and "--out-dir" in err
    assert _files(tmp_path / "w") == ["last.pt"]


@pytest.mark.parametrize("failing", ["plot_channels", "save_checkpoint"])
def test_a_failed_write_leaves_none_of_the_four_outputs(source, tmp_path, monkeypatch, capsys, failing):
    """Disk full while writing the chart or the checkpoint: no output, no temporary file, one
    sentence; outputs of an earlier run stay as they were."""
    weights = _copy(source[0], tmp_path)
    real = getattr(prune_cli, failing)

    def full_disk(*a, **k):
        real(*a, **k)  # part of the file is written, then the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device", str(a[1] if failing == "plot_channels" else a[0]))

    monkeypatch.setattr(prune_cli, failing, full_disk)
    assert shortcut_prune_yolov5s.main(["--weights", str(weights), *FAST]) == 2
    assert "no space left on the device" in _error(capsys, "shortcut_prune_yolov5s.py")
    assert _files(tmp_path) == ["last.pt"]

    monkeypatch.setattr(prune_cli, failing, real)
    assert shortcut_prune_yolov5s.main(["--weights", str(weights), *FAST]) == 0
    before = {n: (tmp_path / n).read_bytes() for n in _files(tmp_path)}
    assert len(before) == 5
    monkeypatch.setattr(prune_cli, failing, full_disk)
    assert shortcut_prune_yolov5s.main(["--weights", str(weights), *FAST]) == 2
    capsys.readouterr()
    assert {n: (tmp_path / n).read_bytes() for n in _files(tmp_path)} == before


def test_temporary_files_of_a_killed_run_are_removed(source, tmp_path, capsys):
    weights = _copy(source[0], tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = tmp_path / f".prune_0.6_last.pt.{dead}.0123abcd.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert shortcut_prune_yolov5s.main(["--weights", str(weights), *FAST]) == 0
    assert not stale.exists()
    assert not [n for n in _files(tmp_path) if n.endswith(".tmp")]


def test_ctrl_c_exits_130_and_writes_nothing(source, tmp_path, monkeypatch, capsys):
    weights = _copy(source[0], tmp_path)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(prune_cli, "write_json", interrupted)
    assert slim_prune_yolov5s_8x.main(["--weights", str(weights), *FAST]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert _files(tmp_path) == ["last.pt"]


def test_target_flops_chooses_and_reports_the_ratio(source, tmp_path, capsys):
    weights = _copy(source[0], tmp_path)
    assert slim_prune_yolov5s_8x.main(["--weights", str(weights), "--target-flops", "0.6", *FAST]) == 0
    printed = capsys.readouterr().out
    chosen = printed.split("chose --global_percent ")[1].split()[0]
    out = tmp_path / f"prune_{float(chosen)}_keep_0.01_8x_last.pt"
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["figures"]["flops"]["ratio"] <= 0.6
    assert report["settings"]["target"]["metric"] == "flops"


def test_verification_failure_writes_nothing(source, tmp_path, monkeypatch, capsys):
    real = pipeline.compact_state

    def corrupted(*a, **k):
        state = real(*a, **k)
        key = next(k for k in state if k.endswith("Conv2d.weight"))
        state[key] = state[key] * 1.5
        return state

    monkeypatch.setattr(pipeline, "compact_state", corrupted)
    weights = _copy(source[0], tmp_path)
    assert slim_prune_yolov5s.main(["--weights", str(weights), *FAST]) == 2
    assert "does not reproduce the absorbed model" in _error(capsys, "slim_prune_yolov5s.py")
    assert _files(tmp_path) == ["last.pt"]


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
    s2, s1 = get_strategy("2"), get_strategy("1")
    ok = [{"step": "train"}, {"step": "sparsity", "sr": True, "scale": 1e-3, "prune": 1, "layers": [1, 2, 3]}]
    assert sparsity_warning(ok, s2, "w.pt", [1, 2, 3]) is None
    assert "--prune 1" in sparsity_warning(ok, s1, "w.pt", [1, 2])
    assert "not" in sparsity_warning(ok, s2, "w.pt", [1, 2, 3, 4])  # layer 4 was not regularised
    assert "-sr" in sparsity_warning([{"step": "sparsity", "sr": False, "prune": 1}], s2, "w.pt")
    assert "no sparsity" in sparsity_warning([{"step": "train"}], s2, "w.pt")
