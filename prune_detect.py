"""Step 5: run a detector (pruned or not, .pt or .onnx) on images and videos and save the results.

    python prune_detect.py --weights weights/last_s_hand_finetune.pt --img 640 --conf 0.7 \
        --source inference/images

``--source`` is an image, a video, a folder, a glob pattern or a ``.txt`` list of files. Annotated
copies keep their source's file name and extension and go directly into ``runs/detect/expN`` (or
``--project/--name``); ``--save-txt`` adds YOLO labels ``labels/<stem>.txt`` (video frames:
``<stem>_<frame>.txt``) with lines ``cls cx cy w h [conf]`` normalised to the original image.
Weights may be our checkpoints, upstream YOLOv5 ``.pt`` files or ``.onnx`` exports (class names and
strides read from the ONNX metadata).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["parse_args", "load_detector", "preprocess", "label_lines", "detect", "DetectResult", "main"]


def default_source() -> str:
    """The built-in dataset's validation images (generated on first use), else data/images."""
    try:
        from utils.datasets import load_data_config
    except ImportError:
        return "data/images"
    val = load_data_config(None).val
    if isinstance(val, (list, tuple)):
        val = val[0]
    return str(val)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", nargs="+", default=["weights/last_s_hand_finetune.pt"],
                   help="checkpoint (.pt, ours or upstream) or .onnx file; only the first is used")
    p.add_argument("--source", default=None,
                   help="image, video, folder, glob or .txt list (default: the built-in val images)")
    p.add_argument("--img", "--img-size", "--imgsz", dest="img", type=int, nargs="+", default=[640],
                   help="inference size: one value, or h w")
    p.add_argument("--conf", "--conf-thres", dest="conf_thres", type=float, default=0.25,
                   help="score threshold (objectness x class)")
    p.add_argument("--iou", "--iou-thres", dest="iou_thres", type=float, default=0.45,
                   help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=1000, help="detections kept per image")
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
    if not 0 <= opt.conf_thres <= 1:
        p.error(f"--conf {opt.conf_thres}: must be within [0, 1]")
    if not 0 <= opt.iou_thres <= 1:
        p.error(f"--iou {opt.iou_thres}: must be within [0, 1]")
    if opt.max_det < 1:
        p.error(f"--max-det {opt.max_det}: must be at least 1")
    return opt


# -------------------------------------------------------------------------------- model, frames
def load_detector(weights: str | Path, device: torch.device, half: bool = False) -> tuple[torch.nn.Module, bool]:
    """(eval model returning ``(y, raw)``, whether it runs in fp16) for a .pt or .onnx file.

    fp16 is used only for PyTorch models on CUDA; elsewhere the request is explained and dropped.
    """
    from utils.onnx_backend import OnnxModel, is_onnx
    if is_onnx(weights):
        if not Path(weights).is_file():
            raise FileNotFoundError(f"--weights {weights}: ONNX file not found")
        if half:
            print("--half: ignored for ONNX models (they run in the precision they were exported in)")
        return OnnxModel(weights, device), False
    from models import load_model
    model = load_model(weights, device, verbose=False).fuse().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if half and device.type != "cuda":
        print(f"--half: FP16 inference needs CUDA; running FP32 on {device.type}")
        half = False
    return (model.half() if half else model), half


