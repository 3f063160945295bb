"""Dataset descriptions, label verification and cache, augmentation invariants, loader determinism, built-in data."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from utils import datasets as D
from utils.augment import letterbox, random_perspective
from utils.dataconfig import DatasetError, list_image_files, load_data_config
from utils.datasets import YoloDataset, create_dataloader
from utils.errors import UserError, describe_error
from utils.fileio import temp_name
from utils.hyp import HypError, load_hyp
from utils.labels import img2label_paths, parse_label_text
from utils.synthetic import BUILTIN_DATA, ensure_builtin, make_shapes_dataset

ROOT = Path(__file__).resolve().parents[1]


def _write_img(path: Path, w: int = 64, h: int = 48, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)
    return path


def _write_label(img: Path, text: str) -> Path:
    lab = Path(img2label_paths([img])[0])
    lab.parent.mkdir(parents=True, exist_ok=True)
    lab.write_text(text)
    return lab


def _tiny_dataset(root: Path, n_train: int = 3, n_val: int = 2) -> Path:
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            img = _write_img(root / "images" / split / f"{i}.jpg", seed=i)
            _write_label(img, f"{i % 2} 0.5 0.5 0.2 0.3\n")
    return root


# ----------------------------------------------------------------------------- descriptions
def test_yaml_names_list_and_dict(tmp_path):
    _tiny_dataset(tmp_path / "ds")
    a = tmp_path / "ds" / "a.yaml"
    a.write_text("path: .\ntrain: images/train\nval: images/val\nnc: 2\nnames: ['cat', 'dog']\n")
    b = tmp_path / "b.yaml"
    b.write_text("path: ds\ntrain: [images/train]\nval: images/val\nnames: {0: cat, 1: dog}\ndownload: none\n")
    ca, cb = load_data_config(a), load_data_config(b)
    assert ca.names == cb.names == ["cat", "dog"] and ca.nc == cb.nc == 2
    assert ca.train == cb.train == [(tmp_path / "ds" / "images" / "train").resolve()]
    assert ca.test is None and cb.extra == {"download": "none"}
    bad = tmp_path / "ds" / "bad.yaml"
    bad.write_text("path: .\ntrain: images/train\nval: images/val\nnc: 3\nnames: ['cat', 'dog']\n")
    with pytest.raises(DatasetError, match="nc=3 but 2 names"):
        load_data_config(bad)
    gap = tmp_path / "ds" / "gap.yaml"
    gap.write_text("path: .\ntrain: images/train\nval: images/val\nnames: {0: cat, 2: dog}\n")
    with pytest.raises(DatasetError, match="without gaps"):
        load_data_config(gap)


def test_yaml_relative_path_lookup(tmp_path, monkeypatch, capsys):
    """`path` is tried against the yaml's folder first, then the current folder; the one used is printed."""
    _tiny_dataset(tmp_path / "ds")
    desc = tmp_path / "descs" / "d.yaml"
    desc.parent.mkdir()
    desc.write_text("path: ds\ntrain: images/train\nval: images/val\nnames: [a, b]\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_data_config(desc)
    assert cfg.root == (tmp_path / "ds").resolve()
    assert str(tmp_path / "ds") in capsys.readouterr().out
    _tiny_dataset(tmp_path / "descs" / "ds")  # now also next to the yaml: that one wins
    assert load_data_config(desc).root == (tmp_path / "descs" / "ds").resolve()
    monkeypatch.chdir(tmp_path / "descs")
    (tmp_path / "descs" / "e.yaml").write_text("path: nowhere\ntrain: images/train\nval: images/val\nnc: 1\n")
    with pytest.raises(DatasetError, match="nowhere.*not found"):
        load_data_config(tmp_path / "descs" / "e.yaml")


def test_missing_split_is_named(tmp_path):
    _tiny_dataset(tmp_path)
    y = tmp_path / "m.yaml"
    y.write_text("path: .\ntrain: images/train\nval: images/missing\nnc: 2\n")
    with pytest.raises(DatasetError, match=r"m\.yaml.*val path not found.*images/missing"):
        load_data_config(y)


def test_darknet_data(tmp_path, monkeypatch):
    _tiny_dataset(tmp_path / "ds")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.txt").write_text("".join(f"../ds/images/train/{i}.jpg\n" for i in range(3)))
    (lists / "valid.txt").write_text(f"{tmp_path}/ds/images/val/0.jpg\n./../ds/images/val/1.jpg\n")
    (lists / "x.names").write_text("cat\ndog\n\n")
    d = tmp_path / "x.data"
    d.write_text("# comment\nclasses= 2\ntrain = lists/train.txt\nvalid=lists/valid.txt\n"
                 "names=lists/x.names\nbackup=backup/\neval=coco\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_data_config("x.data")
    assert cfg.nc == 2 and cfg.names == ["cat", "dog"] and cfg.test is None
    assert cfg.extra == {"backup": "backup/", "eval": "coco"}
    files = list_image_files(cfg.train) + list_image_files(cfg.val)
    assert len(files) == 5 and all(Path(f).is_file() for f in files)
    monkeypatch.chdir(ROOT)  # relative entries are also found next to the .data file
    assert load_data_config(d).nc == 2
    (tmp_path / "y.data").write_text("classes=3\ntrain=lists/train.txt\nvalid=lists/valid.txt\nnames=lists/x.names\n")
    with pytest.raises(DatasetError, match="nc=3 but 2 names"):
        load_data_config(tmp_path / "y.data")


def test_model_files_refused_as_data(tmp_path):
    with pytest.raises(DatasetError, match=r"yolov5n\.yaml.*model yaml"):
        load_data_config(ROOT / "models" / "yolov5n.yaml")
    cfg = tmp_path / "m.cfg"
    cfg.write_text("[net]\nwidth=64\n")
    with pytest.raises(DatasetError, match=r"m\.cfg.*model file"):
        load_data_config(cfg)
    odd = tmp_path / "m.txt"
    odd.write_text("[net]\nwidth=64\n[convolutional]\n")
    with pytest.raises(DatasetError, match=r"m\.txt.*Darknet model cfg"):
        load_data_config(odd)
    with pytest.raises(DatasetError, match="not found"):
        load_data_config(tmp_path / "nope.yaml")


def test_img2label_paths():
    assert img2label_paths(["/a/images/b/images/c.jpg", "images/x.png", "/d/e.jpeg"]) == \
        ["/a/images/b/labels/c.txt", "labels/x.txt", "/d/e.txt"]


# ----------------------------------------------------------------------------- verification
def test_parse_label_text_repairs():
    lab, notes, skipped, rows = parse_label_text("0 0.5 0.5 0.2 0.2\n\n1 1.003 0.5 0.012 0.2\n2 1.5 0.5 0.2 0.2\n"
                                                 "0 0.5 0.5 0.2 0.2\n3 0.995 0.5 0.5 0.2\n4 0.5 0.5 0 0.2\n")
    # row 2 clipped (slightly out), row 3 dropped (far out), row 4 a duplicate, row 5 edge-clipped silently,
    # row 6 zero width dropped
    assert lab.dtype == np.float32 and lab.shape == (3, 5) and skipped == [] and rows == 6
    assert lab[:, 0].tolist() == [0, 1, 3]
    assert np.all(lab[:, 1:] >= 0) and np.all(lab[:, 1:3] + lab[:, 3:5] / 2 <= 1 + 1e-6)
    np.testing.assert_allclose(lab[2, 1:], [0.8725, 0.5, 0.255, 0.2], atol=1e-5)  # (0.745..1.0) box
    text = " ".join(notes)
    assert "1 box(es) slightly outside" in text and "2 invalid box(es) dropped" in text
    assert "1 duplicate" in text and "line 4, 7" in text


@pytest.mark.parametrize("bad, why", [("0 0.5 0.5 0.2", "expected 5 numbers"),
                                      ("0 0.5 0.5 0.2 0.2 0.1", "expected 5 numbers"),
                                      ("a 0.5 0.5 0.2 0.2", "not numbers"),
                                      ("-1 0.5 0.5 0.2 0.2", "class must be a non-negative integer"),
                                      ("0.5 0.5 0.5 0.2 0.2", "class must be a non-negative integer"),
                                      ("0 nan 0.5 0.2 0.2", "non-finite")])
def test_malformed_row_skipped_good_rows_kept(bad, why):
    """A malformed row is skipped on its own (named by line and reason); the file's good boxes stay."""
    good = "1 0.3 0.3 0.1 0.1"
    lab, notes, skipped, rows = parse_label_text(f"0 0.5 0.5 0.2 0.2\n{bad}\n\n{good}\n{bad}\n")
    assert lab.shape == (2, 5) and lab[:, 0].tolist() == [0, 1] and skipped == [2, 5] and rows == 4
    np.testing.assert_allclose(lab[1], [1, 0.3, 0.3, 0.1, 0.1], atol=1e-7)
    assert len(notes) == 1 and "2 malformed row(s) skipped" in notes[0]
    assert f"line 2 ({why}" in notes[0] and f"line 5 ({why}" in notes[0]
    lab, notes, skipped, rows = parse_label_text(bad + "\n")  # nothing well formed: no boxes, all skipped
    assert lab.shape == (0, 5) and skipped == [1] and rows == 1


def _bad_files_dataset(root: Path) -> dict[str, Path]:
    img = root / "images" / "train"
    files = {k: _write_img(img / f"{k}.jpg", seed=i) for i, k in enumerate(
        ("good", "background", "badrow", "allbad", "clip", "dup", "truncated", "cutpng"))}
    _write_label(files["good"], "0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n")
    _write_label(files["badrow"], "0 0.5 0.5 0.2 0.2\n1 0.5 0.5\n1 0.3 0.3 0.1 0.1\nbox 0.5 0.5 0.1 0.1\n")
    _write_label(files["allbad"], "1 0.5 0.5\nbox 0.5 0.5 0.1 0.1\n")
    _write_label(files["clip"], "0 1.003 0.5 0.012 0.2\n1 2.0 0.5 0.2 0.2\n")
    _write_label(files["dup"], "0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n")
    data = files["truncated"].read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])  # a JPEG cut in half
    files["zero"] = img / "zero.jpg"
    files["zero"].write_bytes(b"")
    png = img / "cutpng.png"
    cv2.imwrite(str(png), np.zeros((32, 32, 3), np.uint8))
    png.write_bytes(png.read_bytes()[:-20])
    files["cutpng"].unlink()
    files["cutpng"] = png
    return files


