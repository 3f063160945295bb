"""Which convolutions can lose channels, and which must lose the same ones.

Everything here is derived from the cfg graph (layer types and inputs), never from layer numbers, so
every YOLOv5 depth/width and the P6 models are handled by the same rules.

The central structure is the **channel-origin map**: for every layer output, a list of
:class:`Segment` s that says where each channel comes from. A conv output is one segment with the conv
as its only term; a ``[route]`` concatenates its inputs' segments; ``[upsample]`` and ``[maxpool]``
pass them through (they act per channel); a ``[shortcut]`` adds its inputs, so its segments carry the
terms of both. Every channel of every layer is thereby a sum of channels of producing convs (or of the
image, producer ``-1``). From this map follow

* the **consumers** of a conv: every conv whose input contains one of its channels (through any chain
  of routes, shortcuts, upsamples and maxpools); they absorb the constant of pruned channels;
* the **shortcut groups**: convs whose outputs are summed (directly or through a chain of adds) must
  keep identical channels, otherwise the compact model would add mismatched channels;
* the input channels that survive in each consumer (surgery).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from models.cfg import ModelCfg

from .options import EXTRA_LAYERS, extra_layers
from .strategy import Strategy, get_strategy

__all__ = ["Segment", "PruneGraph", "analyse", "channel_origins", "prunable_layers",
           "sparsity_layers", "ZERO_AT_ZERO"]

IMAGE = -1  # producer id of the input image's channels

# Why a conv that an extra-layer option can make prunable is kept without it (option -> reason).
_OPTIONAL_REASONS = {"upsample": f"feeds an upsample ({EXTRA_LAYERS['upsample']})",
                     "sppf": f"feeds a maxpool: SPPF input ({EXTRA_LAYERS['sppf']})"}

# Activations with act(0) == 0: a channel whose BN gamma and beta are zero then outputs exactly 0,
# which is what lets the compact model drop it (a sigmoid channel would still output 0.5).
ZERO_AT_ZERO = frozenset({"silu", "swish", "relu", "leaky", "mish", "hardswish", "linear"})


@dataclass(frozen=True)
class Segment:
    """``length`` consecutive channels; channel ``k`` is the sum over ``terms`` of channel
    ``start + k`` of ``producer`` (a conv index, or -1 for the image)."""

    terms: tuple[tuple[int, int], ...]
    length: int

    @property
    def producers(self) -> tuple[int, ...]:
        return tuple(p for p, _ in self.terms)


Origin = tuple[Segment, ...]


def _add(a: Origin, b: Origin) -> Origin:
    """Origin of ``a + b`` (equal widths): split both at every boundary, pool the terms."""
    out: list[Segment] = []
    ia = ib = oa = ob = 0
    while ia < len(a) and ib < len(b):
        sa, sb = a[ia], b[ib]
        n = min(sa.length - oa, sb.length - ob)
        terms = tuple((p, s + oa) for p, s in sa.terms) + tuple((p, s + ob) for p, s in sb.terms)
        out.append(Segment(terms, n))
        oa, ob = oa + n, ob + n
        if oa == sa.length:
            ia, oa = ia + 1, 0
        if ob == sb.length:
            ib, ob = ib + 1, 0
    return tuple(out)


def channel_origins(cfg: ModelCfg) -> list[Origin]:
    """Per layer, where each output channel comes from (see the module docstring)."""
    image: Origin = (Segment(((IMAGE, 0),), cfg.in_channels),)
    origins: list[Origin] = []

    def of(j: int) -> Origin:
        return image if j < 0 else origins[j]

    for i, layer in enumerate(cfg.layers):
        t = layer.type
        if t == "convolutional":
            origins.append((Segment(((i, 0),), cfg.channels[i]),))
        elif t == "route":
            origins.append(tuple(s for j in layer.inputs for s in of(j)))
        elif t == "shortcut":
            origins.append(_add(of(layer.inputs[0]), of(layer.inputs[1])))
        elif t in ("upsample", "maxpool"):
            origins.append(of(layer.inputs[0]))
        else:  # yolo: an output, read by nothing
            origins.append(())
    return origins


class _UnionFind:
    def __init__(self):
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class PruneGraph:
    """Result of :func:`analyse`.

    ``groups``: shortcut groups, each sorted by layer index (the first conv is the group's
    "leader", the conv whose output enters the first add, e.g. a C3's ``cv1``).
    ``consumers``: conv -> convs that read any of its channels.
    ``fixed``: conv -> why it can never be pruned; ``optional``: conv -> the extra-layer options that
    lift its exclusion (``"upsample"``: it feeds an upsample; ``"sppf"``: it feeds a maxpool, the SPPF input).
    """

    cfg: ModelCfg
    origins: list[Origin]
    readers: list[tuple[int, ...]]
    consumers: dict[int, tuple[int, ...]]
    groups: list[tuple[int, ...]]
    fixed: dict[int, str]
    optional: dict[int, frozenset[str]]
    group_index: dict[int, int] = field(default_factory=dict)

    # ------------------------------------------------------------------ basic facts
    @property
    def convs(self) -> list[int]:
        return [i for i, l in enumerate(self.cfg.layers) if l.type == "convolutional"]

    @property
    def bn_convs(self) -> list[int]:
        return [i for i in self.convs if self.cfg.layers[i].bn]

    @property
    def detect_convs(self) -> list[int]:
        return [self.cfg.layers[y].inputs[0] for y in self.cfg.yolo_indices]

    def input_origin(self, i: int) -> Origin:
        """Origin of the channels conv ``i`` reads."""
        j = self.cfg.layers[i].inputs[0]
        if j < 0:
            return (Segment(((IMAGE, 0),), self.cfg.in_channels),)
        return self.origins[j]

    # ------------------------------------------------------------------ prune sets
    def exclusion(self, i: int, strategy: "int | str | Strategy" = 2, extra: Iterable[str] = ()) -> str | None:
        """Why conv ``i`` is not prunable under these settings (None: it is prunable).

        ``extra``: names of :data:`~utils.prune.options.EXTRA_LAYERS` made prunable ("upsample", "sppf").
        """
        strategy = get_strategy(strategy)
        members = (self.groups[self.group_index[i]] if i in self.group_index else (i,))
        if i in self.group_index and not strategy.prunes_groups:
            return "shortcut group (pruned by strategies 2, 3, 8x)"
        for j in members:
            why = self.fixed.get(j) or self._optional_reason(j, frozenset(extra))
            if why:
                return why if j == i else f"shortcut group with layer {j}: {why}"
        return None

    def _optional_reason(self, i: int, extra: frozenset[str]) -> str | None:
        lifted = self.optional.get(i, frozenset()) - extra
        return next((why for name, why in _OPTIONAL_REASONS.items() if name in lifted), None)

    def prunable(self, strategy: "int | str | Strategy" = 2, extra: Iterable[str] = ()) -> list[int]:
        """Convs whose channels ``strategy`` may remove, in layer order."""
        extra = frozenset(extra)
        return [i for i in self.convs if self.exclusion(i, strategy, extra) is None]

    def prunable_groups(self, strategy: "int | str | Strategy" = 2,
                        extra: Iterable[str] = ()) -> list[tuple[int, ...]]:
        """The shortcut groups whose members are all prunable under these settings."""
        keep = set(self.prunable(strategy, extra))
        return [g for g in self.groups if all(i in keep for i in g)]

    def role(self, i: int, strategy: "int | str | Strategy" = 2, extra: Iterable[str] = ()) -> str:
        """A short description of conv ``i`` for the per-layer report."""
        if i in self.detect_convs:
            return "detect head"
        why = self.exclusion(i, strategy, extra)
        group = self.group_index.get(i)
        tag = ""
        if group is not None:
            lead = self.groups[group][0] == i
            tag = f"G{group + 1} {'leader' if lead else 'member'}"
        if why is None:
            return f"prunable, {tag}" if tag else "prunable"
        return f"kept ({tag}): {why}" if tag else f"kept: {why}"


def _readers(cfg: ModelCfg) -> list[tuple[int, ...]]:
    readers: list[list[int]] = [[] for _ in cfg.layers]
    for i, layer in enumerate(cfg.layers):
        for j in layer.inputs:
            if j >= 0:
                readers[j].append(i)
    return [tuple(r) for r in readers]


def _consumers(cfg: ModelCfg, origins: list[Origin]) -> dict[int, tuple[int, ...]]:
    found: dict[int, list[int]] = {}
    for i, layer in enumerate(cfg.layers):
        if layer.type != "convolutional" or layer.inputs[0] < 0:
            continue
        producers = {p for s in origins[layer.inputs[0]] for p in s.producers}
        for p in sorted(producers):
            found.setdefault(p, []).append(i)
    return {p: tuple(c) for p, c in found.items()}


def _groups(cfg: ModelCfg, origins: list[Origin]) -> tuple[list[tuple[int, ...]], set[int]]:
    """Shortcut groups and the convs in groups whose channels cannot share one mask."""
    uf = _UnionFind()
    misaligned: set[int] = set()
    for i, layer in enumerate(cfg.layers):
        if layer.type != "shortcut":
            continue
        for seg in origins[i]:
            producers = seg.producers
            for p in producers[1:]:
                uf.union(producers[0], p)
            if len({s for _, s in seg.terms}) > 1:  # channel k of one producer meets k' != k of another
                misaligned.update(producers)
    members: dict[int, list[int]] = {}
    for x in list(uf.parent):
        members.setdefault(uf.find(x), []).append(x)
    groups, bad = [], set()
    for root, ms in members.items():
        ms = sorted(ms)
        if len(ms) < 2:
            continue
        widths = {cfg.channels[m] if m >= 0 else cfg.in_channels for m in ms}
        if IMAGE in ms or len(widths) > 1 or misaligned & set(ms):
            bad.update(m for m in ms if m >= 0)
        groups.append(tuple(m for m in ms if m >= 0))
    groups.sort()
    return groups, bad


def analyse(cfg: ModelCfg) -> PruneGraph:
    """Analyse a model graph for channel pruning (cheap: a few milliseconds for yolov5l)."""
    origins = channel_origins(cfg)
    readers = _readers(cfg)
    consumers = _consumers(cfg, origins)
    groups, misaligned = _groups(cfg, origins)
    layers = cfg.layers
    yolo_inputs = {layers[y].inputs[0] for y in cfg.yolo_indices}
    fixed: dict[int, str] = {}
    optional: dict[int, frozenset[str]] = {}
    for i, layer in enumerate(layers):
        if layer.type != "convolutional":
            continue
        reader_types = {layers[r].type for r in readers[i]}
        if i in yolo_inputs:
            fixed[i] = "detect head"
        elif not layer.bn:
            fixed[i] = "no BatchNorm"
        elif str(layer.get("activation")).lower() not in ZERO_AT_ZERO:
            fixed[i] = f"activation {layer.get('activation')} is not 0 at 0"
        elif layer.get("groups") != 1:
            fixed[i] = "grouped conv"
        elif i in misaligned:
            fixed[i] = "residual add with unaligned channels"
        elif any(layers[c].get("groups") != 1 for c in consumers.get(i, ())):
            fixed[i] = "feeds a grouped conv"
        elif not consumers.get(i):
            fixed[i] = "no consumer conv"
        opts = set()
        if "upsample" in reader_types:
            opts.add("upsample")
        if "maxpool" in reader_types:
            opts.add("sppf")
        if opts:
            optional[i] = frozenset(opts)
    group_index = {m: k for k, g in enumerate(groups) for m in g}
    return PruneGraph(cfg=cfg, origins=origins, readers=readers, consumers=consumers, groups=groups,
                      fixed=fixed, optional=optional, group_index=group_index)


def prunable_layers(cfg: ModelCfg, strategy: "int | str | Strategy" = 2, include_upsample: bool = False,
                    include_sppf: bool = False) -> list[int]:
    """Conv layers ``strategy`` prunes: 1 -> the ``--prune 0`` set (no shortcut groups);
    2, 3, '8x' -> the ``--prune 1`` set (every prunable BN conv, groups included)."""
    return analyse(cfg).prunable(strategy, extra_layers(include_upsample, include_sppf))


def sparsity_layers(cfg: ModelCfg, prune: int, include_upsample: bool = False,
                    include_sppf: bool = False) -> list[int]:
    """The layers sparsity training regularises for ``--prune 0`` (strategy 1) or ``1`` (2/3/8x)."""
    if prune not in (0, 1):
        raise ValueError(f"--prune must be 0 (strategy 1 layer set) or 1 (strategies 2, 3, 8x), got {prune}")
    return prunable_layers(cfg, 1 if prune == 0 else 2, include_upsample, include_sppf)
