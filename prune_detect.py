"""Step 5: run a detector (pruned or not; .pt, ONNX, OpenVINO or TorchScript) on images and videos and save the results.

    python prune_detect.py --weights weights/last_s_hand_finetune.pt --img 640 --conf 0.7 \
        --source inference/images

``--source`` is an image, a video, a folder, a glob pattern or a ``.txt`` list of files. Annotated
copies keep their source's file name and extension and go directly into ``runs/detect/expN`` (or
``--project/--name``); ``--save-txt`` adds YOLO labels ``labels/<stem>.txt`` (video frames:
``<stem>_<frame>.txt``) with lines ``cls cx cy w h [conf]`` normalised to the original image.
Weights may be our checkpoints, upstream YOLOv5 ``.pt`` files or export.py's outputs: ``.onnx``,
an OpenVINO ``<stem>_openvino_model/`` folder or its ``.xml``, ``.torchscript`` (class names and
strides read from their metadata; onnxruntime or openvino must be installed for those). Files that cannot be read (empty, truncated, not an image)
are skipped with a warning each and counted at the end; the run fails only when none can be read.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from utils.backends import weights_path
from utils.detect import DetectOptions, detect
from utils.errors import cli_main, fraction, positive_int
from utils.torch_utils import select_device

__all__ = ["parse_args", "main"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", nargs="+", default=[DetectOptions.weights],
                   help="checkpoint (.pt, ours or upstream), .onnx, OpenVINO folder or .xml, or .torchscript; "
                        "only the first is used")
    p.add_argument("--source", default=None,
                   help="image, video, folder, glob or .txt list (default: the built-in val images)")
    p.add_argument("--img", "--img-size", "--imgsz", dest="img", type=positive_int, nargs="+", default=[640],
                   help="inference size: one value, or h w (rounded up to the model stride)")
    p.add_argument("--conf", "--conf-thres", dest="conf_thres", type=fraction, default=0.25,
                   help="score threshold (objectness x class), in [0, 1]")
    p.add_argument("--iou", "--iou-thres", dest="iou_thres", type=fraction, default=0.45,
                   help="NMS IoU threshold, in [0, 1]")
    p.add_argument("--max-det", type=positive_int, default=1000, help="detections kept per image")
    p.add_argument("--device", default="", help="cuda device (0, 0,1) or cpu; default: CUDA if available")
    p.add_argument("--classes", type=int, nargs="+", default=None, help="keep only these class ids")
    p.add_argument("--agnostic-nms", action="store_true", help="NMS across classes")
    p.add_argument("--save-txt", action="store_true", help="write YOLO txt labels to labels/")
    p.add_argument("--save-conf", action="store_true", help="append the score to --save-txt lines")
    p.add_argument("--nosave", action="store_true", help="do not save annotated images/videos")
    p.add_argument("--project", default="runs/detect", help="results go to project/name")
    p.add_argument("--name", default="exp", help="results go to project/name")
    p.add_argument("--exist-ok", action="store_true", help="reuse project/name instead of incrementing")
    p.add_argument("--line-thickness", type=int, default=3, help="box line width in pixels")
    p.add_argument("--hide-labels", action="store_true", help="draw boxes without labels")
    p.add_argument("--hide-conf", action="store_true", help="draw labels without scores")
    p.add_argument("--half", action="store_true", help="FP16 inference (CUDA only)")
    opt = p.parse_args(argv)
    if len(opt.img) not in (1, 2):
        p.error(f"--img {' '.join(map(str, opt.img))}: give one size or two (h w)")
    return opt


def options(opt: argparse.Namespace) -> DetectOptions:
    """Parsed flags -> the library's options (the first --weights file; ensembles are not supported)."""
    weights = opt.weights[0]
    if len(opt.weights) > 1:
        print(f"--weights: {len(opt.weights)} files given; ensembles are not supported, using {weights}")
    return DetectOptions.from_namespace(argparse.Namespace(**{**vars(opt), "weights": weights}))


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    opt = parse_args(argv)
    opts = options(opt)
    weights_path(opts.weights)
    detect(opts, select_device(opt.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