def test_bad_files_skipped_with_one_warning_each(tmp_path, capsys):
    files = _bad_files_dataset(tmp_path)
    ds = YoloDataset(tmp_path / "images" / "train", img_size=64, nc=2, prefix="t: ")
    out = capsys.readouterr().out.splitlines()
    names = sorted(Path(f).stem for f in ds.img_files)
    assert names == ["background", "badrow", "clip", "dup", "good"]
    warnings = [line for line in out if "WARNING" in line]
    for key in ("badrow", "allbad", "clip", "dup", "truncated", "zero", "cutpng"):
        assert sum(str(files[key]) in line for line in warnings) == 1, key
    assert len(warnings) == 7
    assert any("truncated" in w and str(files["truncated"]) in w for w in warnings)
    assert any("empty file" in w and str(files["zero"]) in w for w in warnings)
    badrow = next(w for w in warnings if str(files["badrow"]) in w)
    assert img2label_paths([files["badrow"]])[0] in badrow and "2 malformed row(s) skipped" in badrow
    assert "line 2 (expected 5 numbers" in badrow and "line 4 (not numbers" in badrow
    allbad = next(w for w in warnings if str(files["allbad"]) in w)
    assert "image skipped" in allbad and "no well-formed row" in allbad and "line 1" in allbad
    summary = out[-1]
    assert "9 images" in summary and "4 skipped as corrupt" in summary and "3 repaired" in summary
    assert "1 without label file" in summary and "(2 malformed label rows skipped)" in summary
    assert "4 labelled (6 boxes)" in summary
    lab = {Path(f).stem: l for f, l in zip(ds.img_files, ds.labels)}
    assert lab["background"].shape == (0, 5) and lab["dup"].shape == (1, 5) and lab["good"].shape == (2, 5)
    assert lab["badrow"][:, 0].tolist() == [0, 1]  # the good boxes of a file with bad rows are kept
    assert lab["clip"].shape == (1, 5) and lab["clip"][0, 1] + lab["clip"][0, 3] / 2 <= 1.0 + 1e-6
    assert ds.shapes.tolist() == [[64, 48]] * 5
    loader, _ = create_dataloader(tmp_path / "images" / "train", 64, 2, 32, augment=True, shuffle=True, nc=2)
    assert sum(len(b[0]) for b in loader) == 5  # iterating never meets a bad file
    assert "(2 malformed label rows skipped)" in capsys.readouterr().out.splitlines()[-1]  # kept in the cache


