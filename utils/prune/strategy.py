"""The four pruning strategies as data: which layer set they prune and how masks are formed.

A strategy is a handful of parameters, not a script: the prune set (``sparsity_set`` 0 = strategy 1's
conservative set without shortcut groups, 1 = every prunable conv), the threshold comparison, how a
shortcut group gets its shared mask, and the channel multiple kept counts are rounded up to.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Strategy", "STRATEGIES", "get_strategy"]


@dataclass(frozen=True)
class Strategy:
    """Parameters of one pruning strategy.

    ``inclusive``: a channel survives when ``|gamma| >= threshold`` (strategies 1, 2) or
    ``|gamma| > threshold`` (3, 8x); see :func:`utils.prune.masks.global_threshold` for how the
    threshold is placed so that both rules remove the same channels except at ties.
    ``group_rule``: ``"skip"`` (groups are not pruned), ``"leader"`` (every member takes the mask of
    the group's first conv), ``"union"`` (the element-wise OR of the members' masks).
    """

    name: str
    sparsity_set: int  # the train_sparsity.py --prune value whose layer set this strategy prunes
    inclusive: bool
    group_rule: str
    round_to: int = 1
    ratio_flag: str = "--percent"

    @property
    def prunes_groups(self) -> bool:
        return self.group_rule != "skip"

    @property
    def label(self) -> str:
        return {"1": "strategy 1 (conservative)", "2": "strategy 2 (shortcut)",
                "3": "strategy 3 (slim)", "8x": "strategy 3, 8x (slim, multiples of 8)"}[self.name]


STRATEGIES: dict[str, Strategy] = {
    "1": Strategy("1", 0, True, "skip"),
    "2": Strategy("2", 1, True, "leader"),
    "3": Strategy("3", 1, False, "union", ratio_flag="--global_percent"),
    "8x": Strategy("8x", 1, False, "union", round_to=8, ratio_flag="--global_percent"),
}

_ALIASES = {"conservative": "1", "shortcut": "2", "slim": "3", "slim8x": "8x", "8": "8x"}


def get_strategy(strategy: "int | str | Strategy") -> Strategy:
    """1, 2, 3, '8x' (or 'conservative', 'shortcut', 'slim', 'slim8x') -> :class:`Strategy`."""
    if isinstance(strategy, Strategy):
        return strategy
    key = str(strategy).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in STRATEGIES:
        raise ValueError(f"unknown pruning strategy {strategy!r} (known: 1, 2, 3, 8x)")
    return STRATEGIES[key]
