"""Pruning options as one frozen value: what to prune, how much, and with which ranking.

:class:`PruneOptions` travels through :func:`~utils.prune.pipeline.plan`,
:func:`~utils.prune.pipeline.prune` and :func:`~utils.prune.pipeline.search_ratio` instead of a
dozen loose arguments. It is validated once, when it is made; every range error names the
command-line flag that sets the value. :class:`LatencyTarget` is the budget of ``--target-latency``
/ ``--target-ms`` on a runtime; it does not decide masks, so it travels beside the options to
:func:`~utils.prune.latency.meet_latency`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, ClassVar, Mapping

from .errors import OptionError
from .strategy import Strategy, get_strategy

__all__ = ["PruneOptions", "Target", "LatencyTarget", "RUNTIMES", "EXTRA_LAYERS", "extra_layers", "validate_ratio",
           "validate_layer_keep"]

# Layers no strategy prunes unless asked: option name -> the flag that asks.
EXTRA_LAYERS = {"upsample": "--include-upsample", "sppf": "--include-sppf"}
METRICS = ("flops", "params")
# Where --target-latency / --target-ms are measured (utils.prune.latency runs each).
RUNTIMES = ("torch", "onnxruntime", "openvino")


def extra_layers(include_upsample: bool = False, include_sppf: bool = False) -> frozenset[str]:
    """The names of :data:`EXTRA_LAYERS` that the two command-line switches ask for."""
    return frozenset(n for n, on in (("upsample", include_upsample), ("sppf", include_sppf)) if on)


def validate_ratio(ratio: float, flag: str = "ratio") -> float:
    """``ratio`` as a float in [0, 1); anything else is an error naming ``flag``."""
    ratio = float(ratio)
    if not (0.0 <= ratio < 1.0) or math.isnan(ratio):
        raise OptionError(f"{flag} must be in [0, 1): the fraction of channels to remove "
                          f"(1.0 would remove every channel), got {ratio}")
    return ratio


def validate_layer_keep(layer_keep: float, flag: str = "--layer_keep") -> float:
    """``layer_keep`` as a float in [0, 1] (the library's range; the command line also refuses 0 and 1)."""
    layer_keep = float(layer_keep)
    if not 0.0 <= layer_keep <= 1.0:
        raise OptionError(f"{flag} must be in [0, 1], got {layer_keep}")
    return layer_keep


@dataclass(frozen=True)
class Target:
    """Keep at most ``fraction`` of the original ``metric`` (``"flops"`` or ``"params"``)."""

    metric: str
    fraction: float

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise OptionError(f"metric must be 'flops' or 'params', got {self.metric!r}")
        if not 0.0 < float(self.fraction) <= 1.0 or math.isnan(self.fraction):
            raise OptionError(f"{self.flag} must be a fraction of the original in (0, 1], got {self.fraction}")
        object.__setattr__(self, "fraction", float(self.fraction))

    @property
    def flag(self) -> str:
        return f"--target-{self.metric}"


@dataclass(frozen=True)
class LatencyTarget:
    """Run in at most ``value`` on ``runtime`` with ``threads`` threads (batch 1): a fraction of the
    original's measured latency (``kind="latency"``) or milliseconds (``kind="ms"``)."""

    kind: str
    value: float
    runtime: str = "torch"
    threads: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("latency", "ms"):
            raise OptionError(f"a latency target is 'latency' (a fraction) or 'ms', got {self.kind!r}")
        value = float(self.value)
        if math.isnan(value) or value <= 0.0 or (self.kind == "latency" and value > 1.0):
            wanted = "a fraction of the original in (0, 1]" if self.kind == "latency" else "a positive time"
            raise OptionError(f"{self.flag} must be {wanted}, got {self.value}")
        if self.runtime not in RUNTIMES:
            raise OptionError(f"--runtime {self.runtime!r} is not known (known: {', '.join(RUNTIMES)})")
        if int(self.threads) < 1:
            raise OptionError(f"--threads must be a positive number of threads, got {self.threads}")
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "threads", int(self.threads))

    @property
    def flag(self) -> str:
        return f"--target-{self.kind}"

    def goal(self, original_ms: float) -> float:
        """The target as a fraction of an original that runs in ``original_ms``."""
        return self.value if self.kind == "latency" else self.value / original_ms

    def observed(self, compact_ms: float, ratio: float) -> float:
        """The measured value in the target's unit: the paired ratio, or the compact's milliseconds."""
        return ratio if self.kind == "latency" else compact_ms

    def describe(self, value: float | None = None) -> str:
        v = self.value if value is None else value
        return f"{v:.3f} of the original's time" if self.kind == "latency" else f"{v:.3f} ms"