def preprocess(image: np.ndarray, img_size: tuple[int, int], stride: int, auto: bool,
               device: torch.device, half: bool) -> tuple[torch.Tensor, tuple]:
    """BGR image -> ((1, 3, h, w) RGB tensor in [0, 1], ratio_pad for :func:`scale_boxes`).

    ``auto`` pads only to the next multiple of ``stride`` (fastest for shape-flexible models);
    static ONNX graphs need the exact ``img_size``.
    """
    from utils.augment import letterbox
    padded, ratio, pad = letterbox(image, img_size, auto=auto, stride=stride)
    chw = np.ascontiguousarray(padded[:, :, ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
    x = torch.from_numpy(chw).to(device)
    x = (x.half() if half else x.float()) / 255
    return x[None], ((ratio[0], ratio[1]), pad)


def label_lines(det: np.ndarray, shape: tuple[int, int], save_conf: bool) -> list[str]:
    """YOLO label lines 'cls cx cy w h [conf]' normalised to an image of ``shape`` (h, w)."""
    from utils.boxes import xyxy2xywhn
    if len(det) == 0:
        return []
    xywhn = xyxy2xywhn(det[:, :4].astype(np.float64), w=shape[1], h=shape[0])
    lines = []
    for (cx, cy, w, h), conf, cls in zip(xywhn.tolist(), det[:, 4].tolist(), det[:, 5].tolist()):
        values = [int(cls), cx, cy, w, h] + ([conf] if save_conf else [])
        lines.append(" ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in values))
    return lines


# ------------------------------------------------------------------------------------- writers
class _Outputs:
    """Where results go: unique output names per source file, one open video writer at a time."""

    def __init__(self, save_dir: Path):
        self.save_dir = save_dir
        self._names: dict[Path, str] = {}
        self._writer = None
        self._writer_src: Path | None = None

    def name_for(self, src: Path) -> str:
        """``src``'s file name, made unique by stem within the run: two sources a.jpg in different
        folders, or a.mp4 next to a.avi, would otherwise share an output or a label file."""
        if src not in self._names:
            taken = {Path(n).stem for n in self._names.values()}
            stem, n = src.stem, 2
            while stem in taken:
                stem, n = f"{src.stem}_{n}", n + 1
            if stem != src.stem:
                print(f"note: {src} saved as {stem}{src.suffix} (another source has the same name)")
            self._names[src] = stem + src.suffix
        return self._names[src]

    def save_image(self, src: Path, image: np.ndarray) -> Path:
        import cv2
        path = self.save_dir / self.name_for(src)
        try:
            ok = cv2.imwrite(str(path), image)
        except cv2.error:
            ok = False
        if not ok:  # OpenCV reads some formats it cannot write (e.g. .mpo, .pfm)
            path = path.with_suffix(".png")
            print(f"note: cannot write {src.suffix} images; saved {path.name}")
            if not cv2.imwrite(str(path), image):
                raise OSError(f"{path}: cannot write the annotated image")
        return path

    def write_frame(self, src: Path, image: np.ndarray, fps: float) -> None:
        if self._writer_src != src:
            self.close()
            self._writer = self._open_video(self.save_dir / self.name_for(src), image, fps)
            self._writer_src = src
        self._writer.write(image)

    @staticmethod
    def _open_video(path: Path, image: np.ndarray, fps: float):
        import cv2
        from utils.sources import video_fourcc
        h, w = image.shape[:2]
        fps = fps if 0 < fps < 1000 else 30.0  # some containers report 0 or nonsense
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*video_fourcc(path)), fps, (w, h))
        if not writer.isOpened():
            path = path.with_suffix(".mp4")
            print(f"note: cannot write this video container; saving {path.name}")
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            if not writer.isOpened():
                raise OSError(f"{path}: OpenCV cannot open a video writer")
        return writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
        self._writer, self._writer_src = None, None


# ------------------------------------------------------------------------------------- running
@dataclass
class DetectResult:
    """What a run produced: the folder, per-frame detection counts, label files, mean ms per image."""
    save_dir: Path
    frames: int = 0
    detections: list[int] = field(default_factory=list)
    label_files: list[Path] = field(default_factory=list)
    speed: dict = field(default_factory=dict)


class _Clock:
    """Wall time per stage; synchronises CUDA so GPU work is charged to its own stage."""

    def __init__(self, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.total = {"pre-process": 0.0, "inference": 0.0, "NMS": 0.0}
        self.t = 0.0

    def start(self) -> None:
        self.sync()
        self.t = time.perf_counter()

    def lap(self, stage: str) -> float:
        self.sync()
        now = time.perf_counter()
        dt, self.t = now - self.t, now
        self.total[stage] += dt
        return dt


def _model_input_size(model: torch.nn.Module, img: Sequence[int]) -> tuple[tuple[int, int], bool]:
    """(letterbox size, auto padding): a static ONNX graph dictates its size, others round --img."""
    from utils.sources import parse_img_size
    fixed = getattr(model, "fixed_shape", None)
    if fixed is None:
        return parse_img_size(img, int(max(model.stride.tolist()))), True
    wanted = (img[0], img[0]) if len(img) == 1 else (img[0], img[1])
    if wanted != tuple(fixed):
        print(f"--img {' '.join(map(str, img))}: the ONNX model was exported for {fixed[0]}x{fixed[1]}; "
              f"using that (export with --dynamic for other sizes)")
    return tuple(fixed), False


def detect(opt: argparse.Namespace) -> DetectResult:
    """Run the detector over every frame of ``opt.source`` and write the requested outputs."""
    from models import CheckpointError
    from utils.annotate import summarise_counts
    from utils.boxes import non_max_suppression, scale_boxes
    from utils.general import increment_path
    from utils.sources import iter_frames, resolve_sources
    from utils.torch_utils import select_device

    weights = opt.weights[0]
    if len(opt.weights) > 1:
        print(f"--weights: {len(opt.weights)} files given; ensembles are not supported, using {weights}")
    if not Path(weights).is_file():
        raise CheckpointError(f"--weights {weights}: weights file not found")
    files = resolve_sources(opt.source if opt.source is not None else default_source())
    device = select_device(opt.device)
    model, half = load_detector(weights, device, opt.half)
    names = list(model.names)
    if opt.classes and any(not 0 <= c < len(names) for c in opt.classes):
        print(f"--classes {opt.classes}: the model has classes 0..{len(names) - 1} only")
    img_size, auto = _model_input_size(model, opt.img)
    stride = int(max(model.stride.tolist()))

    save_dir = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok, mkdir=True)
    if opt.save_txt:
        (save_dir / "labels").mkdir(parents=True, exist_ok=True)
    outputs, clock, result = _Outputs(save_dir), _Clock(device), DetectResult(save_dir)
    shapes: list[tuple[int, ...]] = []
    try:
        with torch.no_grad():
            for frame in iter_frames(files):
                clock.start()
                x, ratio_pad = preprocess(frame.image, img_size, stride, auto, device, half)
                clock.lap("pre-process")
                y = model(x)[0]
                t_inf = clock.lap("inference")
                det = non_max_suppression(y.float(), opt.conf_thres, opt.iou_thres, opt.classes,
                                          opt.agnostic_nms, max_det=opt.max_det)[0]
                clock.lap("NMS")
                det[:, :4] = scale_boxes(x.shape[2:], det[:, :4], frame.image.shape[:2], ratio_pad)
                det = det.cpu().numpy()
                _save_frame(opt, frame, det, names, outputs, result)
                if tuple(x.shape) not in shapes:
                    shapes.append(tuple(x.shape))
                result.frames += 1
                result.detections.append(len(det))
                print(f"{frame.describe()}: {x.shape[2]}x{x.shape[3]} "
                      f"{summarise_counts(det[:, 5], names)}, {t_inf * 1e3:.1f}ms")
    finally:
        outputs.close()
    result.speed = {k: v / max(result.frames, 1) * 1e3 for k, v in clock.total.items()}
    _print_summary(result, shapes, opt)
    return result


def _save_frame(opt, frame, det: np.ndarray, names: list[str], outputs: _Outputs,
                result: DetectResult) -> None:
    """Labels (one file per image or video frame, empty when nothing was found) and the
    annotated image or video frame."""
    from utils.annotate import annotate
    if opt.save_txt:
        stem = Path(outputs.name_for(frame.path)).stem
        txt = outputs.save_dir / "labels" / (f"{stem}_{frame.index}.txt" if frame.is_video else f"{stem}.txt")
        lines = label_lines(det, frame.image.shape[:2], opt.save_conf)
        txt.write_text("".join(line + "\n" for line in lines))
        result.label_files.append(txt)
    if opt.nosave:
        return
    image = annotate(frame.image, det, names, opt.line_thickness, opt.hide_labels, opt.hide_conf)
    if frame.is_video:
        outputs.write_frame(frame.path, image, frame.fps)
    else:
        outputs.save_image(frame.path, image)


def _print_summary(result: DetectResult, shapes: list[tuple[int, ...]], opt) -> None:
    s = result.speed
    if len(shapes) == 1:
        at = f"shape {shapes[0]}"
    else:  # auto letterboxing gives each aspect ratio its own shape
        at = "shapes " + ", ".join(map(str, shapes[:3])) + (" ..." if len(shapes) > 3 else "")
    print(f"Speed: {s['pre-process']:.1f}ms pre-process, {s['inference']:.1f}ms inference, "
          f"{s['NMS']:.1f}ms NMS per image at {at}")
    saved = [] if opt.nosave else [f"Results saved to {result.save_dir}"]
    if opt.save_txt:
        saved.append(f"{len(result.label_files)} label files saved to {result.save_dir / 'labels'}")
    if saved:
        print("; ".join(saved))


def main(argv: Sequence[str] | None = None) -> int:
    detect(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