def test_class_id_beyond_nc_stops(tmp_path):
    img = _write_img(tmp_path / "images" / "x" / "a.jpg")
    lab = _write_label(img, "0 0.5 0.5 0.2 0.2\nbad row\n3 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetError, match=rf"^x: {lab}:3: class id 3 >= nc=2 .*fix nc/names") as e:
        YoloDataset(tmp_path / "images" / "x", img_size=64, nc=2, prefix="x: ")
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)
    assert len(str(e.value).splitlines()) == 1
    assert YoloDataset(tmp_path / "images" / "x", img_size=64, nc=4).n == 1


def test_label_cache_reused_and_invalidated(tmp_path, capsys):
    _tiny_dataset(tmp_path, n_train=3)
    src = tmp_path / "images" / "train"
    ds = YoloDataset(src, img_size=64)
    cache = tmp_path / "labels" / "train.cache"
    assert cache.is_file() and "all checked" in capsys.readouterr().out
    ds2 = YoloDataset(src, img_size=64)
    assert "0 checked, 3 from cache" in capsys.readouterr().out
    assert all(np.array_equal(a, b) for a, b in zip(ds.labels, ds2.labels))
    lab = Path(ds.label_files[1])
    lab.write_text("1 0.25 0.25 0.1 0.1\n1 0.75 0.75 0.1 0.1\n")
    ds3 = YoloDataset(src, img_size=64)
    assert "1 checked, 2 from cache" in capsys.readouterr().out
    assert ds3.labels[1].shape == (2, 5) and ds3.labels[0].shape == (1, 5)
    lab.unlink()  # a removed label turns the image into a background
    assert YoloDataset(src, img_size=64).labels[1].shape == (0, 5)
    # a list file keeps its cache beside the list
    lst = tmp_path / "train.txt"
    lst.write_text("".join(f"./images/train/{i}.jpg\n" for i in range(3)))
    YoloDataset(lst, img_size=64)
    assert (tmp_path / "train.cache").is_file()


