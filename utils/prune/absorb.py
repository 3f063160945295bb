"""Constant absorption: make pruned channels exactly zero without changing what consumers see.

Sparsity training shrinks gamma, not beta, so a channel with gamma = 0 still emits the constant
``a = act(beta)`` (BN in eval mode). Dropping the channel would shift every consumer's input. We set
the channel's gamma and beta to 0 (it now emits act(0) = 0) and add its constant to every consumer
instead: a consumer conv with weights W sees ``x + a`` on those channels, i.e. an extra
``delta = sum_{u,v} W[:, :, u, v] @ a`` (O-vector) in its pre-activation, absorbed as
``running_mean -= delta`` when it has BN, ``bias += delta`` otherwise.

The constant reaches a consumer through any chain of routes (concat offsets), shortcuts (the sum of
both inputs' constants), upsample and maxpool (max(x + a) = max(x) + a, padding is -inf): the
channel-origin map of :mod:`utils.prune.graph` says which producer channels every input channel sums,
so no layer type needs a special case. The result is exact wherever a consumer's kernel window does
not reach into the zero padding (1x1 convs: everywhere).

Functions here take and return state dicts; unchanged tensors are shared, changed ones are new.
"""
from __future__ import annotations

from typing import Mapping

import torch

from models.darknet import make_activation

from .graph import IMAGE, PruneGraph

__all__ = ["bn_key", "conv_key", "pruned_constants", "input_constant", "absorb", "mask_gammas"]


def bn_key(i: int, name: str) -> str:
    return f"module_list.{i}.BatchNorm2d.{name}"


def conv_key(i: int, name: str) -> str:
    return f"module_list.{i}.Conv2d.{name}"


def _activate(name: str, x: torch.Tensor) -> torch.Tensor:
    act = make_activation(str(name))
    return x if act is None else act(x)


def pruned_constants(graph: PruneGraph, state: Mapping[str, torch.Tensor],
                     masks: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """conv -> (C,) constant its pruned channels emit (0 on kept channels); convs without pruned
    channels are left out."""
    out = {}
    for i, mask in masks.items():
        if bool(mask.all()):
            continue
        beta = state[bn_key(i, "bias")]
        value = _activate(graph.cfg.layers[i].get("activation"), beta.detach())
        out[i] = torch.where(mask, torch.zeros_like(value), value)
    return out


def input_constant(graph: PruneGraph, i: int, constants: Mapping[int, torch.Tensor]) -> torch.Tensor | None:
    """(C_in,) constant carried by the input of conv ``i``, or None when it carries none."""
    parts, any_constant = [], False
    for seg in graph.input_origin(i):
        total = None
        for producer, start in seg.terms:
            if producer == IMAGE or producer not in constants:
                continue
            piece = constants[producer][start:start + seg.length]
            total = piece if total is None else total + piece
            any_constant = True
        parts.append(total if total is not None else seg.length)
    if not any_constant:
        return None
    ref = next(p for p in parts if isinstance(p, torch.Tensor))
    return torch.cat([p if isinstance(p, torch.Tensor) else ref.new_zeros(p) for p in parts])


@torch.no_grad()
def absorb(graph: PruneGraph, state: Mapping[str, torch.Tensor],
           masks: Mapping[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The "keep-size" state dict: pruned channels zeroed, their constants moved into consumers."""
    out = dict(state)
    constants = pruned_constants(graph, state, masks)
    for i in constants:
        m = masks[i].to(state[bn_key(i, "weight")].dtype)
        out[bn_key(i, "weight")] = state[bn_key(i, "weight")] * m
        out[bn_key(i, "bias")] = state[bn_key(i, "bias")] * m
    consumers = sorted({c for i in constants for c in graph.consumers.get(i, ())})
    for c in consumers:
        a = input_constant(graph, c, constants)
        if a is None:
            continue
        w = state[conv_key(c, "weight")]  # (O, I, k, k); groups == 1 for consumers of prunable convs
        delta = w.sum((2, 3)) @ a.to(w.dtype)  # (O,)
        if graph.cfg.layers[c].bn:
            out[bn_key(c, "running_mean")] = out[bn_key(c, "running_mean")] - delta
        else:
            out[conv_key(c, "bias")] = out[conv_key(c, "bias")] + delta
    return out


def mask_gammas(state: Mapping[str, torch.Tensor], masks: Mapping[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The "masked" state dict: gamma of pruned channels set to 0, nothing else changed (the model
    the pruned network approximates; evaluating it shows what pruning costs before finetuning)."""
    out = dict(state)
    for i, mask in masks.items():
        key = bn_key(i, "weight")
        out[key] = state[key] * mask.to(state[key].dtype)
    return out
