"""Export any checkpoint (ours, pruned or not, or upstream YOLOv5) to ONNX and verify it.

    python export.py --weights weights/last_s_hand_finetune.pt --img 640 [--dynamic] [--simplify]

The graph is the eval model's inference tensor only: input ``images`` (B, 3, H, W) in [0, 1],
output ``output0`` (B, N, 5+nc) with xywh in input pixels and sigmoid scores, BatchNorm folded.
Class names and strides are stored as ONNX metadata (``names``, ``stride``) so ``prune_detect.py
model.onnx`` labels boxes by itself. The file goes beside the weights as ``<stem>.onnx`` unless
``--output`` says otherwise. It is written under a temporary name, checked with ``onnx.checker``
and run with onnxruntime on a random input against PyTorch; only a file that passes
(``max|diff| <= 1e-3 * max(1, max|ref|)``) replaces the destination.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

__all__ = ["ExportCheckError", "CheckResult", "onnx_metadata", "export_onnx", "check_onnx",
           "simplify_onnx", "main"]

INPUT_NAME, OUTPUT_NAME = "images", "output0"
MIN_OPSET = 11  # meshgrid/arange in the decode and nearest upsampling need opset 11+
RELATIVE_TOL = 1e-3


class ExportCheckError(RuntimeError):
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
    from utils.onnx_backend import require_onnx
    onnx = require_onnx()
    if opset < MIN_OPSET:
        raise ValueError(f"--opset {opset}: the detection decode needs opset {MIN_OPSET} or newer")
    device = next(model.parameters()).device
    net = copy.deepcopy(model).float().eval()
    if hasattr(net, "fuse"):
        net.fuse()
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
    from utils.onnx_backend import require_onnx
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
    from utils.onnx_backend import require_onnxruntime
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


# ----------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", required=True, help="checkpoint to export (ours or upstream .pt)")
    p.add_argument("--img", "--img-size", "--imgsz", dest="img", type=int, nargs="+", default=[640],
                   help="input size: one value, or h w")
    p.add_argument("--batch-size", "--batch", dest="batch_size", type=int, default=1)
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width axes")
    p.add_argument("--simplify", action="store_true", help="simplify with onnxsim when installed")
    p.add_argument("--output", default="", help="output file (default: <weights stem>.onnx beside it)")
    p.add_argument("--device", default="cpu", help="device to trace on: cpu, 0, cuda:0")
    opt = p.parse_args(argv)
    if opt.batch_size < 1:
        p.error(f"--batch-size {opt.batch_size}: must be at least 1")
    if len(opt.img) not in (1, 2):
        p.error(f"--img {' '.join(map(str, opt.img))}: give one size or two (h w)")
    return opt


def _output_path(weights: Path, output: str) -> Path:
    out = Path(output) if output else weights.with_suffix(".onnx")
    if out.suffix.lower() != ".onnx":
        raise ValueError(f"--output {out}: the file name must end in .onnx")
    if out.resolve() == weights.resolve():
        raise ValueError(f"--output {out}: would overwrite the weights file")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from models import CheckpointError, load_model
    from utils.onnx_backend import is_onnx, require_onnx
    from utils.sources import parse_img_size
    from utils.torch_utils import select_device

    opt = parse_args(argv)
    weights = Path(opt.weights)
    if is_onnx(weights):
        raise ValueError(f"--weights {weights}: already an ONNX file; give the .pt checkpoint")
    if not weights.is_file():
        raise CheckpointError(f"--weights {weights}: weights file not found")
    require_onnx()  # fail before the slow part when the optional dependency is missing
    out = _output_path(weights, opt.output)
    device = select_device(opt.device)
    model = load_model(weights, device, verbose=False)
    img_size = parse_img_size(opt.img, int(max(model.stride.tolist())))
    tmp = out.with_name(f".{out.stem}.partial.onnx")
    try:
        export_onnx(model, tmp, img_size, opt.batch_size, opt.opset, opt.dynamic)
        if opt.simplify:
            simplify_onnx(tmp)
        try:
            results = check_onnx(tmp, model, img_size, opt.batch_size, opt.dynamic)
        except ImportError as e:
            print(f"WARNING: {e}\nWARNING: the exported model was NOT checked against PyTorch")
            results = []
        except ExportCheckError as e:
            print(f"ERROR: export check failed, {out} not written.\n{e}")
            return 1
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    for r in results:
        print(f"ONNX check {r}")
    h, w = img_size
    axes = " (dynamic batch, height, width)" if opt.dynamic else ""
    print(f"Exported {weights} -> {out} ({out.stat().st_size / 1e6:.1f} MB), input "
          f"{opt.batch_size}x3x{h}x{w}{axes}, opset {opt.opset}, {model.nc} classes, "
          f"strides {[int(s) for s in model.stride.tolist()]}")
    print(f"Detect with: python prune_detect.py --weights {out} --img {h} {w}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