def test_unwritable_cache_does_not_crash(tmp_path, monkeypatch, capsys):
    _tiny_dataset(tmp_path, n_train=2)

    def refuse(*a, **k):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(np, "savez", refuse)
    ds = YoloDataset(tmp_path / "images" / "train", img_size=64)
    assert ds.n == 2 and not (tmp_path / "labels" / "train.cache").exists()
    assert "cache not written" in capsys.readouterr().out
    assert not [p for p in (tmp_path / "labels").iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- augmentation
def test_letterbox_shapes():
    img = np.zeros((48, 64, 3), np.uint8)
    out, ratio, (dw, dh) = letterbox(img, 128, auto=False)
    assert out.shape == (128, 128, 3) and ratio == (2.0, 2.0) and (dw, dh) == (0.0, 16.0)
    assert (out[:16] == 114).all() and (out[-16:] == 114).all() and (out[16:-16] == 0).all()
    out, _, _ = letterbox(img, 128, auto=True, stride=32)  # minimal padding to a stride multiple
    assert out.shape == (96, 128, 3)
    out, ratio, _ = letterbox(img, (40, 40), auto=False, scaleup=False)
    assert out.shape == (40, 40, 3) and ratio[0] == pytest.approx(40 / 64)


def test_random_perspective_keeps_boxes_inside():
    rng = np.random.default_rng(0)
    img = np.zeros((128, 128, 3), np.uint8)
    targets = np.array([[0, 10, 10, 60, 50], [1, 100, 90, 127, 127], [2, 0, 0, 128, 128]], np.float32)
    for _ in range(30):
        out, t = random_perspective(img, targets, degrees=20, translate=0.2, scale=0.5, shear=5,
                                    perspective=0.0005, border=(-32, -32), rng=rng)
        assert out.shape == (64, 64, 3) and t.shape[1] == 5
        assert (t[:, 1:] >= 0).all() and (t[:, [1, 3]] <= 64).all() and (t[:, [2, 4]] <= 64).all()
        assert ((t[:, 3] - t[:, 1]) > 2).all() and ((t[:, 4] - t[:, 2]) > 2).all()


def _squares_dataset(root: Path, n: int = 4, size: int = 96) -> Path:
    """Black images with white squares and exact labels: box contents must stay white after augmentation."""
    rng = np.random.default_rng(1)
    for i in range(n):
        img = np.zeros((size, size + 16 * i, 3), np.uint8)
        rows = []
        for c in range(2):
            s = int(rng.integers(12, 30))
            x, y = int(rng.integers(0, img.shape[1] - s)), int(rng.integers(0, size - s))
            img[y:y + s, x:x + s] = 255
            h, w = img.shape[:2]
            rows.append(f"{c} {(x + s / 2) / w} {(y + s / 2) / h} {s / w} {s / h}\n")
        p = root / "images" / "train" / f"{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), img)
        _write_label(p, "".join(rows))
    return root / "images" / "train"


def test_mosaic_affine_targets_follow_content(tmp_path):
    src = _squares_dataset(tmp_path)
    hyp = load_hyp()
    hyp.update(hsv_h=0, hsv_s=0, hsv_v=0, flipud=0.5, fliplr=0.5, mosaic=1.0, degrees=0, shear=0)
    ds = YoloDataset(src, img_size=64, augment=True, hyp=hyp, seed=3)
    n_boxes = 0
    for i in range(ds.n):
        for epoch in range(4):
            img, t, path, shapes = ds[(i, epoch)]
            assert img.shape == (3, 64, 64) and img.dtype == torch.uint8 and t.shape[1] == 6
            assert shapes[0] == (64, 64)
            xywh = t[:, 2:].numpy()
            assert (xywh >= 0).all() and (xywh[:, :2] - xywh[:, 2:] / 2 >= -1e-4).all()
            assert (xywh[:, :2] + xywh[:, 2:] / 2 <= 1 + 1e-4).all()
            a = img.numpy()[0].astype(np.float32)
            for x, y, w, h in xywh * 64:
                x1, y1, x2, y2 = int(np.ceil(x - w / 2)), int(np.ceil(y - h / 2)), int(x + w / 2), int(y + h / 2)
                if x2 - x1 >= 3 and y2 - y1 >= 3:  # inner part of the box is the white square
                    assert a[y1 + 1:y2 - 1, x1 + 1:x2 - 1].mean() > 150
                    n_boxes += 1
    assert n_boxes > 20


def test_rect_batches_are_stride_multiples(tmp_path):
    for i, (w, h) in enumerate([(64, 32), (64, 40), (40, 64), (30, 64), (64, 64)]):
        img = _write_img(tmp_path / "images" / "v" / f"{i}.jpg", w, h, seed=i)
        _write_label(img, "0 0.5 0.5 0.5 0.5\n")
    loader, ds = create_dataloader(tmp_path / "images" / "v", 64, 2, 32, rect=True, pad=0.5, shuffle=True)
    assert ds.batch_shapes is not None and (ds.batch_shapes % 32 == 0).all()
    ar = ds.shapes[:, 1] / ds.shapes[:, 0]
    assert (np.diff(ar) >= 0).all()  # sorted by aspect ratio
    for b, (imgs, targets, paths, shapes) in enumerate(loader):
        assert tuple(imgs.shape[2:]) == tuple(ds.batch_shapes[b])
        assert imgs.shape[2] % 32 == 0 and imgs.shape[3] % 32 == 0
        assert set(targets[:, 0].tolist()) <= set(range(len(imgs)))
        for (h0, w0), ((gh, gw), (pw, ph)) in shapes:  # content + padding fills the batch shape
            assert round(w0 * gw + 2 * pw) == imgs.shape[3] and round(h0 * gh + 2 * ph) == imgs.shape[2]


# ----------------------------------------------------------------------------- loader
def _batches(loader, epochs: int = 2):
    out = []
    for e in range(epochs):
        loader.sampler.set_epoch(e)
        out += [(imgs.clone(), t.clone(), p) for imgs, t, p, _ in loader]
    return out


def test_loader_deterministic_across_runs_and_workers(tmp_path):
    src = _tiny_dataset(tmp_path, n_train=6) / "images" / "train"
    kw = dict(augment=True, shuffle=True, seed=5)
    a = _batches(create_dataloader(src, 64, 3, 32, **kw)[0])
    b = _batches(create_dataloader(src, 64, 3, 32, **kw)[0])
    c = _batches(create_dataloader(src, 64, 3, 32, workers=2, **kw)[0])
    for x, y, z in zip(a, b, c):
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2] == y[2]
        assert torch.equal(x[0], z[0]) and torch.equal(x[1], z[1]) and x[2] == z[2]
    # another epoch or another seed augments differently
    assert not all(torch.equal(a[i][0], a[i + 2][0]) for i in range(2))
    d = _batches(create_dataloader(src, 64, 3, 32, augment=True, shuffle=True, seed=6)[0])
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, d))


