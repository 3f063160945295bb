"""Export any checkpoint (ours, pruned or not, or upstream YOLOv5) to ONNX and verify it.

    python export.py --weights weights/last_s_hand_finetune.pt --img 640 [--dynamic] [--simplify]

The graph is the eval model's inference tensor only: input ``images`` (B, 3, H, W) in [0, 1],
output ``output0`` (B, N, 5+nc) with xywh in input pixels and sigmoid scores, BatchNorm folded.
Class names and strides are stored as ONNX metadata (``names``, ``stride``) so ``prune_detect.py
model.onnx`` labels boxes by itself. The file goes beside the weights as ``<stem>.onnx`` unless
``--output`` says otherwise. It is written under a temporary name, checked with ``onnx.checker``
and run with onnxruntime on a random input against PyTorch; only a file that passes
(``max|diff| <= 1e-3 * max(1, max|ref|)``) replaces the destination. The library behind this
script is :mod:`utils.export`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from models import load_model
from utils.errors import cli_main, positive_int
from utils.export import MIN_OPSET, CheckResult, ExportError, export_checked, onnx_output_path
from utils.general import check_img_size
from utils.onnx_backend import is_onnx, require_onnx
from utils.sources import weights_file
from utils.torch_utils import select_device

__all__ = ["parse_args", "main"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", required=True, help="checkpoint to export (ours or upstream .pt)")
    p.add_argument("--img", "--img-size", "--imgsz", dest="img", type=positive_int, nargs="+", default=[640],
                   help="input size: one value, or h w (rounded up to the model stride)")
    p.add_argument("--batch-size", "--batch", dest="batch_size", type=positive_int, default=1)
    p.add_argument("--opset", type=positive_int, default=17, help=f"ONNX opset version ({MIN_OPSET} or newer)")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width axes")
    p.add_argument("--simplify", action="store_true", help="simplify with onnxsim when installed")
    p.add_argument("--output", default="", help="output file (default: <weights stem>.onnx beside it)")
    p.add_argument("--device", default="cpu", help="device to trace on: cpu, 0, cuda:0")
    opt = p.parse_args(argv)
    if len(opt.img) not in (1, 2):
        p.error(f"--img {' '.join(map(str, opt.img))}: give one size or two (h w)")
    return opt


def _report(weights: Path, out: Path, results: list[CheckResult], img_size: tuple[int, int],
            opt: argparse.Namespace, nc: int, strides: list[int]) -> None:
    for r in results:
        print(f"ONNX check {r}")
    h, w = img_size
    axes = " (dynamic batch, height, width)" if opt.dynamic else ""
    print(f"Exported {weights} -> {out} ({out.stat().st_size / 1e6:.1f} MB), input "
          f"{opt.batch_size}x3x{h}x{w}{axes}, opset {opt.opset}, {nc} classes, strides {strides}")
    print(f"Detect with: python prune_detect.py --weights {out} --img {h} {w}")


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    opt = parse_args(argv)
    if is_onnx(opt.weights):
        raise ExportError(f"--weights {opt.weights}: already an ONNX file; give the .pt checkpoint")
    weights = weights_file(opt.weights)
    require_onnx()  # fail before the slow part when the optional dependency is missing
    out = onnx_output_path(weights, opt.output)
    model = load_model(weights, select_device(opt.device), verbose=False)
    strides = [int(s) for s in model.stride.tolist()]
    img_size = check_img_size(opt.img, max(strides))
    results = export_checked(model, out, img_size, opt.batch_size, opt.opset, opt.dynamic, opt.simplify)
    _report(weights, out, results, img_size, opt, model.nc, strides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
