"""Bad input and faults, table-driven: every script refuses with one sentence and exit code 2 (130 for
Ctrl-C), never prints a traceback for a user error, writes nothing half-done and loses nothing."""
from __future__ import annotations

import errno
import importlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from models import build_model, save_checkpoint
from utils.prune.fake import fake_sparsity_
from utils.synthetic import make_shapes_dataset

TINY_TRAIN = ["--img", "64", "--batch", "8", "--workers", "0", "--noautoanchor", "--epochs", "1"]
FAST_PRUNE = ["--no-eval", "--img_size", "64", "--device", "cpu", "--latency-runs", "1"]


@dataclass
class World:
    """Files the cases refer to, made once per module."""
    root: Path
    data: Path           # a tiny labelled dataset (.yaml, the built-in generator's 5 classes)
    weights: Path        # a tiny yolov5n checkpoint (5 classes, matching `data`)
    pruned: Path         # the same checkpoint after slim_prune_yolov5s_8x
    unlabelled: Path     # a dataset whose images have no labels folder
    bad_class: Path      # a dataset with a class id >= nc
    images: Path         # a folder of a few images for prune_detect
    extra: dict = field(default_factory=dict)


def _run(module: str, argv: list[str], capsys) -> tuple[int, str, str]:
    """Run ``module.main(argv)`` in-process; argparse's own exits count as return codes."""
    mod = importlib.import_module(module)
    try:
        code = mod.main(argv)
    except SystemExit as e:  # argparse: one line and exit 2
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return int(code or 0), out, err


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("errors")
    data_root = make_shapes_dataset(root / "shapes", n_train=8, n_val=4, img_size=64, seed=5, workers=1)
    data = data_root / "dataset.yaml"

    model = fake_sparsity_(build_model("models/yolov5n.yaml", nc=5), img_size=64).eval()
    model.names = ["circle", "rectangle", "triangle", "cross", "ring"]
    weights = root / "w" / "last.pt"
    weights.parent.mkdir()
    save_checkpoint(weights, model, history=[{"step": "sparsity", "prune": 1}])

    import slim_prune_yolov5s_8x
    assert slim_prune_yolov5s_8x.main(["--weights", str(weights), *FAST_PRUNE, "--out-dir",
                                       str(root / "pruned")]) == 0
    pruned = next((root / "pruned").glob("prune_*.pt"))

    unl = root / "unlabelled"
    shutil.copytree(data_root, unl)
    shutil.rmtree(unl / "labels")
    unlabelled = unl / "dataset.yaml"

    bad = root / "badclass"
    shutil.copytree(data_root, bad)
    label = sorted((bad / "labels" / "train").glob("*.txt"))[0]
    label.write_text("9 0.5 0.5 0.2 0.2\n")
    images = root / "images"
    images.mkdir()
    for p in sorted((data_root / "images" / "val").iterdir())[:2]:
        shutil.copy(p, images / p.name)
    return World(root, data, weights, pruned, unlabelled, bad / "dataset.yaml", images)


def _flip_bytes(src: Path, dst: Path) -> Path:
    raw = bytearray(src.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 64] = bytes(b ^ 0xFF for b in raw[mid:mid + 64])
    dst.write_bytes(bytes(raw))
    return dst


@dataclass
class Case:
    id: str
    module: str
    argv: Callable[[World, Path], list[str]]
    code: int
    message: str                      # a fragment the one sentence must contain (case-insensitive)
    nothing_in: Callable[[World, Path], Path] | None = None  # a folder that must stay empty / absent
    patch: Callable[[pytest.MonkeyPatch], None] | None = None  # a fault injected before the run


def _swap(argv: list[str], old: str, new: str) -> list[str]:
    assert old in argv
    return [new if a == old else a for a in argv]


def _train(w: World, t: Path, *extra: str) -> list[str]:
    return [*TINY_TRAIN, "--data", str(w.data), "--cfg", "models/yolov5n.yaml", "--project", str(t),
            "--name", "run", *extra]


