"""The one evaluator: P, R, mAP@.5 and mAP@.5:.95 of a detector on a labelled dataset.

Numbers follow upstream YOLOv5 v6.2 ``val.py`` (see :mod:`utils.metrics`): predictions and labels
are mapped back to the original image before matching, NMS keeps every box (no time limit).
The model passed in is never modified: inference runs on a private copy (BatchNorm folded; fp16 on
request on CUDA; channels-last memory layout on CPU).
"""
from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from .boxes import non_max_suppression, scale_boxes, xywh2xyxy, xyxy2xywh
from .dataconfig import load_data_config
from .datasets import create_dataloader
from .errors import UserError
from .general import check_img_size
from .metrics import ConfusionMatrix, ap_per_class, fitness, match_predictions
from .timing import StageTimer

__all__ = ["EvalError", "EvalResult", "evaluate", "evaluate_dataset", "print_results"]

STAGES = ("pre", "inference", "nms")  # keys of EvalResult.speed and metrics.json "speed"


class EvalError(UserError, ValueError):
    """Model and data do not belong together (classes, split); the message says which and what to do."""


@dataclass
class EvalResult:
    """Evaluation summary. ``per_class`` rows: name, images, instances, P, R, mAP50, mAP50-95;
    ``speed``: milliseconds per image for pre-process, inference and NMS; ``maps``: mAP@.5:.95 per
    class index (classes without labels get the overall value); ``loss``: mean validation loss
    items when a loss function was given; ``coco``: pycocotools mAPs when computed."""
    P: float
    R: float
    mAP50: float
    mAP50_95: float
    per_class: list[dict] = field(default_factory=list)
    speed: dict = field(default_factory=dict)
    maps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    loss: list | None = None
    images: int = 0
    instances: int = 0
    coco: dict | None = None

    @property
    def fitness(self) -> float:
        """0.1 mAP@.5 + 0.9 mAP@.5:.95 (checkpoint selection)."""
        return fitness([self.P, self.R, self.mAP50, self.mAP50_95])

    def as_dict(self) -> dict:
        """Flat, JSON-ready view: P, R, mAP50, mAP50-95, per_class, speed (+ counts, loss, coco)."""
        d = {"P": float(self.P), "R": float(self.R), "mAP50": float(self.mAP50),
             "mAP50-95": float(self.mAP50_95), "fitness": float(self.fitness),
             "images": int(self.images), "instances": int(self.instances),
             "per_class": [dict(r) for r in self.per_class],
             "speed": {k: float(v) for k, v in self.speed.items()}}
        if self.loss is not None:
            d["loss"] = [float(v) for v in self.loss]
        if self.coco is not None:
            d["coco"] = dict(self.coco)
        return d


# ------------------------------------------------------------------------------------- helpers
def _inference_model(model: torch.nn.Module, half: bool, fuse: bool,
                     channels_last: bool) -> tuple[torch.nn.Module, bool]:
    """(model to run, whether it is a private copy). A copy is made whenever the run would change
    the model (BN folding, fp16, memory layout); otherwise the model is only switched to eval mode
    and back."""
    model = getattr(model, "module", model)  # DDP / DataParallel wrappers
    if not (fuse or half or channels_last):
        return model, False
    net = model.fused_copy() if fuse and hasattr(model, "fused_copy") else copy.deepcopy(model)
    if half:
        net.half()
    if channels_last:
        net.to(memory_format=torch.channels_last)
    for p in net.parameters():
        p.requires_grad_(False)
    return net, True


def _class_names(names, model: torch.nn.Module, nc: int, single_cls: bool) -> list[str]:
    if single_cls:
        return ["item"] if not names or len(names) != 1 else [str(names[0])]
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    names = list(names or getattr(getattr(model, "module", model), "names", None) or [])
    return [str(names[i]) if i < len(names) else str(i) for i in range(nc)]


def _image_id(path: str, by_name: dict[str, int] | None):
    name = Path(path).name
    if by_name and name in by_name:
        return by_name[name]
    stem = Path(path).stem
    return int(stem) if stem.isnumeric() else stem


