"""What a channel costs: FLOPs and measured time per channel, for a latency-aware gamma ranking.

Plain Network Slimming ranks channels by ``|gamma|`` alone, so a FLOPs target is met with whatever
channels happen to be small, wherever they are. On a CPU the time a layer takes is not proportional
to its FLOPs: 1x1 convs at high resolution move much data per multiply-add and run at less than half
the FLOP rate of 3x3 convs at low resolution; max-pooling (SPPF) costs time but no conv FLOPs.
Removing a channel of such a layer saves more time per FLOP removed.

The cost of one output channel of a conv ``p`` is its share of every layer it touches: ``cost(p) /
C_out(p)`` for the conv itself plus, for every layer ``L`` whose input contains channels of ``p``
(through any chain of concatenations, residual adds, upsampling and max-pooling, read off the
channel-origin map), ``cost(L) * (input channels of L from p) / (input channels of L) / C_out(p)``.
Convs of a shortcut group lose a channel together, so a group is one unit: its members' own shares
plus the share of every layer that reads any member. With FLOPs as the layer cost this is exactly
the FLOPs one channel removes (the tests check it against :func:`estimate_cost`).

:func:`latency_weights` divides a channel's measured time by its FLOPs and normalises by the model's
average time per FLOP: ``w > 1`` means the channel's layers are slower per FLOP than the model on
average. The cost-aware ranking compares ``|gamma| / w``: at equal importance a channel in a slow
layer goes first, so a FLOPs target is met with the channels that cost the most time. ``w`` is
bounded by how unevenly the device runs the layers (about 0.6 to 3 for yolov5s on a CPU), so the
ranking stays a gamma ranking: it never outweighs the gap between pruned (near-zero) and important
gammas that sparsity training opens.
"""
from __future__ import annotations

import time
from typing import Mapping, Sequence

import torch

from models.cfg import ModelCfg

from .graph import PruneGraph
from .surgery import channel_counts

__all__ = ["conv_cost", "estimate_cost", "layer_flops", "profile_layers", "prune_units", "channel_costs",
           "latency_weights"]


