"""Building models from a description: ``.cfg``/``.yaml`` -> :class:`ModelCfg` -> :class:`Darknet`.

Fresh models get YOLOv5's initialisation (:func:`initialize`); a checkpoint dict is turned back into
its model by :func:`model_from_checkpoint`; :func:`check_cfg_matches` compares a user's ``--cfg``
with the network stored in a checkpoint.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from .cfg import CfgError, ModelCfg, parse_cfg, read_cfg
from .checkpoint import CheckpointError
from .darknet import Darknet
from .translate import yaml_to_cfg

__all__ = ["load_cfg_file", "build_model", "initialize", "load_state", "model_from_checkpoint",
           "check_cfg_matches"]


def load_cfg_file(cfg: str | Path, nc: int | None = None) -> ModelCfg:
    """A ``.cfg`` or upstream ``.yaml`` model description -> ModelCfg."""
    path = Path(cfg)
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return yaml_to_cfg(path, nc=nc)
    if suffix == ".cfg":
        c = read_cfg(path)
        return c.with_head(nc=nc) if nc is not None and nc != c.nc else c
    if suffix in (".pt", ".pth", ".data"):
        raise CfgError(f"{path}: expected a model description (.cfg or .yaml) here, got {suffix}; "
                       f"give the weights to --weights and a model .cfg or .yaml to --cfg")
    raise CfgError(f"{path}: unknown model description type {suffix!r}; give a .cfg or .yaml file")


def build_model(cfg: str | Path | ModelCfg, nc: int | None = None) -> Darknet:
    """A freshly initialised model from a ``.cfg``/``.yaml`` path (or a parsed cfg)."""
    model_cfg = cfg if isinstance(cfg, ModelCfg) else load_cfg_file(cfg, nc)
    if isinstance(cfg, ModelCfg) and nc is not None and nc != model_cfg.nc:
        model_cfg = model_cfg.with_head(nc=nc)
    model = Darknet(model_cfg)
    initialize(model)
    return model


def initialize(model: Darknet) -> None:
    """YOLOv5-style init on top of the default conv init: objectness and class bias priors.

    (BN eps/momentum are set when the model is built.)
    """
    for i, layer in zip(model.yolo_indices, model.yolo_layers):
        conv = model.module_list[model.cfg.layers[i].inputs[0]].Conv2d
        if conv.bias is None:
            continue
        with torch.no_grad():
            b = conv.bias.view(layer.na, -1)  # (na, 5 + nc)
            b[:, 4] += math.log(8 / (640 / layer.stride) ** 2)  # objectness prior
            b[:, 5:] += math.log(0.6 / (max(b.shape[1] - 5, 1) - 0.99999))  # class prior


def load_state(model: Darknet, state: dict, what: str,
               hint: str = "Use the cfg the weights were saved with (or omit --cfg).") -> None:
    """``model.load_state_dict(state)`` with one :class:`CheckpointError` listing what differs."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(filter(None, [
            f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
            f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
            f"{len(wrong)} of other shape (e.g. {wrong[0]})" if wrong else ""]))
        raise CheckpointError(f"{what}: the weights do not match the architecture: {detail}. {hint}")
    model.load_state_dict(state)


def model_from_checkpoint(ckpt: dict, prefer_ema: bool = True, verbose: bool = False,
                          source: str = "checkpoint") -> Darknet:
    """Rebuild the model described by a checkpoint dict and load its (EMA) weights."""
    if not isinstance(ckpt.get("cfg"), str):
        raise CheckpointError(f"{source}: the checkpoint holds no cfg text, so its network cannot be "
                              f"rebuilt; convert the file with convert.py (and its --cfg) first")
    model_cfg = parse_cfg(ckpt["cfg"], f"{source} [cfg]")
    model = Darknet(model_cfg)
    use_ema = prefer_ema and ckpt.get("ema") is not None
    load_state(model, ckpt["ema"] if use_ema else ckpt["model"], source)
    model.names = list(ckpt.get("names") or model.names)
    if verbose:
        print(f"{source}: loaded {'EMA' if use_ema else 'model'} weights")
    return model


def _is_detect(cfg: ModelCfg, i: int) -> bool:
    return any(cfg.layers[y].inputs[0] == i for y in cfg.yolo_indices)


def _topology(cfg: ModelCfg) -> list[tuple]:
    """(type, inputs, width) per layer; detection convs' widths left out (they follow nc)."""
    return [(l.type, l.inputs, l.options.get("filters") if l.type == "convolutional"
             and l.inputs and not _is_detect(cfg, i) else None) for i, l in enumerate(cfg.layers)]


def check_cfg_matches(given: ModelCfg, saved: ModelCfg, cfg_name: str, weights_name: str) -> None:
    """A user's ``--cfg`` must describe the checkpoint's network; classes/anchors may differ."""
    if _topology(given) != _topology(saved):
        raise CheckpointError(f"{cfg_name} does not match the network stored in {weights_name} "
                              f"(layer types, connections or widths differ); omit --cfg to use the "
                              f"checkpoint's own cfg")
    if given.nc != saved.nc or given.level_anchors() != saved.level_anchors():
        print(f"WARNING: {cfg_name} differs from {weights_name} in classes or anchors; "
              f"using the checkpoint's (nc={saved.nc})")