CASES = [
    # silently wrong results
    Case("train-weights-do-not-fit-cfg", "train",
         lambda w, t: _swap(_train(w, t, "--weights", str(w.weights)), "models/yolov5n.yaml", "models/yolov5s.yaml"),
         2, "allow-partial", lambda w, t: t / "run" / "weights"),
    Case("sparsity-pruned-weights-with-original-cfg", "train_sparsity",
         lambda w, t: _train(w, t, "--weights", str(w.pruned), "-sr"), 2, "allow-partial",
         lambda w, t: t / "run" / "weights"),
    Case("sparsity-polar-t-below-one", "train_sparsity",
         lambda w, t: _train(w, t, "-sr", "--sr-penalty", "polarization", "--sr-polar-t", "0.5"), 2, "--sr-polar-t",
         lambda w, t: t / "run" / "weights"),
    Case("sparsity-polar-quantile-one", "train_sparsity",
         lambda w, t: _train(w, t, "-sr", "--sr-penalty", "polarization", "--sr-polar-quantile", "1"), 2,
         "--sr-polar-quantile", lambda w, t: t / "run" / "weights"),
    Case("epochs-negative", "train", lambda w, t: _train(w, t, "--epochs", "-1"), 2, "--epochs"),
    Case("epochs-zero", "train", lambda w, t: _train(w, t, "--epochs", "0"), 2, "--epochs"),
    Case("batch-negative", "train", lambda w, t: _train(w, t, "--batch", "-1"), 2, "--batch"),
    Case("batch-zero", "train", lambda w, t: _train(w, t, "--batch", "0"), 2, "--batch"),
    Case("nbs-zero", "train", lambda w, t: _train(w, t, "--nbs", "0"), 2, "--nbs"),
    Case("workers-negative", "train", lambda w, t: _train(w, t, "--workers", "-1"), 2, "--workers"),
    Case("img-zero", "train", lambda w, t: _train(w, t, "--img", "0"), 2, "--img"),
    Case("val-batch-zero", "val",
         lambda w, t: ["--weights", str(w.weights), "--data", str(w.data), "--batch", "0", "--project", str(t)],
         2, "--batch"),
    Case("layer-keep-one", "slim_prune_yolov5s",
         lambda w, t: ["--weights", str(w.weights), *FAST_PRUNE, "--layer_keep", "1", "--out-dir", str(t)],
         2, "layer_keep", lambda w, t: t),
    Case("no-labels", "train", lambda w, t: _swap(_train(w, t), str(w.data), str(w.unlabelled)), 2, "allow-unlabelled"),
    Case("damaged-checkpoint", "val",
         lambda w, t: ["--weights", str(_flip_bytes(w.weights, t / "damaged.pt")), "--data", str(w.data),
                       "--project", str(t / "val")], 2, "damaged"),
    # tracebacks for ordinary errors
    Case("train-missing-weights", "train", lambda w, t: _train(w, t, "--weights", str(t / "nope.pt")), 2, "nope.pt"),
    Case("sparsity-missing-data", "train_sparsity",
         lambda w, t: _swap(_train(w, t), str(w.data), str(t / "nodata.yaml")), 2, "nodata.yaml"),
    Case("finetune-missing-weights", "prune_finetune",
         lambda w, t: [*TINY_TRAIN, "--data", str(w.data), "--weights", str(t / "nope.pt"), "--project", str(t)],
         2, "nope.pt"),
    Case("prune-missing-weights", "slim_prune_yolov5s_8x",
         lambda w, t: ["--weights", str(t / "nope.pt"), *FAST_PRUNE], 2, "nope.pt"),
    Case("detect-missing-weights", "prune_detect",
         lambda w, t: ["--weights", str(t / "nope.pt"), "--source", str(w.images), "--project", str(t)], 2,
         "nope.pt"),
    Case("export-missing-weights", "export", lambda w, t: ["--weights", str(t / "nope.pt")], 2, "nope.pt"),
    Case("class-id-out-of-range", "train",
         lambda w, t: _swap(_train(w, t), str(w.data), str(w.bad_class)), 2, "class"),
    Case("cfg-error", "train",
         lambda w, t: _swap(_train(w, t), "models/yolov5n.yaml", str(_bad_cfg(t))), 2, "bad.cfg"),
    Case("yaml-bad-from", "train",
         lambda w, t: _swap(_train(w, t), "models/yolov5n.yaml", str(_bad_yaml(t))), 2, "bad.yaml"),
    Case("device-without-cuda", "val",
         lambda w, t: ["--weights", str(w.weights), "--data", str(w.data), "--device", "cuda:0",
                       "--project", str(t)], 2, "--device"),
    Case("unreachable-target", "slim_prune_yolov5s_8x",
         lambda w, t: ["--weights", str(w.weights), *FAST_PRUNE, "--target-flops", "0.001", "--out-dir", str(t)],
         2, "target", lambda w, t: t),
    Case("prune-nc-mismatch", "slim_prune_yolov5s_8x",
         lambda w, t: ["--weights", str(w.weights), "--data", str(_two_class_data(w, t)), "--img_size", "64",
                       "--device", "cpu", "--latency-runs", "1", "--out-dir", str(t / "out")], 2, "class",
         lambda w, t: t / "out"),
    # faults: Ctrl-C, a full disk, an output path that is not a folder
    Case("train-ctrl-c", "train", lambda w, t: _train(w, t), 130, "interrupted", lambda w, t: t / "run" / "weights",
         patch=lambda mp: mp.setattr("utils.engine.create_dataloader", _interrupt)),
    Case("prune-ctrl-c", "slim_prune_yolov5s_8x",
         lambda w, t: ["--weights", str(w.weights), *FAST_PRUNE, "--out-dir", str(t)], 130, "interrupted",
         lambda w, t: t, patch=lambda mp: mp.setattr("utils.prune.cli.load_checkpoint", _interrupt)),
    Case("val-ctrl-c", "val", lambda w, t: ["--weights", str(w.weights), "--data", str(w.data), "--project", str(t)],
         130, "interrupted", patch=lambda mp: mp.setattr("val.evaluate_dataset", _interrupt)),
    Case("prune-disk-full", "slim_prune_yolov5s_8x",
         lambda w, t: ["--weights", str(w.weights), *FAST_PRUNE, "--out-dir", str(t)], 2, "no space left",
         lambda w, t: t, patch=lambda mp: mp.setattr("torch.save", _disk_full)),
    Case("train-disk-full", "train", lambda w, t: _train(w, t, "--noval"), 2, "no space left",
         lambda w, t: t / "run" / "weights", patch=lambda mp: mp.setattr("torch.save", _disk_full)),
    Case("train-project-is-a-file", "train", lambda w, t: _swap(_train(w, t), str(t), str(_a_file(t) / "sub")), 2,
         "a_file"),
    Case("prune-out-dir-is-a-file", "slim_prune_yolov5s_8x",
         lambda w, t: ["--weights", str(w.weights), *FAST_PRUNE, "--out-dir", str(_a_file(t) / "sub")], 2, "a_file"),
    Case("detect-nothing-readable", "prune_detect",
         lambda w, t: ["--weights", str(w.weights), "--source", str(_junk_images(t)), "--project", str(t / "det")],
         2, "junk", lambda w, t: t / "det"),
]


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def _disk_full(obj, f, *args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", str(f))


def _a_file(t: Path) -> Path:
    p = t / "a_file"
    p.write_text("not a folder")
    return p


def _junk_images(t: Path) -> Path:
    d = t / "junk"
    d.mkdir()
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.png").write_text("not an image")
    return d


def _bad_cfg(t: Path) -> Path:
    p = t / "bad.cfg"
    p.write_text("[net]\nwidth=64\nheight=64\nchannels=3\n\n[convolutional]\nfilters=8\nsize=3\nstride=1\n"
                 "pad=1\nactivation=silu\nbogus_key=1\n")
    return p


def _bad_yaml(t: Path) -> Path:
    text = Path("models/yolov5n.yaml").read_text().replace("[-1, 1, Conv, [128, 3, 2]],  # 1-P2/4", "[7, 1, Conv, [128, 3, 2]],  # 1-P2/4", 1)
    assert "[7, 1, Conv" in text
    p = t / "bad.yaml"
    p.write_text(text)
    return p


def _two_class_data(w: World, t: Path) -> Path:
    text = w.data.read_text()
    p = w.data.parent / "two_classes.yaml"
    import yaml
    d = yaml.safe_load(text)
    d["names"] = ["a", "b"]
    d["nc"] = 2
    p.write_text(yaml.safe_dump(d))
    return p


def _params(cases: list[Case]) -> list:
    needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
    return [pytest.param(c, id=c.id, marks=[needs_no_cuda] if c.id == "device-without-cuda" else [])
            for c in cases]


@pytest.mark.parametrize("case", _params(CASES))
def test_refusal_is_one_sentence(case: Case, world: World, tmp_path: Path, capsys, monkeypatch):
    argv = case.argv(world, tmp_path)
    if case.patch is not None:
        case.patch(monkeypatch)
    code, out, err = _run(case.module, argv, capsys)
    assert code == case.code, (code, out[-2000:], err[-2000:])
    assert "Traceback" not in err and "Traceback" not in out
    errors = [line for line in err.splitlines() if "error" in line.lower() or "interrupted" in line]
    assert len(errors) == 1, err
    assert case.message.lower() in errors[0].lower(), errors[0]
    assert ".tmp" not in errors[0], errors[0]  # a failed write names its target, not the temporary file
    if case.nothing_in is not None:
        folder = case.nothing_in(world, tmp_path)
        written = [p for p in folder.rglob("*") if p.is_file() and p.suffix in (".pt", ".cfg", ".json", ".png")]
        assert written == [], written


# --------------------------------------------------------------------------- warn and carry on
def test_detect_skips_unreadable_images_and_counts_them(world: World, tmp_path: Path, capsys):
    src = tmp_path / "mixed"
    shutil.copytree(world.images, src)
    good = sorted(src.iterdir())
    (src / "empty.jpg").write_bytes(b"")
    (src / "truncated.jpg").write_bytes(good[0].read_bytes()[:2000])
    (src / "text.png").write_text("not an image")
    code, out, err = _run("prune_detect", ["--weights", str(world.weights), "--source", str(src), "--img", "64",
                                           "--project", str(tmp_path / "det"), "--name", "x"], capsys)
    assert code == 0 and "Traceback" not in err
    for name in ("empty.jpg", "truncated.jpg", "text.png"):
        assert sum(name in line for line in err.splitlines()) == 1, err
    assert "3 of 5" in out + err
    assert sorted(p.name for p in (tmp_path / "det" / "x").glob("*.jpg")) == sorted(p.name for p in good)


def test_training_keeps_good_rows_cleans_stale_temps_and_warns_on_partial_weights(world: World, tmp_path: Path,
                                                                                 capsys):
    """One tiny run: a label file with a bad row keeps its good boxes, a killed save's temp file is removed at
    the start, and --allow-partial starts from the tensors that fit with a warning that gives counts."""
    data = tmp_path / "data"
    shutil.copytree(world.data.parent, data)
    label = sorted((data / "labels" / "train").glob("*.txt"))[0]
    good_rows = label.read_text().strip().splitlines()
    label.write_text("\n".join(good_rows + ["0 0.5 zero 0.1 0.1"]) + "\n")
    stale = tmp_path / "run" / "weights" / ".last.pt.999999.0badcafe.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a checkpoint")

    argv = _swap(_train(world, tmp_path, "--weights", str(world.weights), "--allow-partial", "--exist-ok"),
                 "models/yolov5n.yaml", "models/yolov5s.yaml")
    code, out, err = _run("train", _swap(argv, str(world.data), str(data / "dataset.yaml")), capsys)
    assert code == 0, err[-2000:]
    assert not stale.exists()
    assert (tmp_path / "run" / "weights" / "last.pt").is_file()
    text = out + err
    assert label.name in text and "1 malformed label row" in text, text[-3000:]
    assert "allow-partial" in text and "WARNING" in text
    ckpt = torch.load(tmp_path / "run" / "weights" / "last.pt", weights_only=True)
    assert [h["step"] for h in ckpt["history"]] == ["train"]  # the partial start inherits no history
