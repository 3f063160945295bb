"""Channel masks: pure functions of BN gamma tensors.

Nothing here touches a model. A mask is a bool tensor of a conv's output channels (True = keep);
masks live on the gammas' device.

Threshold boundary (a documented choice). For a ratio ``p`` over ``N`` ranked gammas, ``k = floor(N*p)``
channels are meant to go: the ``k`` smallest ``|gamma|``. Strategies 1 and 2 keep ``|gamma| >= v[k]``
(the original yolov5_prune's rule; a value tied with the k-th smallest survives), strategies 3 and 8x
keep ``|gamma| > v[k-1]`` (its strict rule; ties with the last removed value go too). Both remove
exactly the ``k`` smallest when there are no ties, and **ratio 0 removes nothing** under both rules
(the original strict rule with ``v[k]`` would remove the smallest channel even at ratio 0).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from .options import PruneOptions, validate_layer_keep, validate_ratio
from .strategy import Strategy

__all__ = [
    "validate_ratio", "ranked_gammas", "global_threshold", "threshold_mask", "min_keep", "round_up",
    "top_up", "channel_mask", "group_score", "union", "group_mask", "safe_ratio", "ranking_layers",
    "compute_masks", "weighted_gammas",
]


def weighted_gammas(gammas: Mapping[int, torch.Tensor], weights: Mapping[int, float]) -> dict[int, torch.Tensor]:
    """``|gamma| / weight`` per layer: the scores of a cost-aware ranking.

    Dividing a whole layer by one positive factor keeps the order of its channels (so the floor and
    the rounding add the same channels as without weights) and moves the layer in the global
    ranking. Every layer of ``gammas`` needs a finite weight > 0; a missing one is an error rather
    than a silent 1, since it would mean the weights describe another model.
    """
    out = {}
    for i, g in gammas.items():
        if i not in weights:
            raise ValueError(f"no ranking weight for layer {i} (weights cover layers {sorted(weights)})")
        w = float(weights[i])
        if not (w > 0.0 and math.isfinite(w)):
            raise ValueError(f"ranking weight of layer {i} must be finite and > 0, got {w}")
        out[i] = g.detach().abs() / w
    return out


def ranked_gammas(gammas: Sequence[torch.Tensor]) -> torch.Tensor:
    """All ``|gamma|`` of the given layers, ascending (1-D)."""
    if not gammas:
        raise ValueError("no prunable layers: nothing to rank")
    return torch.cat([g.detach().abs().flatten() for g in gammas]).sort().values


def global_threshold(ranked: torch.Tensor, ratio: float, inclusive: bool) -> float:
    """Threshold removing the ``floor(N*ratio)`` smallest values of ``ranked`` (see module docstring).

    ``inclusive``: the threshold is compared with ``>=`` (keep), else with ``>``.
    """
    ratio = validate_ratio(ratio)
    n = ranked.numel()
    k = min(int(math.floor(n * ratio)), n - 1)
    if inclusive:
        return float(ranked[k])
    return float(ranked[k - 1]) if k > 0 else -1.0  # |gamma| > -1 keeps everything


def threshold_mask(gamma: torch.Tensor, threshold: float, inclusive: bool) -> torch.Tensor:
    """Channels of one layer that survive ``threshold``."""
    a = gamma.detach().abs()
    return a >= threshold if inclusive else a > threshold


def min_keep(width: int, layer_keep: float) -> int:
    """Per-layer floor ``max(floor(width * layer_keep), 1)``: no layer is ever emptied."""
    return max(int(math.floor(width * validate_layer_keep(layer_keep))), 1)


def round_up(count: int, width: int, multiple: int) -> int:
    """``count`` rounded up to a multiple of ``multiple``, capped at ``width``."""
    if multiple <= 1:
        return min(count, width)
    return min(-(-count // multiple) * multiple, width)


def top_up(score: torch.Tensor, mask: torch.Tensor, count: int) -> torch.Tensor:
    """``mask`` plus the highest-``score`` channels not yet in it, until ``count`` are kept.

    Already kept channels stay kept (they are ranked above every other one).
    """
    count = min(count, mask.numel())
    if int(mask.sum()) >= count:
        return mask
    ranked = torch.where(mask, torch.full_like(score, math.inf), score.float())
    out = torch.zeros_like(mask)
    out[ranked.topk(count).indices] = True
    return out


def channel_mask(gamma: torch.Tensor, threshold: float, inclusive: bool, floor: int = 1,
                 round_to: int = 1) -> torch.Tensor:
    """One layer's mask: the threshold, then at least ``floor`` channels, then a multiple of
    ``round_to`` (or the full width), adding the largest ``|gamma|`` not yet kept."""
    score = gamma.detach().abs()
    mask = threshold_mask(gamma, threshold, inclusive)
    mask = top_up(score, mask, floor)
    return top_up(score, mask, round_up(int(mask.sum()), mask.numel(), round_to))


def group_score(gammas: Sequence[torch.Tensor]) -> torch.Tensor:
    """Importance of each channel of a shortcut group: the largest ``|gamma|`` over its members.

    A group channel matters as soon as one member uses it, the same reasoning as the union rule.
    """
    return torch.stack([g.detach().abs() for g in gammas]).amax(0)


def union(masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Element-wise OR of equally sized masks."""
    out = masks[0].clone()
    for m in masks[1:]:
        out |= m
    return out


