"""Detection on images and videos: load a detector, run it frame by frame, write what was asked.

Weights may be our checkpoints, upstream YOLOv5 ``.pt`` files or exports (``.onnx``, an OpenVINO
``<stem>_openvino_model/`` folder or its ``.xml``, ``.torchscript``; class names and strides read
from their metadata). Annotated copies keep their source's file name and extension
and go directly into the run folder; ``save_txt`` adds YOLO labels ``labels/<stem>.txt`` (video
frames: ``<stem>_<frame>.txt``) with lines ``cls cx cy w h [conf]`` normalised to the original image.
A source file that cannot be read is skipped with one warning naming it; the run carries on and
reports how many were skipped. Only when nothing at all could be read does it fail.
"""
from __future__ import annotations

import contextlib
import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from models import load_model

from .annotate import annotate, summarise_counts
from .augment import letterbox
from .boxes import non_max_suppression, scale_boxes, xyxy2xywhn
from .dataconfig import load_data_config
from .general import check_img_size, increment_path
from .backends import load_backend
from .sources import Frame, ReadProblem, SourceError, iter_frames, resolve_sources, video_fourcc
from .timing import StageTimer

__all__ = ["DetectOptions", "DetectResult", "default_source", "load_detector", "preprocess", "label_lines",
           "model_input_size", "detect"]

STAGES = ("pre-process", "inference", "NMS")  # keys of DetectResult.speed


@dataclass
class DetectOptions:
    """What to run on and what to write; the defaults are prune_detect.py's flag defaults."""
    weights: str = "weights/last_s_hand_finetune.pt"
    source: str | None = None  # None: the built-in dataset's validation images
    img: Sequence[int] = (640,)
    conf_thres: float = 0.25
    iou_thres: float = 0.45
    max_det: int = 1000
    classes: Sequence[int] | None = None
    agnostic_nms: bool = False
    save_txt: bool = False
    save_conf: bool = False
    nosave: bool = False
    project: str = "runs/detect"
    name: str = "exp"
    exist_ok: bool = False
    line_thickness: int = 3
    hide_labels: bool = False
    hide_conf: bool = False
    half: bool = False

    @classmethod
    def from_namespace(cls, ns: Any) -> "DetectOptions":
        """The fields of ``ns`` (e.g. parsed flags) that this dataclass declares; others are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(ns).items() if k in names})


@dataclass
class DetectResult:
    """What a run produced: the folder, per-frame detection counts, label files, mean ms per image,
    and the source files (or video tails) that could not be read."""
    save_dir: Path
    frames: int = 0
    detections: list[int] = field(default_factory=list)
    label_files: list[Path] = field(default_factory=list)
    speed: dict = field(default_factory=dict)
    problems: list[ReadProblem] = field(default_factory=list)

    @property
    def skipped(self) -> list[Path]:
        """Source files of which nothing was used."""
        return [p.path for p in self.problems if p.whole_file]


def default_source() -> str:
    """The built-in dataset's validation images (generated on first use)."""
    val = load_data_config(None).val
    if isinstance(val, (list, tuple)):
        val = val[0]
    return str(val)


# -------------------------------------------------------------------------------- model, frames
def load_detector(weights: str | Path, device: torch.device, half: bool = False) -> tuple[torch.nn.Module, bool]:
    """(eval model returning ``(y, raw)``, whether it runs in fp16) for a .pt checkpoint or an
    exported model (.onnx, OpenVINO folder or .xml, .torchscript; see :mod:`utils.backends`).

    fp16 is used only for PyTorch models on CUDA; elsewhere the request is explained and dropped.
    """
    exported = load_backend(weights, device)
    if exported is not None:
        if half:
            print(f"--half: ignored for {exported.kind} models (they run in the precision they were exported in)")
        return exported, False
    model = load_model(weights, device, verbose=False).fuse().eval()  # a fresh model: fused in place
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
    padded, ratio, pad = letterbox(image, img_size, auto=auto, stride=stride)
    chw = np.ascontiguousarray(padded[:, :, ::-1].transpose(2, 0, 1))  # BGR HWC -> RGB CHW
    x = torch.from_numpy(chw).to(device)
    x = (x.half() if half else x.float()) / 255
    return x[None], ((ratio[0], ratio[1]), pad)


