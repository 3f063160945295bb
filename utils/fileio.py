"""Atomic file writes: the one place that writes a temporary file and renames it into place.

A reader never sees a half-written file: the data goes to a hidden temporary file in the target's
folder (``.<name>.<pid>.<random>.tmp``), is flushed to disk, and replaces the target in one rename.
A process killed mid-write leaves only the temporary file, which :func:`remove_stale_temps` deletes
at the next start of a run in that folder. :func:`staged_outputs` extends this to several files that
belong together (all move into place, or none does), and :func:`atomic_folder` to a whole folder.

This module imports nothing from the project, so every package may use it.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["atomic_folder", "atomic_write", "atomic_write_bytes", "atomic_write_text", "remove_stale_temps",
           "staged_outputs", "target_of", "temp_name"]

_TMP_SUFFIX = ".tmp"


def temp_name(path: Path) -> Path:
    """A fresh hidden temporary path beside ``path`` that :func:`remove_stale_temps` recognises."""
    return path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{_TMP_SUFFIX}"


def target_of(path: str | Path) -> Path:
    """The file a temporary path from :func:`temp_name` stands for (any other path is returned as is)."""
    path = Path(path)
    parts = path.name.split(".")  # ['', name..., pid, random, 'tmp']
    if path.name.startswith(".") and path.name.endswith(_TMP_SUFFIX) and len(parts) >= 5 and parts[-3].isdigit():
        return path.with_name(".".join(parts[1:-3]))
    return path


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and rename the result onto ``path``; on any error the target is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # make the bytes durable before the rename publishes them
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def atomic_folder(dest: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_folder)`` and move the folder onto ``dest``; on any error ``dest`` is untouched.

    The temporary folder sits beside ``dest`` (named by :func:`temp_name`, so
    :func:`remove_stale_temps` cleans up after a killed process). An existing
    ``dest`` is renamed aside first and deleted once the new folder is in place.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dest.parent)
    tmp, old = temp_name(dest), temp_name(dest)
    tmp.mkdir()
    try:
        write(tmp)
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not dest.exists():
            old.rename(dest)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return dest


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete temporary files in ``folder`` left by killed writers (their process no longer runs)."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.glob(f".*{_TMP_SUFFIX}"):
        parts = p.name.split(".")  # ['', name..., pid, random, 'tmp']
        pid = int(parts[-3]) if len(parts) >= 4 and parts[-3].isdigit() else None
        if pid is not None and (pid == os.getpid() or _pid_alive(pid)):
            continue  # a writer that still runs (or this process) owns it
        with contextlib.suppress(OSError):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            removed.append(p)
    return removed


@contextlib.contextmanager
def staged_outputs(targets: list[Path]) -> Iterator[dict[Path, Path]]:
    """Write several files all-or-nothing.

    Yields ``{target: staging_path}``; write each staging path inside the ``with`` block. When the
    block ends without an error, every file is moved onto its target (renames within one file
    system); when it raises, nothing is moved and the staged files are deleted. The staging paths
    are hidden temporary files beside their targets, so a killed process leaves only those.
    """
    staged = {Path(t): temp_name(Path(t)) for t in targets}
    for t in staged:
        t.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield staged
        missing = [str(t) for t, s in staged.items() if not s.exists()]
        if missing:
            raise RuntimeError(f"staged outputs not written: {', '.join(missing)}")
        for s in staged.values():
            with open(s, "rb+") as f:
                os.fsync(f.fileno())
        for t, s in staged.items():
            os.replace(s, t)
    finally:
        for s in staged.values():
            with contextlib.suppress(OSError):
                s.unlink()
