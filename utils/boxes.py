"""Box geometry and non-maximum suppression.

Conventions: ``xyxy`` = corners (x1, y1, x2, y2), ``xywh`` = centre and size, a trailing ``n``
means normalised to the image size. Every converter accepts a torch tensor or a NumPy array of
shape (..., 4) and returns a new object of the same kind (inputs are never modified).
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
import torchvision

__all__ = ["xywh2xyxy", "xyxy2xywh", "xywhn2xyxy", "xyxy2xywhn", "box_area", "box_iou",
           "clip_boxes", "scale_boxes", "non_max_suppression"]

Boxes = Union[torch.Tensor, np.ndarray]

# Upstream's candidate cap before NMS: keeps the worst case bounded on pathological outputs.
MAX_NMS = 30000


def _float_copy(x: Boxes) -> Boxes:
    """A copy to write results into (integer arrays become float so halves are not truncated)."""
    if isinstance(x, torch.Tensor):
        return x.clone() if x.is_floating_point() else x.double()
    return np.array(x, dtype=np.float64 if x.dtype.kind in "iub" else x.dtype)


def xywh2xyxy(x: Boxes) -> Boxes:
    """(cx, cy, w, h) -> (x1, y1, x2, y2)."""
    y = _float_copy(x)
    y[..., 0] = x[..., 0] - x[..., 2] / 2
    y[..., 1] = x[..., 1] - x[..., 3] / 2
    y[..., 2] = x[..., 0] + x[..., 2] / 2
    y[..., 3] = x[..., 1] + x[..., 3] / 2
    return y


def xyxy2xywh(x: Boxes) -> Boxes:
    """(x1, y1, x2, y2) -> (cx, cy, w, h)."""
    y = _float_copy(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def xywhn2xyxy(x: Boxes, w: float = 640, h: float = 640, padw: float = 0, padh: float = 0) -> Boxes:
    """Normalised (cx, cy, w, h) -> pixel corners in a ``w`` x ``h`` image shifted by the padding."""
    y = _float_copy(x)
    y[..., 0] = w * (x[..., 0] - x[..., 2] / 2) + padw
    y[..., 1] = h * (x[..., 1] - x[..., 3] / 2) + padh
    y[..., 2] = w * (x[..., 0] + x[..., 2] / 2) + padw
    y[..., 3] = h * (x[..., 1] + x[..., 3] / 2) + padh
    return y


def xyxy2xywhn(x: Boxes, w: float = 640, h: float = 640, clip: bool = False, eps: float = 0.0) -> Boxes:
    """Pixel corners -> normalised (cx, cy, w, h); ``clip`` first clips to the image (minus ``eps``)."""
    if clip:
        x = clip_boxes(_float_copy(x), (h - eps, w - eps))
    y = _float_copy(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2 / w
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2 / h
    y[..., 2] = (x[..., 2] - x[..., 0]) / w
    y[..., 3] = (x[..., 3] - x[..., 1]) / h
    return y


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of xyxy boxes (..., 4) -> (...,); inverted boxes count as empty."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def box_iou(box1: torch.Tensor, box2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes: (N, 4) x (M, 4) -> (N, M).

    Two empty boxes give 0 rather than NaN (the union is floored at a tiny value), so thresholds
    never see NaN; for boxes of any real size the result is the plain intersection over union.
    """
    if isinstance(box1, np.ndarray):
        box1 = torch.from_numpy(box1)
    if isinstance(box2, np.ndarray):
        box2 = torch.from_numpy(box2)
    lt = torch.max(box1[:, None, :2], box2[None, :, :2])  # (N, M, 2)
    rb = torch.min(box1[:, None, 2:4], box2[None, :, 2:4])  # (N, M, 2)
    inter = (rb - lt).clamp(min=0).prod(2)  # (N, M)
    union = box_area(box1)[:, None] + box_area(box2)[None, :] - inter
    return inter / union.clamp(min=1e-12)


def clip_boxes(boxes: Boxes, shape: Sequence[int]) -> Boxes:
    """Clip xyxy boxes to an image of ``shape`` (h, w), in place; returns ``boxes``."""
    h, w = shape[0], shape[1]
    if isinstance(boxes, torch.Tensor):
        boxes[..., 0].clamp_(0, w)
        boxes[..., 1].clamp_(0, h)
        boxes[..., 2].clamp_(0, w)
        boxes[..., 3].clamp_(0, h)
    else:
        boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, w)
        boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, h)
    return boxes