def _coco_lookup(coco_ann: str | Path | None, names: list[str]) -> tuple[dict | None, list]:
    """(file name -> image id, class index -> category id) from a COCO annotation file.

    Categories are matched by name when every class name is present, else by sorted id when the
    counts agree (COCO's 80 classes -> its 91 ids), else class indices are used as ids.
    """
    identity = list(range(len(names)))
    if coco_ann is None:
        return None, identity
    with open(coco_ann) as f:
        ann = json.load(f)
    by_name = {Path(im["file_name"]).name: im["id"] for im in ann.get("images", [])}
    cats = sorted(ann.get("categories", []), key=lambda c: c["id"])
    cat_by_name = {c["name"]: c["id"] for c in cats}
    if names and all(n in cat_by_name for n in names):
        return by_name, [cat_by_name[n] for n in names]
    if len(cats) == len(names):
        return by_name, [c["id"] for c in cats]
    return by_name, identity


def _json_rows(det: torch.Tensor, image_id, class_ids: list) -> list[dict]:
    """COCO result rows for one image's detections (native pixels, xywh with top-left corner)."""
    box = xyxy2xywh(det[:, :4].double())
    box[:, :2] -= box[:, 2:] / 2
    rows = []
    for b, score, c in zip(box.tolist(), det[:, 4].tolist(), det[:, 5].long().tolist()):
        rows.append({"image_id": image_id, "category_id": class_ids[c] if c < len(class_ids) else c,
                     "bbox": [round(v, 3) for v in b], "score": round(score, 5)})
    return rows


