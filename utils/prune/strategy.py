"""The four pruning strategies as data: which layer set they prune and how masks are formed.

A strategy is a handful of parameters, not a script: the prune set (``sparsity_set`` 0 = strategy 1's
conservative set without shortcut groups, 1 = every prunable conv), the threshold comparison, how a
shortcut group gets its shared mask, the channel multiple kept counts are rounded up to, and the
facts its command line needs (ratio flag, whether ``--layer_keep`` applies, output file prefix,
the original yolov5_prune's default weights and ratio).
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import OptionError

__all__ = ["Strategy", "STRATEGIES", "get_strategy"]


@dataclass(frozen=True)
class Strategy:
    """Parameters of one pruning strategy.

    ``inclusive``: a channel survives when ``|gamma| >= threshold`` (strategies 1, 2) or
    ``|gamma| > threshold`` (3, 8x); see :func:`utils.prune.masks.global_threshold` for how the
    threshold is placed so that both rules remove the same channels except at ties.
    ``group_rule``: ``"skip"`` (groups are not pruned), ``"leader"`` (every member takes the mask of
    the group's first conv), ``"union"`` (the element-wise OR of the members' masks).
    ``uses_layer_keep``: the command line takes ``--layer_keep`` and the file prefix names it.
    ``prefix_tag``: appended to the file prefix (``"8x_"`` for strategy 8x).
    """

    name: str
    label: str
    sparsity_set: int  # the train_sparsity.py --prune value whose layer set this strategy prunes
    inclusive: bool
    group_rule: str
    round_to: int = 1
    ratio_flag: str = "--percent"
    uses_layer_keep: bool = False
    prefix_tag: str = ""
    default_weights: str = "weights/last_v6s.pt"
    default_ratio: float = 0.6

    @property
    def prunes_groups(self) -> bool:
        return self.group_rule != "skip"

    @property
    def ties(self) -> str:
        """What happens to a gamma equal to the threshold (for help texts)."""
        return "kept (|gamma| >= threshold)" if self.inclusive else "removed (|gamma| > threshold survives)"

    def file_prefix(self, ratio: float, layer_keep: float | None = None) -> str:
        """The original yolov5_prune's file-name prefix: ``prune_<p>_`` (1, 2), ``prune_<p>_keep_<k>_``
        (3), ``prune_<p>_keep_<k>_8x_`` (8x); floats as Python's ``str`` writes them."""
        prefix = f"prune_{float(ratio)}_"
        if self.uses_layer_keep:
            prefix += f"keep_{float(layer_keep if layer_keep is not None else 0.01)}_"
        return prefix + self.prefix_tag


STRATEGIES: dict[str, Strategy] = {
    "1": Strategy("1", "strategy 1 (conservative)", 0, True, "skip",
                  default_weights="weights/last_v6s_0.pt", default_ratio=0.5),
    "2": Strategy("2", "strategy 2 (shortcut)", 1, True, "leader"),
    "3": Strategy("3", "strategy 3 (slim)", 1, False, "union", ratio_flag="--global_percent",
                  uses_layer_keep=True),
    "8x": Strategy("8x", "strategy 3, 8x (slim, multiples of 8)", 1, False, "union", round_to=8,
                   ratio_flag="--global_percent", uses_layer_keep=True, prefix_tag="8x_"),
}

_ALIASES = {"conservative": "1", "shortcut": "2", "slim": "3", "slim8x": "8x", "8": "8x"}


def get_strategy(strategy: "int | str | Strategy") -> Strategy:
    """1, 2, 3, '8x' (or 'conservative', 'shortcut', 'slim', 'slim8x') -> :class:`Strategy`."""
    if isinstance(strategy, Strategy):
        return strategy
    key = str(strategy).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in STRATEGIES:
        raise OptionError(f"unknown pruning strategy {strategy!r} (known: 1, 2, 3, 8x)")
    return STRATEGIES[key]
