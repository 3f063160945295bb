"""Image and box augmentation for detection training: letterbox, mosaic, random affine, HSV, mixup.

Every function takes its randomness from an explicit ``numpy.random.Generator`` so that a data loader can
derive one generator per (seed, epoch, image) and reproduce a run exactly, whichever worker loads the image.
Images are HWC uint8 BGR arrays as cv2 reads them; boxes are float arrays with rows (cls, x1, y1, x2, y2) in
pixels unless a name says otherwise.
"""
from __future__ import annotations


import cv2
import numpy as np

__all__ = ["letterbox", "augment_hsv", "random_perspective", "box_candidates", "mosaic4", "mixup",
           "xywhn_to_xyxy", "xyxy_to_xywhn", "PAD_COLOR"]

PAD_COLOR = (114, 114, 114)  # the grey upstream YOLOv5 pads with; trained weights expect it


def xywhn_to_xyxy(xywhn: np.ndarray, w: float, h: float, padw: float = 0.0, padh: float = 0.0) -> np.ndarray:
    """Normalised (x, y, w, h) rows -> pixel (x1, y1, x2, y2) in an image of size (w, h) shifted by the pad."""
    out = np.empty_like(xywhn)
    out[:, 0] = w * (xywhn[:, 0] - xywhn[:, 2] / 2) + padw
    out[:, 1] = h * (xywhn[:, 1] - xywhn[:, 3] / 2) + padh
    out[:, 2] = w * (xywhn[:, 0] + xywhn[:, 2] / 2) + padw
    out[:, 3] = h * (xywhn[:, 1] + xywhn[:, 3] / 2) + padh
    return out


def xyxy_to_xywhn(xyxy: np.ndarray, w: float, h: float, clip: bool = True, eps: float = 1e-3) -> np.ndarray:
    """Pixel (x1, y1, x2, y2) rows -> normalised (x, y, w, h); ``clip`` keeps boxes inside the image first.

    The clip stops ``eps`` short of the far border, so a box touching it still has its centre cell inside
    the grid after normalisation.
    """
    b = xyxy.astype(np.float32, copy=True)
    if clip:
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, w - eps)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, h - eps)
    out = np.empty_like(b)
    out[:, 0] = (b[:, 0] + b[:, 2]) / 2 / w
    out[:, 1] = (b[:, 1] + b[:, 3]) / 2 / h
    out[:, 2] = (b[:, 2] - b[:, 0]) / w
    out[:, 3] = (b[:, 3] - b[:, 1]) / h
    return out


def letterbox(img: np.ndarray, new_shape: int | tuple[int, int] = 640, color: tuple[int, int, int] = PAD_COLOR,
              auto: bool = True, scaleup: bool = True, stride: int = 32
              ) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Resize keeping the aspect ratio, then pad to ``new_shape`` (h, w) with ``color``.

    auto: pad only up to the next multiple of ``stride`` (minimal rectangle) instead of the full shape.
    scaleup: allow enlarging; validation keeps it False so small images are not blurred upwards.
    Returns the image, the scale (r_w, r_h) and the padding (dw, dh) added on the left/top, which may be
    a half pixel: the total padding is split as evenly as possible, the extra pixel going right/bottom.
    """
    h0, w0 = img.shape[:2]
    if isinstance(new_shape, (int, np.integer)):
        new_shape = (int(new_shape), int(new_shape))
    new_h, new_w = int(new_shape[0]), int(new_shape[1])
    r = min(new_h / h0, new_w / w0)
    if not scaleup:
        r = min(r, 1.0)
    unpad_w, unpad_h = int(round(w0 * r)), int(round(h0 * r))
    dw, dh = new_w - unpad_w, new_h - unpad_h
    if auto:
        dw, dh = dw % stride, dh % stride
    dw, dh = dw / 2, dh / 2
    if (w0, h0) != (unpad_w, unpad_h):
        img = cv2.resize(img, (unpad_w, unpad_h), interpolation=cv2.INTER_LINEAR)
    # round(d -/+ 0.1) puts an odd pixel of padding on the bottom/right side
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    if top or bottom or left or right:
        img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return img, (r, r), (dw, dh)


def augment_hsv(img: np.ndarray, hgain: float, sgain: float, vgain: float, rng: np.random.Generator) -> None:
    """Random hue/saturation/value gains applied in place through lookup tables (BGR uint8 image)."""
    if not (hgain or sgain or vgain):
        return
    r = rng.uniform(-1.0, 1.0, 3) * (hgain, sgain, vgain) + 1.0  # multiplicative gains
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float64)
    lut_hue = ((x * r[0]) % 180).astype(np.uint8)  # OpenCV hue lives in [0, 180)
    lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR, dst=img)


def box_candidates(before: np.ndarray, after: np.ndarray, wh_thr: float = 2.0, ar_thr: float = 100.0,
                   area_thr: float = 0.1, eps: float = 1e-16) -> np.ndarray:
    """Which transformed boxes to keep: (4, n) xyxy arrays before (scaled) and after the transform.

    A box survives if it is still at least ``wh_thr`` pixels wide and high, kept more than ``area_thr`` of
    its area (the rest was cut by the border) and did not become a sliver (aspect ratio < ``ar_thr``).
    """
    w1, h1 = before[2] - before[0], before[3] - before[1]
    w2, h2 = after[2] - after[0], after[3] - after[1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def _affine_matrix(in_w: int, in_h: int, out_w: int, out_h: int, degrees: float, translate: float,
                   scale: float, shear: float, perspective: float, rng: np.random.Generator
                   ) -> tuple[np.ndarray, float]:
    """3x3 matrix (centre the input, perspective, rotation+scale, shear, translate into the output) and its scale."""
    centre = np.eye(3)
    centre[0, 2], centre[1, 2] = -in_w / 2, -in_h / 2
    persp = np.eye(3)
    persp[2, 0], persp[2, 1] = rng.uniform(-perspective, perspective, 2)
    rot = np.eye(3)
    angle, s = rng.uniform(-degrees, degrees), rng.uniform(1 - scale, 1 + scale)
    rot[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=angle, scale=s)
    sh = np.eye(3)
    sh[0, 1], sh[1, 0] = np.tan(np.radians(rng.uniform(-shear, shear, 2)))
    trans = np.eye(3)
    trans[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_w
    trans[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_h
    return trans @ sh @ rot @ persp @ centre, s


def random_perspective(img: np.ndarray, targets: np.ndarray, degrees: float = 0.0, translate: float = 0.1,
                       scale: float = 0.5, shear: float = 0.0, perspective: float = 0.0,
                       border: tuple[int, int] = (0, 0), rng: np.random.Generator | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Random affine (or perspective) warp of an image and its boxes.

    targets: (n, 5) rows (cls, x1, y1, x2, y2) in pixels. border (bh, bw) is added to each side of the
    output: the mosaic passes (-s/2, -s/2) to crop its 2s canvas back to s. Boxes are the axis-aligned
    hull of their warped corners, clipped to the output, and dropped when mostly cut off or degenerate.
    """
    rng = np.random.default_rng() if rng is None else rng
    out_h, out_w = img.shape[0] + 2 * border[0], img.shape[1] + 2 * border[1]
    M, s = _affine_matrix(img.shape[1], img.shape[0], out_w, out_h, degrees, translate, scale, shear,
                          perspective, rng)
    if border[0] or border[1] or (M != np.eye(3)).any():
        if perspective:
            img = cv2.warpPerspective(img, M, dsize=(out_w, out_h), borderValue=PAD_COLOR)
        else:
            img = cv2.warpAffine(img, M[:2], dsize=(out_w, out_h), borderValue=PAD_COLOR)
    n = len(targets)
    if not n:
        return img, targets.reshape(0, 5).astype(np.float32)
    corners = np.ones((n * 4, 3))
    corners[:, :2] = targets[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(n * 4, 2)  # x1y1, x2y2, x1y2, x2y1
    corners = corners @ M.T
    xy = corners[:, :2] / corners[:, 2:3] if perspective else corners[:, :2]
    xy = xy.reshape(n, 8)
    xs, ys = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
    boxes = np.stack((xs.min(1), ys.min(1), xs.max(1), ys.max(1)), 1)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, out_w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, out_h)
    keep = box_candidates(targets[:, 1:5].T * s, boxes.T, area_thr=0.10)
    out = np.concatenate((targets[keep, :1], boxes[keep]), 1).astype(np.float32)
    return img, out


