"""Generic helpers shared by the scripts: run folders, logging, seeding, thread settings."""
from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import UserError

__all__ = ["LOGGER", "increment_path", "init_seeds", "colorstr", "set_cpu_threads", "setup_logging",
           "check_img_size"]

LOGGER = logging.getLogger("yolov5-prune")


def increment_path(path: str | Path, exist_ok: bool = False, mkdir: bool = False) -> Path:
    """runs/train/exp -> runs/train/exp2, exp3, ... unless ``exist_ok`` or the path is free."""
    path = Path(path)
    if path.exists() and not exist_ok:
        suffix = path.suffix if path.is_file() else ""
        stem = path.with_suffix("") if suffix else path
        n = 2
        while stem.with_name(f"{stem.name}{n}{suffix}").exists():
            n += 1
        path = stem.with_name(f"{stem.name}{n}{suffix}")
    if mkdir:
        path.mkdir(parents=True, exist_ok=True)
    return path


def init_seeds(seed: int = 0, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False


def set_cpu_threads(workers: int = 0) -> int:
    """Torch intra-op threads that do not oversubscribe the cores next to ``workers`` loader processes.

    Respects OMP_NUM_THREADS when the user set it. Returns the thread count in use.
    """
    import torch
    if "OMP_NUM_THREADS" in os.environ:
        n = max(int(os.environ["OMP_NUM_THREADS"]), 1)
    else:
        n = max((os.cpu_count() or 1) - workers, 1)
    torch.set_num_threads(n)
    return n


def check_img_size(values: int | Sequence[int], stride: int = 32, flag: str = "--img") -> tuple[int, int]:
    """``--img`` values (one side, or h w) -> (h, w), each rounded up to a multiple of ``stride``.

    The one rounding rule of every script: the network downsamples by ``stride``, so other sizes are
    rounded up with a note rather than refused; sizes below 1 are a :class:`UserError` naming the flag.
    """
    sizes = [int(values)] if isinstance(values, int) else [int(v) for v in values]
    if len(sizes) not in (1, 2) or any(s <= 0 for s in sizes):
        raise UserError(f"{flag} {' '.join(map(str, sizes))}: give one positive image size or two (h w), "
                        f"for example {flag} 640")
    h, w = (sizes[0], sizes[0]) if len(sizes) == 1 else sizes
    stride = max(int(stride), 1)
    rounded = (-(-h // stride) * stride, -(-w // stride) * stride)
    if rounded != (h, w):
        LOGGER.warning(f"WARNING {flag} {h}x{w} is not a multiple of the model stride {stride}; "
                       f"using {rounded[0]}x{rounded[1]}")
    return rounded


_COLORS = {"blue": "\033[34m", "bold": "\033[1m", "red": "\033[31m", "green": "\033[32m",
           "yellow": "\033[33m", "end": "\033[0m"}


def colorstr(*args: str) -> str:
    """colorstr('blue', 'bold', 'text') -> ANSI-coloured text (plain when not a terminal)."""
    *styles, text = args if len(args) > 1 else ("blue", "bold", args[0])
    if not os.isatty(1):
        return text
    return "".join(_COLORS[s] for s in styles) + text + _COLORS["end"]


def setup_logging(verbose: bool = True) -> None:
    """Plain message logging to stdout for the command-line scripts (call from main, not at import)."""
    if not LOGGER.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO if verbose else logging.WARNING)
    LOGGER.propagate = False