def conv_cost(cfg: ModelCfg, i: int, img_size: int, cin: int | None = None,
              cout: int | None = None) -> tuple[int, int]:
    """(parameters, FLOPs) of conv ``i`` at ``img_size`` with ``cin`` input and ``cout`` output
    channels (default: the cfg's widths): the one count of what a conv costs.

    Parameters count the conv weights plus BN weight+bias (or the conv bias), as ``count_params``
    does; FLOPs count 2 per multiply-add, as ``count_flops`` does.
    """
    layer = cfg.layers[i]
    cin = cfg.in_width(layer.inputs[0]) if cin is None else cin
    cout = cfg.channels[i] if cout is None else cout
    k, g = layer.get("size"), layer.get("groups")
    weights = cout * (cin // g) * k * k
    side = int(round(img_size / cfg.scales[i]))
    return weights + (2 * cout if layer.bn else cout), 2 * weights * side * side


def layer_flops(cfg: ModelCfg, img_size: int) -> dict[int, float]:
    """FLOPs of every conv at ``img_size`` at the cfg's widths (:func:`conv_cost`)."""
    return {i: float(conv_cost(cfg, i, img_size)[1])
            for i, layer in enumerate(cfg.layers) if layer.type == "convolutional"}


def estimate_cost(graph: PruneGraph, masks: Mapping[int, torch.Tensor], img_size: int) -> tuple[int, int]:
    """(parameters, FLOPs) of the compact model that ``masks`` make, from cfg arithmetic alone."""
    params = flops = 0
    for i, (_, cin, _, cout) in channel_counts(graph, masks).items():
        p, f = conv_cost(graph.cfg, i, img_size, cin, cout)
        params, flops = params + p, flops + f
    return params, flops


@torch.no_grad()
def profile_layers(model: torch.nn.Module, img_size: int, runs: int = 5, warmup: int = 1) -> dict[int, float]:
    """Seconds spent in each layer module of ``model`` (batch 1, eval mode, its device): the
    minimum over ``runs`` forward passes, since interference from other work only ever adds time
    (on a loaded machine the median of 10 runs moved single weights by 1.7x between profiles, the
    minimum by 1.2x).

    Timed between a pre- and a post-forward hook of every ``model.module_list`` entry that runs a
    module (convs with their activation, max-pool, upsample, detection reshape); concatenations and
    residual adds happen in ``Darknet.forward`` itself and are not attributed. Fuse BN first to
    profile what inference runs. Synchronises CUDA around each layer, which adds overhead there.
    """
    if runs < 1:
        raise ValueError(f"profile runs must be >= 1, got {runs}")
    p = next(model.parameters())
    sync = (lambda: torch.cuda.synchronize(p.device)) if p.device.type == "cuda" else (lambda: None)
    x = torch.rand(1, model.cfg.in_channels, img_size, img_size, device=p.device, dtype=p.dtype)
    started: dict[int, float] = {}
    current: dict[int, float] = {}

    def before(i):
        def hook(module, args):
            sync()
            started[i] = time.perf_counter()
        return hook

    def after(i):
        def hook(module, args, output):
            sync()
            current[i] = current.get(i, 0.0) + time.perf_counter() - started[i]
        return hook

    handles = []
    for i, module in enumerate(model.module_list):
        handles.append(module.register_forward_pre_hook(before(i)))
        handles.append(module.register_forward_hook(after(i)))
    was_training = model.training
    model.eval()
    samples: list[dict[int, float]] = []
    try:
        for r in range(warmup + runs):
            current.clear()
            model(x)
            if r >= warmup:
                samples.append(dict(current))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {i: min(s.get(i, 0.0) for s in samples) for i in samples[0]}


def prune_units(graph: PruneGraph, groups: Sequence[Sequence[int]] | None = None) -> list[tuple[int, ...]]:
    """Convs that lose channels together: each shortcut group (``groups``, default every group of
    the graph) is one unit, every other conv its own."""
    groups = [tuple(g) for g in (graph.groups if groups is None else groups)]
    grouped = {m for g in groups for m in g}
    return groups + [(i,) for i in graph.convs if i not in grouped]


def _reader_inputs(graph: PruneGraph, layer: int):
    """(input origin, input width) of a layer that reads channels, None for the others."""
    cfg = graph.cfg
    t = cfg.layers[layer].type
    if t == "convolutional":
        origin = graph.input_origin(layer)
    elif t in ("maxpool", "upsample", "route", "shortcut"):
        origin = tuple(s for j in cfg.layers[layer].inputs for s in
                       (graph.origins[j] if j >= 0 else graph.input_origin(layer)))
    else:
        return None
    return origin, sum(s.length for s in origin)


def channel_costs(graph: PruneGraph, layer_cost: Mapping[int, float],
                  groups: Sequence[Sequence[int]] | None = None) -> dict[int, float]:
    """conv -> cost of removing one of its output channels (see the module docstring).

    ``layer_cost``: layer index -> cost of the whole layer at its current widths (FLOPs, seconds);
    layers missing from it cost nothing. Members of a unit (:func:`prune_units`) get the unit's
    cost of one channel removed from every member at once.
    """
    cfg = graph.cfg
    readers = {}
    for layer, cost in layer_cost.items():
        if cost and cfg.layers[layer].type != "yolo":
            got = _reader_inputs(graph, layer)
            if got is not None and got[1] > 0:
                readers[layer] = got
    out: dict[int, float] = {}
    for unit in prune_units(graph, groups):
        members = set(unit)
        width = cfg.channels[unit[0]]
        total = sum(layer_cost.get(m, 0.0) / width for m in unit)
        for layer, (origin, in_width) in readers.items():
            share = sum(s.length for s in origin if members.intersection(s.producers))
            if share:
                total += layer_cost[layer] * share / in_width / width
        for m in unit:
            out[m] = total
    return out


def latency_weights(graph: PruneGraph, layer_time: Mapping[int, float], img_size: int,
                    groups: Sequence[Sequence[int]] | None = None) -> dict[int, float]:
    """conv -> measured time per FLOP of removing one of its channels, relative to the model's
    average time per FLOP (so 1.0 is average, 2.0 twice as slow per FLOP)."""
    flops = layer_flops(graph.cfg, img_size)
    per_time = channel_costs(graph, layer_time, groups)
    per_flop = channel_costs(graph, flops, groups)
    total_flops = sum(flops.values())
    total_time = sum(layer_time.get(i, 0.0) for i in flops)
    if total_time <= 0 or total_flops <= 0:
        raise ValueError("latency_weights: the profile has no conv time (was the model run?)")
    average = total_time / total_flops
    return {i: (per_time[i] / per_flop[i]) / average if per_flop[i] > 0 else 1.0 for i in per_time}