def scale_boxes(img1_shape: Sequence[int], boxes: Boxes, img0_shape: Sequence[int],
                ratio_pad=None) -> Boxes:
    """Map xyxy boxes from a letterboxed image (``img1_shape`` h, w) back to the original image
    (``img0_shape``), in place, and clip them to it; returns ``boxes``.

    ``ratio_pad`` = ((gain_h, gain_w), (padw, padh)) as the dataloader reports it; without it the
    letterbox is recomputed assuming a centred, aspect-preserving resize. The gain is uniform
    (the letterbox keeps aspect), so the first gain is used, as upstream does.
    """
    if ratio_pad is None:
        gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
        padw = (img1_shape[1] - img0_shape[1] * gain) / 2
        padh = (img1_shape[0] - img0_shape[0] * gain) / 2
    else:
        gain = ratio_pad[0][0]
        padw, padh = ratio_pad[1][0], ratio_pad[1][1]
    boxes[..., [0, 2]] -= padw
    boxes[..., [1, 3]] -= padh
    boxes[..., :4] /= gain
    return clip_boxes(boxes, img0_shape)


# ----------------------------------------------------------------------------------------- NMS
def _candidates(x: torch.Tensor, conf_thres: float, multi_label: bool,
                classes: Sequence[int] | None) -> torch.Tensor:
    """Rows (n, 5+nc) of one image that passed the objectness test -> detections (m, 6).

    Score = objectness x class probability. Multi-label emits one row per (box, class) above the
    threshold; otherwise one row per box with its best class.
    """
    scores = x[:, 5:] * x[:, 4:5]  # (n, nc)
    box = xywh2xyxy(x[:, :4])
    if multi_label:
        i, j = (scores > conf_thres).nonzero(as_tuple=True)
        dets = torch.cat((box[i], scores[i, j, None], j[:, None].to(box.dtype)), 1)
    else:
        conf, j = scores.max(1, keepdim=True)
        dets = torch.cat((box, conf, j.to(box.dtype)), 1)[conf.view(-1) > conf_thres]
    if classes is not None:
        wanted = torch.as_tensor(list(classes), device=dets.device, dtype=dets.dtype)
        dets = dets[(dets[:, 5:6] == wanted).any(1)]
    return dets


def _greedy_nms_first(dets: torch.Tensor, iou_thres: float, agnostic: bool, max_det: int) -> torch.Tensor:
    """Indices (into ``dets``, best score first) of the first ``max_det`` boxes greedy NMS keeps.

    Greedy NMS decides a box from higher-scored boxes only, so NMS over the ``k`` best boxes keeps
    exactly the boxes the full run keeps among them. We therefore run it on a growing prefix and
    stop once ``max_det`` survive: same result as NMS over all candidates, at a fraction of the
    O(n x kept) cost when a weak model emits tens of thousands of low-score candidates.
    """
    n = dets.shape[0]
    order = dets[:, 4].argsort(descending=True, stable=True)
    boxes, scores = dets[order, :4].float(), dets[order, 4].float()
    groups = torch.zeros_like(scores, dtype=torch.int64) if agnostic else dets[order, 5].long()
    k = min(n, max(8 * max_det, 2048))
    while True:
        keep = torchvision.ops.batched_nms(boxes[:k], scores[:k], groups[:k], iou_thres)
        if keep.numel() >= max_det or k >= n:
            return order[keep[:max_det]]
        k = min(n, 4 * k)


def non_max_suppression(prediction: torch.Tensor, conf_thres: float = 0.25, iou_thres: float = 0.45,
                        classes: Sequence[int] | None = None, agnostic: bool = False,
                        multi_label: bool = False, max_det: int = 300,
                        max_nms: int = MAX_NMS) -> list[torch.Tensor]:
    """Per-image detections from the model's eval output.

    prediction: (B, N, 5+nc), xywh in input pixels, sigmoid objectness and class scores.
    Returns B tensors (n, 6) = [x1, y1, x2, y2, score, class], best score first, n <= ``max_det``.
    Classes never suppress each other unless ``agnostic``. There is no time limit: every image gets
    its full result however slow the machine. At most ``max_nms`` best candidates enter NMS.
    """
    if not 0 <= conf_thres <= 1:
        raise ValueError(f"conf_thres={conf_thres}: must be within [0, 1]")
    if not 0 <= iou_thres <= 1:
        raise ValueError(f"iou_thres={iou_thres}: must be within [0, 1]")
    if prediction.dim() != 3 or prediction.shape[2] < 6:
        raise ValueError(f"prediction of shape {tuple(prediction.shape)}: expected (B, N, 5+nc)")
    multi_label = multi_label and prediction.shape[2] > 6
    candidate = prediction[..., 4] > conf_thres  # (B, N) objectness pre-filter
    output = []
    for b in range(prediction.shape[0]):
        dets = _candidates(prediction[b][candidate[b]], conf_thres, multi_label, classes)
        if dets.shape[0] > max_nms:
            dets = dets[dets[:, 4].topk(max_nms).indices]
        if dets.shape[0] == 0 or max_det <= 0:
            output.append(dets[:0])
            continue
        output.append(dets[_greedy_nms_first(dets, iou_thres, agnostic, max_det)])
    return output
