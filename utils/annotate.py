"""Drawing detections on images with OpenCV primitives only (Hershey fonts need no font files)."""
from __future__ import annotations

import colorsys
from typing import Sequence

import cv2
import numpy as np

__all__ = ["class_colour", "label_text", "draw_box", "annotate", "summarise_counts"]

_GOLDEN = 0.618033988749895  # hue step that keeps consecutive classes far apart on the colour wheel


def class_colour(cls: int) -> tuple[int, int, int]:
    """A stable, saturated BGR colour for class ``cls``; neighbouring ids get distant hues."""
    hue = (0.05 + int(cls) * _GOLDEN) % 1.0
    value = 1.0 if int(cls) % 2 == 0 else 0.8  # alternate brightness so hue repeats stay distinct
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, value)
    return int(b * 255), int(g * 255), int(r * 255)


def label_text(cls: int, conf: float, names: Sequence[str], hide_labels: bool = False,
               hide_conf: bool = False) -> str | None:
    """'name 0.87', 'name', or None when labels are hidden; unknown ids print as numbers."""
    if hide_labels:
        return None
    name = names[cls] if 0 <= cls < len(names) else str(cls)
    return name if hide_conf else f"{name} {conf:.2f}"


def draw_box(img: np.ndarray, xyxy: Sequence[float], label: str | None = None,
             colour: tuple[int, int, int] = (56, 56, 255), line_thickness: int = 3) -> np.ndarray:
    """Draw one box (and its label on a filled tab) on ``img`` in place; returns ``img``.

    The tab sits above the box, or inside it when the box touches the top edge, so the text
    always stays within the image.
    """
    lw = max(int(line_thickness), 1)
    p1 = (int(round(xyxy[0])), int(round(xyxy[1])))
    p2 = (int(round(xyxy[2])), int(round(xyxy[3])))
    cv2.rectangle(img, p1, p2, colour, thickness=lw, lineType=cv2.LINE_AA)
    if label:
        font_scale = lw / 3
        font_thick = max(lw - 1, 1)
        (tw, th), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, font_thick)
        outside = p1[1] - th - baseline - 3 >= 0
        top = p1[1] - th - baseline - 3 if outside else p1[1]
        bottom = p1[1] if outside else p1[1] + th + baseline + 3
        cv2.rectangle(img, (p1[0], top), (p1[0] + tw + 2, bottom), colour, -1, cv2.LINE_AA)
        text_colour = (0, 0, 0) if sum(colour) > 450 else (255, 255, 255)  # readable on the tab
        cv2.putText(img, label, (p1[0] + 1, bottom - baseline - 1), cv2.FONT_HERSHEY_SIMPLEX,
                    font_scale, text_colour, thickness=font_thick, lineType=cv2.LINE_AA)
    return img


def annotate(img: np.ndarray, dets: np.ndarray, names: Sequence[str], line_thickness: int = 3,
             hide_labels: bool = False, hide_conf: bool = False) -> np.ndarray:
    """Draw detections ``dets`` (n, 6) = [x1, y1, x2, y2, conf, cls] in ``img`` pixels, in place.

    Boxes are drawn lowest score first so the strongest detection ends up on top.
    """
    dets = np.asarray(dets, dtype=np.float64).reshape(-1, 6)
    for x1, y1, x2, y2, conf, cls in dets[np.argsort(dets[:, 4], kind="stable")]:
        c = int(cls)
        draw_box(img, (x1, y1, x2, y2), label_text(c, float(conf), names, hide_labels, hide_conf),
                 class_colour(c), line_thickness)
    return img


def _plural(name: str) -> str:
    """Regular English plural of a class name (circle -> circles, cross -> crosses)."""
    return name + ("es" if name.endswith(("s", "x", "z", "ch", "sh")) else "s")


def summarise_counts(classes: Sequence[int] | np.ndarray, names: Sequence[str]) -> str:
    """'2 circles, 1 cross' in class-id order; '(no detections)' for none."""
    ids, counts = np.unique(np.asarray(classes, dtype=np.int64), return_counts=True)
    if ids.size == 0:
        return "(no detections)"
    parts = []
    for c, n in zip(ids.tolist(), counts.tolist()):
        name = names[c] if 0 <= c < len(names) else str(c)
        parts.append(f"{n} {_plural(name) if n > 1 else name}")
    return ", ".join(parts)
