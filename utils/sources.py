"""Inference sources: turn a ``--source`` argument into files, and files into frames.

A source is an image, a video, a folder (its images and videos, sorted by name), a glob pattern or
a ``.txt`` file listing one path per line. :func:`resolve_sources` does the path work and fails
early, naming the argument, when nothing usable is found; :func:`iter_frames` then yields every
image once and every video frame by frame, so the caller handles both kinds in one loop.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

__all__ = ["IMG_FORMATS", "VID_FORMATS", "Frame", "SourceError", "resolve_sources", "iter_frames",
           "is_image", "is_video", "video_fourcc", "parse_img_size"]

IMG_FORMATS = frozenset({".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp",
                         ".pfm"})
VID_FORMATS = frozenset({".asf", ".avi", ".gif", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg",
                         ".ts", ".wmv"})

# Codec used to write an annotated copy of a video in the container its source had. mp4v and MJPG
# are available in every OpenCV build (including the headless wheels); others fall back to mp4v.
_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID",
           ".wmv": "WMV2", ".asf": "WMV2", ".mpg": "MPEG", ".mpeg": "MPEG"}


class SourceError(FileNotFoundError):
    """A ``--source`` that names nothing readable; the message says which path and why."""


def is_image(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMG_FORMATS


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VID_FORMATS


def video_fourcc(path: str | Path) -> str:
    """Four-character codec for writing a video with ``path``'s extension."""
    return _FOURCC.get(Path(path).suffix.lower(), "mp4v")


@dataclass
class Frame:
    """One image to run on. For videos ``index`` is 1-based and ``count`` is the number of frames
    the container reports (0 when unknown); an image has ``index == count == 1``."""
    path: Path
    image: np.ndarray  # (H, W, 3) uint8, BGR as OpenCV reads it
    file_index: int  # 1-based position of ``path`` among the resolved files
    file_count: int
    index: int = 1
    count: int = 1
    fps: float = 0.0
    is_video: bool = False

    def describe(self) -> str:
        """'image 1/3 path' or 'video 2/3 (4/25) path', the prefix of a per-image log line."""
        if self.is_video:
            total = self.count if self.count > 0 else "?"
            return f"video {self.file_index}/{self.file_count} ({self.index}/{total}) {self.path}"
        return f"image {self.file_index}/{self.file_count} {self.path}"


def _media_in(paths: Iterable[Path]) -> list[Path]:
    return [p for p in paths if p.is_file() and (is_image(p) or is_video(p))]


def _from_list(txt: Path) -> list[Path]:
    """Paths listed in a text file; relative entries are tried from the working directory first,
    then from the list's own folder (dataset lists are often written relative to themselves)."""
    out = []
    for n, line in enumerate(txt.read_text().splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        p = Path(entry).expanduser()
        if not p.is_absolute() and not p.exists() and (txt.parent / p).exists():
            p = txt.parent / p
        if not p.is_file():
            raise SourceError(f"{txt}:{n}: listed file {entry!r} not found")
        if not (is_image(p) or is_video(p)):
            raise SourceError(f"{txt}:{n}: {entry!r} is not an image or video "
                              f"(known: {', '.join(sorted(IMG_FORMATS | VID_FORMATS))})")
        out.append(p)
    if not out:
        raise SourceError(f"{txt}: the list names no files")
    return out


def resolve_sources(source: str | Path) -> list[Path]:
    """The image and video files a ``--source`` value stands for, in processing order.

    Raises :class:`SourceError` naming ``source`` when it does not exist, matches nothing, or is a
    file of an unknown type.
    """
    text = str(source)
    path = Path(text).expanduser()
    if any(c in text for c in "*?[") and not path.exists():
        files = _media_in(Path(p) for p in sorted(glob.glob(str(path), recursive=True)))
        if not files:
            raise SourceError(f"--source {text}: the pattern matches no images or videos")
        return files
    if path.is_dir():
        files = _media_in(sorted(path.iterdir()))
        if not files:
            raise SourceError(f"--source {text}: the folder holds no images or videos "
                              f"(known: {', '.join(sorted(IMG_FORMATS | VID_FORMATS))})")
        return files
    if not path.exists():
        raise SourceError(f"--source {text}: no such file or folder")
    if path.suffix.lower() == ".txt":
        return _from_list(path)
    if is_image(path) or is_video(path):
        return [path]
    raise SourceError(f"--source {text}: unknown file type {path.suffix!r} (use an image, a video, "
                      f"a folder, a glob or a .txt list)")


def _read_image(path: Path, file_index: int, file_count: int) -> Frame:
    import cv2
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SourceError(f"{path}: cannot be read as an image (corrupt or unsupported encoding)")
    return Frame(path, image, file_index, file_count)


def _read_video(path: Path, file_index: int, file_count: int) -> Iterator[Frame]:
    import cv2
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SourceError(f"{path}: cannot be opened as a video")
    try:
        count = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        index = 0
        while True:
            ok, image = cap.read()
            if not ok:
                break
            index += 1
            yield Frame(path, image, file_index, file_count, index, max(count, index) if count else 0,
                        fps, True)
        if index == 0:
            raise SourceError(f"{path}: the video has no readable frames")
    finally:
        cap.release()


def iter_frames(files: list[Path]) -> Iterator[Frame]:
    """Every image once and every video frame by frame, in the order of ``files``."""
    n = len(files)
    for i, path in enumerate(files, 1):
        if is_video(path):
            yield from _read_video(path, i, n)
        else:
            yield _read_image(path, i, n)


def parse_img_size(values: int | Iterable[int], stride: int = 32, flag: str = "--img") -> tuple[int, int]:
    """``--img`` values (one side, or h w) -> (h, w), each rounded up to a multiple of ``stride``.

    The network downsamples by ``stride``; other sizes would leave feature maps that do not tile
    the image, so they are rounded up (with a note) rather than refused.
    """
    sizes = [values] if isinstance(values, int) else [int(v) for v in values]
    if len(sizes) not in (1, 2) or any(s <= 0 for s in sizes):
        raise ValueError(f"{flag} {' '.join(map(str, sizes))}: give one positive size or two (h w)")
    h, w = (sizes[0], sizes[0]) if len(sizes) == 1 else sizes
    stride = max(int(stride), 1)
    rounded = (-(-h // stride) * stride, -(-w // stride) * stride)
    if rounded != (h, w):
        print(f"{flag} {h}x{w} is not a multiple of the model stride {stride}; "
              f"using {rounded[0]}x{rounded[1]}")
    return rounded
