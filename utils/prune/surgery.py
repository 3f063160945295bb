"""Surgery: (cfg, state dict, masks) -> (compact cfg, compact state dict), and its proof.

A conv keeps the output channels its mask keeps; its input keeps the channels that survive in the
layer it reads, read off the channel-origin map (a channel survives when its producing conv keeps
it; image channels always survive). Concats, shortcuts, upsample, maxpool and SPPF's 4-way concat
need no rule of their own. The compact model must then reproduce the absorbed full-size model
(pruned channels there are exact zeros), which :func:`verify` checks on a fixed random input.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from models.cfg import ModelCfg, validate
from models.darknet import Darknet

from .absorb import conv_key
from .errors import PruneError, VerificationError
from .graph import IMAGE, PruneGraph

__all__ = ["PruneError", "VerificationError", "input_keep", "compact_cfg", "compact_state",
           "model_from_state", "verify_size", "verify", "channel_counts"]


def _segment_keep(graph_layer: int, seg, masks: Mapping[int, torch.Tensor]) -> torch.Tensor | None:
    """Keep vector of one summed segment (None: all kept); every term must agree."""
    pieces = [masks[p][s:s + seg.length] if p != IMAGE and p in masks else None for p, s in seg.terms]
    partial = [q for q in pieces if q is not None and not bool(q.all())]
    if not partial:
        return None
    if len(partial) != len(pieces) or any(not torch.equal(partial[0], q) for q in partial[1:]):
        raise PruneError(f"the input of layer {graph_layer} sums channels of layers {seg.producers} "
                         f"whose masks differ; convs tied by a [shortcut] must keep the same channels")
    return partial[0]


def input_keep(graph: PruneGraph, i: int, masks: Mapping[int, torch.Tensor]) -> torch.Tensor | None:
    """Bool (C_in,) of the input channels of conv ``i`` that survive, None when all do.

    Every term of a summed channel must agree (shortcut groups share masks); otherwise the compact
    model would add channels that do not correspond, and this raises :class:`PruneError`.
    """
    origin = graph.input_origin(i)
    parts = [_segment_keep(i, seg, masks) for seg in origin]
    present = [p for p in parts if p is not None]
    if not present:
        return None
    ones = present[0].new_ones
    return torch.cat([ones(seg.length) if p is None else p for p, seg in zip(parts, origin)])


def compact_cfg(cfg: ModelCfg, masks: Mapping[int, torch.Tensor]) -> ModelCfg:
    """Copy of ``cfg`` with ``filters`` of every masked conv set to its kept count."""
    new = cfg.copy()
    for i, mask in masks.items():
        new.layers[i].options["filters"] = int(mask.sum())
    return validate(new)


def _layer_of(key: str) -> int | None:
    parts = key.split(".")
    if len(parts) > 2 and parts[0] == "module_list" and parts[1].isdigit():
        return int(parts[1])
    return None


@torch.no_grad()
def compact_state(graph: PruneGraph, state: Mapping[str, torch.Tensor],
                  masks: Mapping[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    """State dict of the compact model: kept output channels of every masked conv, kept input
    channels of every conv reading a pruned layer. All tensors are new (nothing is shared with
    ``state``), so the compact model can be trained without touching the source."""
    index: dict[int, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
    for i in graph.convs:
        mask = masks.get(i)
        out_idx = None if mask is None or bool(mask.all()) else mask.nonzero().flatten()
        keep_in = input_keep(graph, i, masks)
        in_idx = None if keep_in is None else keep_in.nonzero().flatten()
        if (out_idx is not None or in_idx is not None) and graph.cfg.layers[i].get("groups") != 1:
            raise PruneError(f"layer {i} is a grouped conv; its channels cannot be cut here")
        index[i] = (out_idx, in_idx)
    out = {}
    for key, t in state.items():
        i = _layer_of(key)
        out_idx, in_idx = index.get(i, (None, None)) if i is not None else (None, None)
        if key.endswith("num_batches_tracked") or (out_idx is None and in_idx is None):
            out[key] = t.clone()
            continue
        if out_idx is not None:
            t = t.index_select(0, out_idx)
        if in_idx is not None and key == conv_key(i, "weight"):
            t = t.index_select(1, in_idx)
        out[key] = t  # index_select made a new tensor
    return out


def model_from_state(cfg: ModelCfg, state: Mapping[str, torch.Tensor], names: Sequence[str] | None = None,
                     anchors: Sequence[torch.Tensor] | None = None) -> Darknet:
    """A Darknet whose parameters *are* the tensors of ``state`` (no random init, no copy).

    The modules are built on the meta device and the tensors assigned, which keeps surgery cheap.
    ``anchors``: per-level (na, 2) pixel anchors (default: the cfg's). Returned in eval mode.
    """
    with torch.device("meta"):
        model = Darknet(cfg)
    try:
        model.load_state_dict(dict(state), strict=True, assign=True)
    except RuntimeError as e:
        raise PruneError(f"weights do not fit the pruned cfg: {str(e).splitlines()[0]}") from None
    device = next(iter(state.values())).device
    level_anchors = anchors if anchors is not None else [torch.tensor(a) for a in cfg.level_anchors()]
    for layer, a in zip(model.yolo_layers, level_anchors):
        layer.anchors = a.detach().float().clone().to(device)
    if names is not None:
        model.names = list(names)
    return model.eval()


def verify_size(cfg: ModelCfg, size: int = 256) -> int:
    """``size`` rounded up to a multiple of the largest stride (256 suits P5 and P6 models)."""
    step = int(max(cfg.strides or [32]))
    return -(-size // step) * step


@torch.no_grad()
def verify(reference: Darknet, compact: Darknet, img_size: int = 256, tol: float = 1e-4,
           seed: int = 0, reference_state: Mapping[str, torch.Tensor] | None = None) -> dict:
    """Compare raw per-level outputs of two models on one fixed random input.

    ``reference_state``: run ``reference`` with these tensors in place of its own (through
    ``torch.func.functional_call``; the model is left as it was), which saves building a model.
    Raises :class:`VerificationError` when any level differs by more than ``tol * max|reference|``;
    returns ``{"img_size", "max_abs_diff": [...], "max_abs_ref": [...], "max_rel_diff"}``.
    """
    p = next(reference.parameters())
    x = torch.rand(1, reference.cfg.in_channels, img_size, img_size,
                   generator=torch.Generator().manual_seed(seed)).to(p.device, p.dtype)
    modes = reference.training, compact.training
    reference.eval()
    compact.eval()
    try:
        if reference_state is None:
            ref_raw = reference(x)[1]
        else:
            ref_raw = torch.func.functional_call(reference, dict(reference_state), (x,))[1]
        out_raw = compact(x)[1]
    finally:
        reference.train(modes[0])
        compact.train(modes[1])
    diffs = [float((a - b).abs().max()) for a, b in zip(ref_raw, out_raw)]
    scales = [float(a.abs().max()) for a in ref_raw]
    bad = [k for k, (d, s) in enumerate(zip(diffs, scales)) if not d <= tol * max(s, 1e-12)]
    report = {"img_size": img_size, "max_abs_diff": diffs, "max_abs_ref": scales,
              "max_rel_diff": max(d / max(s, 1e-12) for d, s in zip(diffs, scales))}
    if bad or len(ref_raw) != len(out_raw):
        detail = ", ".join(f"level {k}: max |diff| {diffs[k]:.3g} vs max |ref| {scales[k]:.3g}" for k in bad)
        raise VerificationError(f"the compact model does not reproduce the absorbed model at "
                                f"{img_size} px ({detail}); nothing was written")
    return report


def channel_counts(graph: PruneGraph, masks: Mapping[int, torch.Tensor]) -> dict[int, tuple[int, int, int, int]]:
    """conv -> (in before, in after, out before, out after) for the compact model."""
    counts = {}
    for i in graph.convs:
        cin = graph.cfg.in_width(graph.cfg.layers[i].inputs[0])
        keep = input_keep(graph, i, masks)
        cout = graph.cfg.channels[i]
        counts[i] = (cin, cin if keep is None else int(keep.sum()), cout,
                     int(masks[i].sum()) if i in masks else cout)
    return counts
