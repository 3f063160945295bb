"""Convert the Oxford hand dataset to YOLO format (the layout data/coco_hand.yaml and data/oxfordhand.data use).

The dataset (https://www.robots.ox.ac.uk/~vgg/data/hands/, hand_dataset.tar.gz) has three splits, each with
``images/*.jpg`` and one MATLAB ``annotations/<image>.mat`` per image. A .mat file holds ``boxes``: per hand a
struct with four corner points ``a, b, c, d``, each a (y, x) pair in 1-based pixels, of a box that may be
rotated. Each box becomes its axis-aligned hull, clipped to the image, as a class-0 YOLO row.

    python data/converter.py --src hand_dataset

writes data/hand_data/{images,labels}/{train,valid}/, data/hand_data/{train,valid}.txt (read by
data/coco_hand.yaml), data/train.txt and data/valid.txt (read by data/oxfordhand.data) and
data/oxfordhand.names. train = training + validation splits, valid = test split, as the original toolkit did.
Reading .mat files needs scipy.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TRAIN_SPLITS = ("training_dataset/training_data", "validation_dataset/validation_data")
VALID_SPLITS = ("test_dataset/test_data",)
IMG_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class ConvertError(RuntimeError):
    """Input that cannot be converted (missing folder, unreadable annotation, scipy missing)."""


def _loadmat():
    try:
        from scipy.io import loadmat
    except ImportError as e:
        raise ConvertError("reading the Oxford hand .mat annotations needs scipy: pip install scipy") from e
    return loadmat


def _structs(obj):
    """Yield every MATLAB struct in a (possibly nested) cell/struct array as loaded by scipy."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.names:  # struct array (struct_as_record=True)
            for rec in obj.flat:
                yield rec
        elif obj.dtype == object:  # cell array
            for o in obj.flat:
                yield from _structs(o)


def _corner(rec, name: str, path: Path) -> np.ndarray:
    try:
        v = np.asarray(rec[name], dtype=object)
        while v.dtype == object and v.size == 1:  # scipy wraps fields in nested 1x1 object arrays
            v = np.asarray(v.flat[0])
        yx = np.asarray(v, dtype=np.float64).reshape(-1)[:2]
    except (ValueError, TypeError, IndexError, KeyError) as e:
        raise ConvertError(f"{path}: box field '{name}' is not a (y, x) pair: {e}") from e
    if yx.size != 2:
        raise ConvertError(f"{path}: box field '{name}' is not a (y, x) pair")
    return yx


def read_hand_boxes(mat_path: str | Path) -> np.ndarray:
    """(n, 4, 2) corner points (x, y), 0-based pixels, of the hands in one annotation file."""
    path = Path(mat_path)
    try:
        mat = _loadmat()(str(path))
    except ConvertError:
        raise
    except Exception as e:  # scipy raises several types for a damaged file
        raise ConvertError(f"{path}: cannot read .mat file: {e}") from e
    if "boxes" not in mat:
        raise ConvertError(f"{path}: no 'boxes' variable (found {sorted(k for k in mat if not k.startswith('__'))})")
    out = []
    for rec in _structs(mat["boxes"]):
        names = rec.dtype.names or ()
        if not {"a", "b", "c", "d"} <= set(names):
            raise ConvertError(f"{path}: box struct lacks corner fields a, b, c, d (has {names})")
        yx = np.stack([_corner(rec, k, path) for k in "abcd"])  # (4, 2) as (y, x), 1-based
        out.append(yx[:, ::-1] - 1.0)
    return np.array(out, dtype=np.float64).reshape(-1, 4, 2)


