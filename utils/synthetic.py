"""The built-in dataset: seeded synthetic shapes on cluttered backgrounds, in YOLO format.

It lets every step of the toolkit run without a download, and it is meant to be learnable by a small
YOLOv5 from scratch in CPU minutes while still punishing a model that lost too much capacity: objects range
from small (about a tenth of the image side) to large, overlap and occlude each other, and sit on noisy,
shaded backgrounds with distractor strokes. Each image is drawn from its own generator seeded with
(seed, split, index), so the files are the same bytes on every run.
"""
from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import yaml

from utils.fileio import remove_stale_temps, temp_name

__all__ = ["CLASS_NAMES", "make_shapes_dataset", "ensure_builtin", "builtin_params", "render_image",
           "BUILTIN_YAML", "BUILTIN_DATA"]

CLASS_NAMES = ("circle", "rectangle", "triangle", "cross", "ring")
DATA_DIR = Path(__file__).resolve().parents[1] / "data"
BUILTIN_YAML = DATA_DIR / "builtin.yaml"
BUILTIN_DATA = DATA_DIR / "builtin.data"
_MARKER = ".complete.json"  # written last: its presence means the folder is whole
# Bump when the drawing or the folder layout changes, so old folders are regenerated.
# 2: a held-out test split (train/val files unchanged).
_FORMAT_VERSION = 2
# Each image's generator is seeded with (seed, split id, index): the split id keeps the splits' images
# apart. Append new splits; never reorder, or existing splits would change.
_SPLITS = ("train", "val", "test")
_PARAM_KEYS = ("n_train", "n_val", "n_test", "img_size", "seed", "max_objects", "min_size", "max_size")


# --------------------------------------------------------------------------- shapes
def _unit_polygon(cls: int, rng: np.random.Generator) -> np.ndarray:
    """Vertices (k, 2) of a class outline around the origin, before rotation and scaling."""
    if cls == 1:  # rectangle with a random aspect ratio
        a = rng.uniform(0.45, 1.0)
        return np.array([[-1, -a], [1, -a], [1, a], [-1, a]], dtype=np.float64)
    if cls == 2:  # roughly equilateral triangle
        ang = np.radians(np.array([90.0, 210.0, 330.0]) + rng.uniform(-12, 12, 3))
        rad = rng.uniform(0.85, 1.0, 3)
        return np.stack((rad * np.cos(ang), -rad * np.sin(ang)), 1)
    if cls == 3:  # plus sign; arm half-width t
        t = rng.uniform(0.22, 0.34)
        return np.array([[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t], [t, 1], [-t, 1], [-t, t],
                         [-1, t], [-1, -t], [-t, -t]], dtype=np.float64)
    raise ValueError(f"class {cls} is not a polygon")


def _place_polygon(poly: np.ndarray, side: float, angle: float) -> np.ndarray:
    """Rotate, then scale so the axis-aligned hull's longer side is ``side`` pixels; centred at 0."""
    c, s = np.cos(angle), np.sin(angle)
    p = poly @ np.array([[c, s], [-s, c]])
    p -= (p.max(0) + p.min(0)) / 2
    return p * (side / (p.max(0) - p.min(0)).max())


def _shape_extent(cls: int, side: float, rng: np.random.Generator) -> tuple[np.ndarray | None, float, float]:
    """(polygon around 0 or None for round classes, half-width, half-height) of one object."""
    if cls in (0, 4):
        return None, side / 2, side / 2
    poly = _place_polygon(_unit_polygon(cls, rng), side, rng.uniform(0, np.pi))
    half = (poly.max(0) - poly.min(0)) / 2
    return poly, float(half[0]), float(half[1])


