"""Width-scaled copies of an upstream model yaml: the "train a smaller model" alternative to pruning.

``width_yaml(cfg, w)`` is the yaml text of ``cfg`` with ``width_multiple`` set to ``w``;
``width_for_flops(flops_of, target)`` bisects the width whose FLOPs are closest to a target;
``matched_width(cfg, target_flops, count, nc)`` combines both with a FLOPs counter (``count(model)``,
e.g. ``lambda m: utils.torch_utils.count_flops(m, img)``), so a model trained from scratch can be
given the FLOPs of a pruned one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import yaml

import torch.nn as nn

from .build import build_model
from .cfg import CfgError
from .translate import yaml_to_cfg

__all__ = ["matched_width", "model_at_width", "read_model_yaml", "width_for_flops", "width_yaml"]

YAML_SUFFIXES = (".yaml", ".yml")


def read_model_yaml(cfg: str | Path) -> dict:
    """The upstream model yaml ``cfg`` as a dict (width scaling needs ``width_multiple``)."""
    path = Path(cfg)
    if path.suffix.lower() not in YAML_SUFFIXES:
        raise CfgError(f"{path}: width scaling needs an upstream model .yaml (with width_multiple), "
                       f"not {path.suffix or 'a file without suffix'}; give e.g. models/yolov5n.yaml")
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict) or "width_multiple" not in doc:
        raise CfgError(f"{path}: no width_multiple in this model yaml; give an upstream YOLOv5 model yaml")
    return doc


def width_yaml(cfg: str | Path, width: float, note: str = "") -> str:
    """The yaml text of ``cfg`` with its width_multiple replaced (a comment says where it came from)."""
    doc = read_model_yaml(cfg)
    doc["width_multiple"] = round(float(width), 4)
    head = f"# {Path(cfg).name} with width_multiple {doc['width_multiple']}" + (f" ({note})" if note else "")
    return head + "\n" + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)


def width_for_flops(flops_of: Callable[[float], float], target: float, lo: float = 0.05, hi: float = 1.0,
                    steps: int = 14) -> float:
    """The width multiple whose FLOPs (``flops_of(w)``, non-decreasing in w) are closest to
    ``target`` (channels round to multiples of 8, so FLOPs move in steps; ties go to the
    narrower width)."""
    seen: dict[float, float] = {}
    for _ in range(steps):
        mid = (lo + hi) / 2
        seen[mid] = flops_of(mid)
        lo, hi = (mid, hi) if seen[mid] < target else (lo, mid)
    return min(seen, key=lambda w: (abs(seen[w] - target), w))


def model_at_width(cfg: str | Path, width: float, nc: int | None = None) -> nn.Module:
    """``cfg`` built with width_multiple ``width`` (freshly initialised, eval mode)."""
    doc = read_model_yaml(cfg)
    doc["width_multiple"] = float(width)
    return build_model(yaml_to_cfg(doc, nc=nc)).eval()


def matched_width(cfg: str | Path, target_flops: float, count: Callable[[nn.Module], float],
                  nc: int | None = None, hi: float | None = None) -> tuple[float, float]:
    """(width multiple, its FLOPs) of the width-scaled ``cfg`` whose FLOPs (``count(model)``) are
    closest to ``target_flops``; searched between 0.05 and ``hi`` (default: twice the yaml's own
    width)."""
    hi = 2 * float(read_model_yaml(cfg)["width_multiple"]) if hi is None else hi
    cache: dict[float, float] = {}

    def flops_of(w: float) -> float:  # at the width width_yaml writes (4 decimals)
        w = round(w, 4)
        if w not in cache:
            cache[w] = count(model_at_width(cfg, w, nc))
        return cache[w]

    width = round(width_for_flops(flops_of, target_flops, lo=0.05, hi=hi), 4)
    return width, cache[width]