def group_mask(gammas: Sequence[torch.Tensor], base: torch.Tensor, floor: int = 1,
               round_to: int = 1) -> torch.Tensor:
    """The one mask of a shortcut group: ``base`` (leader mask or union), at least ``floor``
    channels, then a multiple of ``round_to`` (or the full width), adding channels by
    :func:`group_score` among those not yet kept."""
    score = group_score(gammas)
    mask = top_up(score, base, floor)
    return top_up(score, mask, round_up(int(mask.sum()), mask.numel(), round_to))


def ranking_layers(prunable: Sequence[int], groups: Sequence[Sequence[int]], strategy: Strategy) -> list[int]:
    """Layers whose gammas form the global ranking: strategy 2 ranks only a group's leader
    (the members copy its mask); the others rank every prunable layer."""
    if strategy.group_rule != "leader":
        return list(prunable)
    followers = {m for g in groups for m in g[1:]}
    return [i for i in prunable if i not in followers]


def safe_ratio(gammas: "Mapping[int, torch.Tensor] | Sequence[torch.Tensor]",
               layers: Sequence[int] | None = None) -> float:
    """Largest ratio at which no layer of ``layers`` loses all its channels to the threshold.

    Any threshold above ``min over layers of max |gamma|`` empties a layer; the safe ratio is the
    share of ranked values below that level (the first index whose value reaches it).
    ``gammas``: layer -> BN weight (``layers`` picks among them, default all), or a sequence of
    per-layer gammas; signs do not matter. No layers: 0.0.
    """
    if layers is None:
        chosen = list(gammas.values()) if isinstance(gammas, Mapping) else list(gammas)
    else:
        chosen = [gammas[i] for i in layers]
    if not chosen:
        return 0.0
    ranked = ranked_gammas(chosen)
    level = min(float(g.detach().abs().max()) for g in chosen)
    return int((ranked < level).sum()) / ranked.numel()


def compute_masks(gammas: Mapping[int, torch.Tensor], prunable: Sequence[int],
                  groups: Sequence[Sequence[int]], options: PruneOptions) -> dict[int, torch.Tensor]:
    """Masks for every layer in ``prunable`` under ``options`` (strategy, ratio, layer_keep, round_to).

    ``gammas``: layer -> BN weight (or ranking score); ``groups``: shortcut groups fully inside
    ``prunable`` (each sorted, leader first).
    """
    s = options.strategy
    groups = [tuple(g) for g in groups if s.prunes_groups]
    in_group = {m for g in groups for m in g}
    ranked = ranked_gammas([gammas[i] for i in ranking_layers(prunable, groups, s)])
    threshold = global_threshold(ranked, options.ratio, s.inclusive)

    masks: dict[int, torch.Tensor] = {}
    for i in prunable:
        if i not in in_group:
            floor = min_keep(gammas[i].numel(), options.layer_keep)
            masks[i] = channel_mask(gammas[i], threshold, s.inclusive, floor, options.round_to)
    for g in groups:
        members = [gammas[m] for m in g]
        floor = min_keep(members[0].numel(), options.layer_keep)
        if s.group_rule == "leader":
            base = threshold_mask(members[0], threshold, s.inclusive)
        else:  # union of the members' own (floored) masks
            base = union([channel_mask(gm, threshold, s.inclusive, floor) for gm in members])
        shared = group_mask(members, base, floor, options.round_to)
        for m in g:
            masks[m] = shared
    return masks