def test_distributed_sampler_splits_and_carries_epoch(tmp_path):
    src = _tiny_dataset(tmp_path, n_train=6) / "images" / "train"
    paths = []
    for rank in range(2):
        loader, _ = create_dataloader(src, 64, 2, 32, shuffle=True, seed=1, rank=rank, world_size=2)
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
        loader.sampler.set_epoch(3)
        assert {e for _, e in loader.sampler} == {3}
        paths += [p for _, _, ps, _ in loader for p in ps]
    assert sorted(paths) == sorted(str(p) for p in src.iterdir())


def test_collate_sets_image_index(tmp_path):
    src = _tiny_dataset(tmp_path, n_train=3) / "images" / "train"
    loader, _ = create_dataloader(src, 64, 3, 32)
    imgs, targets, paths, shapes = next(iter(loader))
    assert imgs.shape == (3, 3, 64, 64) and imgs.dtype == torch.uint8
    assert targets[:, 0].tolist() == [0, 1, 2] and len(paths) == len(shapes) == 3


# ----------------------------------------------------------------------------- built-in dataset
def test_shapes_dataset_deterministic_and_fast(tmp_path):
    t = time.perf_counter()
    a = make_shapes_dataset(tmp_path / "a", n_train=16, n_val=4, img_size=96, seed=3)
    elapsed = time.perf_counter() - t
    b = make_shapes_dataset(tmp_path / "b", n_train=16, n_val=4, img_size=96, seed=3)
    c = make_shapes_dataset(tmp_path / "c", n_train=16, n_val=4, img_size=96, seed=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".jpg"]) == 20
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files if f.suffix == ".jpg")
    assert elapsed < 3.0
    cfg = load_data_config(a)  # the folder's own description
    assert cfg.nc == 5 and cfg.names[0] == "circle"
    ds = YoloDataset(cfg.train, img_size=96, nc=cfg.nc, verbose=False)
    boxes = np.concatenate(ds.labels)
    assert len(boxes) >= 16 and set(boxes[:, 0].astype(int)) <= set(range(5))
    assert (boxes[:, 3:] > 0.05).all() and (boxes[:, 3:] < 0.5).all()
    assert (boxes[:, 1:3] - boxes[:, 3:] / 2 >= 0).all() and (boxes[:, 1:3] + boxes[:, 3:] / 2 <= 1).all()