def _pycocotools_eval(pred_json: Path, coco_ann: str | Path, image_ids: list) -> dict | None:
    """mAP@.5:.95 and mAP@.5 from pycocotools COCOeval; None (with a message) when unavailable."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        print("WARNING: --coco-ann needs pycocotools (pip install pycocotools); COCO evaluation skipped")
        return None
    gt = COCO(str(coco_ann))
    with open(pred_json) as f:
        if not json.load(f):
            print("WARNING: no detections to evaluate with pycocotools")
            return {"mAP50": 0.0, "mAP50-95": 0.0}
    dt = gt.loadRes(str(pred_json))
    ev = COCOeval(gt, dt, "bbox")
    ev.params.imgIds = [i for i in image_ids if i in gt.imgs]
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return {"mAP50": float(ev.stats[1]), "mAP50-95": float(ev.stats[0])}


# ----------------------------------------------------------------------------------- reporting
HEADER = ("%22s" + "%11s" * 6) % ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95")
_ROW = "%22s" + "%11i" * 2 + "%11.3g" * 4


def print_results(result: EvalResult, per_class: bool = False, shape: Sequence[int] | None = None) -> None:
    """The upstream-style table ('all' row, optionally one row per class) and the speeds."""
    print(HEADER)
    print(_ROW % ("all", result.images, result.instances, result.P, result.R, result.mAP50,
                  result.mAP50_95))
    if per_class:
        for r in result.per_class:
            print(_ROW % (r["name"], r["images"], r["instances"], r["P"], r["R"], r["mAP50"],
                          r["mAP50-95"]))
    s = result.speed
    if s:
        at = f" at shape {tuple(shape)}" if shape else ""
        print(f"Speed: {s['pre']:.1f}ms pre-process, {s['inference']:.1f}ms inference, "
              f"{s['nms']:.1f}ms NMS per image{at}")


class _Scorer:
    """Per-image matching results of a run (plus the confusion matrix and COCO rows when asked).

    Predictions and labels are compared in original-image pixels, after undoing the letterbox,
    as upstream does (clipping to the original image can change an IoU slightly).
    """

    def __init__(self, nc: int, device: torch.device, single_cls: bool, plots: bool,
                 coco: tuple[dict | None, list] | None):
        self.nc, self.single_cls = nc, single_cls
        self.iouv = torch.linspace(0.5, 0.95, 10, device=device)
        self.stats: list[tuple] = []  # (tp (n, 10), conf (n,), class (n,), label classes (m,))
        self.images_with = np.zeros(nc, dtype=np.int64)  # images containing each class
        self.seen = 0
        self.confusion = ConfusionMatrix(nc=nc) if plots else None
        self.coco = coco  # (file name -> image id, class index -> category id) or None
        self.json_rows: list[dict] = []
        self.image_ids: list = []

    def add_batch(self, dets: list[torch.Tensor], targets: torch.Tensor, img_shape, shapes, paths) -> None:
        h, w = img_shape
        labels_px = targets[:, 1:].clone()  # (N, 5) class, xyxy in letterboxed pixels
        labels_px[:, 1:5] = xywh2xyxy(labels_px[:, 1:5]) * torch.tensor((w, h, w, h), device=targets.device)
        if self.single_cls:
            labels_px[:, 0] = 0
        owner = targets[:, 0].long()
        counts = torch.bincount(owner, minlength=len(dets)).tolist()
        per_image = labels_px[torch.argsort(owner, stable=True)].split(counts)
        for si, det in enumerate(dets):
            if self.single_cls:
                det[:, 5] = 0
            self._add_image(det, per_image[si], img_shape, shapes[si], paths[si])

    def _add_image(self, det: torch.Tensor, labels: torch.Tensor, img_shape, shape, path) -> None:
        shape0, ratio_pad = shape[0], shape[1]
        self.seen += 1
        if labels.shape[0]:
            scale_boxes(img_shape, labels[:, 1:5], shape0, ratio_pad)
            present = np.unique(labels[:, 0].long().cpu().numpy())
            self.images_with[present[present < self.nc]] += 1
        predn = det.clone()
        scale_boxes(img_shape, predn[:, :4], shape0, ratio_pad)
        self.stats.append((match_predictions(predn, labels, self.iouv), det[:, 4], det[:, 5], labels[:, 0]))
        if self.confusion is not None:
            self.confusion.process_batch(predn, labels)
        if self.coco is not None:
            image_id = _image_id(path, self.coco[0])
            self.image_ids.append(image_id)
            self.json_rows.extend(_json_rows(predn.cpu(), image_id, self.coco[1]))

    def summarise(self, names: list[str], plots: bool, save_dir: Path | None) -> EvalResult:
        """P, R, mAPs overall and per class (upstream definitions)."""
        nc = self.nc
        if self.stats:
            tp, conf, pred_cls, target_cls = (torch.cat(x, 0).cpu().numpy() for x in zip(*self.stats))
        else:
            tp, conf, pred_cls, target_cls = np.zeros((0, 10), bool), np.zeros(0), np.zeros(0), np.zeros(0)
        if len(target_cls) and target_cls.max() >= nc:
            raise EvalError(f"a label has class {int(target_cls.max())} but the model has {nc} classes")
        n_labels = np.bincount(target_cls.astype(int), minlength=nc)
        result = EvalResult(0.0, 0.0, 0.0, 0.0, images=self.seen, instances=int(n_labels.sum()),
                            maps=np.zeros(nc))
        if n_labels.sum() == 0:
            print("WARNING: no labels found in the evaluation set; metrics need labels")
            return result
        if not tp.any():  # nothing found: every metric is 0 (as upstream reports it)
            return result
        _, _, p, r, _, ap, classes = ap_per_class(tp, conf, pred_cls, target_cls,
                                                  plot=plots and save_dir is not None,
                                                  save_dir=save_dir or ".", names=names)
        ap50, ap_all = ap[:, 0], ap.mean(1)
        result.P, result.R = float(p.mean()), float(r.mean())
        result.mAP50, result.mAP50_95 = float(ap50.mean()), float(ap_all.mean())
        result.maps = np.full(nc, result.mAP50_95)
        for i, c in enumerate(classes):
            result.maps[c] = ap_all[i]
            result.per_class.append({"name": names[c], "images": int(self.images_with[c]),
                                     "instances": int(n_labels[c]), "P": float(p[i]), "R": float(r[i]),
                                     "mAP50": float(ap50[i]), "mAP50-95": float(ap_all[i])})
        return result


# ---------------------------------------------------------------------------------- evaluation
def _with_progress(dataloader: Iterable, progress: bool) -> Iterable:
    """The batches, behind a progress bar on a terminal (no bar in logs)."""
    if not (progress and sys.stdout.isatty()):
        return dataloader
    from tqdm import tqdm
    return tqdm(dataloader, desc=HEADER, bar_format="{l_bar}{bar:10}{r_bar}")


@torch.no_grad()
def _run_batches(net: torch.nn.Module, batches: Iterable, scorer: _Scorer, timer: StageTimer,
                 device: torch.device, half: bool, channels_last: bool, compute_loss: Callable | None,
                 nms: dict) -> tuple[torch.Tensor | None, int, tuple | None]:
    """Infer, NMS and score every batch; returns (summed loss items or None, batches, first batch shape)."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    loss_sum, n_batches, shape = None, 0, None
    for imgs, targets, paths, shapes in batches:
        timer.start()
        imgs = imgs.to(device, non_blocking=True)
        imgs = ((imgs.half() if half else imgs.float()) / 255).contiguous(memory_format=layout)
        targets = targets.to(device)
        timer.lap("pre")
        y, raw = net(imgs)
        timer.lap("inference")
        if compute_loss is not None:
            items = compute_loss([r.float() for r in raw], targets)[1].detach().float()
            loss_sum = items if loss_sum is None else loss_sum + items
        dets = non_max_suppression(y.float(), **nms)
        timer.lap("nms")
        scorer.add_batch(dets, targets, imgs.shape[2:], shapes, paths)
        n_batches, shape = n_batches + 1, shape or tuple(imgs.shape)  # first (full) batch
    return loss_sum, n_batches, shape


