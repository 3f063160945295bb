"""Run an exported ``.onnx`` detector through onnxruntime as if it were our model in eval mode.

:class:`OnnxModel` is a ``torch.nn.Module`` whose ``forward(x)`` returns ``(y, [])`` with ``y``
the (B, N, 5+nc) inference tensor, exactly what :class:`models.Darknet` returns in eval mode minus
the raw maps (the exported graph has only the decoded output). Class names and strides come from
the ONNX metadata written by ``export.py`` (``names`` as a dict literal and ``stride`` the largest
stride, upstream YOLOv5's convention, plus ``strides`` per level; older exports of ours wrote the
per-level list under ``stride``, which is read too), so detection and evaluation label boxes
without the original checkpoint. :class:`ExportedModel` is the interface shared with the OpenVINO
and TorchScript wrappers in :mod:`utils.backends`. The module holds one empty parameter so
code that asks ``next(model.parameters()).device`` keeps working.

onnxruntime is an optional dependency; it is imported when a model is opened, never at import.
"""
from __future__ import annotations

import ast
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .errors import UserError

__all__ = ["ExportedModel", "OnnxModel", "OnnxModelError", "read_metadata", "MissingDependencyError", "require_onnxruntime", "require_onnx",
           "parse_names", "parse_stride", "is_onnx"]

DEFAULT_STRIDE = (8.0, 16.0, 32.0)  # P3-P5; used only for files exported without our metadata


class MissingDependencyError(UserError, ImportError):
    """An optional package (onnx, onnxruntime) is needed; the message says what to install."""


class OnnxModelError(UserError, ValueError):
    """An ``.onnx`` file that cannot serve as a detector, or an input it was not exported for."""


def require_onnxruntime() -> Any:
    """The onnxruntime module, or a :class:`MissingDependencyError` that says how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("onnxruntime is not installed; it is needed to run or check .onnx "
                                     "models: pip install onnxruntime (listed in requirements-dev.txt)") from None
    return onnxruntime


def require_onnx() -> Any:
    """The onnx module, or a :class:`MissingDependencyError` that says how to install it."""
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError("onnx is not installed; it is needed to export and inspect .onnx "
                                     "models: pip install onnx (listed in requirements-dev.txt)") from None
    return onnx


def is_onnx(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def parse_names(text: str, source: str = "names") -> list[str]:
    """Class names from metadata text: "{0: 'a', 1: 'b'}" (as upstream writes) or "['a', 'b']"."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise OnnxModelError(f"{source}: cannot parse class names {text[:80]!r}") from None
    if isinstance(value, dict):
        keys = sorted(int(k) for k in value)
        if keys != list(range(len(keys))):
            raise OnnxModelError(f"{source}: class ids must be 0..n-1, got {keys[:10]}")
        return [str(value[k]) for k in keys]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    raise OnnxModelError(f"{source}: class names must be a dict or a list, got {type(value).__name__}")


def parse_stride(text: str, source: str = "stride") -> list[float]:
    """Strides from metadata text: '[8, 16, 32]' (ours) or '32' (upstream's max stride only)."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise OnnxModelError(f"{source}: cannot parse strides {text[:80]!r}") from None
    values = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    if not values or any(v <= 0 for v in values):
        raise OnnxModelError(f"{source}: strides must be positive numbers, got {text!r}")
    return values


def _providers(ort: Any, device: torch.device) -> list[str]:
    """CUDA first when the model should run on a GPU and this onnxruntime build has it."""
    available = ort.get_available_providers()
    if device.type == "cuda":
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        warnings.warn("this onnxruntime build has no CUDA provider (install onnxruntime-gpu); "
                      "running the ONNX model on the CPU", stacklevel=3)
    return ["CPUExecutionProvider"]


def _dim(value: Any) -> int | None:
    """A static ONNX dimension as int; symbolic or unknown ones as None."""
    return int(value) if isinstance(value, (int, np.integer)) and int(value) > 0 else None


class ExportedModel(nn.Module):
    """Shared interface of detectors that run outside PyTorch eval mode (ONNX, OpenVINO, TorchScript).

    ``forward(x)`` returns ``((B, N, 5+nc), [])`` like :class:`models.Darknet` in eval mode;
    ``names``, ``stride`` (tensor of per-level strides, or only the largest one for files written by
    upstream YOLOv5), ``nc``; ``fixed_shape`` is the (h, w) a static graph was exported for (None
    when any multiple of the stride works) and ``fixed_batch`` likewise (larger batches run in
    chunks of it, a short last chunk is zero-padded). Subclasses implement ``_run(array) -> array``.
    The module holds one empty parameter so ``next(model.parameters()).device`` works.
    """

    kind = "exported"  # the format's name in messages

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        super().__init__()
        self.path = Path(path)
        self.names: list[str] = []
        self.stride = torch.tensor(DEFAULT_STRIDE)
        self.fixed_shape: tuple[int, int] | None = None
        self.fixed_batch: int | None = None
        self.input_dtype = np.float32
        self.metadata: dict[str, str] = {}
        self._device = nn.Parameter(torch.zeros(0, device=device), requires_grad=False)

    @property
    def nc(self) -> int:
        return len(self.names)

    @property
    def dynamic(self) -> bool:
        return self.fixed_shape is None

    def fuse(self) -> "ExportedModel":
        """Already folded at export; present so callers can treat every model alike."""
        return self

    def _run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> None:
        if self.fixed_shape is not None and tuple(x.shape[2:]) != self.fixed_shape:
            h, w = self.fixed_shape
            raise OnnxModelError(f"{self.path} was exported for {h}x{w} inputs, got {x.shape[2]}x{x.shape[3]}; "
                                 f"export with --dynamic or use --img {h} {w}")

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list]:
        """(B, 3, H, W) in [0, 1] -> ((B, N, 5+nc) in ``x``'s dtype and device, [])."""
        self._check_input(x)
        arr = np.ascontiguousarray(x.detach().float().cpu().numpy(), dtype=self.input_dtype)
        b, step = arr.shape[0], self.fixed_batch or arr.shape[0]
        outs = []
        for i in range(0, b, step):
            chunk = arr[i:i + step]
            n = chunk.shape[0]
            if n < step:  # static batch: pad the last chunk with blank images, drop their outputs
                chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), chunk.dtype)], 0)
            outs.append(np.asarray(self._run(chunk))[:n])
        y = torch.from_numpy(np.concatenate(outs, 0).astype(np.float32, copy=False))
        return y.to(device=x.device, dtype=x.dtype), []

    def extra_repr(self) -> str:
        shape = "dynamic" if self.fixed_shape is None else f"{self.fixed_shape[0]}x{self.fixed_shape[1]}"
        return f"{self.kind}, path={self.path}, input={shape}, nc={self.nc}"