def boxes_to_yolo(corners: np.ndarray, w: int, h: int) -> np.ndarray:
    """Corner sets (n, 4, 2) -> (m, 5) class-0 YOLO rows of their hulls clipped to the image; empty hulls dropped."""
    if not len(corners):
        return np.zeros((0, 5))
    x1 = corners[..., 0].min(1).clip(0, w)
    x2 = corners[..., 0].max(1).clip(0, w)
    y1 = corners[..., 1].min(1).clip(0, h)
    y2 = corners[..., 1].max(1).clip(0, h)
    keep = (x2 - x1 >= 1) & (y2 - y1 >= 1)
    rows = np.stack((np.zeros(len(x1)), (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h), 1)
    return rows[keep]


def _image_size(path: Path) -> tuple[int, int]:
    try:
        from PIL import Image
        with Image.open(path) as im:
            return im.size
    except ImportError:
        import cv2
        im = cv2.imread(str(path))
        if im is None:
            raise ConvertError(f"{path}: unreadable image")
        return im.shape[1], im.shape[0]
    except Exception as e:
        raise ConvertError(f"{path}: unreadable image: {e}") from e


def _place(src: Path, dst: Path, mode: str) -> None:
    dst.unlink(missing_ok=True)
    if mode == "symlink":
        dst.symlink_to(src.resolve())
    elif mode == "link":
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    else:
        shutil.copy2(src, dst)


def convert_split(split_dirs: list[Path], out: Path, split: str, mode: str = "copy") -> tuple[list[Path], int]:
    """Convert the images of some source splits into out/images/<split> + out/labels/<split>.

    Returns the output image paths and the number of boxes. Images without an annotation file are skipped
    with a warning (in this dataset every image has one).
    """
    img_dir, lab_dir = out / "images" / split, out / "labels" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    written, n_boxes, used = [], 0, set()
    for sd in split_dirs:
        images = sorted(p for p in (sd / "images").iterdir() if p.suffix.lower() in IMG_SUFFIXES)
        for img in images:
            mat = sd / "annotations" / f"{img.stem}.mat"
            if not mat.is_file():
                print(f"WARNING {img}: no annotation {mat.name}; skipped", file=sys.stderr)
                continue
            w, h = _image_size(img)
            rows = boxes_to_yolo(read_hand_boxes(mat), w, h)
            name = img.stem if img.stem not in used else f"{sd.name}_{img.stem}"
            used.add(name)
            dst = img_dir / f"{name}{img.suffix.lower()}"
            _place(img, dst, mode)
            (lab_dir / f"{name}.txt").write_text("".join(f"0 {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}\n"
                                                         for _, x, y, bw, bh in rows))
            written.append(dst)
            n_boxes += len(rows)
    return written, n_boxes


def _write_list(list_path: Path, images: list[Path]) -> None:
    """Image list with paths relative to the list's folder ('./...'), so the tree can be moved as a whole."""
    base = list_path.parent.resolve()
    lines = []
    for p in images:
        rel = os.path.relpath(p.resolve(), base)
        lines.append(rel if rel.startswith("..") else f"./{rel}")
    list_path.write_text("".join(f"{x}\n" for x in lines))


def _parse(argv):
    ap = argparse.ArgumentParser(description="Convert the Oxford hand dataset (.mat boxes) to YOLO format.")
    ap.add_argument("--src", required=True, help="the unpacked hand_dataset folder")
    ap.add_argument("--out", default=str(HERE / "hand_data"), help="output dataset folder (data/coco_hand.yaml's path)")
    ap.add_argument("--lists-dir", default=str(HERE), help="where train.txt/valid.txt for data/oxfordhand.data go "
                                                          "('' to skip)")
    ap.add_argument("--names", default=str(HERE / "oxfordhand.names"), help="class names file to write ('' to skip)")
    ap.add_argument("--train-splits", nargs="+", default=list(TRAIN_SPLITS), help="source folders of the train split")
    ap.add_argument("--valid-splits", nargs="+", default=list(VALID_SPLITS), help="source folders of the valid split")
    ap.add_argument("--mode", choices=("copy", "link", "symlink"), default="copy", help="how images are placed")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opt = _parse(argv)
    src, out = Path(opt.src), Path(opt.out)
    try:
        _loadmat()
        splits = {}
        for split, rels in (("train", opt.train_splits), ("valid", opt.valid_splits)):
            dirs = [src / r for r in rels]
            for d in dirs:
                if not (d / "images").is_dir() or not (d / "annotations").is_dir():
                    raise ConvertError(f"{d}: expected images/ and annotations/ folders (is --src the unpacked "
                                       f"hand_dataset folder?)")
            splits[split] = convert_split(dirs, out, split, opt.mode)
    except ConvertError as e:
        print(f"converter: {e}", file=sys.stderr)
        return 2
    for split, (images, n_boxes) in splits.items():
        _write_list(out / f"{split}.txt", images)
        if opt.lists_dir:
            Path(opt.lists_dir).mkdir(parents=True, exist_ok=True)
            _write_list(Path(opt.lists_dir) / f"{split}.txt", images)
        print(f"{split}: {len(images)} images, {n_boxes} hands -> {out / 'images' / split}")
    if opt.names:
        Path(opt.names).write_text("hand\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
