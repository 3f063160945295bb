"""ONNX export of a detector, verified against PyTorch before it is published.

The graph is the eval model's inference tensor only: input ``images`` (B, 3, H, W) in [0, 1],
output ``output0`` (B, N, 5+nc) with xywh in input pixels and sigmoid scores, BatchNorm folded.
Class names and strides are stored as ONNX metadata (``names``, ``stride``) so an ``.onnx`` file
labels boxes by itself (see :mod:`utils.onnx_backend`). :func:`export_checked` writes the file under
a temporary name, checks it with ``onnx.checker`` and runs it with onnxruntime on random inputs
against PyTorch; only a file that passes (``max|diff| <= 1e-3 * max(1, max|ref|)``) replaces the
destination (:func:`utils.fileio.atomic_write`).
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .errors import UserError
from .fileio import atomic_write
from .onnx_backend import is_onnx, require_onnx, require_onnxruntime

__all__ = ["ExportError", "ExportCheckError", "CheckResult", "INPUT_NAME", "OUTPUT_NAME", "MIN_OPSET", "onnx_metadata",
           "export_onnx", "simplify_onnx", "check_onnx", "export_checked", "onnx_output_path"]

INPUT_NAME, OUTPUT_NAME = "images", "output0"
MIN_OPSET = 11  # meshgrid/arange in the decode and nearest upsampling need opset 11+
RELATIVE_TOL = 1e-3


class ExportError(UserError, ValueError):
    """A request that cannot be exported as asked (opset, output name); the message names the flag."""


class ExportCheckError(UserError, RuntimeError):
    """The exported graph does not reproduce the PyTorch model within tolerance."""


@dataclass
class CheckResult:
    """One onnxruntime-vs-PyTorch comparison on a random input of ``shape``."""
    shape: tuple[int, ...]
    max_diff: float
    max_ref: float

    @property
    def tolerance(self) -> float:
        return RELATIVE_TOL * max(1.0, self.max_ref)

    @property
    def ok(self) -> bool:
        return self.max_diff <= self.tolerance

    def __str__(self) -> str:
        return (f"{'x'.join(map(str, self.shape))}: max |diff| {self.max_diff:.3g} "
                f"(max |output| {self.max_ref:.4g}, tolerance {self.tolerance:.3g})")


class _InferenceOutput(nn.Module):
    """Exposes only the decoded (B, N, 5+nc) tensor; the raw maps are training-only."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


def onnx_metadata(model: nn.Module, img_size: tuple[int, int], batch: int, dynamic: bool) -> dict[str, str]:
    """Metadata strings: names as a dict literal ("{0: 'circle', ...}", the upstream convention),
    per-level strides as a list literal, and the input the graph was exported for."""
    names = {i: str(n) for i, n in enumerate(model.names)}
    strides = [int(s) if float(s).is_integer() else float(s) for s in model.stride.tolist()]
    return {"names": repr(names), "stride": repr(strides), "nc": str(len(names)),
            "imgsz": repr(list(img_size)), "batch": str(batch), "dynamic": str(bool(dynamic)),
            "description": "yolov5-prune detector: output0 (B, N, 5+nc) = xywh pixels, obj, cls"}