def _draw_shape(img: np.ndarray, cls: int, poly: np.ndarray | None, cx: float, cy: float, side: float,
                color: tuple[int, int, int], rng: np.random.Generator) -> None:
    """Draw one filled object (ring: a thick outline) with anti-aliased edges, in place."""
    shift = 4  # cv2 fixed-point: sub-pixel positions
    f = 1 << shift
    if poly is None:
        r = side / 2
        centre = (int(round(cx * f)), int(round(cy * f)))
        if cls == 0:
            cv2.circle(img, centre, int(round(r * f)), color, -1, cv2.LINE_AA, shift)
        else:  # ring: outer edge on the box, thickness a fraction of the radius
            t = max(2.0, r * rng.uniform(0.22, 0.34))
            cv2.circle(img, centre, int(round((r - t / 2) * f)), color, int(round(t)), cv2.LINE_AA, shift)
        return
    pts = np.round((poly + (cx, cy)) * f).astype(np.int32)
    cv2.fillPoly(img, [pts], color, cv2.LINE_AA, shift)


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Base colour + linear shading + blotches, built at 1/8 resolution and upscaled (uint8 HWC).

    Everything here is smooth, so a coarse grid plus bilinear upscaling costs a fraction of full-size
    float arithmetic and looks the same.
    """
    g = max(size // 8, 4)
    yy, xx = np.mgrid[0:g, 0:g].astype(np.float32) / g - 0.5
    ang = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(ang) * xx + np.sin(ang) * yy)[..., None] * rng.uniform(-80, 80, 3).astype(np.float32)
    k = int(rng.integers(3, 7))
    blotch = rng.uniform(-1, 1, (k, k, 3)).astype(np.float32)
    blotch = cv2.resize(blotch, (g, g), interpolation=cv2.INTER_CUBIC) * rng.uniform(10, 45)
    small = np.clip(rng.uniform(30, 225, 3).astype(np.float32) + ramp + blotch, 0, 255).astype(np.uint8)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)


@lru_cache(maxsize=4)
def _noise_bank(size: int) -> np.ndarray:
    """A fixed (2*size, 2*size, 3) int16 bank of unit Gaussian noise times 16 (fixed seed: deterministic).

    Each image adds a random crop of it at a random strength: drawing fresh Gaussian noise per image
    dominated the generation time.
    """
    rng = np.random.default_rng(20240601)
    return np.round(rng.standard_normal((2 * size, 2 * size, 3)) * 16).astype(np.int16)


def _add_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """img + N(0, sigma^2) noise (approximately: a crop of the fixed bank), clipped to uint8."""
    size = img.shape[0]
    bank = _noise_bank(size)
    oy, ox = (int(v) for v in rng.integers(0, size, 2))
    noise = bank[oy:oy + size, ox:ox + img.shape[1]]
    level = max(1, int(round(sigma)))
    out = img.astype(np.int16) * 16 + noise * level  # fixed point: x16 keeps sub-unit noise steps
    return np.clip(out >> 4, 0, 255).astype(np.uint8)


def _strokes(img: np.ndarray, n: int, rng: np.random.Generator) -> None:
    """Distractor lines and arcs: edges the detector must learn to ignore."""
    size = img.shape[0]
    for _ in range(n):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        thick = int(rng.integers(1, 4))
        if rng.random() < 0.6:
            p = rng.integers(0, size, 4)
            cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), color, thick, cv2.LINE_AA)
        else:
            c = rng.integers(0, size, 2)
            ax = rng.integers(size // 10, size // 2, 2)
            a0 = float(rng.uniform(0, 360))
            cv2.ellipse(img, (int(c[0]), int(c[1])), (int(ax[0]), int(ax[1])), a0, 0,
                        float(rng.uniform(40, 160)), color, thick, cv2.LINE_AA)


def _contrasting_color(bg_mean: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
    """A random colour far enough (L1 >= 120) from the local background to be visible."""
    for _ in range(20):
        c = rng.integers(0, 256, 3)
        if np.abs(c - bg_mean).sum() >= 120:
            break
    else:
        c = np.where(bg_mean > 127, 20, 235)
    return tuple(int(v) for v in c)


def _iou_cover(box: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU of ``box`` with each of ``boxes`` (xyxy) and the fraction of each that ``box`` covers."""
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iw * ih
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    own = (box[2] - box[0]) * (box[3] - box[1])
    return inter / (own + area - inter), inter / area


