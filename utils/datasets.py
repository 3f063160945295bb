"""Detection datasets: description files, label verification and caching, the training/validation loader.

Two description formats name the same thing (image sources, class count, class names): upstream YOLOv5
``.yaml`` files and Darknet ``.data`` files; ``load_data_config`` turns either into a ``DataConfig``.
Images are listed from folders or ``.txt`` lists; each image's YOLO label file is found by replacing the last
``/images/`` path component with ``/labels/``. Every image/label pair is verified once and the result kept in
a cache file beside the labels, keyed by each file's size and modification time, so later runs re-check only
files that changed. Bad files are reported one line each and skipped; they never stop training. A class id
outside the description's ``nc`` does stop it: the description, not the file, is wrong then.

Augmentation randomness comes from a generator seeded with (seed, epoch, index): the sampler hands the epoch
to the dataset with each index, so results do not depend on the number of workers or on which worker loads
an image.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from utils.augment import (augment_hsv, letterbox, mixup, mosaic4, random_perspective, xywhn_to_xyxy,
                           xyxy_to_xywhn)

__all__ = ["DataConfig", "DatasetError", "load_data_config", "load_hyp", "list_image_files", "img2label_paths",
           "verify_image", "parse_label_text", "YoloDataset", "create_dataloader", "EpochSampler",
           "SeededDistributedSampler", "IMG_FORMATS", "DEFAULT_HYP"]

IMG_FORMATS = ("bmp", "jpeg", "jpg", "png", "tif", "tiff", "webp", "mpo", "pfm", "dng")
ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "data"
DEFAULT_HYP = DATA_DIR / "hyps" / "hyp.scratch-low.yaml"
CACHE_VERSION = 1
COORD_TOL = 0.01  # label coordinates this far outside [0, 1] are clipped; farther out, the box is dropped
MIN_IMAGE_SIDE = 10  # pixels; smaller images are reported as unusable
_MODEL_SUFFIXES = (".cfg", ".pt", ".pth", ".weights", ".onnx", ".engine", ".torchscript")


class DatasetError(ValueError):
    """A dataset description, image list or label set that cannot be used as given."""


def _say(msg: str, verbose: bool = True) -> None:
    if verbose:
        print(msg, flush=True)


# =========================================================================== descriptions
@dataclass
class DataConfig:
    """What a dataset description says, with every path resolved.

    train/val/test: image sources, each an image folder, a ``.txt`` list of image paths or an image file.
    """
    source: Path
    root: Path
    train: list[Path]
    val: list[Path]
    test: list[Path] | None
    nc: int
    names: list[str]
    extra: dict = field(default_factory=dict)  # other keys of the description (e.g. download notes)


def _find_description(path: str | Path | None) -> Path:
    """Resolve the --data argument to a description file (None/'builtin' -> the built-in dataset)."""
    from utils.synthetic import BUILTIN_YAML, ensure_builtin

    if path is None or str(path) in ("", "builtin"):
        ensure_builtin()
        return BUILTIN_YAML
    p = Path(path)
    if not p.exists() and not p.is_absolute() and (DATA_DIR / p).exists():
        p = DATA_DIR / p  # 'coco128.yaml' -> data/coco128.yaml
    if not p.exists():
        raise DatasetError(f"--data {path}: dataset description not found")
    if p.is_dir():  # a dataset folder holding a single description, e.g. make_shapes_dataset's output
        found = sorted(p.glob("*.yaml")) + sorted(p.glob("*.data"))
        if len(found) != 1:
            raise DatasetError(f"--data {p}: a folder must hold exactly one .yaml/.data description, found "
                               f"{[f.name for f in found]}")
        p = found[0]
    return p.resolve()


def load_data_config(path: str | Path | None = None) -> DataConfig:
    """Read an upstream ``.yaml`` or Darknet ``.data`` dataset description (None: the built-in dataset).

    Model files (``.cfg``, model ``.yaml``, weights) given by mistake are refused with a message that says
    so; every split path must exist.
    """
    p = _find_description(path)
    if p.suffix.lower() in _MODEL_SUFFIXES:
        raise DatasetError(f"--data {p}: this is a model file ({p.suffix}), not a dataset description; "
                           f"--data takes a .yaml (path/train/val/nc/names) or a Darknet .data file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"--data {p}: cannot read: {e}") from e
    if text.lstrip().startswith("[net]") or "\n[convolutional]" in text:
        raise DatasetError(f"--data {p}: this is a Darknet model cfg, not a dataset description; "
                           f"pass it as --cfg and give --data a .yaml or .data dataset file")
    if p.suffix.lower() == ".data" or (p.suffix.lower() not in (".yaml", ".yml") and "classes" in text
                                       and "=" in text):
        return _darknet_config(p, text)
    return _yaml_config(p, text)


def _yaml_config(p: Path, text: str) -> DataConfig:
    try:
        d = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DatasetError(f"--data {p}: not valid yaml: {e}") from e
    if not isinstance(d, dict):
        raise DatasetError(f"--data {p}: expected a mapping with path/train/val/nc/names")
    if "train" not in d and ({"backbone", "head"} & set(d) or "depth_multiple" in d):
        raise DatasetError(f"--data {p}: this is a model yaml (backbone/head), not a dataset description; "
                           f"pass it as --cfg and give --data a dataset .yaml (path/train/val/nc/names)")
    for key in ("train", "val"):
        if not d.get(key):
            raise DatasetError(f"--data {p}: missing '{key}' (image folder, .txt list or a list of those)")
    if d.get("synthetic"):
        _ensure_synthetic(p, d)
    root = _yaml_root(p, d)
    splits = {k: _split_paths(p, k, d.get(k), root) for k in ("train", "val", "test")}
    names, nc = _names_and_nc(p, d.get("names"), d.get("nc"))
    extra = {k: v for k, v in d.items() if k not in ("path", "train", "val", "test", "nc", "names")}
    return DataConfig(p, root, splits["train"], splits["val"], splits["test"], nc, names, extra)


def _ensure_synthetic(p: Path, d: dict) -> None:
    """A description with a ``synthetic:`` block generates its data folder on first use."""
    from utils.synthetic import builtin_params, ensure_builtin

    rel = Path(str(d.get("path") or "."))
    ensure_builtin(rel if rel.is_absolute() else p.parent / rel, builtin_params(p))


def _as_list(v) -> list[str]:
    return [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)]


def _yaml_root(p: Path, d: dict) -> Path:
    """The dataset root: ``path`` relative to the description's folder, else to the current folder.

    The first candidate under which the train and val entries exist wins; the one used is printed when it
    is not the description's own folder, since it is then easy to pick up a different copy by accident.
    """
    rel = Path(str(d.get("path") or ""))
    if rel.is_absolute():
        return rel
    candidates = [(p.parent / rel).resolve(), (Path.cwd() / rel).resolve()]
    candidates = list(dict.fromkeys(candidates))
    entries = _as_list(d["train"]) + _as_list(d["val"])
    for c in candidates:
        if all((c / e).exists() for e in entries):
            if d.get("path") is not None:
                _say(f"data: {p.name}: path '{rel}' -> {c}")
            return c
    tried = " or ".join(str(c) for c in candidates)
    for c in candidates:
        if c.is_dir():
            return c  # exists but lacks a split: the split error below names it
    raise DatasetError(f"--data {p}: dataset root '{rel}' not found (looked for {tried}); "
                       f"see the comments in {p.name} for how to get and prepare the data")


def _split_paths(p: Path, key: str, value, root: Path) -> list[Path] | None:
    if value is None or value == "" or value == []:
        return None
    out = []
    for entry in _as_list(value):
        q = Path(entry)
        q = q if q.is_absolute() else root / q
        if not q.exists():
            raise DatasetError(f"--data {p}: {key} path not found: {q} (root {root}); "
                               f"see the comments in {p.name} for how to get and prepare the data")
        out.append(q)
    return out


def _names_and_nc(p: Path, names, nc) -> tuple[list[str], int]:
    """names as a list or an {index: name} dict; nc defaults to len(names) and must agree with it."""
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError) as e:
            raise DatasetError(f"--data {p}: names dict keys must be class indices 0..nc-1") from e
        if keys != list(range(len(keys))):
            raise DatasetError(f"--data {p}: names dict keys must be 0..{len(keys) - 1} without gaps, got {keys}")
        names = [str(names[k] if k in names else names[str(k)]) for k in keys]
    elif isinstance(names, (list, tuple)):
        names = [str(n) for n in names]
    elif names is None:
        names = None
    else:
        raise DatasetError(f"--data {p}: names must be a list or a dict, got {type(names).__name__}")
    if nc is None:
        if names is None:
            raise DatasetError(f"--data {p}: needs nc or names")
        nc = len(names)
    try:
        nc = int(nc)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"--data {p}: nc must be an integer, got {nc!r}") from e
    if nc < 1:
        raise DatasetError(f"--data {p}: nc must be >= 1, got {nc}")
    if names is None:
        names = [f"class{i}" for i in range(nc)]
    if len(names) != nc:
        raise DatasetError(f"--data {p}: nc={nc} but {len(names)} names are given")
    return names, nc


def _darknet_config(p: Path, text: str) -> DataConfig:
    """Darknet ``key=value`` file: classes, train, valid (lists), names (file); other keys ignored."""
    opts: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            raise DatasetError(f"{p}:{lineno}: expected key=value, got {line!r}")
        k, v = (s.strip() for s in line.split("=", 1))
        opts[k] = v
    for key in ("classes", "train"):
        if key not in opts:
            raise DatasetError(f"--data {p}: missing '{key}='")
    valid = opts.get("valid", opts.get("val"))
    if not valid:
        raise DatasetError(f"--data {p}: missing 'valid='")
    train = [_darknet_path(p, "train", opts["train"])]
    val = [_darknet_path(p, "valid", valid)]
    test = [_darknet_path(p, "test", opts["test"])] if opts.get("test") else None
    names = None
    if opts.get("names"):
        names_file = _darknet_path(p, "names", opts["names"])
        names = [s.strip() for s in names_file.read_text(encoding="utf-8").splitlines() if s.strip()]
    names, nc = _names_and_nc(p, names, opts["classes"])
    extra = {k: v for k, v in opts.items() if k not in ("classes", "train", "valid", "val", "test", "names")}
    return DataConfig(p, train[0].parent, train, val, test, nc, names, extra)


def _darknet_path(p: Path, key: str, value: str) -> Path:
    """Darknet paths are written relative to the folder the tools run from; try that, then near the file."""
    q = Path(value)
    if q.is_absolute():
        candidates = [q]
    else:
        here = p.resolve().parent
        candidates = list(dict.fromkeys(c.resolve() for c in (Path.cwd() / q, here / q, here.parent / q)))
    for c in candidates:
        if c.exists():
            return c
    if p.resolve() == (DATA_DIR / "builtin.data").resolve():  # generated on first use
        from utils.synthetic import ensure_builtin
        ensure_builtin()
        for c in candidates:
            if c.exists():
                return c
    raise DatasetError(f"--data {p}: {key}={value} not found (looked for "
                       f"{' or '.join(str(c) for c in candidates)}); see the comments in {p.name}")


def load_hyp(path: str | Path | dict | None = None) -> dict:
    """Augmentation/training hyperparameters from a yaml (default: data/hyps/hyp.scratch-low.yaml)."""
    if isinstance(path, dict):
        return dict(path)
    p = Path(path) if path else DEFAULT_HYP
    if not p.is_file():
        raise FileNotFoundError(f"--hyp {p}: hyperparameter file not found")
    d = yaml.safe_load(p.read_text()) or {}
    bad = {k: v for k, v in d.items() if not isinstance(v, (int, float))}
    if bad:
        raise ValueError(f"--hyp {p}: values must be numbers: {bad}")
    return {k: float(v) for k, v in d.items()}


# =========================================================================== image lists
def _is_image(path: str) -> bool:
    return path.rsplit(".", 1)[-1].lower() in IMG_FORMATS


def _read_list_file(path: Path) -> list[str]:
    """Image paths listed in a .txt file, one a line.

    Lines starting with ./ or ../ are relative to the list's folder. Other relative lines follow the first
    of them: relative to the list's folder when that file exists there, else to the current folder (the
    Darknet habit of lists written from the tool's folder).
    """
    lines = [s.strip() for s in path.read_text(encoding="utf-8").splitlines()]
    lines = [s for s in lines if s and not s.startswith("#")]
    base = path.parent
    plain = next((s for s in lines if not os.path.isabs(s) and not s.startswith(("./", "../"))), None)
    plain_base = base if plain is None or (base / plain).exists() or not Path(plain).exists() else None
    out = []
    for s in lines:
        if os.path.isabs(s):
            out.append(s)
        elif s.startswith(("./", "../")):
            out.append(os.path.normpath(base / s))
        else:
            out.append(os.path.normpath(plain_base / s) if plain_base is not None else os.path.normpath(s))
    return out


def list_image_files(sources: str | Path | Iterable[str | Path]) -> list[str]:
    """Image paths from folders (recursive, sorted), .txt lists and image files, in the order given."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    files: list[str] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.is_file() and _is_image(f.name))
            files += found
        elif p.is_file() and p.suffix.lower() == ".txt":
            files += [f for f in _read_list_file(p) if _is_image(f)]
        elif p.is_file() and _is_image(p.name):
            files.append(str(p))
        else:
            raise DatasetError(f"{p}: not an image folder, a .txt image list or an image file")
    return files


