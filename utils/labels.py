"""YOLO labels: where they are, parsing and repair, image verification, and the verification cache.

Each image's label file is found by replacing the last ``/images/`` path component with ``/labels/``
and the extension with ``.txt``; a label row is ``class x y w h`` (centre and size normalised to the
image). Every image/label pair is verified once and the result kept in a cache file beside the labels,
keyed by each file's size and modification time, so later runs re-check only files that changed.

What is repaired and what is skipped: a malformed row (not 5 numbers, a non-finite value, a negative or
fractional class) is skipped on its own and the file's good boxes are kept; boxes slightly outside the
image are clipped, boxes far outside or without area are dropped, duplicate rows removed. An unreadable
image, or a label file that cannot be read or has no well-formed row at all, skips the image. Each file
with a problem gets one warning line naming it (and the rows' line numbers); nothing here stops training.
A class id outside the description's ``nc`` does stop it (:func:`check_class_ids`): the description,
not the file, is wrong then.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import cv2
import numpy as np

from utils.dataconfig import DatasetError
from utils.fileio import atomic_write, remove_stale_temps

__all__ = ["img2label_paths", "verify_image", "parse_label_text", "LabelRows", "LabelRecord", "scan_dataset",
           "cache_path_for", "check_class_ids", "unlabelled_reason", "COORD_TOL", "MIN_IMAGE_SIDE",
           "CACHE_VERSION"]

CACHE_VERSION = 2  # 2: records count the malformed rows skipped per file
COORD_TOL = 0.01  # label coordinates this far outside [0, 1] are clipped; farther out, the box is dropped
MIN_IMAGE_SIDE = 10  # pixels; smaller images are reported as unusable
_ROW_FORMAT = "'class x y w h'"
_MAX_LISTED = 5  # line numbers listed in one warning


def _say(msg: str, verbose: bool = True) -> None:
    if verbose:
        print(msg, flush=True)


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


# --------------------------------------------------------------------------- images
def _exif_swaps_sides(img) -> bool:
    """EXIF orientations 5-8 rotate by 90 degrees: cv2 applies them, so the stored w/h swap."""
    try:
        return img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:  # a malformed EXIF block only loses the orientation
        return False


def _missing_end_marker(path: str, size: int) -> bool:
    """A JPEG/PNG without its end marker was usually cut short (trailing junk after the marker is harmless)."""
    with open(path, "rb") as f:
        head = f.read(16)
        f.seek(max(size - 64, 0))
        tail = f.read()
    return (head[:3] == b"\xff\xd8\xff" and b"\xff\xd9" not in tail) or \
        (head[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in tail)


def verify_image(path: str) -> tuple[int, int]:
    """(w, h) of a readable image; raises ValueError with the reason otherwise.

    Reads the header (Pillow when available) rather than decoding every pixel, and checks the end-of-image
    marker of JPEGs and PNGs, since a file cut short still decodes into a partly grey picture; only then is
    the whole image decoded, to tell a truncated file from one with trailing junk.
    """
    size = os.path.getsize(path)
    if size == 0:
        raise ValueError("empty file (0 bytes)")
    no_end = _missing_end_marker(path, size)
    try:
        from PIL import Image
    except ImportError:
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


# --------------------------------------------------------------------------- label text
class LabelRows(NamedTuple):
    """What :func:`parse_label_text` found in one label file."""
    labels: np.ndarray  # (n, 5) float32 class, x, y, w, h after repair
    notes: list[str]  # what was skipped or repaired, one phrase each
    skipped: list[int]  # line numbers of malformed rows (skipped)
    rows: int  # non-blank rows in the file


def _parse_row(parts: list[str]) -> list[float]:
    """One row's 5 numbers; raises ValueError saying what is wrong with it."""
    if len(parts) != 5:
        raise ValueError(f"expected 5 numbers {_ROW_FORMAT}, got {len(parts)}")
    try:
        vals = [float(v) for v in parts]
    except ValueError:
        raise ValueError("not numbers") from None
    if not all(math.isfinite(v) for v in vals):
        raise ValueError("non-finite value")
    if vals[0] < 0 or vals[0] != int(vals[0]):
        raise ValueError(f"class must be a non-negative integer, got {parts[0]}")
    return vals


def _listed(items: Sequence[str]) -> str:
    more = f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