def render_image(size: int, rng: np.random.Generator, max_objects: int = 6, min_size: float = 0.10,
                 max_size: float = 0.45) -> tuple[np.ndarray, np.ndarray]:
    """One BGR uint8 image and its labels (n, 5): class, x, y, w, h normalised."""
    img = _background(size, rng)
    bg = img.copy()
    _strokes(img, int(rng.integers(1, 5)), rng)
    boxes, classes = np.zeros((0, 4)), []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(len(CLASS_NAMES)))
        side = size * np.exp(rng.uniform(np.log(min_size), np.log(max_size)))  # more small than large
        poly, hw, hh = _shape_extent(cls, side, rng)
        for _ in range(30):  # find a spot that does not hide the objects already drawn
            cx, cy = rng.uniform(hw + 1, size - hw - 1), rng.uniform(hh + 1, size - hh - 1)
            box = np.array([cx - hw, cy - hh, cx + hw, cy + hh])
            if not len(boxes):
                break
            iou, cover = _iou_cover(box, boxes)
            if iou.max() <= 0.35 and cover.max() <= 0.45:
                break
        else:
            continue
        x0, y0, x1, y1 = (int(v) for v in np.clip(box, 0, size - 1))
        color = _contrasting_color(bg[y0:y1 + 1, x0:x1 + 1].reshape(-1, 3).mean(0), rng)
        _draw_shape(img, cls, poly, cx, cy, side, color, rng)
        boxes = np.vstack((boxes, box))
        classes.append(cls)
    if rng.random() < 0.5:
        _strokes(img, int(rng.integers(1, 3)), rng)  # a few strokes over the objects as well
    img = _add_noise(img, rng.uniform(4, 14), rng)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    labels = np.zeros((len(classes), 5), dtype=np.float64)
    if classes:
        labels[:, 0] = classes
        labels[:, 1] = (boxes[:, 0] + boxes[:, 2]) / 2 / size
        labels[:, 2] = (boxes[:, 1] + boxes[:, 3]) / 2 / size
        labels[:, 3] = (boxes[:, 2] - boxes[:, 0]) / size
        labels[:, 4] = (boxes[:, 3] - boxes[:, 1]) / size
    return img, labels


# --------------------------------------------------------------------------- dataset folders
def _write_one(root: Path, split: str, split_id: int, index: int, seed: int, img_size: int,
               kwargs: dict) -> str:
    rng = np.random.default_rng([seed, split_id, index])
    img, labels = render_image(img_size, rng, **kwargs)
    name = f"{split}_{index:05d}"
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise RuntimeError(f"could not encode {name}.jpg")
    (root / "images" / split / f"{name}.jpg").write_bytes(buf.tobytes())
    rows = "".join(f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in labels)
    (root / "labels" / split / f"{name}.txt").write_text(rows)
    return f"./images/{split}/{name}.jpg"


def _check_args(n_train: int, n_val: int, n_test: int, img_size: int, min_size: float, max_size: float) -> None:
    if n_train < 1 or n_val < 1 or n_test < 0 or img_size < 32:
        raise ValueError(f"make_shapes_dataset: need n_train, n_val >= 1, n_test >= 0 and img_size >= 32, "
                         f"got {n_train}, {n_val}, {n_test}, {img_size}")
    if not 0 < min_size <= max_size <= 0.9:
        raise ValueError(f"make_shapes_dataset: need 0 < min_size <= max_size <= 0.9, got {min_size}, {max_size}")


