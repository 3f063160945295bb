"""Inference inputs: the ``--weights`` file, a ``--source`` argument as files, and files as frames.

A source is an image, a video, a folder (its images and videos, sorted by name), a glob pattern or
a ``.txt`` file listing one path per line. :func:`resolve_sources` does the path work and fails
early, naming the argument, when nothing usable is found; :func:`iter_frames` then yields every
image once and every video frame by frame, so the caller handles both kinds in one loop. A file
that cannot be decoded (empty, truncated, not really an image) is reported to the caller as a
:class:`ReadProblem` and skipped rather than ending the run; :func:`image_problem` is the check that
catches truncated files before the decoder half-reads them.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generator, Iterable, Iterator

import cv2
import numpy as np

from .errors import UserError

__all__ = ["IMG_FORMATS", "VID_FORMATS", "Frame", "ReadProblem", "SourceError", "resolve_sources",
           "iter_frames", "image_problem", "is_image", "is_video", "video_fourcc", "weights_file"]

IMG_FORMATS = frozenset({".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp",
                         ".pfm"})
VID_FORMATS = frozenset({".asf", ".avi", ".gif", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg",
                         ".ts", ".wmv"})

# Codec used to write an annotated copy of a video in the container its source had. mp4v and MJPG
# are available in every OpenCV build (including the headless wheels); others fall back to mp4v.
_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID",
           ".wmv": "WMV2", ".asf": "WMV2", ".mpg": "MPEG", ".mpeg": "MPEG"}


# Signatures that tell a complete file from a cut-off one (the decoders fill a cut-off image with grey).
_JPEG_START, _JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"  # SOI (+ first marker), EOI
_PNG_START, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"  # signature, IEND chunk + its CRC
_TAIL_BYTES = 1024  # trailing zero padding some writers add is ignored within this window


class SourceError(UserError, FileNotFoundError):
    """A ``--source`` that names nothing readable; the message says which path and why."""


@dataclass(frozen=True)
class ReadProblem:
    """A file that could not be read (``whole_file``: none of it was used), or a video whose later
    frames could not be decoded (its earlier frames were used)."""
    path: Path
    reason: str
    whole_file: bool = True

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" + ("; skipped" if self.whole_file else "")


def weights_file(value: str | Path, flag: str = "--weights") -> Path:
    """The file a weights flag names; a missing one is a FileNotFoundError naming the flag."""
    path = Path(value).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"{flag} {value}: is a folder; give the weights file itself")
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {value}: weights file not found; check the path")
    return path


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


def image_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete image file, or None when its bytes look whole.

    Catches what decoders paper over: an empty file, a JPEG without its end-of-image marker and a
    PNG without its IEND chunk (both were cut off; libjpeg would fill the rest with grey and only
    print a note). Other formats are left to the decoder.
    """
    try:
        size = path.stat().st_size
        if size == 0:
            return "the file is empty"
        with open(path, "rb") as f:
            head = f.read(len(_PNG_START))
            f.seek(max(size - _TAIL_BYTES, 0))
            tail = f.read().rstrip(b"\x00")
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if head.startswith(_JPEG_START) and not tail.endswith(_JPEG_END):
        return "truncated JPEG (no end-of-image marker)"
    if head.startswith(_PNG_START) and not tail.endswith(_PNG_END):
        return "truncated PNG (no IEND chunk)"
    return None


def _read_image(path: Path) -> np.ndarray | ReadProblem:
    """(H, W, 3) BGR pixels, or why the file cannot be used."""
    problem = image_problem(path)
    if problem is not None:
        return ReadProblem(path, problem)
    try:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None:
        return ReadProblem(path, "cannot be decoded as an image (corrupt or unsupported encoding)")
    return image


def _next_frame(cap: cv2.VideoCapture) -> np.ndarray | None:
    try:
        ok, image = cap.read()
    except cv2.error:
        return None
    return image if ok and image is not None else None


def _read_video(path: Path, file_index: int, file_count: int) -> Generator[Frame, None, ReadProblem | None]:
    """Frames until the stream ends; returns the problem, if any: an unreadable video, or a frame
    that failed to decode before the frame count the container reports (which ends the video)."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        return ReadProblem(path, "cannot be opened as a video")
    index = 0
    try:
        count = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        while (image := _next_frame(cap)) is not None:
            index += 1
            yield Frame(path, image, file_index, file_count, index, max(count, index) if count else 0,
                        fps, True)
    finally:
        cap.release()
    if index == 0:
        return ReadProblem(path, "the video has no readable frames")
    if index < count:
        return ReadProblem(path, f"frame {index + 1} of {count} cannot be decoded; the rest of the video "
                                 f"is skipped", whole_file=False)
    return None


def _raise(problem: ReadProblem) -> None:
    if problem.whole_file:
        raise SourceError(f"{problem.path}: {problem.reason}")


def iter_frames(files: list[Path], on_problem: Callable[[ReadProblem], None] | None = None) -> Iterator[Frame]:
    """Every image once and every video frame by frame, in the order of ``files``.

    A file that cannot be read is reported to ``on_problem`` and skipped (so is the rest of a video
    whose frame fails to decode); without ``on_problem`` an unreadable file raises
    :class:`SourceError`.
    """
    report = on_problem or _raise
    n = len(files)
    for i, path in enumerate(files, 1):
        if is_video(path):
            problem = yield from _read_video(path, i, n)
        else:
            image = _read_image(path)
            problem = image if isinstance(image, ReadProblem) else None
            if problem is None:
                yield Frame(path, image, i, n)
        if problem is not None:
            report(problem)
