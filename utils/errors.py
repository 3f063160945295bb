"""One error path for every command-line script.

A problem the user can fix (a missing file, a bad flag, a cfg error, a dataset without labels, an
unreachable pruning target) is reported as one sentence on stderr that names the file, line or flag
and what to do, with exit code 2; Ctrl-C exits with 130. Nothing else in the project prints
tracebacks for such errors. Set ``YOLOV5_PRUNE_TRACEBACK=1`` (or pass ``--traceback`` to any
script) to see the full traceback as well.

This module imports only :mod:`utils.fileio` (which imports nothing from the project), so every
package may use it.
"""
from __future__ import annotations

import argparse
import errno
import functools
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from utils.fileio import target_of

__all__ = ["UserError", "cli_main", "describe_error", "parse_number", "positive_int", "nonneg_int", "positive_float",
           "nonneg_float", "fraction", "open_fraction"]

TRACEBACK_ENV = "YOLOV5_PRUNE_TRACEBACK"
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A problem with the user's input or environment that one sentence explains.

    The project's own error classes (cfg, checkpoint, dataset, pruning, export) derive from it, so
    :func:`cli_main` reports them without a traceback.
    """


def _errno_sentence(e: OSError) -> str:
    name = str(target_of(e.filename)) if e.filename is not None else "a file"
    if e.errno == errno.ENOSPC:
        return (f"no space left on the device while writing {name}; free some space and run again "
                f"(files already in place were not replaced)")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied for {name}; choose a writable folder (for example --project or --out-dir)"
    if e.errno == errno.ENOENT:
        return f"{name}: no such file or folder"
    if e.errno == errno.ENOTDIR:
        return f"{name}: a part of this path is a file, not a folder; choose another path"
    if e.errno == errno.EISDIR:
        return f"{name} is a folder; a file was expected"
    return f"{name}: {e.strerror or e}"


def describe_error(e: BaseException) -> str | None:
    """The one-sentence description of an error the user can act on, or None for a program bug."""
    if isinstance(e, UserError):
        return str(e)
    if isinstance(e, OSError):  # FileNotFoundError, PermissionError, disk full, read-only folder
        if e.errno is None and e.args:
            return str(e.args[0])
        return _errno_sentence(e)
    if isinstance(e, RuntimeError) and "CUDA" in str(e) and "available" in str(e):
        return f"{str(e).splitlines()[0]} (use --device cpu)"
    return None


def _wants_traceback(argv: list[str]) -> tuple[bool, list[str]]:
    want = os.environ.get(TRACEBACK_ENV, "") not in ("", "0")
    if "--traceback" in argv:
        argv = [a for a in argv if a != "--traceback"]
        want = True
    return want, argv


def cli_main(main: Callable[[Sequence[str] | None], int | None]) -> Callable[[Sequence[str] | None], int]:
    """Decorate a script's ``main(argv)`` so user errors end as one sentence and exit code 2.

    Program bugs (anything :func:`describe_error` does not recognise) keep their traceback.
    """

    @functools.wraps(main)
    def wrapped(argv: Sequence[str] | None = None) -> int:
        args = list(sys.argv[1:] if argv is None else argv)
        show_traceback, args = _wants_traceback(args)
        prog = Path(sys.argv[0]).name if argv is None else Path(main.__code__.co_filename).name
        try:
            return int(main(args) or 0)
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as e:  # noqa: BLE001 - sorted into user errors and bugs just below
            sentence = describe_error(e)
            if sentence is None:
                raise
            if show_traceback:
                import traceback
                traceback.print_exc()
            print(f"{prog}: error: {sentence}", file=sys.stderr)
            return EXIT_ERROR

    return wrapped


# --- argparse types: ranges checked at the command-line boundary, with argparse's own message ---

def parse_number(kind: type, text: str):
    """``kind(text)``, or argparse's one-line error naming the text."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole number' if kind is int else 'number'}")


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    v = parse_number(int, text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be at least 1")
    return v


def nonneg_int(text: str) -> int:
    """argparse type: an int >= 0."""
    v = parse_number(int, text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} must be 0 or more")
    return v


def positive_float(text: str) -> float:
    """argparse type: a float > 0."""
    v = parse_number(float, text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{v} must be greater than 0")
    return v


def nonneg_float(text: str) -> float:
    """argparse type: a float >= 0."""
    v = parse_number(float, text)
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"{v} must be 0 or more")
    return v


def fraction(text: str) -> float:
    """argparse type: a float in [0, 1]."""
    v = parse_number(float, text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{v} must lie between 0 and 1")
    return v


def open_fraction(text: str) -> float:
    """argparse type: a float in (0, 1)."""
    v = parse_number(float, text)
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"{v} must lie strictly between 0 and 1")
    return v