@dataclass(frozen=True)
class PruneOptions:
    """Everything that decides the masks.

    ``strategy``: a :class:`Strategy` (or 1, 2, 3, '8x'); ``ratio``: fraction of the ranked channels
    to remove, [0, 1); ``layer_keep``: every layer keeps at least ``max(floor(C*layer_keep), 1)``;
    ``round_to``: kept counts rounded up to a multiple of it (None: the strategy's own, 8 for '8x');
    ``extra``: names from :data:`EXTRA_LAYERS` whose layers become prunable; ``weights``: layer ->
    positive factor of a cost-aware ranking (``|gamma| / weight``; None: plain ``|gamma|``);
    ``target``: the FLOPs/parameter budget :func:`~utils.prune.pipeline.search_ratio` meets;
    ``latency_aware``: the options came from ``--latency-aware`` (:attr:`LATENCY_AWARE`; recorded
    in the history, the parts themselves are the other fields).
    """

    # --latency-aware: the parts it turns on, by setting name (the flags: LATENCY_FLAGS). On a
    # sparsity-trained yolov5s pruned to 0.45 of the FLOPs (strategy 8x, 1 thread, BN fused, 320/640 px;
    # benchmarks/results/prune_latency_trained.json) the latency ratio was 0.515/0.479 with the
    # defaults and 0.453/0.432 with all four (Torch-Pruning's BNScalePruner: 0.519/0.479).
    LATENCY_AWARE: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {"cost_aware": True, "round_to": 16, "include_upsample": True, "include_sppf": True})
    # setting name -> the command-line flag of each part
    LATENCY_FLAGS: ClassVar[Mapping[str, str]] = MappingProxyType(
        {"cost_aware": "--cost-aware", "round_to": "--round-to", "include_upsample": "--include-upsample",
         "include_sppf": "--include-sppf"})

    strategy: Strategy
    ratio: float = 0.0
    layer_keep: float = 0.0
    round_to: int | None = None
    extra: frozenset[str] = frozenset()
    weights: Mapping[int, float] | None = field(default=None, compare=False)
    target: Target | None = None
    latency_aware: bool = False

    def __post_init__(self) -> None:
        s = get_strategy(self.strategy)
        set_ = object.__setattr__  # frozen: normalise the fields once, here
        set_(self, "strategy", s)
        set_(self, "ratio", validate_ratio(self.ratio, s.ratio_flag))
        set_(self, "layer_keep", validate_layer_keep(self.layer_keep))
        round_to = s.round_to if self.round_to is None else int(self.round_to)
        if round_to < 1:
            raise OptionError(f"--round-to must be a positive channel multiple, got {self.round_to}")
        set_(self, "round_to", round_to)
        extra = frozenset(self.extra)
        if extra - set(EXTRA_LAYERS):
            raise OptionError(f"unknown extra layers {sorted(extra - set(EXTRA_LAYERS))} "
                              f"(known: {', '.join(EXTRA_LAYERS)})")
        set_(self, "extra", extra)
        if self.weights is not None:
            set_(self, "weights", MappingProxyType({int(i): float(w) for i, w in self.weights.items()}))

    @classmethod
    def make(cls, strategy: "int | str | Strategy", ratio: float = 0.0, *, include_upsample: bool | None = None,
             include_sppf: bool | None = None, round_to: int | None = None, latency_aware: bool = False,
             **kw) -> "PruneOptions":
        """Options with the extra layers given as the two command-line switches; ``latency_aware``
        fills in the parts of :attr:`LATENCY_AWARE` that are None here (the cost-aware ranking
        needs measured ``weights``: pass them, see :meth:`latency_settings`)."""
        parts = cls.latency_settings(latency_aware, include_upsample=include_upsample, include_sppf=include_sppf,
                                     round_to=round_to)
        return cls(strategy, ratio, round_to=parts["round_to"], latency_aware=latency_aware,
                   extra=extra_layers(parts["include_upsample"], parts["include_sppf"]), **kw)

    @classmethod
    def latency_settings(cls, latency_aware: bool, **given: Any) -> dict[str, Any]:
        """The four settings of :attr:`LATENCY_AWARE` (``cost_aware``, ``round_to``,
        ``include_upsample``, ``include_sppf``): each value given (not None) wins, else the part of
        ``--latency-aware`` when it is on, else off (``round_to`` None: the strategy's own)."""
        unknown = set(given) - set(cls.LATENCY_AWARE)
        if unknown:
            raise OptionError(f"--latency-aware has no part {sorted(unknown)} (its parts: "
                              f"{', '.join(cls.LATENCY_AWARE)})")
        off = {"cost_aware": False, "round_to": None, "include_upsample": False, "include_sppf": False}
        base = cls.LATENCY_AWARE if latency_aware else off
        return {k: given[k] if given.get(k) is not None else base[k] for k in cls.LATENCY_AWARE}

    @classmethod
    def latency_flags(cls) -> list[str]:
        """The command-line flags ``--latency-aware`` stands for (help texts, benchmark plans)."""
        out: list[str] = []
        for name, value in cls.LATENCY_AWARE.items():
            flag = cls.LATENCY_FLAGS[name]
            out += [flag] if value is True else [flag, str(value)]
        return out

    @property
    def include_upsample(self) -> bool:
        return "upsample" in self.extra

    @property
    def include_sppf(self) -> bool:
        return "sppf" in self.extra

    @property
    def cost_aware(self) -> bool:
        return self.weights is not None

    def with_ratio(self, ratio: float) -> "PruneOptions":
        return replace(self, ratio=ratio)
