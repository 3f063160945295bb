"""INT8 after pruning: post-training static quantization, then FP32 vs INT8 mAP and latency.

    python quantize.py --weights weights/pruned.pt --data data/builtin.yaml --img 320 \
        [--runtime onnxruntime|openvino] [--calib 300] [--task test]

A ``.pt`` checkpoint is first exported to a static FP32 ONNX graph (batch 1, ``--img``) in a
temporary folder; an ``.onnx`` file is used as it is. Calibration uses the first ``--calib``
images of the TRAIN split, letterboxed like evaluation. ONNX Runtime writes ``<stem>_int8.onnx``
(QDQ, per-channel weights); ``--runtime openvino`` converts that graph to
``<stem>_int8_openvino_model/`` (the OpenVINO CPU plugin runs it in INT8). The detection head (the
final 1x1 convs and the box decode) stays FP32; ``--quantize-head`` quantizes the 1x1 convs too
(the decode always stays FP32: quantized, it cost all of the mAP in our measurement). Both models are then
evaluated on ``--task`` (default: test when the dataset has that split, else val) and timed with
one thread at batch 1, round-robin in this process; ``--json`` saves the numbers.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from models import load_model
from utils.backends import OpenVinoModel, load_backend
from utils.dataconfig import load_data_config
from utils.errors import cli_main, positive_int
from utils.evaluate import evaluate_dataset
from utils.export import ExportSpec, export_checked
from utils.fileio import atomic_folder
from utils.fileio import atomic_write, atomic_write_text
from utils.general import check_img_size
from utils.onnx_backend import is_onnx
from utils.quantize import (CalibrationImages, QuantizeError, int8_output_path, openvino_from_onnx, quantize_onnx,
                            round_robin_latency)
from utils.sources import weights_file

__all__ = ["parse_args", "main", "run"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", required=True, help="checkpoint (.pt) or FP32 .onnx to quantize")
    p.add_argument("--data", default=None, help="dataset .yaml (default: built-in); train split calibrates")
    p.add_argument("--img", "--img-size", "--imgsz", dest="img", type=positive_int, default=640,
                   help="input size (square; rounded up to the stride); .onnx files keep their own")
    p.add_argument("--runtime", choices=["onnxruntime", "openvino"], default="onnxruntime")
    p.add_argument("--calib", type=positive_int, default=300, help="calibration images from the train split")
    p.add_argument("--task", choices=["val", "test"], default=None,
                   help="evaluation split (default: test when the dataset has one, else val)")
    p.add_argument("--quantize-head", action="store_true", help="quantize the final 1x1 detect convs too (the decode stays FP32)")
    p.add_argument("--runs", type=positive_int, default=50, help="timed runs per model")
    p.add_argument("--batch-size", type=positive_int, default=8, help="evaluation batch size")
    p.add_argument("--json", default="", help="also write the results to this .json file")
    return p.parse_args(argv)


def _fp32_onnx(weights: Path, img: int, tmp: Path) -> Path:
    """The FP32 ONNX graph to quantize: the file itself, or a static export of the checkpoint."""
    if is_onnx(weights):
        return weights
    model = load_model(weights, torch.device("cpu"), verbose=False)
    size = check_img_size(img, int(max(model.stride.tolist())))
    out = tmp / f"{weights.stem}.onnx"
    export_checked(model, out, size, spec=ExportSpec(size))
    return out


def _models(fp32: Path, int8: Path, runtime: str, out: Path, tmp: Path, threads: int | None):
    """(FP32 model, INT8 model) for ``runtime``; publishes the INT8 model at ``out``."""
    if runtime == "onnxruntime":
        atomic_write(out, lambda t: t.write_bytes(int8.read_bytes()))
        return load_backend(fp32, threads=threads), load_backend(out, threads=threads)
    fp32_ir = openvino_from_onnx(fp32, tmp / "fp32_openvino_model", fp32.stem)
    atomic_folder(out, lambda t: openvino_from_onnx(int8, t, out.name.removesuffix("_openvino_model")))
    return OpenVinoModel(fp32_ir, threads=threads), OpenVinoModel(out, threads=threads)


def run(opt: argparse.Namespace) -> dict:
    """Quantize, evaluate and time as ``opt`` says; returns the results dict."""
    weights = weights_file(opt.weights)
    if not (is_onnx(weights) or weights.suffix == ".pt"):
        raise QuantizeError(f"--weights {weights}: give a .pt checkpoint or an FP32 .onnx file")
    data = load_data_config(opt.data)
    task = opt.task or ("test" if data.test else "val")
    out = int8_output_path(weights, opt.runtime)
    with tempfile.TemporaryDirectory(prefix="quantize_", dir=weights.parent) as tmp_name:
        tmp = Path(tmp_name)
        fp32 = _fp32_onnx(weights, opt.img, tmp)
        fp32_model = load_backend(fp32)
        if fp32_model.nc != data.nc:
            raise QuantizeError(f"--weights {weights} has {fp32_model.nc} classes but --data {data.source} has "
                                f"{data.nc}: pass weights and data that belong together")
        size = fp32_model.fixed_shape[0] if fp32_model.fixed_shape else check_img_size(opt.img, 32)[0]
        calib = CalibrationImages(data.train, size, opt.calib)
        print(f"Calibrating on {len(calib)} train images at {size}x{size} ({opt.runtime}, head "
              f"{'convs INT8, decode FP32' if opt.quantize_head else 'FP32'})")
        int8 = quantize_onnx(fp32, tmp / "int8.onnx", calib, keep_head_fp32=not opt.quantize_head)
        models = dict(zip(("FP32", "INT8"), _models(fp32, int8, opt.runtime, out, tmp, threads=1)))
        results = _evaluate(models, data, size, task, opt)
    results.update({"weights": str(weights), "int8": str(out), "runtime": opt.runtime, "img": size,
                    "task": task, "calib": len(calib), "head": "convs INT8" if opt.quantize_head else "FP32"})
    _print(results)
    if opt.json:
        atomic_write_text(opt.json, json.dumps(results, indent=2) + "\n")
    return results


def _evaluate(models: dict, data, size: int, task: str, opt: argparse.Namespace) -> dict:
    rows = {}
    for name, model in models.items():
        print(f"--- {name}")
        r = evaluate_dataset(model, data, img_size=size, batch_size=opt.batch_size, task=task, fuse=False,
                             channels_last=False, progress=False)
        rows[name] = {"mAP50": r.mAP50, "mAP50-95": r.mAP50_95}
    runners = {name: (lambda m: (lambda x: m(torch.from_numpy(x))))(m) for name, m in models.items()}
    for name, t in round_robin_latency(runners, (1, 3, size, size), runs=opt.runs).items():
        rows[name].update(t)
    return {"models": rows}


def _print(results: dict) -> None:
    print(f"\n{'model':>6} {'mAP50':>8} {'mAP50-95':>9} {'ms (1 thread, batch 1)':>24}")
    for name, r in results["models"].items():
        print(f"{name:>6} {r['mAP50']:8.4f} {r['mAP50-95']:9.4f} {r['median_ms']:12.2f} "
              f"(p10 {r['p10_ms']:.2f}, p90 {r['p90_ms']:.2f})")
    m = results["models"]
    print(f"INT8 model: {results['int8']} ({results['runtime']}, {results['task']} split, "
          f"{m['FP32']['median_ms'] / max(m['INT8']['median_ms'], 1e-9):.2f}x faster)")


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    opt = parse_args(argv)
    torch.set_num_threads(1)
    run(opt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
