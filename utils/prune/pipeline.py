"""The pruning pipeline the four prune scripts share: analyse, mask, absorb, cut, verify.

:func:`prune` is a transformation of a model's (cfg, weights) into a compact (cfg, weights) plus
everything a report needs; it never modifies the model it is given. :func:`search_ratio` finds the
smallest ratio whose compact model meets a FLOPs or parameter target, from the cfg arithmetic alone
(no model is built during the search); :func:`bisect_ratio` is that search for any cost of the masks
(the latency search of :mod:`~utils.prune.latency` uses it with a measured profile). All take the
settings as one :class:`PruneOptions`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from models.cfg import ModelCfg
from models.darknet import Darknet

from .absorb import absorb, bn_key, mask_gammas
from .cost import estimate_cost
from .errors import OptionError, PruneError
from .graph import PruneGraph, analyse
from .masks import compute_masks, ranking_layers, safe_ratio, weighted_gammas
from .options import PruneOptions
from .strategy import Strategy
from .surgery import compact_cfg, compact_state, model_from_state, verify, verify_size

__all__ = ["PrunePlan", "PruneResult", "plan", "prune", "estimate_cost", "search_ratio", "bisect_ratio",
           "Unreachable"]


@dataclass
class PrunePlan:
    """Masks and the facts they were derived from (no weights changed yet)."""

    options: PruneOptions
    graph: PruneGraph
    prunable: list[int]
    groups: list[tuple[int, ...]]
    masks: dict[int, torch.Tensor]
    safe_ratio: float

    @property
    def strategy(self) -> Strategy:
        return self.options.strategy

    @property
    def ratio(self) -> float:
        return self.options.ratio

    @property
    def round_to(self) -> int:
        return self.options.round_to

    @property
    def weights(self) -> dict[int, float] | None:
        """The ranking weights of the prunable layers (None: plain ``|gamma|`` ranking)."""
        w = self.options.weights
        return None if w is None else {i: w[i] for i in self.prunable}


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


def plan(graph: PruneGraph, state: Mapping[str, torch.Tensor], options: PruneOptions) -> PrunePlan:
    """Masks for ``options`` from the BN gammas in ``state``.

    With ranking weights (``options.weights``, e.g. from :func:`~utils.prune.cost.latency_weights`)
    ``|gamma| / weight`` is ranked instead of ``|gamma|``, so that at equal gamma the channels of
    heavily weighted layers go first; the ratio then counts channels of that ranking.
    """
    s = options.strategy
    prunable = graph.prunable(s, options.extra)
    if not prunable:
        raise PruneError("the model has no prunable layers (are its BatchNorms fused?)")
    groups = graph.prunable_groups(s, options.extra)
    gammas = {i: state[bn_key(i, "weight")] for i in prunable}
    if options.weights is not None:
        gammas = weighted_gammas(gammas, options.weights)
    masks = compute_masks(gammas, prunable, groups, options)
    safe = safe_ratio(gammas, ranking_layers(prunable, groups, s))
    return PrunePlan(options, graph, prunable, groups, masks, safe)


def prune(model: Darknet, options: PruneOptions, verify_img_size: int = 256, tol: float = 1e-4) -> PruneResult:
    """Prune ``model`` (left unchanged) and prove the compact model equals the absorbed one.

    Raises :class:`~utils.prune.errors.VerificationError` (nothing is returned) on a mismatch.
    """
    t0 = time.perf_counter()
    cfg = model.to_cfg()  # current widths and (trained) anchors
    graph = analyse(cfg)
    state = model.state_dict()
    t1 = time.perf_counter()
    p = plan(graph, state, options)
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


class Unreachable(PruneError):
    """No ratio on the grid brings the cost down to the goal: even ``ratio`` (the largest on the
    grid, the model the per-layer floors allow) keeps ``fraction`` of it."""

    def __init__(self, goal: float, ratio: float, fraction: float, message: str | None = None):
        super().__init__(message or f"the goal {goal} cannot be reached: even ratio {ratio} keeps {fraction:.4f}")
        self.goal, self.ratio, self.fraction = goal, ratio, fraction

    @property
    def best(self) -> float:
        """The best reachable value (the fraction the largest ratio keeps)."""
        return self.fraction


def bisect_ratio(graph: PruneGraph, state: Mapping[str, torch.Tensor], options: PruneOptions,
                 cost: Callable[[Mapping[int, torch.Tensor]], float], goal: float,
                 resolution: int = 10_000) -> tuple[float, float]:
    """Smallest ratio (on a grid of 1/resolution) whose masks have ``cost(masks) <= goal``;
    returns (ratio, cost). ``options.ratio`` is ignored.

    ``cost`` maps masks to a fraction of the original (FLOPs, parameters, predicted latency); it
    must not grow with the ratio. Bisection is valid because kept counts never grow with the ratio
    (with ranking weights too: the ranking is fixed, the ratio only moves the threshold along it).
    Raises :class:`Unreachable` (with the largest ratio and its cost) when even that misses.
    """
    def fraction(k: int) -> float:
        return cost(plan(graph, state, options.with_ratio(k / resolution)).masks)

    lo, hi = 0, resolution - 1
    first = fraction(lo)
    if first <= goal:
        return 0.0, first
    best = fraction(hi)
    if best > goal:
        raise Unreachable(goal, hi / resolution, best)
    while hi - lo > 1:  # invariant: fraction(lo) > goal >= fraction(hi)
        mid = (lo + hi) // 2
        f = fraction(mid)
        if f <= goal:
            hi, best = mid, f
        else:
            lo = mid
    return hi / resolution, best


def search_ratio(graph: PruneGraph, state: Mapping[str, torch.Tensor], options: PruneOptions,
                 img_size: int = 640, resolution: int = 10_000) -> tuple[float, float]:
    """Smallest ratio (on a grid of 1/resolution) whose compact model keeps at most
    ``options.target`` of the original FLOPs or parameters; returns (ratio, achieved fraction).
    ``options.ratio`` is ignored.

    From the cfg arithmetic alone (:func:`bisect_ratio`). An unreachable target raises
    :class:`Unreachable` (a :class:`PruneError`) naming the smallest reachable fraction.
    """
    target = options.target
    if target is None:
        raise OptionError("search_ratio needs options.target (a FLOPs or parameter fraction)")
    pick = 1 if target.metric == "flops" else 0
    full = estimate_cost(graph, {}, img_size)[pick]
    try:
        return bisect_ratio(graph, state, options, lambda m: estimate_cost(graph, m, img_size)[pick] / full,
                            target.fraction, resolution)
    except Unreachable as e:
        reachable = math.ceil(e.fraction * 1e4) / 1e4
        raise Unreachable(e.goal, e.ratio, e.fraction,
                          f"{target.flag} {target.fraction} cannot be reached: even "
                          f"{options.strategy.ratio_flag} {e.ratio} keeps {e.fraction:.4f} of the "
                          f"{target.metric}, set by the per-layer floors and the layers that are never "
                          f"pruned; ask for {target.flag} {reachable} or more (or add --include-upsample "
                          f"/ --include-sppf)") from None