def make_shapes_dataset(root: str | Path, n_train: int = 600, n_val: int = 150, img_size: int = 256,
                        seed: int = 0, max_objects: int = 6, min_size: float = 0.10, max_size: float = 0.45,
                        workers: int = 2, n_test: int = 0) -> Path:
    """Write a synthetic detection dataset under ``root`` and return ``root``.

    Layout: images/<split>/*.jpg, labels/<split>/*.txt (YOLO rows), <split>.txt image lists for the splits
    train, val and (when ``n_test`` > 0) a held-out test split, and dataset.yaml (``load_data_config(root)``
    reads it). Image i of a split is drawn from a generator seeded with (seed, split id, i), so the splits
    never share an image and adding a test split leaves train and val unchanged. min_size/max_size bound
    an object's longer box side as a fraction of the image side. The output depends only on the arguments.
    """
    root = Path(root)
    _check_args(n_train, n_val, n_test, img_size, min_size, max_size)
    counts = dict(zip(_SPLITS, (n_train, n_val, n_test)))
    splits = [k for k in _SPLITS if counts[k]]
    for split in splits:
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    kwargs = dict(max_objects=max_objects, min_size=min_size, max_size=max_size)
    jobs = [(split, _SPLITS.index(split), i) for split in splits for i in range(counts[split])]
    with ThreadPoolExecutor(max(1, workers)) as pool:  # cv2 and numpy release the GIL
        lines = list(pool.map(lambda j: _write_one(root, j[0], j[1], j[2], seed, img_size, kwargs), jobs))
    for split in splits:
        (root / f"{split}.txt").write_text("".join(f"{x}\n" for x in lines if x.startswith(f"./images/{split}/")))
    desc = {"path": ".", **{k: f"images/{k}" for k in splits}, "nc": len(CLASS_NAMES), "names": list(CLASS_NAMES)}
    (root / "dataset.yaml").write_text("# synthetic shapes (utils/synthetic.py); paths relative to this folder\n"
                                       + yaml.safe_dump(desc, sort_keys=False, default_flow_style=None))
    return root


# --------------------------------------------------------------------------- the built-in copy
def builtin_params(yaml_path: str | Path = BUILTIN_YAML) -> dict:
    """Generation arguments from the ``synthetic:`` block of a description (the built-in's defaults if absent)."""
    params = dict(n_train=600, n_val=150, n_test=150, img_size=256, seed=0)
    path = Path(yaml_path)
    if path.is_file():
        block = (yaml.safe_load(path.read_text()) or {}).get("synthetic") or {}
        unknown = set(block) - set(_PARAM_KEYS)
        if unknown:
            raise ValueError(f"{path}: unknown keys in 'synthetic': {sorted(unknown)}; known: {list(_PARAM_KEYS)}")
        params.update(block)
    return params


def _folder_ok(root: Path, stamp: dict) -> bool:
    try:
        return json.loads((root / _MARKER).read_text()) == stamp
    except (OSError, ValueError):
        return False


def _builtin_root() -> Path:
    """data/builtin, or the folder the ``path`` of data/builtin.yaml names (relative to data/)."""
    root = Path("builtin")
    if BUILTIN_YAML.is_file():
        root = Path(yaml.safe_load(BUILTIN_YAML.read_text()).get("path", "builtin"))
    return root if root.is_absolute() else DATA_DIR / root


def ensure_builtin(root: str | Path | None = None, params: dict | None = None) -> Path:
    """Path of the built-in dataset folder (``data/builtin`` unless ``root``), generated on first use.

    A complete folder carries a marker with its generation arguments and the generator's format version; a
    folder without it (interrupted), with other arguments or from an older generator (e.g. one without the
    test split) is rebuilt. Generation happens in a temporary sibling (named as utils.fileio names its
    temporary files, so a killed run's leftovers are removed next time) that is renamed into place, so
    concurrent processes (DDP ranks, parallel tests) never see a half-written dataset.
    """
    root = _builtin_root() if root is None else Path(root)
    params = builtin_params() if params is None else dict(params)
    stamp = {"version": _FORMAT_VERSION, **params}
    if _folder_ok(root, stamp):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(root.parent)
    tmp = temp_name(root)
    try:
        make_shapes_dataset(tmp, **params)
        (tmp / _MARKER).write_text(json.dumps(stamp))
        _move_into_place(tmp, root, stamp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _move_into_place(tmp: Path, root: Path, stamp: dict) -> None:
    """Rename the finished folder ``tmp`` onto ``root``, unless another process already put a whole one there."""
    if _folder_ok(root, stamp):  # another process finished first
        return
    if root.exists():
        stale = temp_name(root)
        os.replace(root, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(tmp, root)
    except OSError:  # lost a race for an empty target; the winner's copy is identical
        if not _folder_ok(root, stamp):
            raise