def parse_label_text(text: str) -> LabelRows:
    """YOLO label rows -> :class:`LabelRows`; never raises for bad content.

    Malformed rows (not exactly 5 numbers, a non-finite value, a negative or non-integer class) are
    skipped and named by line; the rest are kept. Repaired (noted): box edges up to COORD_TOL outside
    [0, 1] are clipped; boxes farther out or without area are dropped; duplicate rows are removed. Edges of
    boxes whose x, y, w, h are all inside [0, 1] are clipped silently, as training would clip them anyway.
    """
    rows, linenos, bad = [], [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            rows.append(_parse_row(parts))
            linenos.append(lineno)
        except ValueError as e:
            bad.append((lineno, f"line {lineno} ({e}: {line.strip()[:40]!r})"))
    notes = [f"{len(bad)} malformed row(s) skipped, expected {_ROW_FORMAT}: "
             f"{_listed([why for _, why in bad])}"] if bad else []
    labels = np.zeros((0, 5), np.float32)
    if rows:
        labels, repairs = _repair_boxes(np.array(rows, dtype=np.float64), linenos)
        notes += repairs
    return LabelRows(labels, notes, [n for n, _ in bad], len(rows) + len(bad))


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


# --------------------------------------------------------------------------- one image/label pair
@dataclass
class LabelRecord:
    """Verification result of one image/label pair (what the cache stores)."""
    stamp: str
    ok: bool
    shape: tuple[int, int]  # (w, h)
    labels: np.ndarray  # (n, 5)
    label_state: int  # 0 found with rows, 1 missing (background), 2 empty file
    msg: str  # '' or the one warning line's reason
    skipped_rows: int = 0  # malformed rows skipped in the label file


def _stamp(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "-"
    return f"{st.st_size}:{st.st_mtime_ns}"


def _verify_pair(img: str, label: str, stamp: str) -> LabelRecord:
    """Check one image and its label file; never raises (the reason goes into the record)."""
    empty = np.zeros((0, 5), np.float32)
    try:
        shape = verify_image(img)
    except (OSError, ValueError) as e:
        return LabelRecord(stamp, False, (0, 0), empty, 1, f"image skipped: {e}")
    if not os.path.isfile(label):
        return LabelRecord(stamp, True, shape, empty, 1, "")
    try:
        with open(label, encoding="utf-8") as f:
            parsed = parse_label_text(f.read())
    except (OSError, UnicodeDecodeError) as e:
        return LabelRecord(stamp, False, shape, empty, 0, f"image skipped, unreadable label file {label}: {e}")
    if parsed.rows and len(parsed.skipped) == parsed.rows:  # nothing usable: not a background image either
        return LabelRecord(stamp, False, shape, empty, 0, f"image skipped, no well-formed row in label file "
                           f"{label}: {parsed.notes[0]}", len(parsed.skipped))
    state = 0 if len(parsed.labels) else 2
    msg = f"label {label}: {'; '.join(parsed.notes)}" if parsed.notes else ""
    return LabelRecord(stamp, True, shape, parsed.labels, state, msg, len(parsed.skipped))


# --------------------------------------------------------------------------- the cache
def _pack(strings: Sequence[str]) -> np.ndarray:
    return np.frombuffer("\n".join(strings).encode("utf-8"), dtype=np.uint8)


def _unpack(arr: np.ndarray, n: int) -> list[str]:
    out = arr.tobytes().decode("utf-8").split("\n") if n else []
    if len(out) != n:
        raise ValueError("string table length mismatch")
    return out


def _cache_arrays(files: list[str], records: list[LabelRecord]) -> dict[str, np.ndarray]:
    labels = np.concatenate([r.labels for r in records], 0) if records else np.zeros((0, 5), np.float32)
    return dict(
        version=np.array([CACHE_VERSION]), n=np.array([len(files)]),
        files=_pack(files), stamps=_pack([r.stamp for r in records]), msgs=_pack([r.msg for r in records]),
        ok=np.array([r.ok for r in records], dtype=bool),
        shapes=np.array([r.shape for r in records], dtype=np.int64).reshape(-1, 2),
        state=np.array([r.label_state for r in records], dtype=np.int8),
        counts=np.array([len(r.labels) for r in records], dtype=np.int64),
        skipped=np.array([r.skipped_rows for r in records], dtype=np.int64),
        labels=labels.astype(np.float32).reshape(-1, 5))


def _save_cache(path: Path, files: list[str], records: list[LabelRecord]) -> str | None:
    """Write the cache atomically; returns a reason instead of raising when the folder is not writable."""
    if not path.parent.is_dir():  # no label folder at all (only background images): nothing to sit beside
        return None
    arrays = _cache_arrays(files, records)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append '.npz' to a path
            np.savez(f, **arrays)

    try:
        remove_stale_temps(path.parent)
        atomic_write(path, write)
    except OSError as e:
        return str(e)
    return None


def _load_cache(path: Path) -> dict[str, LabelRecord]:
    """{image path: record} from a cache file; {} when absent, from another version or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"][0]) != CACHE_VERSION:
                return {}
            n = int(z["n"][0])
            files, stamps, msgs = _unpack(z["files"], n), _unpack(z["stamps"], n), _unpack(z["msgs"], n)
            ok, shapes, state, counts = z["ok"], z["shapes"], z["state"], z["counts"]
            skipped, labels = z["skipped"], z["labels"]
    except (OSError, KeyError, ValueError, EOFError):
        return {}
    ends = np.cumsum(counts)
    starts = ends - counts
    return {f: LabelRecord(stamps[i], bool(ok[i]), (int(shapes[i, 0]), int(shapes[i, 1])),
                           labels[starts[i]:ends[i]], int(state[i]), msgs[i], int(skipped[i]))
            for i, f in enumerate(files)}


def cache_path_for(sources, label_files: list[str]) -> Path:
    """Where the label cache lives: beside a single .txt list (<list>.cache), else labels/<split>.cache."""
    srcs = [sources] if isinstance(sources, (str, Path)) else list(sources)
    if len(srcs) == 1 and Path(srcs[0]).is_file() and Path(srcs[0]).suffix.lower() == ".txt":
        return Path(srcs[0]).with_suffix(".cache")
    parent = Path(label_files[0]).parent
    return parent.with_name(parent.name + ".cache")


def scan_dataset(img_files: list[str], label_files: list[str], cache_path: Path, prefix: str = "",
                 verbose: bool = True, workers: int = 4) -> list[LabelRecord]:
    """Verify every pair once, reusing cached results whose image and label stamps are unchanged."""
    stamps = [f"{_stamp(i)}|{_stamp(l)}" for i, l in zip(img_files, label_files)]
    keys = [os.path.abspath(f) for f in img_files]  # the same files whether listed relative or absolute
    cached = _load_cache(cache_path)
    records: list[LabelRecord | None] = [None] * len(img_files)
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


def _report(img_files: list[str], records: list[LabelRecord], cache_path: Path, n_checked: int, prefix: str,
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
    rows = sum(r.skipped_rows for r in records if r.ok)
    how = f"{n_checked} checked, {n - n_checked} from cache" if n_checked < n else "all checked"
    _say(f"{prefix}{cache_path.with_suffix('')}: {n} images ({how}): {found} labelled ({boxes} boxes), "
         f"{missing} without label file and {empty} with an empty one (background), {repaired} repaired "
         f"({rows} malformed label rows skipped), {bad} skipped as corrupt", verbose)


# --------------------------------------------------------------------------- checks over a whole split
def _class_line(label_file: str, nc: int) -> int | None:
    """Line number of the first well-formed row whose class id is >= nc (None when not found)."""
    try:
        with open(label_file, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for lineno, line in enumerate(lines, 1):
        try:
            if _parse_row(line.split())[0] >= nc:
                return lineno
        except ValueError:
            continue
    return None


def check_class_ids(labels: Sequence[np.ndarray], label_files: Sequence[str], nc: int, prefix: str = "") -> None:
    """Raise DatasetError naming the first label file and line whose class id is >= nc."""
    offending = [k for k, lab in enumerate(labels) if len(lab) and lab[:, 0].max() >= nc]
    if not offending:
        return
    k = offending[0]
    c = int(labels[k][:, 0].max())
    line = _class_line(label_files[k], nc)
    where = f"{label_files[k]}:{line}" if line else label_files[k]
    more = f" (and {len(offending) - 1} more files)" if len(offending) > 1 else ""
    raise DatasetError(f"{prefix}{where}: class id {c} >= nc={nc} of the dataset description{more}; the "
                       f"description's nc/names do not match these labels: fix nc/names or the label files")


def unlabelled_reason(records: Sequence[LabelRecord], label_files: Sequence[str]) -> str | None:
    """Why a split has not one box (None when it has some): no label file found, or all of them empty."""
    usable = [(r, f) for r, f in zip(records, label_files) if r.ok]
    if any(len(r.labels) for r, _ in usable):
        return None
    folders = list(dict.fromkeys(str(Path(f).parent) for _, f in usable))
    where = _listed(folders)
    n_files = sum(r.label_state != 1 for r, _ in usable)
    if n_files == 0:
        return f"not one label file found (looked in {where})"
    return f"all {n_files} label files found (in {where}) are empty or hold no usable box"