def label_lines(det: np.ndarray, shape: tuple[int, int], save_conf: bool) -> list[str]:
    """YOLO label lines 'cls cx cy w h [conf]' normalised to an image of ``shape`` (h, w)."""
    if len(det) == 0:
        return []
    xywhn = xyxy2xywhn(det[:, :4].astype(np.float64), w=shape[1], h=shape[0])
    lines = []
    for (cx, cy, w, h), conf, cls in zip(xywhn.tolist(), det[:, 4].tolist(), det[:, 5].tolist()):
        values = [int(cls), cx, cy, w, h] + ([conf] if save_conf else [])
        lines.append(" ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in values))
    return lines


def model_input_size(model: torch.nn.Module, img: Sequence[int]) -> tuple[tuple[int, int], bool]:
    """(letterbox size, auto padding): a static ONNX graph dictates its size, others round --img."""
    fixed = getattr(model, "fixed_shape", None)
    if fixed is None:
        return check_img_size(img, int(max(model.stride.tolist()))), True
    wanted = (img[0], img[0]) if len(img) == 1 else (img[0], img[1])
    if wanted != tuple(fixed):
        print(f"--img {' '.join(map(str, img))}: the {getattr(model, 'kind', 'exported')} model was exported for {fixed[0]}x{fixed[1]}; "
              f"using that (export with --dynamic for other sizes)")
    return tuple(fixed), False


# ------------------------------------------------------------------------------------- writers
class _Outputs:
    """Where results go: unique output names per source file, one open video writer at a time."""

    def __init__(self, save_dir: Path):
        self.save_dir = save_dir
        self._names: dict[Path, str] = {}
        self._writer: cv2.VideoWriter | None = None
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
        path = self.save_dir / self.name_for(src)
        try:
            ok = cv2.imwrite(str(path), image)
        except cv2.error:
            ok = False
        if not ok:  # OpenCV reads some formats it cannot write (e.g. .mpo, .pfm)
            path = path.with_suffix(".png")
            print(f"note: cannot write {src.suffix} images; saved {path.name}")
            if not cv2.imwrite(str(path), image):
                raise OSError(f"{path}: cannot write the annotated image; check that the folder is "
                              f"writable and has space")
        return path

    def write_frame(self, src: Path, image: np.ndarray, fps: float) -> None:
        if self._writer_src != src:
            self.close()
            self._writer = self._open_video(self.save_dir / self.name_for(src), image, fps)
            self._writer_src = src
        self._writer.write(image)

    @staticmethod
    def _open_video(path: Path, image: np.ndarray, fps: float) -> cv2.VideoWriter:
        h, w = image.shape[:2]
        fps = fps if 0 < fps < 1000 else 30.0  # some containers report 0 or nonsense
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*video_fourcc(path)), fps, (w, h))
        if not writer.isOpened():
            path = path.with_suffix(".mp4")
            print(f"note: cannot write this video container; saving {path.name}")
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            if not writer.isOpened():
                raise OSError(f"{path}: OpenCV cannot open a video writer; check that the folder is "
                              f"writable and has space")
        return writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
        self._writer, self._writer_src = None, None


def _save_frame(opts: DetectOptions, frame: Frame, det: np.ndarray, names: list[str], outputs: _Outputs,
                result: DetectResult) -> None:
    """Labels (one file per image or video frame, empty when nothing was found) and the
    annotated image or video frame."""
    if opts.save_txt:
        stem = Path(outputs.name_for(frame.path)).stem
        txt = outputs.save_dir / "labels" / (f"{stem}_{frame.index}.txt" if frame.is_video else f"{stem}.txt")
        lines = label_lines(det, frame.image.shape[:2], opts.save_conf)
        txt.write_text("".join(line + "\n" for line in lines))
        result.label_files.append(txt)
    if opts.nosave:
        return
    image = annotate(frame.image, det, names, opts.line_thickness, opts.hide_labels, opts.hide_conf)
    if frame.is_video:
        outputs.write_frame(frame.path, image, frame.fps)
    else:
        outputs.save_image(frame.path, image)


# ------------------------------------------------------------------------------------- running
@dataclass
class _Run:
    """Everything one detection run shares across frames."""
    opts: DetectOptions
    model: torch.nn.Module
    half: bool
    device: torch.device
    names: list[str]
    img_size: tuple[int, int]
    auto: bool
    stride: int
    outputs: _Outputs
    timer: StageTimer
    result: DetectResult
    shapes: list[tuple[int, ...]] = field(default_factory=list)


