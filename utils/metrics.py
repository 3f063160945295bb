"""Detection metrics with YOLOv5 v6.2 definitions.

How numbers are defined (so they compare with what upstream prints):

- A detection is a true positive at IoU threshold t when :func:`match_predictions` pairs it with a
  label of its class; the 10 thresholds are 0.50:0.05:0.95.
- AP per class and threshold: precision made monotone (upper envelope), sampled at 101 recall
  points and integrated with the trapezoidal rule (:func:`compute_ap`).
- P and R per class are read off the precision/recall-versus-confidence curves at the single
  confidence where the class-mean F1, smoothed, peaks (:func:`ap_per_class`).
- fitness = 0.1 mAP@.5 + 0.9 mAP@.5:.95 selects the best checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from .boxes import box_iou
from .plots import plot_confusion_matrix, plot_mc_curve, plot_pr_curve

__all__ = ["compute_ap", "ap_per_class", "fitness", "smooth", "match_predictions", "ConfusionMatrix",
           "IOU_THRESHOLDS"]

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
_EPS = 1e-16


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoidal integral (np.trapz was renamed across NumPy versions; this is the same sum)."""
    return float(((y[1:] + y[:-1]) * np.diff(x)).sum() / 2)


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AP from one precision/recall curve (detections in descending confidence).

    The curve is closed with (0, 1) and (1, 0), precision replaced by its running maximum from the
    right (so a later, better precision counts for every lower recall), then sampled at recall
    0, 0.01, ..., 1 and integrated. Returns (ap, envelope precision, recall with the end points).
    """
    mrec = np.concatenate(([0.0], np.asarray(recall, dtype=np.float64), [1.0]))
    mpre = np.concatenate(([1.0], np.asarray(precision, dtype=np.float64), [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    x = np.linspace(0, 1, 101)
    return _trapezoid(np.interp(x, mrec, mpre), x), mpre, mrec


def smooth(y: np.ndarray, fraction: float = 0.05) -> np.ndarray:
    """Box filter over ``fraction`` of the curve (odd width), ends padded with the end values."""
    width = round(len(y) * fraction * 2) // 2 + 1
    pad = np.ones(width // 2)
    padded = np.concatenate((pad * y[0], y, pad * y[-1]))
    return np.convolve(padded, np.ones(width) / width, mode="valid")


def _names_for(classes: np.ndarray, names) -> list[str]:
    if isinstance(names, Mapping):
        return [str(names.get(int(c), int(c))) for c in classes]
    names = list(names or ())
    return [str(names[int(c)]) if int(c) < len(names) else str(int(c)) for c in classes]


def ap_per_class(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray,
                 plot: bool = False, save_dir: str | Path = ".", names: Sequence[str] | Mapping = ()):
    """Per-class precision, recall, F1 and AP for every IoU threshold.

    tp: (n, T) bool, one column per IoU threshold; conf, pred_cls: (n,); target_cls: (m,) class
    of every label. Only classes that have labels are reported (in sorted order).
    Returns (tp, fp, p, r, f1, ap, classes): counts, P, R and F1 per class at the confidence of
    maximum smoothed mean F1, ap (nc, T), classes (nc,) int.
    With ``plot``, writes PR_curve.png and F1_curve.png into ``save_dir``.
    """
    tp = np.asarray(tp, dtype=np.float64).reshape(len(conf), -1)
    conf, pred_cls = np.asarray(conf, dtype=np.float64), np.asarray(pred_cls)
    order = np.argsort(-conf, kind="stable")
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes, n_targets = np.unique(np.asarray(target_cls), return_counts=True)
    nc, n_thr = classes.shape[0], tp.shape[1]
    px = np.linspace(0, 1, 1000)  # confidence axis of the P/R/F1 curves
    ap = np.zeros((nc, n_thr))
    p_curve, r_curve = np.zeros((nc, 1000)), np.zeros((nc, 1000))
    pr_curves = []  # precision at recall px, IoU 0.5, per class (plots only)
    for ci, c in enumerate(classes):
        sel = pred_cls == c
        if not sel.any():
            pr_curves.append(np.zeros(1000))
            continue
        tpc = tp[sel].cumsum(0)  # (k, T)
        fpc = (1 - tp[sel]).cumsum(0)
        recall = tpc / (n_targets[ci] + _EPS)
        precision = tpc / (tpc + fpc)
        r_curve[ci] = np.interp(-px, -conf[sel], recall[:, 0], left=0)  # conf falls along the axis
        p_curve[ci] = np.interp(-px, -conf[sel], precision[:, 0], left=1)
        for j in range(n_thr):
            ap[ci, j], mpre, mrec = compute_ap(recall[:, j], precision[:, j])
            if j == 0:
                pr_curves.append(np.interp(px, mrec, mpre))
    f1_curve = 2 * p_curve * r_curve / (p_curve + r_curve + _EPS)
    if plot and nc:
        class_names = _names_for(classes, names)
        save_dir = Path(save_dir)
        plot_pr_curve(px, np.array(pr_curves), ap, save_dir / "PR_curve.png", class_names)
        plot_mc_curve(px, f1_curve, save_dir / "F1_curve.png", class_names, ylabel="F1")
    best = int(smooth(f1_curve.mean(0), 0.1).argmax()) if nc else 0
    p, r, f1 = p_curve[:, best], r_curve[:, best], f1_curve[:, best]
    tp_count = (r * n_targets).round()
    fp_count = (tp_count / (p + _EPS) - tp_count).round()
    return tp_count, fp_count, p, r, f1, ap, classes.astype(int)


def fitness(x: np.ndarray) -> np.ndarray | float:
    """0.1 mAP@.5 + 0.9 mAP@.5:.95 of [P, R, mAP50, mAP50-95, ...] rows (or one row)."""
    x = np.asarray(x, dtype=np.float64)
    w = np.array([0.0, 0.0, 0.1, 0.9])
    out = (x[..., :4] * w).sum(-1)
    return float(out) if out.ndim == 0 else out


def match_predictions(detections: torch.Tensor, labels: torch.Tensor,
                      iouv: torch.Tensor | np.ndarray) -> torch.Tensor:
    """True-positive flags of one image's detections at every IoU threshold.

    detections: (n, 6) [x1, y1, x2, y2, score, class], best score first (as NMS returns them);
    labels: (m, 5) [class, x1, y1, x2, y2] in the same pixel frame; iouv: (T,) thresholds.
    Returns a bool tensor (n, T) on the detections' device.

    Rule (upstream v6.2 val.py): at threshold t, consider the (label, detection) pairs of equal
    class with IoU >= t; every detection keeps only its highest-IoU label; a label claimed by
    several detections goes to the first of them (the highest score); the rest are false positives.
    Done for all thresholds at once with tensor ops, no Python loop over boxes.
    """
    iouv = torch.as_tensor(iouv, dtype=torch.float32, device=detections.device)
    n, m, t = detections.shape[0], labels.shape[0], iouv.shape[0]
    correct = torch.zeros((n, t), dtype=torch.bool, device=detections.device)
    if n == 0 or m == 0:
        return correct
    iou = box_iou(labels[:, 1:5].float(), detections[:, :4].float())  # (m, n)
    iou = iou * (labels[:, 0:1] == detections[:, 5]).float()  # other classes never match
    valid = iou[None] >= iouv[:, None, None]  # (T, m, n)
    masked = torch.where(valid, iou[None], torch.full_like(iou[None], -1.0))
    best_iou, best_label = masked.max(1)  # (T, n): each detection's best label per threshold
    has = best_iou >= 0
    # For every (threshold, label) the lowest detection index that chose it.
    slot = torch.arange(t, device=iou.device)[:, None] * m + best_label  # (T, n)
    det_idx = torch.arange(n, device=iou.device).expand(t, n)
    first = torch.full((t * m,), n, dtype=torch.long, device=iou.device)
    first.scatter_reduce_(0, slot[has], det_idx[has], reduce="amin")
    won = first.view(t, m)
    thr_idx, lab_idx = (won < n).nonzero(as_tuple=True)
    correct[won[thr_idx, lab_idx], thr_idx] = True
    return correct


class ConfusionMatrix:
    """Detection confusion matrix: rows = predicted class, columns = true class, index ``nc`` =
    background (a missed label counts in the background row, a spurious detection in the background
    column). Detections below ``conf`` are ignored; a label and a detection pair up when their IoU
    exceeds ``iou_thres`` regardless of class (that is what the matrix shows)."""

    def __init__(self, nc: int, conf: float = 0.25, iou_thres: float = 0.45):
        self.nc, self.conf, self.iou_thres = int(nc), float(conf), float(iou_thres)
        self.matrix = np.zeros((self.nc + 1, self.nc + 1))

    def process_batch(self, detections: torch.Tensor | None, labels: torch.Tensor) -> None:
        """One image: detections (n, 6) xyxy, score, class (or None); labels (m, 5) class, xyxy."""
        gt = labels[:, 0].long().cpu().numpy() if labels.numel() else np.zeros(0, dtype=int)
        if detections is None or detections.numel() == 0:
            np.add.at(self.matrix, (self.nc, gt), 1)
            return
        detections = detections[detections[:, 4] > self.conf]
        pred = detections[:, 5].long().cpu().numpy()
        gt_hit, det_hit = self._pairs(detections, labels)
        np.add.at(self.matrix, (pred[det_hit], gt[gt_hit]), 1)  # matched: predicted vs true class
        missed = np.ones(len(gt), dtype=bool)
        missed[gt_hit] = False
        np.add.at(self.matrix, (self.nc, gt[missed]), 1)
        spurious = np.ones(len(pred), dtype=bool)
        spurious[det_hit] = False
        np.add.at(self.matrix, (pred[spurious], self.nc), 1)

    def _pairs(self, detections: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """One-to-one (label, detection) pairs: each detection keeps its best label, each label its
        best detection among those."""
        if detections.shape[0] == 0 or labels.shape[0] == 0:
            return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
        iou = box_iou(labels[:, 1:5].float(), detections[:, :4].float()).cpu().numpy()  # (m, n)
        gi, di = np.nonzero(iou > self.iou_thres)
        if gi.size == 0:
            return gi, di
        v = iou[gi, di]
        order = np.argsort(-v, kind="stable")
        gi, di = gi[order], di[order]
        _, first = np.unique(di, return_index=True)  # best label of every detection
        first.sort()  # keep IoU order
        gi, di = gi[first], di[first]
        _, first = np.unique(gi, return_index=True)  # best detection of every label
        return gi[first], di[first]

    def tp_fp(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-class true and false positives (background excluded)."""
        tp = self.matrix.diagonal()[:-1]
        return tp, self.matrix.sum(1)[:-1] - tp

    def plot(self, save_dir: str | Path = ".", names: Sequence[str] = (), normalize: bool = True) -> Path:
        """Write ``confusion_matrix.png`` into ``save_dir``; returns its path."""
        return plot_confusion_matrix(self.matrix, Path(save_dir) / "confusion_matrix.png", names,
                                     normalize=normalize)