def img2label_paths(img_paths: Iterable[str | Path]) -> list[str]:
    """Label path of each image: the last '/images/' component becomes '/labels/', the extension '.txt'."""
    out = []
    for x in img_paths:
        x = str(x)
        for sep in {os.sep, "/"}:
            a, b = f"{sep}images{sep}", f"{sep}labels{sep}"
            if a in x:
                x = b.join(x.rsplit(a, 1))
                break
            if x.startswith(a[1:]):  # relative path beginning with images/
                x = b[1:] + x[len(a) - 1:]
                break
        out.append(os.path.splitext(x)[0] + ".txt")
    return out


# =========================================================================== verification
def _exif_swaps_sides(img) -> bool:
    """EXIF orientations 5-8 rotate by 90 degrees: cv2 applies them, so the stored w/h swap."""
    try:
        return img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:  # a malformed EXIF block only loses the orientation
        return False


def verify_image(path: str) -> tuple[int, int]:
    """(w, h) of a readable image; raises ValueError with the reason otherwise.

    Reads the header (Pillow when available) rather than decoding every pixel, and checks the end-of-image
    marker of JPEGs and PNGs, since a file cut short still decodes into a partly grey picture.
    """
    size = os.path.getsize(path)
    if size == 0:
        raise ValueError("empty file (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(16)
        f.seek(max(size - 64, 0))
        tail = f.read()
    # a missing end marker usually means a file cut short; trailing junk after it is harmless, so only
    # then is the whole image decoded to tell the two apart
    no_end = (head[:3] == b"\xff\xd8\xff" and b"\xff\xd9" not in tail) or \
        (head[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in tail)
    try:
        from PIL import Image
    except ImportError:
        Image = None
    if Image is None:
        return _verify_with_cv2(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            if no_end:
                im.load()  # raises for a truncated file
            else:
                im.verify()  # leaves the object unusable: EXIF comes from a second, header-only open
        with Image.open(path) as im:
            swap = _exif_swaps_sides(im)
    except Exception as e:
        kind = "truncated" if no_end else "unreadable"
        raise ValueError(f"{kind} image ({type(e).__name__}: {e})") from e
    if no_end and cv2.imread(path, cv2.IMREAD_UNCHANGED) is None:  # what the loader will use must read it
        raise ValueError("truncated image (no end marker; cv2 cannot decode it)")
    if swap:
        w, h = h, w
    if min(w, h) < MIN_IMAGE_SIDE:
        raise ValueError(f"image too small ({w}x{h}, need >= {MIN_IMAGE_SIDE} pixels a side)")
    return w, h


def _verify_with_cv2(path: str) -> tuple[int, int]:
    """Full decode with cv2 when Pillow is missing (slower; cannot tell a truncated JPEG from a whole one)."""
    im = cv2.imread(path)
    if im is None:
        raise ValueError("unreadable image (cv2.imread failed)")
    h, w = im.shape[:2]
    if min(w, h) < MIN_IMAGE_SIDE:
        raise ValueError(f"image too small ({w}x{h}, need >= {MIN_IMAGE_SIDE} pixels a side)")
    return w, h


def parse_label_text(text: str) -> tuple[np.ndarray, list[str]]:
    """YOLO label rows -> ((n, 5) float32 array, repair notes); raises ValueError for a malformed file.

    Malformed (whole file rejected): a row without exactly 5 numbers, a non-finite value, a negative or
    non-integer class. Repaired (noted): box edges up to COORD_TOL outside [0, 1] are clipped; boxes
    farther out or without area are dropped; duplicate rows are removed. Edges of boxes whose x, y, w, h
    are all inside [0, 1] are clipped silently, as training would clip them anyway.
    """
    rows, linenos = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            raise ValueError(f"line {lineno}: expected 5 numbers 'class x y w h', got {len(parts)}: {line.strip()!r}")
        try:
            vals = [float(v) for v in parts]
        except ValueError:
            raise ValueError(f"line {lineno}: not numbers: {line.strip()!r}") from None
        if not all(math.isfinite(v) for v in vals):
            raise ValueError(f"line {lineno}: non-finite value: {line.strip()!r}")
        if vals[0] < 0 or vals[0] != int(vals[0]):
            raise ValueError(f"line {lineno}: class must be a non-negative integer, got {parts[0]}")
        rows.append(vals)
        linenos.append(lineno)
    if not rows:
        return np.zeros((0, 5), np.float32), []
    return _repair_boxes(np.array(rows, dtype=np.float64), linenos)


def _repair_boxes(lab: np.ndarray, linenos: list[int]) -> tuple[np.ndarray, list[str]]:
    """Clip, drop and deduplicate parsed rows (see parse_label_text); linenos name dropped rows."""
    notes = []
    xywh = lab[:, 1:5]
    edges = np.stack((xywh[:, 0] - xywh[:, 2] / 2, xywh[:, 1] - xywh[:, 3] / 2,
                      xywh[:, 0] + xywh[:, 2] / 2, xywh[:, 1] + xywh[:, 3] / 2), 1)
    in_unit = ((xywh >= 0) & (xywh <= 1)).all(1)
    near = ((xywh >= -COORD_TOL) & (xywh <= 1 + COORD_TOL)).all(1) & \
        ((edges >= -COORD_TOL) & (edges <= 1 + COORD_TOL)).all(1)
    valid = (xywh[:, 2] > 0) & (xywh[:, 3] > 0) & (in_unit | near)
    clipped_edges = edges.clip(0, 1)
    wh = clipped_edges[:, 2:] - clipped_edges[:, :2]
    valid &= (wh > 1e-6).all(1)
    n_clip = int((valid & ~in_unit).sum())
    if n_clip:
        notes.append(f"{n_clip} box(es) slightly outside the image clipped")
    if (~valid).any():
        bad = np.flatnonzero(~valid)
        notes.append(f"{len(bad)} invalid box(es) dropped (outside [0, 1] or zero size; line "
                     f"{', '.join(str(linenos[i]) for i in bad[:5])}{' ...' if len(bad) > 5 else ''})")
    out = lab.copy()
    moved = ((edges < 0) | (edges > 1)).any(1)  # only these rows change; the others keep their exact values
    e = clipped_edges[moved]
    out[moved, 1:] = np.stack(((e[:, 0] + e[:, 2]) / 2, (e[:, 1] + e[:, 3]) / 2, e[:, 2] - e[:, 0],
                               e[:, 3] - e[:, 1]), 1)
    out = out[valid].astype(np.float32)
    if len(out):
        _, first = np.unique(out, axis=0, return_index=True)
        if len(first) < len(out):
            notes.append(f"{len(out) - len(first)} duplicate row(s) removed")
            out = out[np.sort(first)]
    return out, notes


@dataclass
class _Record:
    """Verification result of one image/label pair (what the cache stores)."""
    stamp: str
    ok: bool
    shape: tuple[int, int]  # (w, h)
    labels: np.ndarray  # (n, 5)
    label_state: int  # 0 found with rows, 1 missing (background), 2 empty file
    msg: str  # '' or the one warning line's reason


def _stamp(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "-"
    return f"{st.st_size}:{st.st_mtime_ns}"


def _verify_pair(img: str, label: str, stamp: str) -> _Record:
    """Check one image and its label file; never raises (the reason goes into the record)."""
    empty = np.zeros((0, 5), np.float32)
    try:
        shape = verify_image(img)
    except (OSError, ValueError) as e:
        return _Record(stamp, False, (0, 0), empty, 1, f"image skipped: {e}")
    if not os.path.isfile(label):
        return _Record(stamp, True, shape, empty, 1, "")
    try:
        with open(label, encoding="utf-8") as f:
            labels, notes = parse_label_text(f.read())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return _Record(stamp, False, shape, empty, 0, f"image skipped, bad label file {label}: {e}")
    state = 0 if len(labels) else 2
    return _Record(stamp, True, shape, labels, state, f"label {label}: {'; '.join(notes)}" if notes else "")


# =========================================================================== label cache
def _pack(strings: Sequence[str]) -> np.ndarray:
    return np.frombuffer("\n".join(strings).encode("utf-8"), dtype=np.uint8)


def _unpack(arr: np.ndarray, n: int) -> list[str]:
    out = arr.tobytes().decode("utf-8").split("\n") if n else []
    if len(out) != n:
        raise ValueError("string table length mismatch")
    return out


def _save_cache(path: Path, files: list[str], records: list[_Record]) -> str | None:
    """Write the cache atomically (temp file + rename); returns a reason instead of raising when not writable."""
    counts = np.array([len(r.labels) for r in records], dtype=np.int64)
    labels = np.concatenate([r.labels for r in records], 0) if records else np.zeros((0, 5), np.float32)
    arrays = dict(
        version=np.array([CACHE_VERSION]), n=np.array([len(files)]),
        files=_pack(files), stamps=_pack([r.stamp for r in records]), msgs=_pack([r.msg for r in records]),
        ok=np.array([r.ok for r in records], dtype=bool), shapes=np.array([r.shape for r in records],
                                                                          dtype=np.int64).reshape(-1, 2),
        state=np.array([r.label_state for r in records], dtype=np.int8), counts=counts,
        labels=labels.astype(np.float32).reshape(-1, 5))
    if not path.parent.is_dir():  # no label folder at all (only background images): nothing to sit beside
        return None
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        return str(e)
    return None


def _load_cache(path: Path) -> dict[str, _Record]:
    """{image path: record} from a cache file; {} when absent, from another version or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"][0]) != CACHE_VERSION:
                return {}
            n = int(z["n"][0])
            files, stamps, msgs = _unpack(z["files"], n), _unpack(z["stamps"], n), _unpack(z["msgs"], n)
            ok, shapes, state, counts, labels = z["ok"], z["shapes"], z["state"], z["counts"], z["labels"]
    except (OSError, KeyError, ValueError, EOFError):
        return {}
    ends = np.cumsum(counts)
    starts = ends - counts
    return {f: _Record(stamps[i], bool(ok[i]), (int(shapes[i, 0]), int(shapes[i, 1])),
                       labels[starts[i]:ends[i]], int(state[i]), msgs[i]) for i, f in enumerate(files)}


def cache_path_for(sources, label_files: list[str]) -> Path:
    """Where the label cache lives: beside a single .txt list (<list>.cache), else labels/<split>.cache."""
    srcs = [sources] if isinstance(sources, (str, Path)) else list(sources)
    if len(srcs) == 1 and Path(srcs[0]).is_file() and Path(srcs[0]).suffix.lower() == ".txt":
        return Path(srcs[0]).with_suffix(".cache")
    parent = Path(label_files[0]).parent
    return parent.with_name(parent.name + ".cache")


def scan_dataset(img_files: list[str], label_files: list[str], cache_path: Path, prefix: str = "",
                 verbose: bool = True, workers: int = 4) -> list[_Record]:
    """Verify every pair once, reusing cached results whose image and label stamps are unchanged."""
    stamps = [f"{_stamp(i)}|{_stamp(l)}" for i, l in zip(img_files, label_files)]
    keys = [os.path.abspath(f) for f in img_files]  # the same files whether listed relative or absolute
    cached = _load_cache(cache_path)
    records: list[_Record | None] = [None] * len(img_files)
    todo = []
    for k, (f, s) in enumerate(zip(keys, stamps)):
        r = cached.get(f)
        if r is not None and r.stamp == s:
            records[k] = r
        else:
            todo.append(k)
    if todo:
        with ThreadPoolExecutor(max(1, min(workers, len(todo)))) as pool:
            fresh = pool.map(lambda k: _verify_pair(img_files[k], label_files[k], stamps[k]), todo)
            for k, r in zip(todo, fresh):
                records[k] = r
    if todo or len(cached) != len(img_files):
        err = _save_cache(cache_path, keys, records)
        if err:
            _say(f"{prefix}WARNING cache not written ({cache_path.parent} is not writable: {err})", verbose)
    _report(img_files, records, cache_path, len(todo), prefix, verbose)
    return records


def _report(img_files: list[str], records: list[_Record], cache_path: Path, n_checked: int, prefix: str,
            verbose: bool) -> None:
    """One warning line per bad or repaired file, then a summary line."""
    for f, r in zip(img_files, records):
        if r.msg:
            _say(f"{prefix}WARNING {f}: {r.msg}", verbose)
    n = len(records)
    bad = sum(not r.ok for r in records)
    found = sum(r.ok and r.label_state == 0 for r in records)
    missing = sum(r.ok and r.label_state == 1 for r in records)
    empty = sum(r.ok and r.label_state == 2 for r in records)
    repaired = sum(r.ok and bool(r.msg) for r in records)
    boxes = sum(len(r.labels) for r in records if r.ok)
    how = f"{n_checked} checked, {n - n_checked} from cache" if n_checked < n else "all checked"
    _say(f"{prefix}{cache_path.with_suffix('')}: {n} images ({how}): {found} labelled ({boxes} boxes), "
         f"{missing} without label file and {empty} with an empty one (background), {repaired} repaired, "
         f"{bad} skipped as corrupt", verbose)


# =========================================================================== dataset
class YoloDataset(Dataset):
    """Images + YOLO labels, letterboxed (validation) or augmented with mosaic/affine/HSV/flips (training).

    ``dataset[i]`` or ``dataset[(i, epoch)]`` -> (img uint8 (3, H, W) RGB, targets (n, 6) float
    [0, cls, x, y, w, h] normalised to the returned image, path, shapes). shapes is
    ((h0, w0), ((h / h0, w / w0), (padw, padh))): original size, total scale and left/top padding, what is
    needed to map predictions back onto the original image. A mosaic has no single original image; its
    shapes describe the mosaic itself.
    """

    def __init__(self, img_files, img_size: int = 640, batch_size: int = 16, augment: bool = False,
                 hyp: dict | None = None, rect: bool = False, stride: int = 32, pad: float = 0.0,
                 cache: str | None = None, nc: int | None = None, prefix: str = "", seed: int = 0,
                 verbose: bool = True):
        self.img_size, self.augment, self.rect, self.stride, self.pad = int(img_size), augment, rect, stride, pad
        self.hyp = load_hyp(hyp) if augment else (dict(hyp) if hyp else {})
        self.mosaic = augment and not rect  # rectangular batches keep whole images
        self.mosaic_border = (-self.img_size // 2, -self.img_size // 2)
        self.seed, self.prefix, self.epoch = int(seed), prefix, 0
        self.sources = img_files
        files = list_image_files(img_files)
        if not files:
            raise DatasetError(f"{prefix}no images found in {img_files}")
        label_files = img2label_paths(files)
        records = scan_dataset(files, label_files, cache_path_for(img_files, label_files), prefix, verbose)
        keep = [k for k, r in enumerate(records) if r.ok]
        if not keep:
            raise DatasetError(f"{prefix}none of the {len(files)} images in {img_files} is usable (see above)")
        self.img_files = [files[k] for k in keep]
        self.label_files = [label_files[k] for k in keep]
        self.labels = [records[k].labels.copy() for k in keep]
        self.shapes = np.array([records[k].shape for k in keep], dtype=np.int64).reshape(-1, 2)
        if nc is not None:
            self._check_classes(int(nc))
        self.n = len(self.img_files)
        self.batch = np.arange(self.n) // max(int(batch_size), 1)
        self.batch_shapes = None
        if rect:
            self._rect_batches(max(int(batch_size), 1))
        self.imgs: list[np.ndarray | None] = [None] * self.n
        self.cache_mode = cache or None
        if self.cache_mode:
            self._cache_images(self.cache_mode, verbose)

    def _check_classes(self, nc: int) -> None:
        offending = [k for k, lab in enumerate(self.labels) if len(lab) and lab[:, 0].max() >= nc]
        if offending:
            k = offending[0]
            c = int(self.labels[k][:, 0].max())
            more = f" (and {len(offending) - 1} more files)" if len(offending) > 1 else ""
            raise DatasetError(f"{self.prefix}{self.label_files[k]}: class id {c} >= nc={nc} of the dataset "
                               f"description{more}; the description's nc/names do not match these labels")

    def _rect_batches(self, batch_size: int) -> None:
        """Sort by aspect ratio, then give each batch the smallest stride-multiple shape that fits it."""
        ar = self.shapes[:, 1] / self.shapes[:, 0]  # h / w
        order = ar.argsort(kind="stable")
        self.img_files = [self.img_files[i] for i in order]
        self.label_files = [self.label_files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.shapes = self.shapes[order]
        ar = ar[order]
        nb = int(self.batch[-1]) + 1
        shapes = np.ones((nb, 2))
        for b in range(nb):
            ari = ar[self.batch == b]
            lo, hi = ari.min(), ari.max()
            if hi < 1:  # all wide: height shrinks
                shapes[b] = (hi, 1)
            elif lo > 1:  # all tall: width shrinks
                shapes[b] = (1, 1 / lo)
        self.batch_shapes = (np.ceil(shapes * self.img_size / self.stride + self.pad).astype(int)
                             * self.stride)  # (nb, 2) as (h, w)

    def _cache_images(self, mode: str, verbose: bool) -> None:
        if mode not in ("ram", "disk", "True", "true"):
            raise DatasetError(f"--cache {mode}: use 'ram' or 'disk'")
        mode = "disk" if mode == "disk" else "ram"
        nbytes = 0
        for i in range(self.n):
            if mode == "ram":
                self.imgs[i] = self.load_image(i)[0]
                nbytes += self.imgs[i].nbytes
            else:
                npy = Path(self.img_files[i]).with_suffix(".npy")
                if not npy.exists():
                    try:
                        np.save(npy, self._read(i))
                    except OSError as e:
                        _say(f"{self.prefix}WARNING disk cache off ({npy.parent} not writable: {e})", verbose)
                        break
                nbytes += npy.stat().st_size
        _say(f"{self.prefix}cached images ({nbytes / 1e9:.2f} GB {mode})", verbose)

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer indices (the samplers of create_dataloader pass it themselves)."""
        self.epoch = int(epoch)

    def _rng(self, index: int, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed & 0xFFFFFFFF, int(epoch), int(index)])

    def _read(self, i: int) -> np.ndarray:
        if self.cache_mode == "disk":
            npy = Path(self.img_files[i]).with_suffix(".npy")
            if npy.exists():
                return np.load(npy)
        img = cv2.imread(self.img_files[i])  # BGR, EXIF orientation applied
        if img is None:
            raise DatasetError(f"{self.img_files[i]}: could not be read (changed after the dataset scan?)")
        return img

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """Image i resized so its long side is img_size: (img, (h0, w0), (h, w)).

        Shrinking for evaluation uses INTER_AREA (no aliasing); training and enlarging use INTER_LINEAR, as
        upstream does, so evaluation numbers match upstream's for the same weights.
        """
        if self.imgs[i] is not None:
            img = self.imgs[i]
            w0, h0 = self.shapes[i]
            return img, (int(h0), int(w0)), img.shape[:2]
        img = self._read(i)
        h0, w0 = img.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            interp = cv2.INTER_LINEAR if (self.augment or r > 1) else cv2.INTER_AREA
            img = cv2.resize(img, (int(w0 * r), int(h0 * r)), interpolation=interp)
        return img, (h0, w0), img.shape[:2]

    def _load_mosaic(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        s = self.img_size
        lo, hi = -self.mosaic_border[0], 2 * s + self.mosaic_border[0]
        yc, xc = (int(v) for v in rng.uniform(lo, hi, 2))
        indices = [index] + [int(k) for k in rng.integers(0, self.n, 3)]
        rng.shuffle(indices)
        images = [self.load_image(k)[0] for k in indices]
        canvas, targets = mosaic4(images, [self.labels[k] for k in indices], s, (xc, yc))
        h = self.hyp
        return random_perspective(canvas, targets, h.get("degrees", 0.0), h.get("translate", 0.0),
                                  h.get("scale", 0.0), h.get("shear", 0.0), h.get("perspective", 0.0),
                                  border=self.mosaic_border, rng=rng)

    def _load_letterboxed(self, index: int, rng: np.random.Generator):
        img, (h0, w0), (h, w) = self.load_image(index)
        if self.augment and self.imgs[index] is not None:
            img = img.copy()  # augmentation works in place; keep the RAM cache pristine
        shape = tuple(self.batch_shapes[self.batch[index]]) if self.rect else self.img_size
        img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)
        shapes = ((h0, w0), ((h * ratio[1] / h0, w * ratio[0] / w0), pad))
        lab = self.labels[index]
        targets = np.zeros((0, 5), np.float32)
        if len(lab):
            targets = np.concatenate((lab[:, :1], xywhn_to_xyxy(lab[:, 1:], ratio[0] * w, ratio[1] * h,
                                                                pad[0], pad[1])), 1)
        if self.augment:
            hp = self.hyp
            img, targets = random_perspective(img, targets, hp.get("degrees", 0.0), hp.get("translate", 0.0),
                                              hp.get("scale", 0.0), hp.get("shear", 0.0),
                                              hp.get("perspective", 0.0), rng=rng)
        return img, targets, shapes

    def __getitem__(self, index):
        index, epoch = (int(index[0]), int(index[1])) if isinstance(index, (tuple, list)) else (int(index), self.epoch)
        rng = self._rng(index, epoch)
        hyp = self.hyp
        if self.mosaic and rng.random() < hyp.get("mosaic", 0.0):
            img, targets = self._load_mosaic(index, rng)
            if rng.random() < hyp.get("mixup", 0.0):
                img, targets = mixup(img, targets, *self._load_mosaic(int(rng.integers(0, self.n)), rng), rng)
            shapes = (img.shape[:2], ((1.0, 1.0), (0.0, 0.0)))
        else:
            img, targets, shapes = self._load_letterboxed(index, rng)
        h, w = img.shape[:2]
        labels = np.zeros((len(targets), 5), np.float32)
        if len(targets):
            labels[:, 0] = targets[:, 0]
            labels[:, 1:] = xyxy_to_xywhn(targets[:, 1:5], w, h, clip=True, eps=1e-3)
        if self.augment:
            augment_hsv(img, hyp.get("hsv_h", 0.0), hyp.get("hsv_s", 0.0), hyp.get("hsv_v", 0.0), rng)
            if rng.random() < hyp.get("flipud", 0.0):
                img = img[::-1]
                labels[:, 2] = 1 - labels[:, 2]
            if rng.random() < hyp.get("fliplr", 0.0):
                img = img[:, ::-1]
                labels[:, 1] = 1 - labels[:, 1]
        out = torch.zeros((len(labels), 6))
        out[:, 1:] = torch.from_numpy(labels)
        chw = np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
        return torch.from_numpy(chw), out, self.img_files[index], shapes

    @staticmethod
    def collate_fn(batch):
        """Stack images; targets get their image's index in the batch in column 0."""
        imgs, targets, paths, shapes = zip(*batch)
        for i, t in enumerate(targets):
            t[:, 0] = i
        return torch.stack(imgs, 0), torch.cat(targets, 0), paths, shapes


# =========================================================================== samplers and loader
class EpochSampler(Sampler):
    """Yields (index, epoch) so the dataset seeds its augmentation per epoch, in any worker.

    Shuffles with a generator seeded by (seed, epoch). ``set_epoch`` fixes the epoch of the next pass (do
    it every epoch to resume exactly); without it each pass uses the next epoch number.
    """

    def __init__(self, n: int, shuffle: bool = False, seed: int = 0):
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        self.epoch += 1
        order = (np.random.default_rng([self.seed & 0xFFFFFFFF, epoch]).permutation(self.n) if self.shuffle
                 else np.arange(self.n))
        return iter([(int(i), epoch) for i in order])


class SeededDistributedSampler(DistributedSampler):
    """DistributedSampler whose indices carry the epoch (see EpochSampler); the caller calls set_epoch."""

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return iter([(int(i), epoch) for i in super().__iter__()])


def _seed_worker(worker_id: int) -> None:
    """Seed the global generators of a loader worker (augmentation itself uses per-image generators).

    cv2's thread count is deliberately left alone here: reconfiguring its thread pool in a forked worker
    can deadlock on a condition variable inherited from the parent.
    """
    import random
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


def create_dataloader(img_files, img_size: int, batch_size: int, stride: int, hyp: dict | None = None,
                      augment: bool = False, rect: bool = False, pad: float = 0.0, workers: int = 0,
                      shuffle: bool = False, seed: int = 0, rank: int = -1, world_size: int = 1,
                      cache: str | None = None, nc: int | None = None, prefix: str = "",
                      allow_unlabelled: bool = False) -> tuple[DataLoader, YoloDataset]:
    """A DataLoader over YoloDataset with seeded sampling and augmentation.

    rank != -1: a DistributedSampler over ``world_size`` processes (call ``loader.sampler.set_epoch``).
    rect: batches in aspect-ratio order with per-batch shapes, never shuffled.
    """
    if rect and shuffle:
        _say(f"{prefix}WARNING rectangular batches cannot be shuffled; shuffle turned off", rank in (-1, 0))
        shuffle = False
    dataset = YoloDataset(img_files, img_size, batch_size, augment=augment, hyp=hyp, rect=rect, stride=stride,
                          pad=pad, cache=cache, nc=nc, prefix=prefix, seed=seed, verbose=rank in (-1, 0))
    batch_size = max(1, min(int(batch_size), len(dataset)))
    if rank != -1:
        sampler = SeededDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle,
                                           seed=seed)
    else:
        sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed)
    nw = max(0, min(int(workers), os.cpu_count() or 1))
    generator = torch.Generator()
    generator.manual_seed((int(seed) + 1_000_003 * max(rank, 0)) % 2 ** 63)  # distinct per rank
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=nw,
                        pin_memory=torch.cuda.is_available(), collate_fn=YoloDataset.collate_fn,
                        worker_init_fn=_seed_worker if nw else None, persistent_workers=nw > 0,
                        generator=generator)
    return loader, dataset
