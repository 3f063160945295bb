"""Export any checkpoint (ours, pruned or not, or upstream YOLOv5) to ONNX, OpenVINO or TorchScript.

    python export.py --weights weights/last_s_hand_finetune.pt --img 640 \
        [--format onnx,openvino,torchscript] [--dynamic] [--simplify] [--half] [--nms]

Outputs go beside the weights with upstream YOLOv5's names: ``<stem>.onnx`` (or ``--output``),
``<stem>_openvino_model/`` (``<stem>.xml``, ``<stem>.bin``, ``metadata.yaml``) and
``<stem>.torchscript``. Each holds the eval model's inference tensor ``output0`` (B, N, 5+nc): xywh
in input pixels and sigmoid scores, BatchNorm folded, with class names and the stride in upstream's
metadata layout, so ``prune_detect.py`` and ``val.py`` (and upstream's tools) take it as
``--weights``. Every output is written under a temporary name, run by its runtime on random inputs
against PyTorch, and replaces the destination only when ``max|diff| <= 1e-3 * max(1, max|ref|)``
(1e-2 with ``--half``). The library behind this script is :mod:`utils.export`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from models import load_model
from utils.backends import backend_kind
from utils.errors import cli_main, fraction, positive_int
from utils.export import FORMATS, MIN_OPSET, CheckResult, ExportError, ExportSpec, export_formats, output_paths
from utils.general import check_img_size
from utils.onnx_backend import require_onnx
from utils.sources import weights_file
from utils.torch_utils import select_device

__all__ = ["parse_args", "main"]

DISPLAY = {"onnx": "ONNX", "openvino": "OpenVINO", "torchscript": "TorchScript"}


def _formats(values: list[str]) -> list[str]:
    """--format onnx,openvino --format torchscript -> ['onnx', 'openvino', 'torchscript'] (once each)."""
    out: list[str] = []
    for v in values:
        for f in v.lower().split(","):
            f = f.strip()
            if f and f not in out:
                out.append(f)
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", required=True, help="checkpoint to export (ours or upstream .pt)")
    p.add_argument("--format", "--include", dest="format", action="append", default=None,
                   help=f"output formats, comma-separated or repeated: {', '.join(FORMATS)} (default onnx)")
    p.add_argument("--img", "--img-size", "--imgsz", dest="img", type=positive_int, nargs="+", default=[640],
                   help="input size: one value, or h w (rounded up to the model stride)")
    p.add_argument("--batch-size", "--batch", dest="batch_size", type=positive_int, default=1)
    p.add_argument("--opset", type=positive_int, default=17, help=f"ONNX opset version ({MIN_OPSET} or newer)")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width axes")
    p.add_argument("--simplify", action="store_true", help="simplify the ONNX graph with onnxslim (or onnxsim)")
    p.add_argument("--half", action="store_true",
                   help="FP16 weights (ONNX: FP16 input/output too; TorchScript: CUDA only)")
    p.add_argument("--nms", action="store_true",
                   help="add NMS to the ONNX graph: second output 'detections' (K, 7) = "
                        "[batch, x1, y1, x2, y2, score, class]")
    p.add_argument("--conf-thres", type=fraction, default=0.25, help="--nms score threshold")
    p.add_argument("--iou-thres", type=fraction, default=0.45, help="--nms IoU threshold")
    p.add_argument("--max-det", type=positive_int, default=100, help="--nms boxes kept per image and class")
    p.add_argument("--output", default="", help="ONNX output file (default: <weights stem>.onnx beside it)")
    p.add_argument("--device", default="cpu", help="device to trace on: cpu, 0, cuda:0")
    opt = p.parse_args(argv)
    if len(opt.img) not in (1, 2):
        p.error(f"--img {' '.join(map(str, opt.img))}: give one size or two (h w)")
    opt.format = _formats(opt.format or ["onnx"])
    bad = [f for f in opt.format if f not in FORMATS]
    if bad:
        p.error(f"--format {','.join(bad)}: unknown; choose from {', '.join(FORMATS)}")
    return opt


def _report(weights: Path, paths: dict[str, Path], results: dict[str, list[CheckResult]],
            spec: ExportSpec, nc: int, strides: list[int]) -> None:
    h, w = spec.img_size
    axes = " (dynamic batch, height, width)" if spec.dynamic else ""
    for fmt, out in paths.items():
        for r in results[fmt]:
            print(f"{DISPLAY[fmt]} check {r}")
        size = sum(f.stat().st_size for f in out.rglob("*")) if out.is_dir() else out.stat().st_size
        print(f"Exported {weights} -> {out} ({DISPLAY[fmt]}, {size / 1e6:.1f} MB), input {spec.batch}x3x{h}x{w}{axes}"
              f"{', FP16' if spec.half else ''}, {nc} classes, strides {strides}")
    first = next(iter(paths.values()))
    print(f"Detect with: python prune_detect.py --weights {first} --img {h} {w}")


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    opt = parse_args(argv)
    kind = backend_kind(opt.weights)
    if kind is not None:
        raise ExportError(f"--weights {opt.weights}: already an {DISPLAY[kind]} file; give the .pt checkpoint")
    weights = weights_file(opt.weights)
    if {"onnx", "openvino"} & set(opt.format):
        require_onnx()  # fail before the slow part when the optional dependency is missing
    paths = output_paths(weights, opt.format, opt.output)
    model = load_model(weights, select_device(opt.device), verbose=False)
    strides = [int(s) for s in model.stride.tolist()]
    spec = ExportSpec(check_img_size(opt.img, max(strides)), opt.batch_size, opt.opset, opt.dynamic,
                      opt.simplify, opt.half, opt.nms, opt.conf_thres, opt.iou_thres, opt.max_det)
    if spec.nms and "onnx" not in paths:
        raise ExportError("--nms embeds NMS in the ONNX graph only; add --format onnx")
    results = export_formats(model, paths, spec)
    _report(weights, paths, results, spec, model.nc, strides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