def test_ensure_builtin_generates_once(tmp_path):
    params = dict(n_train=4, n_val=2, img_size=64, seed=0)
    root = ensure_builtin(tmp_path / "bi", params)
    marker = root / ".complete.json"
    stamp = marker.stat().st_mtime_ns
    assert ensure_builtin(tmp_path / "bi", params) == root and marker.stat().st_mtime_ns == stamp
    assert len(list((root / "images" / "train").iterdir())) == 4
    ensure_builtin(tmp_path / "bi", dict(params, n_train=5))  # other arguments: rebuilt
    assert len(list((root / "images" / "train").iterdir())) == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_builtin_descriptions_agree():
    """data/builtin.yaml and data/builtin.data describe the same generated data (generated if missing)."""
    y, d = load_data_config(None), load_data_config(ROOT / "data" / "builtin.data")
    assert y.names == d.names and y.nc == d.nc == 5
    assert sorted(list_image_files(y.val)) == sorted(list_image_files(d.val))


# ----------------------------------------------------------------------------- package layout
def test_each_data_concept_has_one_home():
    """utils.datasets holds the dataset, samplers and loader only; descriptions, hyp and labels live apart."""
    assert set(D.__all__) == {"YoloDataset", "create_dataloader", "EpochSampler", "SeededDistributedSampler"}
    for name in ("load_data_config", "load_hyp", "parse_label_text", "DataConfig"):
        assert name not in D.__all__


