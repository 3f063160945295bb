"""YOLOv5 v6 detection loss: anchor-ratio target assignment, CIoU box loss, IoU objectness, BCE classes.

Conventions (shared with the model's ``[yolo]`` decode):

- ``preds`` are the raw per-level maps ``(B, na, H, W, 5+nc)`` that the model returns in train mode;
- ``targets`` is ``(N, 6)``: ``[image index, class, x, y, w, h]`` with xywh normalised to the input image;
- a prediction decodes in grid units as ``xy = 2*sigmoid - 0.5`` (relative to its cell corner) and
  ``wh = (2*sigmoid)**2 * anchor``, with anchors in grid units (``anchors_px / stride``).

The loss returns ``(lbox + lobj + lcls) * batch_size``: the mean-per-image scale that the optimiser
settings (learning rate, nominal batch 64) were tuned for.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["scale_loss_gains", "bbox_iou", "level_balance", "smooth_bce_targets", "ComputeLoss"]

# Objectness weight per level, finest first: fine levels see many more negatives, so they weigh more.
_BALANCE_P5 = (4.0, 1.0, 0.4)
_BALANCE_OTHER = (4.0, 1.0, 0.25, 0.06, 0.02)
_NEIGHBOUR_MARGIN = 0.5  # a target within this distance of a cell border also trains the neighbour cell


def scale_loss_gains(hyp: dict, nl: int, nc: int, img_size: int) -> dict:
    """Copy of ``hyp`` with the box/cls/obj gains scaled to the model and input size.

    The hyperparameter files are tuned for 3 levels, 80 classes and 640 px; the number of loss terms
    grows with levels, classes and grid cells, so the gains are rescaled to keep the balance.
    """
    if nl < 1 or nc < 1 or img_size < 1:
        raise ValueError(f"scale_loss_gains: nl={nl}, nc={nc}, img_size={img_size} must be positive")
    out = dict(hyp)
    levels = 3.0 / nl
    out["box"] = hyp["box"] * levels
    out["cls"] = hyp["cls"] * nc / 80.0 * levels
    out["obj"] = hyp["obj"] * (img_size / 640.0) ** 2 * levels
    return out


def level_balance(nl: int) -> list[float]:
    """Objectness weight of each level (finest first) for a model with ``nl`` levels."""
    table = _BALANCE_P5 if nl == 3 else _BALANCE_OTHER
    if nl > len(table):
        raise ValueError(f"no objectness balance defined for {nl} detection levels (at most {len(table)})")
    return list(table[:nl])


def smooth_bce_targets(eps: float = 0.0) -> tuple[float, float]:
    """(positive, negative) BCE class targets under label smoothing ``eps``."""
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"label smoothing {eps} must lie in [0, 1)")
    return 1.0 - 0.5 * eps, 0.5 * eps


def bbox_iou(box1: torch.Tensor, box2: torch.Tensor, xywh: bool = True, CIoU: bool = False,
             eps: float = 1e-7) -> torch.Tensor:
    """Elementwise IoU (or Complete IoU) of two broadcastable box tensors ``(..., 4)`` -> ``(...)``.

    CIoU = IoU - centre distance^2 / enclosing diagonal^2 - alpha * v, where v penalises the
    aspect-ratio difference; alpha is treated as a constant (no gradient), as in the CIoU paper.
    """
    if xywh:
        (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.unbind(-1), box2.unbind(-1)
        b1x1, b1x2, b1y1, b1y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
        b2x1, b2x2, b2y1, b2y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    else:
        b1x1, b1y1, b1x2, b1y2 = box1.unbind(-1)
        b2x1, b2y1, b2x2, b2y2 = box2.unbind(-1)
    w1, h1 = b1x2 - b1x1, b1y2 - b1y1 + eps  # eps keeps atan(w/h) finite for degenerate boxes
    w2, h2 = b2x2 - b2x1, b2y2 - b2y1 + eps

    inter = ((torch.minimum(b1x2, b2x2) - torch.maximum(b1x1, b2x1)).clamp(0)
             * (torch.minimum(b1y2, b2y2) - torch.maximum(b1y1, b2y1)).clamp(0))
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if not CIoU:
        return iou
    cw = torch.maximum(b1x2, b2x2) - torch.minimum(b1x1, b2x1)  # enclosing box
    ch = torch.maximum(b1y2, b2y2) - torch.minimum(b1y1, b2y1)
    diag2 = cw ** 2 + ch ** 2 + eps
    centre2 = ((b2x1 + b2x2 - b1x1 - b1x2) ** 2 + (b2y1 + b2y2 - b1y1 - b1y2) ** 2) / 4
    v = (4 / math.pi ** 2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (centre2 / diag2 + v * alpha)


def _bce(logits: torch.Tensor, target: torch.Tensor, pos_weight: float, gamma: float,
         alpha: float = 0.25) -> torch.Tensor:
    """Mean BCE-with-logits; with ``gamma > 0`` the focal variant: alpha-balanced, times (1 - p_t)^gamma."""
    pw = torch.tensor(pos_weight, device=logits.device, dtype=logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw, reduction="none")
    if gamma > 0:
        p = logits.sigmoid()
        p_t = target * p + (1 - target) * (1 - p)
        alpha_t = target * alpha + (1 - target) * (1 - alpha)
        loss = loss * alpha_t * (1.0 - p_t) ** gamma
    return loss.mean()


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel/DataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") and hasattr(model.module, "yolo_layers") else model


class ComputeLoss:
    """YOLOv5 v6 training loss for a model with ``yolo_layers`` (each with pixel ``anchors`` and ``stride``).

    ``hyp`` needs ``box, obj, cls`` (already scaled with :func:`scale_loss_gains`), ``cls_pw``,
    ``obj_pw``, ``anchor_t`` and optionally ``fl_gamma`` (focal loss when > 0). Anchors are read from
    the model at every call, so anchors evolved after construction are honoured.
    """

    def __init__(self, model: nn.Module, hyp: dict, label_smoothing: float = 0.0):
        self.model = _unwrap(model)
        missing = [k for k in ("box", "obj", "cls", "cls_pw", "obj_pw", "anchor_t") if k not in hyp]
        if missing:
            raise KeyError(f"loss hyperparameters missing: {', '.join(missing)}")
        self.hyp = dict(hyp)
        self.nc = int(self.model.nc)
        self.nl = len(self.model.yolo_layers)
        self.balance = level_balance(self.nl)
        self.cp, self.cn = smooth_bce_targets(label_smoothing)
        self.gamma = float(hyp.get("fl_gamma", 0.0) or 0.0)
        self.anchor_t = float(hyp["anchor_t"])
        self.gr = 1.0  # objectness target = (1 - gr) + gr * IoU

    # ------------------------------------------------------------------ helpers
    def _anchors(self, device: torch.device) -> list[torch.Tensor]:
        """Per-level anchors in grid units, read now from the model (autoanchor may have changed them)."""
        return [(m.anchors.detach() / m.stride).to(device=device, dtype=torch.float32)
                for m in self.model.yolo_layers]

    def _check(self, preds: Sequence[torch.Tensor], targets: torch.Tensor) -> None:
        if len(preds) != self.nl:
            raise ValueError(f"loss: got {len(preds)} prediction levels for a model with {self.nl}")
        for i, (p, m) in enumerate(zip(preds, self.model.yolo_layers)):
            if p.dim() != 5 or p.shape[1] != m.na or p.shape[-1] != 5 + self.nc:
                raise ValueError(f"loss: level {i} prediction shape {tuple(p.shape)} is not "
                                 f"(B, {m.na}, H, W, {5 + self.nc})")
        if targets.dim() != 2 or targets.shape[1] != 6:
            raise ValueError(f"loss: targets shape {tuple(targets.shape)} is not (N, 6) "
                             "[image, class, x, y, w, h]")

    # ------------------------------------------------------------------ assignment
    @torch.no_grad()
    def build_targets(self, preds: Sequence[torch.Tensor], targets: torch.Tensor
                      ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple], list[torch.Tensor]]:
        """Assign targets to (image, anchor, cell) positions on every level.

        A target goes to every anchor whose width and height ratios to it stay below ``anchor_t``, in
        its own cell plus the neighbour cell across each of the two nearest borders (when within 0.5
        of it and not on the outer row/column): up to 3 cells per target-anchor pair.

        Returns per level: ``tcls`` (n,), ``tbox`` (n, 4) = (target xy - cell corner, target wh) in
        grid units, ``indices`` = (b, a, gj, gi) each (n,), and the matched anchors (n, 2) in grid units.
        """
        self._check(preds, targets)
        device = preds[0].device
        targets = targets.to(device=device, dtype=torch.float32)
        anchors = self._anchors(device)
        g = _NEIGHBOUR_MARGIN
        # centre, left, top, right, bottom: the cell chosen is floor(gxy - offset)
        offsets = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], device=device,
                               dtype=torch.float32) * g
        tcls, tbox, indices, anch = [], [], [], []
        for p, anchors_l in zip(preds, anchors):
            h, w = p.shape[2], p.shape[3]
            gain = targets.new_tensor([1, 1, w, h, w, h])
            t = targets * gain  # (nt, 6) xywh in grid units
            ratio = t[None, :, 4:6] / anchors_l[:, None]  # (na, nt, 2)
            match = torch.maximum(ratio, 1 / ratio).amax(2) < self.anchor_t  # (na, nt)
            a, ti = match.nonzero(as_tuple=True)  # anchor-major, like the (na, nt) grid
            t = t[ti]  # (m, 6)
            gxy = t[:, 2:4]
            gxy_inv = gain[[2, 3]] - gxy  # distance to the right/bottom border
            near_low = (gxy % 1 < g) & (gxy > 1)  # left / top neighbour exists and is near
            near_high = (gxy_inv % 1 < g) & (gxy_inv > 1)  # right / bottom neighbour
            use = torch.stack((torch.ones_like(near_low[:, 0]), near_low[:, 0], near_low[:, 1],
                               near_high[:, 0], near_high[:, 1]))  # (5, m)
            o, k = use.nonzero(as_tuple=True)  # offset-major, like upstream's ordering
            t, a, gxy = t[k], a[k], gxy[k]
            gij = (gxy - offsets[o]).long()
            gi = gij[:, 0].clamp_(0, w - 1)
            gj = gij[:, 1].clamp_(0, h - 1)
            indices.append((t[:, 0].long(), a, gj, gi))
            tbox.append(torch.cat((gxy - torch.stack((gi, gj), 1), t[:, 4:6]), 1))  # (n, 4)
            anch.append(anchors_l[a])
            tcls.append(t[:, 1].long())
        return tcls, tbox, indices, anch

    # ------------------------------------------------------------------ loss
    def __call__(self, preds: Sequence[torch.Tensor], targets: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss * batch size as shape (1,), detached [box, obj, cls])."""
        tcls, tbox, indices, anchors = self.build_targets(preds, targets)
        device = preds[0].device
        lbox = torch.zeros(1, device=device)
        lobj = torch.zeros(1, device=device)
        lcls = torch.zeros(1, device=device)
        pw_cls, pw_obj = float(self.hyp["cls_pw"]), float(self.hyp["obj_pw"])
        for i, p in enumerate(preds):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(p.shape[:4], device=device)  # (B, na, H, W)
            n = b.shape[0]
            if n:
                ps = p[b, a, gj, gi].float()  # (n, 5+nc)
                pxy = ps[:, :2].sigmoid() * 2 - 0.5
                pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * anchors[i]
                iou = bbox_iou(torch.cat((pxy, pwh), 1), tbox[i], CIoU=True)  # (n,)
                lbox = lbox + (1.0 - iou).mean()
                tobj[b, a, gj, gi] = (1.0 - self.gr) + self.gr * iou.detach().clamp(0)
                if self.nc > 1:
                    t = torch.full_like(ps[:, 5:], self.cn)  # (n, nc)
                    t[torch.arange(n, device=device), tcls[i]] = self.cp
                    lcls = lcls + _bce(ps[:, 5:], t, pw_cls, self.gamma)
            lobj = lobj + _bce(p[..., 4].float(), tobj, pw_obj, self.gamma) * self.balance[i]
        lbox = lbox * self.hyp["box"]
        lobj = lobj * self.hyp["obj"]
        lcls = lcls * self.hyp["cls"]
        bs = preds[0].shape[0]
        return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()