def export_onnx(model: nn.Module, path: str | Path, img_size: tuple[int, int] = (640, 640),
                batch: int = 1, opset: int = 17, dynamic: bool = False) -> Path:
    """Write ``model``'s inference graph (BN folded, on a copy) with metadata to ``path``.

    Uses the TorchScript-based exporter (``dynamo=False``): the torch.export-based default needs
    the separate onnxscript package, and the traced graph of our decode already follows the input
    shape, so ``dynamic`` axes (batch, height, width) work with it.
    """
    onnx = require_onnx()
    if opset < MIN_OPSET:
        raise ExportError(f"--opset {opset}: the detection decode needs opset {MIN_OPSET} or newer")
    device = next(model.parameters()).device
    net = model.fused_copy() if hasattr(model, "fused_copy") else copy.deepcopy(model).eval()
    net.float()
    wrapper = _InferenceOutput(net).eval()  # export restores the wrapper's mode on its children
    x = torch.zeros(batch, 3, *img_size, device=device)
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
            OUTPUT_NAME: {0: "batch", 1: "anchors"}} if dynamic else None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(wrapper, (x,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes=axes, do_constant_folding=True)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    del proto.metadata_props[:]
    for key, value in onnx_metadata(model, img_size, batch, dynamic).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path


def simplify_onnx(path: str | Path) -> bool:
    """Simplify in place with onnxsim when it is installed; True when the file was changed."""
    try:
        import onnxsim
    except ImportError:
        print("--simplify: onnxsim is not installed; skipped (pip install onnxsim to enable)")
        return False
    onnx = require_onnx()
    proto = onnx.load(str(path))
    try:
        simplified, ok = onnxsim.simplify(proto)
    except Exception as e:  # onnxsim raises assorted runtime errors on unsupported graphs
        print(f"--simplify: onnxsim failed ({type(e).__name__}: {e}); keeping the unsimplified graph")
        return False
    if not ok:
        print("--simplify: onnxsim could not validate the simplified graph; keeping the original")
        return False
    onnx.save(simplified, str(path))
    return True


def _check_shapes(img_size: tuple[int, int], batch: int, dynamic: bool,
                  max_stride: int) -> list[tuple[int, int, int, int]]:
    """The exported shape, plus for dynamic graphs another batch and height (proves the axes)."""
    shapes = [(batch, 3, *img_size)]
    if dynamic:
        shapes.append((batch + 1, 3, img_size[0] + max_stride, img_size[1]))
    return shapes


@torch.no_grad()
def check_onnx(path: str | Path, model: nn.Module, img_size: tuple[int, int], batch: int = 1,
               dynamic: bool = False, seed: int = 0) -> list[CheckResult]:
    """Run the ONNX file with onnxruntime (CPU) and ``model`` (eval, its device) on the same
    random inputs; raise :class:`ExportCheckError` when any comparison exceeds the tolerance."""
    ort = require_onnxruntime()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    results = []
    try:
        for shape in _check_shapes(img_size, batch, dynamic, int(max(model.stride.tolist()))):
            x = torch.rand(shape, generator=gen)
            ref = model(x.to(device))[0].float().cpu()  # (B, N, 5+nc)
            out = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])
            if out.shape != ref.shape:
                raise ExportCheckError(f"{path}: output shape {tuple(out.shape)} differs from "
                                       f"PyTorch's {tuple(ref.shape)} for input {shape}")
            results.append(CheckResult(shape, float((out - ref).abs().max()), float(ref.abs().max())))
    finally:
        model.train(was_training)
    bad = [r for r in results if not r.ok]
    if bad:
        raise ExportCheckError(f"{path}: onnxruntime output differs from PyTorch beyond tolerance: "
                               + "; ".join(map(str, bad)))
    return results


def _verify(tmp: Path, model: nn.Module, img_size: tuple[int, int], batch: int, dynamic: bool,
            out: Path) -> list[CheckResult]:
    """:func:`check_onnx` on the staged file; its failure names the destination, not the staging
    name. A missing onnxruntime only warns: the file is then published unchecked."""
    try:
        return check_onnx(tmp, model, img_size, batch, dynamic)
    except ExportCheckError as e:
        detail = str(e).split(": ", 1)[-1]
        raise ExportCheckError(f"export check failed, {out} not written ({detail}); try another --opset "
                               f"or export without --simplify") from None
    except ImportError as e:
        print(f"WARNING: {e}\nWARNING: the exported model was NOT checked against PyTorch")
        return []


def export_checked(model: nn.Module, out: str | Path, img_size: tuple[int, int], batch: int = 1,
                   opset: int = 17, dynamic: bool = False, simplify: bool = False) -> list[CheckResult]:
    """Export ``model`` to ``out`` only if the graph reproduces PyTorch (see the module docstring).

    On any failure the previous ``out`` (if any) is left as it was and no temporary file remains.
    Returns the comparisons made (empty when onnxruntime is not installed).
    """
    out = Path(out)
    results: list[CheckResult] = []

    def write(tmp: Path) -> None:
        export_onnx(model, tmp, img_size, batch, opset, dynamic)
        if simplify:
            simplify_onnx(tmp)
        results.extend(_verify(tmp, model, img_size, batch, dynamic, out))

    atomic_write(out, write)
    return results


def onnx_output_path(weights: Path, output: str | Path | None) -> Path:
    """``--output`` or ``<weights stem>.onnx`` beside the weights; refuses names that are not
    ``.onnx`` and the weights file itself."""
    out = Path(output) if output else weights.with_suffix(".onnx")
    if not is_onnx(out):
        raise ExportError(f"--output {out}: the file name must end in .onnx")
    if out.resolve() == weights.resolve():
        raise ExportError(f"--output {out}: would overwrite the weights file")
    return out