def test_dataset_error_is_one_user_sentence(tmp_path):
    e = DatasetError("x.yaml: something; do this")
    assert isinstance(e, UserError) and isinstance(e, ValueError)
    assert describe_error(e) == "x.yaml: something; do this"
    with pytest.raises(DatasetError, match=r"nope\.yaml: dataset description not found; --data takes"):
        load_data_config(tmp_path / "nope.yaml")
    with pytest.raises(DatasetError, match=r"missing.*does not exist; a dataset split is an image folder"):
        list_image_files(tmp_path / "missing")
    bad_list = tmp_path / "list.txt"
    bad_list.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(DatasetError, match=r"list\.txt: not a text image list"):
        list_image_files(bad_list)


def test_hyp_errors_name_the_file(tmp_path):
    assert load_hyp()["lr0"] == pytest.approx(0.01)
    bad = tmp_path / "h.yaml"
    bad.write_text("lr0: [0.01\n")
    with pytest.raises(HypError, match=r"--hyp .*h\.yaml: not a valid yaml file"):
        load_hyp(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(HypError, match=r"h\.yaml: expected 'name: number' lines"):
        load_hyp(bad)
    bad.write_text("lr0: fast\n")
    with pytest.raises(ValueError, match=r"h\.yaml: values must be numbers.*lr0"):
        load_hyp(bad)
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml: hyperparameter file not found"):
        load_hyp(tmp_path / "missing.yaml")


# ----------------------------------------------------------------------------- splits without labels
def _images_only(root: Path, n: int = 3) -> Path:
    for i in range(n):
        _write_img(root / "images" / "train" / f"{i}.jpg", seed=i)
    return root / "images" / "train"


def test_split_without_label_files_refused(tmp_path, capsys):
    src = _images_only(tmp_path)
    with pytest.raises(DatasetError) as e:
        create_dataloader(src, 64, 2, 32, augment=True, prefix="train: ")
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and msg.startswith("train: the train split")
    assert "not one label file found" in msg and str(tmp_path / "labels" / "train") in msg
    assert "--allow-unlabelled" in msg
    loader, ds = create_dataloader(src, 64, 2, 32, augment=True, prefix="train: ", allow_unlabelled=True)
    out = capsys.readouterr().out
    assert "WARNING the train split" in out and "background only (--allow-unlabelled)" in out
    assert ds.n == 3 and sum(len(t) for _, t, _, _ in loader) == 0


def test_split_with_only_empty_label_files_refused(tmp_path):
    src = _images_only(tmp_path)
    for i in range(3):
        _write_label(src / f"{i}.jpg", "")
    with pytest.raises(DatasetError, match=r"^val: the val split .*all 3 label files found .* are empty.*"
                                           r"--allow-unlabelled"):
        YoloDataset(src, img_size=64, prefix="val: ")
    _write_label(src / "1.jpg", "0 0.5 0.5 0.2 0.2\n")  # one box makes the others legitimate backgrounds
    ds = YoloDataset(src, img_size=64, prefix="val: ")
    assert [len(lab) for lab in ds.labels] == [0, 1, 0]


def test_boxes_all_dropped_counts_as_unlabelled(tmp_path):
    """Label files whose only rows are unusable (far outside the image) leave the split without a box."""
    src = _images_only(tmp_path, n=2)
    for i in range(2):
        _write_label(src / f"{i}.jpg", "0 3.0 0.5 0.2 0.2\n")
    with pytest.raises(DatasetError, match="no usable box"):
        YoloDataset(src, img_size=64)
    assert YoloDataset(src, img_size=64, allow_unlabelled=True, verbose=False).n == 2


# ----------------------------------------------------------------------------- held-out test split
def _digests(folder: Path) -> dict[str, str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest(): p.name for p in sorted(folder.iterdir())}


def test_shapes_dataset_test_split_is_held_out(tmp_path):
    a = make_shapes_dataset(tmp_path / "a", n_train=12, n_val=4, img_size=64, seed=1, n_test=5)
    b = make_shapes_dataset(tmp_path / "b", n_train=12, n_val=4, img_size=64, seed=1)  # no test split
    images = {s: _digests(a / "images" / s) for s in ("train", "val", "test")}
    assert [len(images[s]) for s in ("train", "val", "test")] == [12, 4, 5]  # no duplicate inside a split
    assert not set(images["test"]) & (set(images["train"]) | set(images["val"]))
    assert len((a / "test.txt").read_text().splitlines()) == 5 and not (b / "images" / "test").exists()
    for split in ("train", "val"):  # adding a test split leaves train and val byte for byte the same
        for kind in ("images", "labels"):
            assert _digests(a / kind / split) == _digests(b / kind / split)
    ca, cb = load_data_config(a), load_data_config(b)
    assert ca.test == [(a / "images" / "test").resolve()] and cb.test is None
    assert YoloDataset(ca.test, img_size=64, nc=ca.nc, verbose=False).n == 5


def test_builtin_test_split_declared_in_both_formats():
    y, d = load_data_config(None), load_data_config(BUILTIN_DATA)
    ty, td = sorted(list_image_files(y.test)), sorted(list_image_files(d.test))
    assert len(ty) == 150 and ty == td
    held = {hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in ty}
    seen = {hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in list_image_files(y.train + y.val)}
    assert len(held) == 150 and not held & seen
    assert len(list_image_files(y.train)) == 600 and len(list_image_files(y.val)) == 150


def test_darknet_test_key(tmp_path, monkeypatch):
    _tiny_dataset(tmp_path)
    (tmp_path / "t.txt").write_text("./images/val/0.jpg\n")
    (tmp_path / "x.data").write_text("classes=2\ntrain=images/train\nvalid=images/val\ntest=t.txt\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_data_config("x.data")
    assert cfg.test == [(tmp_path / "t.txt").resolve()] and list_image_files(cfg.test) == \
        [str(tmp_path / "images" / "val" / "0.jpg")]
    (tmp_path / "y.data").write_text("classes=2\ntrain=images/train\nvalid=images/val\ntest=nowhere.txt\n")
    with pytest.raises(DatasetError, match=r"y\.data: test=nowhere\.txt not found"):
        load_data_config("y.data")


def test_stale_builtin_folder_is_rebuilt_with_test_split(tmp_path):
    """A folder from the generator before the test split (format version 1) is regenerated on use."""
    params = dict(n_train=3, n_val=2, img_size=64, seed=0)
    old = make_shapes_dataset(tmp_path / "bi", **params)
    (old / ".complete.json").write_text(json.dumps({"version": 1, **params}))
    before = _digests(old / "images" / "train")
    killed = temp_name(tmp_path / "bi").with_name(".bi.999999999.0123abcd.tmp")  # left by a dead process
    killed.mkdir()
    root = ensure_builtin(tmp_path / "bi", dict(params, n_test=2))
    assert len(list((root / "images" / "test").iterdir())) == 2
    assert _digests(root / "images" / "train") == before
    assert json.loads((root / ".complete.json").read_text())["n_test"] == 2
    assert not killed.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_synthetic_block_is_a_dataset_error(tmp_path):
    y = tmp_path / "s.yaml"
    y.write_text("path: gen\ntrain: images/train\nval: images/val\nnc: 5\nsynthetic:\n  n_train: 0\n")
    with pytest.raises(DatasetError, match=r"s\.yaml: bad 'synthetic:' block .*n_train"):
        load_data_config(y)
    y.write_text("path: gen\ntrain: images/train\nval: images/val\nnc: 5\nsynthetic:\n  n_trian: 4\n")
    with pytest.raises(DatasetError, match=r"s\.yaml: bad 'synthetic:' block .*unknown keys.*n_trian"):
        load_data_config(y)


def test_cache_written_atomically_and_stale_temps_removed(tmp_path):
    """The label cache goes through utils.fileio: a killed writer's temporary file is removed on the next scan."""
    _tiny_dataset(tmp_path, n_train=2)
    labels = tmp_path / "labels"
    labels.mkdir(exist_ok=True)
    stale = labels / ".train.cache.999999999.0123abcd.tmp"  # left by a writer that no longer runs
    stale.write_bytes(b"half a cache")
    YoloDataset(tmp_path / "images" / "train", img_size=64, verbose=False)
    assert (labels / "train.cache").is_file() and not stale.exists()
    assert not [p for p in labels.iterdir() if p.name.endswith(".tmp")]


def test_disk_image_cache(tmp_path):
    src = _tiny_dataset(tmp_path, n_train=2) / "images" / "train"
    ds = YoloDataset(src, img_size=64, cache="disk", verbose=False)
    for f in ds.img_files:
        npy = Path(f).with_suffix(".npy")
        assert np.array_equal(np.load(npy), cv2.imread(f))
    assert not [p for p in src.iterdir() if p.name.endswith(".tmp")]
    assert torch.equal(ds[0][0], YoloDataset(src, img_size=64, verbose=False)[0][0])