def read_metadata(meta: dict[str, str], source: str, out_nc: int | None) -> tuple[list[str], list[float]]:
    """(class names, strides) from our metadata (any version) or upstream YOLOv5's.

    ``strides`` (per level, written since the upstream-compatible layout) wins over ``stride``,
    which is the largest stride ('32', upstream's convention) or, in older exports of ours, the
    per-level list ('[8, 16, 32]'). Without names, class ids are used (from the output width).
    """
    if "names" in meta:
        names = parse_names(meta["names"], f"{source} metadata 'names'")
    else:
        warnings.warn(f"{source}: no class names in the metadata; using class ids", stacklevel=3)
        names = [str(i) for i in range((out_nc - 5) if out_nc else 0)]
    if out_nc and out_nc - 5 != len(names):
        raise OnnxModelError(f"{source}: metadata lists {len(names)} class names but the output has "
                             f"{out_nc - 5} class scores")
    key = "strides" if "strides" in meta else "stride"
    strides = parse_stride(str(meta[key]), f"{source} metadata '{key}'") if key in meta else list(DEFAULT_STRIDE)
    return names, strides


class OnnxModel(ExportedModel):
    """An ONNX detector with our eval-model interface (see the module docstring)."""

    kind = "ONNX"

    def __init__(self, path: str | Path, device: str | torch.device = "cpu",
                 threads: int | None = None):
        super().__init__(path, device)
        ort = require_onnxruntime()
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: ONNX file not found")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(self.path), sess_options=options,
                                           providers=_providers(ort, torch.device(device)))
        except Exception as e:  # onnxruntime raises its own exception types
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise OnnxModelError(f"{self.path}: onnxruntime cannot load the model ({detail}); export it again "
                                 f"with export.py") from None
        self._attach(session)

    def _attach(self, session: Any) -> None:
        """Read the graph's interface and the metadata from an open session."""
        self.session = session
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise OnnxModelError(f"{self.path}: expected one image input (B, 3, H, W), got "
                                 f"{[(i.name, i.shape) for i in inputs]}")
        out_shape = outputs[0].shape
        if len(out_shape) != 3:
            raise OnnxModelError(f"{self.path}: expected the detection output (B, N, 5+nc) first, "
                                 f"got {outputs[0].name} of shape {out_shape}")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        shape = inputs[0].shape
        h, w = _dim(shape[2]), _dim(shape[3])
        self.fixed_shape = (h, w) if h and w else None
        self.fixed_batch = _dim(shape[0])
        self.input_dtype = np.float16 if "float16" in inputs[0].type else np.float32
        meta = session.get_modelmeta().custom_metadata_map
        names, strides = read_metadata(meta, str(self.path), _dim(out_shape[2]))
        self.names, self.stride, self.metadata = names, torch.tensor(strides), dict(meta)

    def __deepcopy__(self, memo: dict) -> "OnnxModel":
        """Copies share the (read-only) session; sessions cannot be pickled or copied."""
        clone = OnnxModel.__new__(OnnxModel)
        ExportedModel.__init__(clone, self.path, self._device.device)
        clone._attach(self.session)
        clone.train(self.training)
        return clone

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, providers={self.session.get_providers()}"
