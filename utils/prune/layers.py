"""Layer pruning: remove whole residual blocks (the bottlenecks inside C3 modules).

A **residual block** is a ``[shortcut]`` whose one input is a private chain of convs (the *branch*)
that starts at its other input ``x``: ``y = x + branch(x)``. In a YOLOv5 cfg this is a C3
bottleneck (1x1 conv, 3x3 conv, ``[shortcut] from=-3``); consecutive blocks whose ``x`` is the
previous block's output form one *stage* (the bottlenecks of one C3). Everything is read off the
graph, so every depth and width and the P6 models are handled alike.

**Importance** of a block (:data:`STATISTICS`, default ``"rms"``): the root mean square of the
gammas of the branch's last conv's BN. That BN's output is what the residual add receives; with
gamma = 0 it emits the constant ``act(beta)``, so the change that removing the branch brings to
the residual stream is, per channel, about ``act'(beta_c) * gamma_c * xhat_c`` with a unit-variance
``xhat_c``. Its expected L2 norm per pixel grows with ``sqrt(sum gamma_c^2)``; divided by
``sqrt(width)`` (that is, the RMS) it compares stages of different widths, whose residual streams
grow with the width too. The mean |gamma| would let a few large channels hide among many zeros;
the maximum would let one noisy channel keep a block. Zeroed gammas of the *first* conv also make the branch
near-constant, but the constant absorbed here is the last conv's ``act(beta)``, so only the last
conv's gammas say how good that approximation is.

**Exactness.** The absorbed reference is the full model with the last conv of every removed branch
handled as a fully pruned conv by :mod:`utils.prune.absorb`: its gamma and beta set to 0 (it emits
exact zeros, so ``y = x`` exactly) and its constant ``act(beta)`` added to every conv that reads it
through the shortcut chain, the C3 concat, upsample or maxpool. The compact model (blocks cut out,
readers of a removed ``[shortcut]`` rewired to its ``x``) reproduces that reference;
:func:`layer_prune` verifies it before returning. The reference equals the full model with the
branch replaced by ``act(beta)`` (the "masked" model: last-conv gammas zeroed) wherever a reader's
kernel window does not reach into the zero padding (YOLOv5's readers are 1x1 convs: everywhere);
it equals the unpruned model only as far as the removed branches' gammas are zero.
"""
from __future__ import annotations

import datetime as _dt
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from terminaltables import AsciiTable

from models.cfg import Layer, ModelCfg, validate
from models.darknet import Darknet

from .absorb import absorb, bn_key, mask_gammas
from .cost import layer_flops
from .errors import OptionError, PruneError
from .graph import ZERO_AT_ZERO, PruneGraph, analyse
from .surgery import model_from_state, verify, verify_size

__all__ = ["Block", "LayerResult", "STATISTICS", "find_blocks", "block_importance", "max_removable",
           "select_blocks", "remove_blocks", "reindex_state", "layer_prune", "search_shortcuts",
           "block_rows", "block_table", "plot_blocks", "history_entry", "layer_prefix",
           "renumber_history", "sparsity_note", "STEP"]

STEP = "layer_prune"  # the history step name

# Importance statistics of a block from the |gamma| of its last conv (see the module docstring).
STATISTICS: dict[str, Callable[[torch.Tensor], float]] = {
    "rms": lambda g: float(g.pow(2).mean().sqrt()),
    "mean": lambda g: float(g.mean()),
    "max": lambda g: float(g.max()),
}


@dataclass(frozen=True)
class Block:
    """One residual block: ``shortcut`` adds ``source`` (x) and the last of ``convs`` (the branch,
    in order; the first reads x). ``stage``: index of the chain of consecutive blocks (one C3)."""

    shortcut: int
    source: int
    convs: tuple[int, ...]
    stage: int

    @property
    def last(self) -> int:
        return self.convs[-1]

    @property
    def layers(self) -> tuple[int, ...]:
        return (*self.convs, self.shortcut)


# ------------------------------------------------------------------------------------ analysis
def _branch(cfg: ModelCfg, readers: Sequence[tuple[int, ...]], shortcut: int, top: int,
            source: int) -> tuple[int, ...] | None:
    """The convs from ``source`` to ``top`` when they form a private chain into ``shortcut``
    (each read only by the next, the first reading ``source``), else None."""
    chain, reader, j = [], shortcut, top
    while j != source:
        if j < source or cfg.layers[j].type != "convolutional" or readers[j] != (reader,):
            return None
        chain.append(j)
        reader, j = j, cfg.layers[j].inputs[0]
    return tuple(reversed(chain)) or None


def _removable(graph: PruneGraph, last: int) -> bool:
    """Whether the branch ending in conv ``last`` can be replaced by its absorbed constant."""
    layer = graph.cfg.layers[last]
    return (layer.bn and str(layer.get("activation")).lower() in ZERO_AT_ZERO
            and all(graph.cfg.layers[c].get("groups") == 1 for c in graph.consumers.get(last, ())))