def evaluate(model: torch.nn.Module, dataloader: Iterable, *, conf_thres: float = 0.001,
             iou_thres: float = 0.6, max_det: int = 300, half: bool = False,
             names: Sequence[str] | dict | None = None, save_dir: str | Path | None = None,
             plots: bool = False, save_json: bool = False, coco_ann: str | Path | None = None,
             verbose: bool = False, compute_loss: Callable | None = None, single_cls: bool = False,
             progress: bool = True, fuse: bool = True, channels_last: bool | None = None) -> EvalResult:
    """Evaluate ``model`` on batches ``(imgs uint8 (B,3,H,W), targets (N,6), paths, shapes)``.

    targets rows are [image index in batch, class, x, y, w, h] normalised to the letterboxed image;
    ``shapes[i] = ((h0, w0), ((gain_h, gain_w), (padw, padh)))``. The model's device is used;
    ``half`` runs fp16 (CUDA only). ``compute_loss(raw_maps, targets) -> (loss, items)`` adds the
    mean loss items to the result. With ``save_dir``: metrics.json (and plots, predictions json).
    ``fuse`` folds BatchNorm in the private copy; ``channels_last`` (default: on CPU, where oneDNN
    runs NHWC convolutions about 1.5-2x faster) changes only the copy's memory layout.
    """
    device = next(getattr(model, "module", model).parameters()).device
    half = bool(half) and device.type == "cuda"
    channels_last = device.type == "cpu" if channels_last is None else bool(channels_last)
    nc = 1 if single_cls else int(getattr(model, "module", model).nc)
    names = _class_names(names, model, nc, single_cls)
    save_dir = Path(save_dir) if save_dir is not None else None
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    scorer = _Scorer(nc, device, single_cls, plots, _coco_lookup(coco_ann, names) if save_json else None)
    net, private = _inference_model(model, half, fuse, channels_last)
    was_training, timer = net.training, StageTimer(device, STAGES)
    nms = {"conf_thres": conf_thres, "iou_thres": iou_thres, "multi_label": True, "agnostic": single_cls,
           "max_det": max_det}
    try:
        net.eval()
        loss_sum, n_batches, shape = _run_batches(net, _with_progress(dataloader, progress), scorer, timer,
                                                  device, half, channels_last, compute_loss, nms)
    finally:
        if not private:
            net.train(was_training)
    result = scorer.summarise(names, plots, save_dir)
    result.speed = timer.per_item_ms(scorer.seen)
    if loss_sum is not None:
        result.loss = (loss_sum.cpu() / max(n_batches, 1)).tolist()
    print_results(result, per_class=verbose and nc > 1, shape=shape)
    _write_outputs(result, scorer, save_dir, names, save_json, coco_ann)
    return result


