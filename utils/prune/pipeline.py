"""The pruning pipeline the four prune scripts share: analyse, mask, absorb, cut, verify.

:func:`prune` is a transformation of a model's (cfg, weights) into a compact (cfg, weights) plus
everything a report needs; it never modifies the model it is given. :func:`search_ratio` finds the
smallest ratio whose compact model meets a FLOPs or parameter target, from the cfg arithmetic alone
(no model is built during the search).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping

import torch

from models.cfg import ModelCfg
from models.darknet import Darknet

from .absorb import absorb, bn_key, mask_gammas
from .graph import PruneGraph, analyse
from .masks import compute_masks, ranking_layers, safe_ratio, validate_ratio, weighted_gammas
from .strategy import Strategy, get_strategy
from .surgery import (PruneError, compact_cfg, compact_state, input_keep, model_from_state, verify,
                      verify_size)

__all__ = ["PrunePlan", "PruneResult", "plan", "prune", "estimate_cost", "search_ratio"]


@dataclass
class PrunePlan:
    """Masks and the facts they were derived from (no weights changed yet)."""

    strategy: Strategy
    ratio: float
    layer_keep: float
    round_to: int
    graph: PruneGraph
    prunable: list[int]
    groups: list[tuple[int, ...]]
    masks: dict[int, torch.Tensor]
    safe_ratio: float
    include_upsample: bool = False
    include_sppf: bool = False
    weights: dict[int, float] | None = None  # cost-aware ranking: |gamma| / weight (None: plain)


@dataclass
class PruneResult:
    """Output of :func:`prune`. ``model`` is the verified compact model (eval mode, its own tensors);
    ``absorbed_state`` shares unchanged tensors with the source model."""

    plan: PrunePlan
    cfg: ModelCfg
    state: dict[str, torch.Tensor]
    model: Darknet
    absorbed_state: dict[str, torch.Tensor]
    verification: dict
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def masks(self) -> dict[int, torch.Tensor]:
        return self.plan.masks

    def masked_state(self, source: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``source`` with pruned gammas zeroed (the "masked" model evaluated before cutting)."""
        return mask_gammas(source, self.plan.masks)


def plan(graph: PruneGraph, state: Mapping[str, torch.Tensor], strategy: "int | str | Strategy",
         ratio: float, layer_keep: float = 0.0, round_to: int | None = None,
         include_upsample: bool = False, include_sppf: bool = False,
         weights: Mapping[int, float] | None = None) -> PrunePlan:
    """Masks for ``strategy`` at ``ratio`` from the BN gammas in ``state``.

    ``weights`` (layer -> positive factor, e.g. :func:`~utils.prune.cost.latency_weights`): rank
    ``|gamma| / weight`` instead of ``|gamma|``, so that at equal gamma the channels of heavily
    weighted layers go first; the ratio then counts channels of that ranking.
    """
    strategy = get_strategy(strategy)
    ratio = validate_ratio(ratio, strategy.ratio_flag)
    if round_to is not None and int(round_to) < 1:
        raise ValueError(f"--round-to must be a positive channel multiple, got {round_to}")
    prunable = graph.prunable(strategy, include_upsample, include_sppf)
    if not prunable:
        raise PruneError("the model has no prunable layers (are its BatchNorms fused?)")
    groups = graph.prunable_groups(strategy, include_upsample, include_sppf)
    gammas = {i: state[bn_key(i, "weight")] for i in prunable}
    if weights is not None:
        gammas = weighted_gammas(gammas, weights)
    round_to = strategy.round_to if round_to is None else int(round_to)
    masks = compute_masks(gammas, prunable, groups, strategy, ratio, layer_keep, round_to)
    safe = safe_ratio(gammas, ranking_layers(prunable, groups, strategy))
    kept_weights = None if weights is None else {i: float(weights[i]) for i in prunable}
    return PrunePlan(strategy, ratio, float(layer_keep), round_to, graph, prunable, groups, masks, safe,
                     include_upsample, include_sppf, kept_weights)