def find_blocks(cfg: ModelCfg, graph: PruneGraph | None = None) -> list[Block]:
    """Every removable residual block of ``cfg``, in layer order, with its stage."""
    graph = graph or analyse(cfg)
    blocks: list[Block] = []
    for s, layer in enumerate(cfg.layers):
        if layer.type != "shortcut":
            continue
        top, source = layer.inputs  # the branch ends just before the add (convs read the previous layer)
        convs = _branch(cfg, graph.readers, s, top, source) if source >= 0 else None
        if convs and _removable(graph, convs[-1]):
            chained = bool(blocks) and blocks[-1].shortcut == source
            stage = blocks[-1].stage + (0 if chained else 1) if blocks else 0
            blocks.append(Block(s, source, convs, stage))
    return blocks


def block_importance(state: Mapping[str, torch.Tensor], blocks: Sequence[Block],
                     statistic: str = "rms") -> dict[int, float]:
    """shortcut layer -> importance of its block (:data:`STATISTICS` of the last conv's |gamma|)."""
    if statistic not in STATISTICS:
        raise OptionError(f"--importance {statistic!r} is unknown (known: {', '.join(STATISTICS)})")
    fn = STATISTICS[statistic]
    return {b.shortcut: fn(state[bn_key(b.last, "weight")].detach().abs().float()) for b in blocks}


def max_removable(blocks: Sequence[Block], allow_empty: bool = False) -> int:
    """How many blocks can go: all, or all but one per stage."""
    return len(blocks) - (0 if allow_empty else len({b.stage for b in blocks}))


def select_blocks(blocks: Sequence[Block], importance: Mapping[int, float], n: int,
                  allow_empty: bool = False, flag: str = "--shortcuts") -> list[Block]:
    """The ``n`` least important blocks (ties: the earlier layer first), in layer order; without
    ``allow_empty`` every stage keeps its most important block. Too many asked: :class:`PruneError`
    naming ``flag``, the command-line flag that asked."""
    top = max_removable(blocks, allow_empty)
    if n > top:
        stages = len({b.stage for b in blocks})
        if not blocks:
            raise PruneError(f"{flag} {n}: the model has no residual blocks that can be removed (a block's "
                             f"last conv needs its BatchNorm: are they fused?)")
        rule = ("" if allow_empty else ", each of which keeps one (--allow-empty lets a C3 lose them all)")
        ask = f"ask for {flag} {top} or fewer" if top else "none can be removed without --allow-empty"
        raise PruneError(f"{flag} {n} asks for more residual blocks than can be removed: the model "
                         f"has {len(blocks)} in {stages} C3 modules{rule}; {ask}")
    left = Counter(b.stage for b in blocks)
    chosen: list[Block] = []
    for b in sorted(blocks, key=lambda b: (importance[b.shortcut], b.shortcut)):
        if len(chosen) == n:
            break
        if allow_empty or left[b.stage] > 1:
            chosen.append(b)
            left[b.stage] -= 1
    return sorted(chosen, key=lambda b: b.shortcut)


# ------------------------------------------------------------------------------------ surgery
def _relinked(layer: Layer, inputs: list[int]) -> Layer:
    """``layer`` reading ``inputs`` (new absolute indices), references in its options to match."""
    options = dict(layer.options)
    if layer.type == "route":
        options["layers"] = list(inputs)
    elif layer.type == "shortcut":
        options["from"] = inputs[1]
    return Layer(type=layer.type, options=options, inputs=tuple(inputs))


def remove_blocks(cfg: ModelCfg, blocks: Sequence[Block]) -> tuple[ModelCfg, dict[int, int]]:
    """``cfg`` without the layers of ``blocks`` (readers of a removed shortcut read its source), and
    old -> new index of every kept layer.

    A block's layers are contiguous and its first conv reads the layer just before it (convs read
    the previous layer), which is its source; so the layer after a removed block still reads the
    previous layer, as cfg sections other than ``[route]`` must (checked)."""
    gone = {j for b in blocks for j in b.layers}
    alias = {b.shortcut: b.source for b in blocks}
    index: dict[int, int] = {}
    layers: list[Layer] = []

    def new(j: int) -> int:
        while j in alias:
            j = alias[j]
        return index[j] if j >= 0 else j

    for i, layer in enumerate(cfg.layers):
        if i in gone:
            continue
        inputs = [new(j) for j in layer.inputs]
        if layer.type != "route" and inputs[0] != len(layers) - 1:
            raise PruneError(f"layer {i} would no longer read the layer before it once the blocks at "
                             f"{[b.shortcut for b in blocks]} are removed; these blocks cannot be cut")
        index[i] = len(layers)
        layers.append(_relinked(layer, inputs))
    return validate(ModelCfg(net=dict(cfg.net), layers=layers, path=cfg.path)), index


