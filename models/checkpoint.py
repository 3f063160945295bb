"""Our checkpoint file format: make the dict, write it atomically, read it back, check its weights.

A checkpoint is a plain dict readable with ``torch.load(f, weights_only=True)``:

=============== ===================================================================================
``format``      ``"yolov5-prune/1"``
``cfg``         cfg text of the model as saved (current widths, trained anchors)
``model``       state dict (float32)
``ema``         EMA state dict or None (loading prefers it)
``updates``     EMA update count
``names``       class names
``stride``      per-level strides
``epoch``       last finished epoch (-1 when stripped)
``best_fitness`` best fitness so far or None
``optimizer``   optimizer state dict or None
``hyp``         hyperparameters dict
``opt``         the options the step ran with (plain values)
``history``     list of ``{"step": "train" | "sparsity" | "prune" | "layer_prune" | "finetune" | "import", ...}``
``date``        ISO time of writing
``checksum``    ``"sha256:<hex>"`` of the ``model`` and ``ema`` tensors (written by :func:`atomic_save`)
=============== ===================================================================================

This module knows only our own files. Opening any weights file (upstream YOLOv5, bare state dicts)
is :mod:`models.weights`; rebuilding a model from a checkpoint is :mod:`models.build`.
"""
from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import os
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from utils.errors import UserError
from utils.fileio import atomic_write

from .cfg import format_cfg
from .darknet import Darknet

__all__ = [
    "FORMAT", "CheckpointError", "atomic_save", "save_checkpoint", "make_checkpoint", "is_checkpoint",
    "read_checkpoint", "looks_like_torch_file", "state_checksum", "verify_checksum", "to_plain",
]

FORMAT = "yolov5-prune/1"
CHECKSUM_ALGORITHM = "sha256"


class CheckpointError(UserError, ValueError):
    """A weights file cannot be used; the message names the file and what to do."""


# ---------------------------------------------------------------------------------------------
# the dict
# ---------------------------------------------------------------------------------------------
def _state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    model = getattr(model, "module", model)  # DDP
    return {k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
            for k, v in model.state_dict().items()}


def make_checkpoint(model: Darknet, *, ema: torch.nn.Module | None = None, updates: int = 0,
                    epoch: int = -1, best_fitness: float | None = None, optimizer=None,
                    hyp: dict | None = None, opt: dict | None = None,
                    history: list[dict] | None = None, **extra) -> dict:
    """The checkpoint dict for ``model`` (cfg text taken from its current widths and anchors)."""
    model = getattr(model, "module", model)
    ckpt = {
        "format": FORMAT,
        "cfg": format_cfg(model.to_cfg()),
        "model": _state_dict(model),
        "ema": _state_dict(ema) if ema is not None else None,
        "updates": int(updates),
        "names": list(model.names),
        "stride": [float(s) for s in model.stride.tolist()],
        "epoch": int(epoch),
        "best_fitness": None if best_fitness is None else float(best_fitness),
        "optimizer": optimizer.state_dict() if hasattr(optimizer, "state_dict") else optimizer,
        "hyp": to_plain(dict(hyp or {})),
        "opt": to_plain(opt or {}),
        "history": to_plain(list(history or [])),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    ckpt.update(extra)
    return ckpt


def to_plain(value: Any) -> Any:
    """Plain Python values for weights_only-loadable files.

    Dicts and sequences recurse; numpy/torch scalars and arrays become numbers and lists;
    namespaces become dicts; anything else (a Path, say) becomes its string.
    """
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return to_plain(value.tolist())
    if hasattr(value, "__dict__") and not isinstance(value, type):  # argparse.Namespace and kin
        return to_plain(vars(value))
    return str(value)


def is_checkpoint(obj: Any) -> bool:
    """True for a dict in our format."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT


# ---------------------------------------------------------------------------------------------
# checksum
# ---------------------------------------------------------------------------------------------
def _hash_state(h: "hashlib._Hash", state: dict[str, torch.Tensor]) -> None:
    for key in sorted(state):
        t = state[key]
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def state_checksum(ckpt: dict) -> str:
    """``"sha256:<hex>"`` over the ``model`` and (when present) ``ema`` tensors.

    Keys are taken in sorted order, each with its dtype and shape, so any change to a value, a
    shape or a name changes the digest.
    """
    h = hashlib.new(CHECKSUM_ALGORITHM)
    for part in ("model", "ema"):
        state = ckpt.get(part)
        if isinstance(state, dict):
            h.update(f"[{part}]\n".encode())
            _hash_state(h, state)
    return f"{CHECKSUM_ALGORITHM}:{h.hexdigest()}"


def verify_checksum(ckpt: dict, source: str | Path) -> None:
    """Raise :class:`CheckpointError` when the stored checksum does not match the weights.

    Files written before checksums existed have none and pass.
    """
    stored = ckpt.get("checksum")
    if stored is None:
        return
    if stored != state_checksum(ckpt):
        raise CheckpointError(f"{source} is damaged: its weights do not match the checksum written "
                              f"with them; use another copy or retrain")


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def _tensor_bytes(obj: Any) -> int:
    """Bytes of all tensors in a nested dict/list (about the size torch.save writes)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


_WRITE_FAILURES = ("file write failed", "unexpected pos", "inline_container")
_SPACE_MARGIN = 16 << 20  # file-system metadata, the zip directory, other writers


def _short_of_space(folder: Path, needed: int) -> bool:
    try:
        return shutil.disk_usage(folder).free < needed + _SPACE_MARGIN
    except OSError:
        return False


def _no_space(path: Path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through :func:`utils.fileio.atomic_write`: the old file or the new one, never half.

    A checkpoint dict of ours gets its checksum (re)computed here, so every file we write carries
    one whoever assembled or edited the dict. A write that fails for lack of space raises
    ``OSError(ENOSPC, ..., path)`` (torch reports it as a RuntimeError from its zip writer).
    """
    path = Path(path)
    if is_checkpoint(obj):
        obj = {**obj, "checksum": state_checksum(obj)}
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    try:
        return atomic_write(path, write)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise _no_space(path) from e
        raise
    except RuntimeError as e:
        if any(s in str(e) for s in _WRITE_FAILURES) and _short_of_space(path.parent, _tensor_bytes(obj)):
            raise _no_space(path) from e
        raise


def save_checkpoint(path: str | Path, model: Darknet | None = None, ckpt: dict | None = None,
                    **fields) -> Path:
    """Write a checkpoint atomically, from a model (+ fields) or a ready dict."""
    if ckpt is None:
        if model is None:
            raise ValueError("save_checkpoint needs a model or a checkpoint dict")
        ckpt = make_checkpoint(model, **fields)
    return atomic_save(ckpt, path)


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def looks_like_torch_file(path: Path) -> bool:
    """A zip archive (torch >= 1.6) or a legacy pickle: the two layouts torch.load reads."""
    with open(path, "rb") as f:
        head = f.read(1)
    return zipfile.is_zipfile(path) or head == b"\x80"


def read_checkpoint(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` on CPU; a dict in our format has its checksum verified.

    Returns whatever the file holds (the caller decides what to do with other formats); raises
    the loader's own exception when the file cannot be read with ``weights_only`` (an upstream
    pickle, a truncated archive) and :class:`CheckpointError` for a damaged checkpoint of ours.
    """
    with warnings.catch_warnings():  # a failure here is expected for upstream pickles
        warnings.simplefilter("ignore")
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if is_checkpoint(obj):
        verify_checksum(obj, path)
    return obj