def prune(model: Darknet, strategy: "int | str | Strategy", ratio: float, layer_keep: float = 0.0,
          round_to: int | None = None, include_upsample: bool = False, include_sppf: bool = False,
          verify_img_size: int = 256, tol: float = 1e-4,
          weights: Mapping[int, float] | None = None) -> PruneResult:
    """Prune ``model`` (left unchanged) and prove the compact model equals the absorbed one.

    Raises :class:`~utils.prune.surgery.VerificationError` (nothing is returned) on a mismatch.
    """
    t0 = time.perf_counter()
    cfg = model.to_cfg()  # current widths and (trained) anchors
    graph = analyse(cfg)
    state = model.state_dict()
    t1 = time.perf_counter()
    p = plan(graph, state, strategy, ratio, layer_keep, round_to, include_upsample, include_sppf, weights)
    t2 = time.perf_counter()
    absorbed = absorb(graph, state, p.masks)
    t3 = time.perf_counter()
    new_cfg = compact_cfg(cfg, p.masks)
    new_state = compact_state(graph, absorbed, p.masks)
    anchors = [m.anchors for m in model.yolo_layers]
    compact = model_from_state(new_cfg, new_state, model.names, anchors)
    t4 = time.perf_counter()
    report = verify(model, compact, verify_size(cfg, verify_img_size), tol, reference_state=absorbed)
    t5 = time.perf_counter()
    timings = {"analyse": t1 - t0, "masks": t2 - t1, "absorb": t3 - t2, "surgery": t4 - t3,
               "verify": t5 - t4, "total": t5 - t0}
    return PruneResult(p, new_cfg, new_state, compact, absorbed, report, timings)


def estimate_cost(graph: PruneGraph, masks: Mapping[int, torch.Tensor], img_size: int) -> tuple[int, int]:
    """(parameters, FLOPs) of the compact model from cfg arithmetic.

    Parameters count conv weights, BN weight+bias (or conv bias), as ``count_params`` does; FLOPs
    count 2 per multiply-add of every conv at ``img_size``, as ``count_flops`` does.
    """
    params = flops = 0
    cfg = graph.cfg
    for i in graph.convs:
        layer = cfg.layers[i]
        j = layer.inputs[0]
        cin = cfg.in_channels if j < 0 else cfg.channels[j]
        keep = input_keep(graph, i, masks)
        cin = cin if keep is None else int(keep.sum())
        cout = int(masks[i].sum()) if i in masks else cfg.channels[i]
        k, g = layer.get("size"), layer.get("groups")
        weights = cout * (cin // g) * k * k
        params += weights + 2 * cout if layer.bn else weights + cout
        side = img_size / cfg.scales[i]
        flops += 2 * weights * int(round(side)) ** 2
    return params, flops


def search_ratio(graph: PruneGraph, state: Mapping[str, torch.Tensor], strategy: "int | str | Strategy",
                 target: float, metric: str = "flops", img_size: int = 640, layer_keep: float = 0.0,
                 round_to: int | None = None, include_upsample: bool = False,
                 include_sppf: bool = False, resolution: int = 10_000,
                 weights: Mapping[int, float] | None = None) -> tuple[float, float]:
    """Smallest ratio (on a grid of 1/resolution) whose compact model keeps at most ``target`` of
    the original FLOPs or parameters; returns (ratio, achieved fraction).

    Bisection is valid because kept counts never grow with the ratio (with ``weights`` too: the
    ranking is fixed, the ratio only moves the threshold along it).
    """
    if metric not in ("flops", "params"):
        raise ValueError(f"metric must be 'flops' or 'params', got {metric!r}")
    if not 0.0 < target <= 1.0:
        raise ValueError(f"--target-{metric} must be a fraction of the original in (0, 1], got {target}")
    pick = 1 if metric == "flops" else 0
    full = estimate_cost(graph, {}, img_size)[pick]

    def fraction(k: int) -> float:
        p = plan(graph, state, strategy, k / resolution, layer_keep, round_to, include_upsample, include_sppf,
                 weights)
        return estimate_cost(graph, p.masks, img_size)[pick] / full

    lo, hi = 0, resolution - 1
    if fraction(lo) <= target:
        return 0.0, fraction(lo)
    best = fraction(hi)
    if best > target:
        raise PruneError(f"--target-{metric} {target}: even ratio {hi / resolution} keeps "
                         f"{best:.3f} of the {metric}; the per-layer floors and the layers that are "
                         f"never pruned set this limit (try --include-upsample / --include-sppf)")
    while hi - lo > 1:  # invariant: fraction(lo) > target >= fraction(hi)
        mid = (lo + hi) // 2
        f = fraction(mid)
        if f <= target:
            hi, best = mid, f
        else:
            lo = mid
    return hi / resolution, best
