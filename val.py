"""Evaluate a detector: P, R, mAP@.5 and mAP@.5:.95 (YOLOv5 v6.2 definitions).

    python val.py --weights runs/train/exp/weights/best.pt --data data/coco_hand.yaml --img 640

Takes our checkpoints, upstream YOLOv5 v6 .pt files and export.py's outputs (.onnx, an OpenVINO
``<stem>_openvino_model/`` folder or its .xml, .torchscript); a static exported graph is evaluated at
the size it was exported for, with square letterboxed batches. Writes <project>/<name>/metrics.json
(keys P, R, mAP50, mAP50-95, per_class, speed), PR_curve.png, F1_curve.png and
confusion_matrix.png; --save-json adds predictions.json (COCO results), scored with pycocotools
when --coco-ann names the COCO annotation file.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from models import load_model
from utils.backends import load_backend, weights_path
from utils.dataconfig import load_data_config
from utils.errors import cli_main, fraction, nonneg_int, positive_int
from utils.evaluate import EvalResult, evaluate_dataset
from utils.general import increment_path, set_cpu_threads
from utils.torch_utils import select_device

ROOT = Path(__file__).resolve().parent


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", type=str, required=True, help="checkpoint (ours or upstream YOLOv5 .pt), .onnx, OpenVINO folder/.xml or .torchscript")
    p.add_argument("--cfg", type=str, default=None,
                   help="model .cfg/.yaml; only for bare state dicts or to check the checkpoint's network")
    p.add_argument("--data", type=str, default=None, help="dataset .yaml or .data (default: built-in)")
    p.add_argument("--img", "--img-size", "--imgsz", dest="img", type=positive_int, default=640,
                   help="inference size (pixels, long side; rounded up to the model stride)")
    p.add_argument("--batch-size", "--batch", dest="batch_size", type=positive_int, default=16)
    p.add_argument("--conf-thres", type=fraction, default=0.001, help="confidence threshold, in [0, 1]")
    p.add_argument("--iou-thres", type=fraction, default=0.6, help="NMS IoU threshold, in [0, 1]")
    p.add_argument("--max-det", type=positive_int, default=300, help="maximum detections per image")
    p.add_argument("--task", choices=["val", "test", "train"], default="val", help="which split")
    p.add_argument("--device", default="", help="cuda device, e.g. 0, or cpu")
    p.add_argument("--workers", type=nonneg_int, default=0, help="dataloader worker processes")
    p.add_argument("--project", default=str(ROOT / "runs" / "val"), help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="reuse project/name instead of incrementing")
    p.add_argument("--half", action="store_true", help="FP16 inference (CUDA only)")
    p.add_argument("--save-json", action="store_true", help="write COCO-style predictions.json")
    p.add_argument("--coco-ann", type=str, default=None,
                   help="COCO annotation json: score predictions.json with pycocotools (implies --save-json)")
    p.add_argument("--verbose", action="store_true", help="per-class table for any number of classes")
    p.add_argument("--single-cls", action="store_true", help="treat every class as one")
    p.add_argument("--no-plots", action="store_true", help="skip the PR curve and confusion matrix")
    return p.parse_args(argv)


def load_evaluated(weights: Path, device, opt: argparse.Namespace) -> tuple[torch.nn.Module, dict]:
    """(model, extra evaluate() arguments): an exported model runs as it is (no BN folding, no
    fp16 or memory-layout copy); a checkpoint is loaded as usual."""
    exported = load_backend(weights, device)
    if exported is None:
        if opt.half and device.type != "cuda":
            print("WARNING: --half needs CUDA; evaluating in fp32")
        return load_model(weights, device, cfg=opt.cfg), {}
    if opt.cfg:
        print(f"--cfg: ignored for {exported.kind} models (the network is in the file)")
    if opt.half:
        print(f"--half: ignored for {exported.kind} models (they run in the precision they were exported in)")
    opt.half = False
    return exported, {"fuse": False, "channels_last": False}


def run(opt: argparse.Namespace) -> tuple[EvalResult, Path]:
    """Evaluate as ``opt`` says; returns (EvalResult, run folder)."""
    weights = weights_path(opt.weights)
    if opt.coco_ann and not Path(opt.coco_ann).is_file():
        raise FileNotFoundError(f"--coco-ann {opt.coco_ann}: file not found")
    device = select_device(opt.device)
    model, extra = load_evaluated(weights, device, opt)
    data = load_data_config(opt.data)
    save_dir = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok, mkdir=True)
    t0 = time.perf_counter()
    result = evaluate_dataset(model, data, img_size=opt.img, batch_size=opt.batch_size,
                              workers=opt.workers, task=opt.task, conf_thres=opt.conf_thres,
                              iou_thres=opt.iou_thres, max_det=opt.max_det, half=opt.half,
                              save_dir=save_dir, plots=not opt.no_plots,
                              save_json=opt.save_json or bool(opt.coco_ann), coco_ann=opt.coco_ann,
                              verbose=opt.verbose or 1 < data.nc < 50, single_cls=opt.single_cls, **extra)
    seconds = time.perf_counter() - t0
    print(f"{result.images} images in {seconds:.1f} s ({result.images / max(seconds, 1e-9):.1f} images/s, "
          f"loading and plots included)")
    print(f"Results saved to {save_dir}")
    return result, save_dir


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    opt = parse_args(argv)
    set_cpu_threads(opt.workers)
    run(opt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