def _detect_frame(run: _Run, frame: Frame) -> None:
    """Pre-process, infer, NMS, map boxes back to ``frame``'s pixels, save, log one line."""
    opts, timer = run.opts, run.timer
    timer.start()
    x, ratio_pad = preprocess(frame.image, run.img_size, run.stride, run.auto, run.device, run.half)
    timer.lap("pre-process")
    y = run.model(x)[0]
    t_inf = timer.lap("inference")
    det = non_max_suppression(y.float(), opts.conf_thres, opts.iou_thres, opts.classes,
                              opts.agnostic_nms, max_det=opts.max_det)[0]
    timer.lap("NMS")
    det[:, :4] = scale_boxes(x.shape[2:], det[:, :4], frame.image.shape[:2], ratio_pad)
    det = det.cpu().numpy()
    _save_frame(opts, frame, det, run.names, run.outputs, run.result)
    if tuple(x.shape) not in run.shapes:
        run.shapes.append(tuple(x.shape))
    run.result.frames += 1
    run.result.detections.append(len(det))
    print(f"{frame.describe()}: {x.shape[2]}x{x.shape[3]} "
          f"{summarise_counts(det[:, 5], run.names)}, {t_inf * 1e3:.1f}ms")


def _warn(result: DetectResult, problem: ReadProblem) -> None:
    result.problems.append(problem)
    print(f"WARNING: {problem}", file=sys.stderr)


def _start(opts: DetectOptions, source: str, device: torch.device) -> tuple[_Run, list[Path]]:
    """Resolve the source, load the model and create the run folder (in that order, so a bad
    source or weights file leaves no empty run folder behind)."""
    files = resolve_sources(source)
    model, half = load_detector(opts.weights, device, opts.half)
    names = list(model.names)
    if opts.classes and any(not 0 <= c < len(names) for c in opts.classes):
        print(f"--classes {list(opts.classes)}: the model has classes 0..{len(names) - 1} only")
    img_size, auto = model_input_size(model, opts.img)
    save_dir = increment_path(Path(opts.project) / opts.name, exist_ok=opts.exist_ok, mkdir=True)
    if opts.save_txt:
        (save_dir / "labels").mkdir(parents=True, exist_ok=True)
    run = _Run(opts, model, half, device, names, img_size, auto, int(max(model.stride.tolist())),
               _Outputs(save_dir), StageTimer(device, STAGES), DetectResult(save_dir))
    return run, files


def detect(opts: DetectOptions, device: torch.device | str = "cpu") -> DetectResult:
    """Run the detector over every frame of ``opts.source`` on ``device`` and write the outputs.

    Unreadable source files are skipped with a warning each (see :attr:`DetectResult.problems`);
    :class:`SourceError` when none could be read at all.
    """
    source = opts.source if opts.source is not None else default_source()
    run, files = _start(opts, source, torch.device(device))
    result = run.result
    try:
        with torch.no_grad():
            for frame in iter_frames(files, lambda problem: _warn(result, problem)):
                _detect_frame(run, frame)
    finally:
        run.outputs.close()
    if result.frames == 0:
        _remove_empty(result.save_dir)
        raise SourceError(_nothing_read(source, result.problems))
    result.speed = run.timer.per_item_ms(result.frames)
    _print_summary(result, run.shapes, opts, len(files))
    return result


def _nothing_read(source: str, problems: list[ReadProblem]) -> str:
    """The one sentence for a run in which no source file could be read."""
    what = problems[0].reason if len(problems) == 1 else \
        f"none of its {len(problems)} files could be read (see the warnings above)"
    return f"--source {source}: {what}; give images or videos that OpenCV can decode"


def _remove_empty(save_dir: Path) -> None:
    """Drop the run folder (and its labels folder) when nothing was written into it."""
    for folder in (save_dir / "labels", save_dir):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _print_summary(result: DetectResult, shapes: list[tuple[int, ...]], opts: DetectOptions,
                   n_files: int) -> None:
    s = result.speed
    if len(shapes) == 1:
        at = f"shape {shapes[0]}"
    else:  # auto letterboxing gives each aspect ratio its own shape
        at = "shapes " + ", ".join(map(str, shapes[:3])) + (" ..." if len(shapes) > 3 else "")
    print(f"Speed: {s['pre-process']:.1f}ms pre-process, {s['inference']:.1f}ms inference, "
          f"{s['NMS']:.1f}ms NMS per image at {at}")
    saved = [] if opts.nosave else [f"Results saved to {result.save_dir}"]
    if opts.save_txt:
        saved.append(f"{len(result.label_files)} label files saved to {result.save_dir / 'labels'}")
    if saved:
        print("; ".join(saved))
    if result.skipped:
        print(f"{len(result.skipped)} of {n_files} source files skipped (could not be read; see the warnings)")
