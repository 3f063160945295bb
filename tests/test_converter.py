"""data/converter.py: Oxford hand .mat boxes -> YOLO labels, lists and names that the descriptions read."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.dataconfig import load_data_config
from utils.datasets import YoloDataset

ROOT = Path(__file__).resolve().parents[1]
sio = pytest.importorskip("scipy.io")


def _converter():
    spec = importlib.util.spec_from_file_location("hand_converter", ROOT / "data" / "converter.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _box(corners_xy) -> dict:
    """A MATLAB box struct: corners a, b, c, d as 1-based (y, x) pairs."""
    return {k: np.array([[y + 1.0, x + 1.0]]) for k, (x, y) in zip("abcd", corners_xy)}


def _write_sample(split_dir: Path, name: str, w: int, h: int, boxes: list) -> None:
    (split_dir / "images").mkdir(parents=True, exist_ok=True)
    (split_dir / "annotations").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(split_dir / "images" / f"{name}.jpg"), np.full((h, w, 3), 90, np.uint8))
    cell = np.empty((1, len(boxes)), dtype=object)
    for i, b in enumerate(boxes):
        cell[0, i] = _box(b)
    sio.savemat(str(split_dir / "annotations" / f"{name}.mat"), {"boxes": cell})


@pytest.fixture
def hand_src(tmp_path) -> Path:
    src = tmp_path / "hand_dataset"
    # axis-aligned box and a rotated one (a diamond) in a 100x80 image
    _write_sample(src / "training_dataset" / "training_data", "Buffy_1", 100, 80,
                  [[(10, 20), (50, 20), (50, 60), (10, 60)], [(70, 30), (80, 40), (70, 50), (60, 40)]])
    # a box partly outside the image is clipped; one entirely outside is dropped
    _write_sample(src / "validation_dataset" / "validation_data", "VOC_1", 64, 64,
                  [[(-10, 10), (30, 10), (30, 40), (-10, 40)], [(70, 70), (90, 70), (90, 90), (70, 90)]])
    _write_sample(src / "test_dataset" / "test_data", "test_1", 64, 48, [[(8, 8), (24, 8), (24, 40), (8, 40)]])
    return src


def test_converter_writes_yolo_layout(hand_src, tmp_path):
    out, lists, names = tmp_path / "hand_data", tmp_path / "lists", tmp_path / "hand.names"
    rc = _converter().main(["--src", str(hand_src), "--out", str(out), "--lists-dir", str(lists),
                            "--names", str(names)])
    assert rc == 0
    lab = np.loadtxt(out / "labels" / "train" / "Buffy_1.txt", ndmin=2)
    np.testing.assert_allclose(lab, [[0, 0.30, 0.50, 0.40, 0.50], [0, 0.70, 0.50, 0.20, 0.25]], atol=1e-6)
    lab = np.loadtxt(out / "labels" / "train" / "VOC_1.txt", ndmin=2)
    np.testing.assert_allclose(lab, [[0, 15 / 64, 25 / 64, 30 / 64, 30 / 64]], atol=1e-6)
    assert (out / "images" / "valid" / "test_1.jpg").is_file()
    assert names.read_text() == "hand\n"
    assert len((out / "train.txt").read_text().split()) == 2 and len((lists / "valid.txt").read_text().split()) == 1

    # both descriptions the toolkit ships read the result
    y = tmp_path / "hand.yaml"
    y.write_text(f"path: {out.name}\ntrain: train.txt\nval: valid.txt\nnc: 1\nnames: ['hand']\n")
    d = tmp_path / "hand.data"
    d.write_text(f"classes=1\ntrain={lists}/train.txt\nvalid={lists}/valid.txt\nnames={names}\n")
    for desc in (y, d):
        cfg = load_data_config(desc)
        ds = YoloDataset(cfg.train, img_size=64, nc=cfg.nc, verbose=False)
        assert ds.n == 2 and sum(len(x) for x in ds.labels) == 3 and cfg.names == ["hand"]


def test_converter_reports_missing_scipy(hand_src, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # import scipy.io now fails
    rc = _converter().main(["--src", str(hand_src), "--out", str(tmp_path / "o"), "--lists-dir", "",
                            "--names", ""])
    assert rc == 2 and "needs scipy" in capsys.readouterr().err


def test_converter_rejects_wrong_source(tmp_path, capsys):
    rc = _converter().main(["--src", str(tmp_path), "--out", str(tmp_path / "o"), "--lists-dir", "", "--names", ""])
    assert rc == 2 and "images/ and annotations/" in capsys.readouterr().err