def reindex_state(state: Mapping[str, torch.Tensor], index: Mapping[int, int]) -> dict[str, torch.Tensor]:
    """Copies of the tensors of kept layers under their new layer numbers (removed layers dropped)."""
    out = {}
    for key, t in state.items():
        parts = key.split(".")
        if len(parts) > 2 and parts[0] == "module_list" and parts[1].isdigit():
            if int(parts[1]) not in index:
                continue
            key = ".".join(["module_list", str(index[int(parts[1])]), *parts[2:]])
        out[key] = t.detach().clone()
    return out


# ------------------------------------------------------------------------------------ pipeline
@dataclass
class LayerResult:
    """Output of :func:`layer_prune`. ``blocks``: every removable block of the source; ``removed``:
    those cut; ``index``: old -> new layer number; ``model``: the verified compact model (eval mode,
    its own tensors); ``masks``: last conv of every removed branch -> all-False keep mask (absorbed
    as a fully pruned conv); ``absorbed_state`` shares unchanged tensors with the source."""

    blocks: list[Block]
    importance: dict[int, float]
    statistic: str
    removed: list[Block]
    masks: dict[int, torch.Tensor]
    cfg: ModelCfg
    model: Darknet
    index: dict[int, int]
    absorbed_state: dict[str, torch.Tensor]
    verification: dict
    timings: dict[str, float] = field(default_factory=dict)

    def masked_state(self, source: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``source`` with the removed branches' last-conv gammas zeroed (each branch then emits its
        constant ``act(beta)``: the model the layer-pruned network approximates)."""
        return mask_gammas(source, self.masks)


def _masks(state: Mapping[str, torch.Tensor], blocks: Sequence[Block]) -> dict[int, torch.Tensor]:
    ref = {b.last: state[bn_key(b.last, "weight")] for b in blocks}
    return {i: torch.zeros(w.numel(), dtype=torch.bool, device=w.device) for i, w in ref.items()}


def layer_prune(model: Darknet, n: int, allow_empty: bool = False, statistic: str = "rms",
                verify_img_size: int = 256, tol: float = 1e-4, flag: str = "--shortcuts") -> LayerResult:
    """Remove the ``n`` least important residual blocks of ``model`` (left unchanged) and prove the
    compact model equals the absorbed one (:class:`~utils.prune.errors.VerificationError` if not).
    ``flag``: the command-line flag that set ``n`` (named when ``n`` is too large)."""
    t0 = time.perf_counter()
    cfg = model.to_cfg()
    graph = analyse(cfg)
    state = model.state_dict()
    blocks = find_blocks(cfg, graph)
    importance = block_importance(state, blocks, statistic)
    removed = select_blocks(blocks, importance, n, allow_empty, flag)
    masks = _masks(state, removed)
    absorbed = absorb(graph, state, masks)
    new_cfg, index = remove_blocks(cfg, removed)
    compact = model_from_state(new_cfg, reindex_state(absorbed, index), model.names,
                               [m.anchors for m in model.yolo_layers])
    t1 = time.perf_counter()
    report = verify(model, compact, verify_size(cfg, verify_img_size), tol, reference_state=absorbed)
    t2 = time.perf_counter()
    return LayerResult(blocks, importance, statistic, removed, masks, new_cfg, compact, index, absorbed, report,
                       {"prune": t1 - t0, "verify": t2 - t1, "total": t2 - t0})


def search_shortcuts(cfg: ModelCfg, state: Mapping[str, torch.Tensor], target: float, img_size: int,
                     allow_empty: bool = False, statistic: str = "rms") -> tuple[int, float]:
    """Smallest number of blocks whose removal keeps at most ``target`` of the conv FLOPs at
    ``img_size`` (cfg arithmetic: the removed convs' FLOPs; nothing else changes width);
    returns (n, achieved fraction). Unreachable: :class:`PruneError` naming the reachable fraction."""
    blocks = find_blocks(cfg)
    importance = block_importance(state, blocks, statistic)
    flops = layer_flops(cfg, img_size)
    full = sum(flops.values())
    order = select_blocks(blocks, importance, max_removable(blocks, allow_empty), allow_empty)
    order.sort(key=lambda b: (importance[b.shortcut], b.shortcut))  # selection for n = its prefix
    kept = full
    for n in range(len(order) + 1):
        if kept / full <= target:
            return n, kept / full
        if n < len(order):
            kept -= sum(flops[c] for c in order[n].convs)
    reachable = math.ceil(kept / full * 1e4) / 1e4
    more = "" if allow_empty else " (or pass --allow-empty)"
    raise PruneError(f"--target-flops {target} cannot be reached by removing residual blocks: removing "
                     f"all {len(order)} removable ones keeps {kept / full:.4f} of the FLOPs; ask for "
                     f"--target-flops {reachable} or more{more}")


# ------------------------------------------------------------------------------------ reporting
def layer_prefix(n: int) -> str:
    """File-name prefix of a layer-pruned model: ``layer_<n>_``."""
    return f"layer_{int(n)}_"


def block_rows(result: LayerResult) -> list[dict]:
    """One row per removable block: shortcut layer, stage, layers, importance, removed."""
    gone = {b.shortcut for b in result.removed}
    return [{"shortcut": b.shortcut, "stage": b.stage, "layers": list(b.layers),
             "importance": result.importance[b.shortcut], "removed": b.shortcut in gone}
            for b in result.blocks]


def block_table(rows: Sequence[Mapping[str, Any]], statistic: str = "rms") -> str:
    """The per-block table printed by a layer-pruning run."""
    data = [["Block (shortcut)", "C3", "Layers", f"Importance ({statistic} |gamma|)", "Removed"]]
    data += [[str(r["shortcut"]), str(r["stage"]), ",".join(map(str, r["layers"])),
              f"{r['importance']:.4g}", "yes" if r["removed"] else ""] for r in rows]
    return AsciiTable(data).table


def plot_blocks(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Bar chart of block importance, removed blocks highlighted (PNG, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 0.35 * len(rows)), 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = list(range(len(rows)))
    ax.bar(x, [r["importance"] for r in rows], color=["#d62728" if r["removed"] else "#1f77b4" for r in rows])
    ax.set_xticks(x)
    ax.set_xticklabels([f"{r['shortcut']}\nC3 {r['stage']}" for r in rows], fontsize=6)
    ax.set_xlabel("residual block (shortcut layer, C3 module); red: removed")
    ax.set_ylabel("importance")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")  # the format by name: staged outputs have a temporary suffix
    return path


def history_entry(result: LayerResult, parent: str | Path, settings: Mapping[str, Any],
                  figures: Mapping[str, Any] | None = None, seconds: float | None = None) -> dict:
    """The checkpoint history entry of one layer-pruning step (layer numbers are the parent's;
    ``layer_map`` gives the new number of every kept layer)."""
    return {
        "step": STEP, "shortcuts": len(result.removed), "parent": str(Path(parent).resolve()),
        "removed": [{"shortcut": b.shortcut, "layers": list(b.layers), "stage": b.stage,
                     "importance": result.importance[b.shortcut]} for b in result.removed],
        "importance": {"statistic": result.statistic,
                       "blocks": {str(b.shortcut): result.importance[b.shortcut] for b in result.blocks}},
        "layer_map": {str(k): v for k, v in sorted(result.index.items())},
        "settings": dict(settings), "figures": dict(figures or {}),
        "verification": result.verification, "prune_seconds": seconds,
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
    }


def renumber_history(history: Sequence[Mapping[str, Any]]) -> list[dict]:
    """A copy of ``history`` whose sparsity steps' ``layers`` use today's layer numbers: each later
    layer-pruning step's ``layer_map`` is applied (layers it removed are dropped)."""
    out = [dict(h) if isinstance(h, Mapping) else h for h in history]
    for k, entry in enumerate(out):
        if not isinstance(entry, Mapping) or entry.get("step") != STEP or not entry.get("layer_map"):
            continue
        mapping = {int(a): int(b) for a, b in entry["layer_map"].items()}
        for earlier in out[:k]:
            if isinstance(earlier, dict) and earlier.get("step") == "sparsity" and earlier.get("layers"):
                earlier["layers"] = [mapping[int(i)] for i in earlier["layers"] if int(i) in mapping]
    return out


def sparsity_note(history: Sequence[Mapping[str, Any]], weights: str, blocks: Sequence[Block]) -> str | None:
    """A warning when the gammas that rank the blocks (their last convs') were never pushed toward 0."""
    steps = [h for h in renumber_history(history) if isinstance(h, Mapping) and h.get("step") == "sparsity"]
    if not steps or steps[-1].get("sr") is False or steps[-1].get("scale") == 0:
        return (f"{weights} was not sparsity-trained with the penalty on; the gammas of a model never pushed "
                f"toward 0 rank residual blocks poorly, and removing blocks usually costs much accuracy "
                f"(run train_sparsity.py -sr --prune 1 first)")
    layers = steps[-1].get("layers")
    missing = [b.shortcut for b in blocks if layers is not None and b.last not in {int(i) for i in layers}]
    if missing:
        return (f"{weights}: the last convs of {len(missing)} residual blocks (e.g. the block adding at layer "
                f"{missing[0]}) were not sparsity-regularised, so their ranking says little "
                f"(train_sparsity.py --prune 1 regularises them)")
    return None