def _write_outputs(result: EvalResult, scorer: _Scorer, save_dir: Path | None, names: list[str],
                   save_json: bool, coco_ann) -> None:
    """predictions.json (+ pycocotools scores into ``result.coco``), confusion matrix, metrics.json."""
    if save_json:
        result.coco = _write_json(scorer.json_rows, scorer.image_ids, save_dir, coco_ann)
    if save_dir is None:
        return
    if scorer.confusion is not None:
        scorer.confusion.plot(save_dir, names)
    with open(save_dir / "metrics.json", "w") as f:
        json.dump(result.as_dict(), f, indent=2)


def _write_json(rows: list[dict], image_ids: list, save_dir: Path | None, coco_ann) -> dict | None:
    """Write predictions.json (COCO results format); evaluate it with pycocotools when possible."""
    if save_dir is None:
        print("WARNING: save_json needs save_dir; predictions not written")
        return None
    path = save_dir / "predictions.json"
    with open(path, "w") as f:
        json.dump(rows, f)
    print(f"Predictions saved to {path} ({len(rows)} detections)")
    if coco_ann is None:
        return None
    coco = _pycocotools_eval(path, coco_ann, image_ids)
    if coco is not None:
        print(f"pycocotools: mAP50 {coco['mAP50']:.4f}  mAP50-95 {coco['mAP50-95']:.4f}")
    return coco


def _eval_size(net: torch.nn.Module, img_size: int, stride: int) -> tuple[int, bool]:
    """(letterbox size, rectangular batches): an exported graph with a static input shape
    (``fixed_shape``, see :mod:`utils.backends`) takes square batches of exactly its size."""
    fixed = getattr(net, "fixed_shape", None)
    if fixed is None:
        return check_img_size(img_size, stride)[0], True
    if fixed[0] != fixed[1]:
        raise EvalError(f"{getattr(net, 'path', 'the model')} was exported for {fixed[0]}x{fixed[1]} inputs; "
                        f"evaluation needs a square or --dynamic export")
    if img_size != fixed[0]:
        print(f"--img {img_size}: the model was exported for {fixed[0]}x{fixed[1]}; evaluating at that size")
    return int(fixed[0]), False


def evaluate_dataset(model: torch.nn.Module, data_cfg: Any, img_size: int = 640, batch_size: int = 16,
                     workers: int = 0, task: str = "val", **kw) -> EvalResult:
    """Evaluate on a dataset description (path, loaded config, or None for the built-in dataset):
    rectangular batches, pad 0.5, stride = the model's largest stride, as upstream's val.py does.
    Other keyword arguments go to :func:`evaluate`."""
    cfg = load_data_config(data_cfg) if data_cfg is None or isinstance(data_cfg, (str, Path)) else data_cfg
    if task not in ("train", "val", "test"):
        raise EvalError(f"task={task!r}: use train, val or test")
    files = getattr(cfg, task)
    if not files:
        raise EvalError(f"{getattr(cfg, 'source', data_cfg)}: the dataset has no '{task}' split")
    net = getattr(model, "module", model)
    single_cls = kw.get("single_cls", False)
    if not single_cls and cfg.nc != net.nc:
        raise EvalError(f"the model has {net.nc} classes but {getattr(cfg, 'source', data_cfg)} has "
                        f"{cfg.nc}: pass weights and data that belong together (or --single-cls)")
    stride = max(int(float(net.stride.max())), 32)
    size, rect = _eval_size(net, img_size, stride)
    loader, _ = create_dataloader(files, size, batch_size, stride, rect=rect, pad=0.5, workers=workers,
                                  shuffle=False, nc=cfg.nc, prefix=f"{task}: ")
    kw.setdefault("names", list(cfg.names) if cfg.names else None)
    return evaluate(model, loader, **kw)