def mosaic4(images: list[np.ndarray], labels: list[np.ndarray], s: int, centre: tuple[int, int],
            color: tuple[int, int, int] = PAD_COLOR) -> tuple[np.ndarray, np.ndarray]:
    """Tile four images around ``centre`` (xc, yc) on a 2s x 2s canvas.

    images[k] (each at most s on its long side) goes top-left, top-right, bottom-left, bottom-right of the
    centre; labels[k] are its normalised (cls, x, y, w, h) rows. Returns the canvas and (n, 5) pixel
    (cls, x1, y1, x2, y2) rows clipped to the canvas.
    """
    xc, yc = centre
    ch = images[0].shape[2]
    if len(set(color)) == 1:  # grey: a plain memset, much faster than broadcasting a colour tuple
        canvas = np.full((2 * s, 2 * s, ch), color[0], dtype=np.uint8)
    else:
        canvas = np.empty((2 * s, 2 * s, ch), dtype=np.uint8)
        for k in range(ch):
            canvas[..., k] = color[k]
    out = []
    for k, (img, lab) in enumerate(zip(images, labels)):
        h, w = img.shape[:2]
        # destination rectangle on the canvas, clipped to it; the source is the matching image corner
        x1a = max(xc - w, 0) if k in (0, 2) else xc
        x2a = xc if k in (0, 2) else min(xc + w, 2 * s)
        y1a = max(yc - h, 0) if k in (0, 1) else yc
        y2a = yc if k in (0, 1) else min(yc + h, 2 * s)
        x1b = w - (x2a - x1a) if k in (0, 2) else 0
        y1b = h - (y2a - y1a) if k in (0, 1) else 0
        canvas[y1a:y2a, x1a:x2a] = img[y1b:y1b + (y2a - y1a), x1b:x1b + (x2a - x1a)]
        if len(lab):
            boxes = xywhn_to_xyxy(lab[:, 1:5], w, h, x1a - x1b, y1a - y1b)
            out.append(np.concatenate((lab[:, :1], boxes), 1))
    targets = np.concatenate(out, 0).astype(np.float32) if out else np.zeros((0, 5), np.float32)
    np.clip(targets[:, 1:], 0, 2 * s, out=targets[:, 1:])
    return canvas, targets


def mixup(img1: np.ndarray, labels1: np.ndarray, img2: np.ndarray, labels2: np.ndarray,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Blend two same-size images with a Beta(32, 32) weight and keep the boxes of both."""
    r = rng.beta(32.0, 32.0)
    img = cv2.addWeighted(img1, r, img2, 1.0 - r, 0.0)
    return img, np.concatenate((labels1, labels2), 0)
