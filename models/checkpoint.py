"""Self-describing checkpoints: save, load, rebuild the model from the file alone.

A checkpoint is a plain dict readable with ``torch.load(f, weights_only=True)``:

=============== ===================================================================================
``format``      ``"yolov5-prune/1"``
``cfg``         cfg text of the model as saved (current widths, trained anchors)
``model``       state dict (float32)
``ema``         EMA state dict or None (loading prefers it)
``updates``     EMA update count
``names``       class names
``stride``      per-level strides
``epoch``       last finished epoch (-1 when stripped)
``best_fitness`` best fitness so far or None
``optimizer``   optimizer state dict or None
``hyp``         hyperparameters dict
``opt``         the options the step ran with (plain values)
``history``     list of ``{"step": "train" | "sparsity" | "prune" | "finetune" | "import", ...}``
``date``        ISO time of writing
=============== ===================================================================================

Besides ours, :func:`load_checkpoint` reads upstream YOLOv5 ``.pt`` files (through the restricted
importer in :mod:`models.upstream`) and the bare cfg-model state dicts of older prune tools (their
``.cfg`` must then be given).
"""
from __future__ import annotations

import datetime as _dt
import os
import uuid
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from .cfg import CfgError, ModelCfg, format_cfg, parse_cfg, read_cfg
from .darknet import Darknet

__all__ = [
    "FORMAT", "CheckpointError", "atomic_save", "save_checkpoint", "load_checkpoint",
    "make_checkpoint", "model_from_checkpoint", "load_model", "load_cfg_file", "build_model",
]

FORMAT = "yolov5-prune/1"


class CheckpointError(ValueError):
    """A weights file cannot be used; the message names the file and what to do."""


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``.

    A crash at any point leaves either the previous file or the new one, never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    # os.open with 0o666 lets the umask decide the mode, as for any new file (mkstemp gives 0600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    model = getattr(model, "module", model)  # DDP
    return {k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
            for k, v in model.state_dict().items()}


def make_checkpoint(model: Darknet, *, ema: torch.nn.Module | None = None, updates: int = 0,
                    epoch: int = -1, best_fitness: float | None = None, optimizer=None,
                    hyp: dict | None = None, opt: dict | None = None,
                    history: list[dict] | None = None, **extra) -> dict:
    """The checkpoint dict for ``model`` (cfg text taken from its current widths and anchors)."""
    model = getattr(model, "module", model)
    ckpt = {
        "format": FORMAT,
        "cfg": format_cfg(model.to_cfg()),
        "model": _state_dict(model),
        "ema": _state_dict(ema) if ema is not None else None,
        "updates": int(updates),
        "names": list(model.names),
        "stride": [float(s) for s in model.stride.tolist()],
        "epoch": int(epoch),
        "best_fitness": None if best_fitness is None else float(best_fitness),
        "optimizer": optimizer.state_dict() if hasattr(optimizer, "state_dict") else optimizer,
        "hyp": _plain(dict(hyp or {})),
        "opt": _plain(opt or {}),
        "history": _plain(list(history or [])),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    ckpt.update(extra)
    return ckpt


def _plain(value: Any) -> Any:
    """Options as plain Python values (Paths to str, namespaces to dicts) for weights_only loads."""
    if hasattr(value, "__dict__") and not isinstance(value, type):
        value = vars(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return value.item()
    return str(value)


def save_checkpoint(path: str | Path, model: Darknet | None = None, ckpt: dict | None = None,
                    **fields) -> Path:
    """Write a checkpoint atomically, from a model (+ fields) or a ready dict."""
    if ckpt is None:
        if model is None:
            raise ValueError("save_checkpoint needs a model or a checkpoint dict")
        ckpt = make_checkpoint(model, **fields)
    return atomic_save(ckpt, path)


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def _is_zip_or_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return zipfile.is_zipfile(path) or head[:1] == b"\x80"


def load_checkpoint(weights: str | Path, cfg: str | Path | None = None, verbose: bool = True) -> dict:
    """Read any supported weights file and return a checkpoint dict in our format.

    ``cfg`` is needed only for bare state dicts written by older prune tools.
    """
    path = Path(weights)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    if path.suffix.lower() in (".yaml", ".yml", ".cfg", ".data"):
        raise CheckpointError(f"{path}: this is a {path.suffix} description, not a weights file; "
                              f"pass it to --cfg or --data and give a .pt file to --weights")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the weights file is empty; write or download it again")
    if not _is_zip_or_pickle(path):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint, or a truncated one (no zip "
                              f"directory or pickle header found); write or download it again")
    try:
        with warnings.catch_warnings():  # a failure here is expected for upstream pickles
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # upstream pickles need the restricted importer
        from .upstream import UpstreamError, import_upstream  # local: optional heavy path
        try:
            return import_upstream(path, verbose=verbose)
        except UpstreamError:
            raise
        except Exception as e2:
            raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:200]}; as upstream file: {e2}). "
                                  f"Is the file truncated or from another program?") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return obj
    state = obj.get("model") if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else obj
    if isinstance(state, dict) and any(str(k).startswith("module_list.") for k in state):
        return _from_bare_state_dict(path, state, cfg)
    what = f"keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
    raise CheckpointError(f"{path}: not a YOLOv5 checkpoint (it holds {what}); pass a checkpoint "
                          f"written by this toolkit or by YOLOv5 v6.x/v7.0")


def _from_bare_state_dict(path: Path, state: dict, cfg: str | Path | None) -> dict:
    if cfg is None:
        raise CheckpointError(f"{path}: a bare cfg-model state dict (older prune tool format) "
                              f"does not describe its architecture; pass its .cfg with --cfg")
    model_cfg = load_cfg_file(cfg)
    model = Darknet(model_cfg)
    _load_state(model, {k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                f"{path} with {cfg}")
    return make_checkpoint(model, history=[{"step": "import", "source": str(path),
                                            "format": "cfg state dict", "cfg": str(cfg)}])


def _load_state(model: Darknet, state: dict, what: str,
                hint: str = "Use the cfg the weights were saved with (or omit --cfg).") -> None:
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


def load_cfg_file(cfg: str | Path, nc: int | None = None) -> ModelCfg:
    """A ``.cfg`` or upstream ``.yaml`` model description -> ModelCfg."""
    path = Path(cfg)
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        from .translate import yaml_to_cfg
        return yaml_to_cfg(path, nc=nc)
    if suffix == ".cfg":
        c = read_cfg(path)
        return c.with_head(nc=nc) if nc is not None and nc != c.nc else c
    if suffix in (".pt", ".pth", ".data"):
        raise CfgError(f"{path}: expected a model description (.cfg or .yaml) here, got {suffix}")
    raise CfgError(f"{path}: unknown model description type {suffix!r} (use .cfg or .yaml)")


def build_model(cfg: str | Path | ModelCfg, nc: int | None = None) -> Darknet:
    """A freshly initialised model from a ``.cfg``/``.yaml`` path (or a parsed cfg)."""
    model_cfg = cfg if isinstance(cfg, ModelCfg) else load_cfg_file(cfg, nc)
    if isinstance(cfg, ModelCfg) and nc is not None and nc != model_cfg.nc:
        model_cfg = model_cfg.with_head(nc=nc)
    model = Darknet(model_cfg)
    _initialize(model)
    return model


def _initialize(model: Darknet) -> None:
    """YOLOv5-style init: default conv init, BN eps/momentum, detection bias priors."""
    import math
    for i, layer in zip(model.yolo_indices, model.yolo_layers):
        conv = model.module_list[model.cfg.layers[i].inputs[0]].Conv2d
        if conv.bias is None:
            continue
        with torch.no_grad():
            b = conv.bias.view(layer.na, -1)
            b[:, 4] += math.log(8 / (640 / layer.stride) ** 2)  # objectness prior
            b[:, 5:] += math.log(0.6 / (max(b.shape[1] - 5, 1) - 0.99999))  # class prior


def model_from_checkpoint(ckpt: dict, prefer_ema: bool = True, verbose: bool = False,
                          source: str = "checkpoint") -> Darknet:
    """Rebuild the model described by a checkpoint dict and load its (EMA) weights."""
    try:
        model_cfg = parse_cfg(ckpt["cfg"], f"{source} [cfg]")
    except KeyError:
        raise CheckpointError(f"{source}: checkpoint has no 'cfg'") from None
    model = Darknet(model_cfg)
    use_ema = prefer_ema and ckpt.get("ema") is not None
    _load_state(model, ckpt["ema"] if use_ema else ckpt["model"], source)
    model.names = list(ckpt.get("names") or model.names)
    if verbose:
        print(f"{source}: loaded {'EMA' if use_ema else 'model'} weights")
    return model


def load_model(weights: str | Path, device: str | torch.device = "cpu", cfg: str | Path | None = None,
               verbose: bool = True) -> Darknet:
    """Our checkpoint, an upstream ``.pt`` or (with ``cfg``) a bare state dict -> eval float32 model.

    When ``cfg`` is given for one of our checkpoints it must agree in topology and widths; classes
    and anchors always come from the checkpoint.
    """
    ckpt = load_checkpoint(weights, cfg=cfg, verbose=verbose)
    model = model_from_checkpoint(ckpt, verbose=verbose, source=str(weights))
    if cfg is not None:
        check_cfg_matches(load_cfg_file(cfg), model.cfg, str(cfg), str(weights))
    return model.float().eval().to(device)


def check_cfg_matches(given: ModelCfg, saved: ModelCfg, cfg_name: str, weights_name: str) -> None:
    """A user's ``--cfg`` must describe the checkpoint's network; classes/anchors may differ."""
    def shape(c: ModelCfg):
        return [(l.type, l.inputs, l.options.get("filters") if l.type == "convolutional"
                 and l.inputs and not _is_detect(c, i) else None) for i, l in enumerate(c.layers)]
    if shape(given) != shape(saved):
        raise CheckpointError(f"{cfg_name} does not match the network stored in {weights_name} "
                              f"(layer types, connections or widths differ); omit --cfg to use the "
                              f"checkpoint's own cfg")
    if given.nc != saved.nc or given.level_anchors() != saved.level_anchors():
        print(f"WARNING: {cfg_name} differs from {weights_name} in classes or anchors; "
              f"using the checkpoint's (nc={saved.nc})")


def _is_detect(cfg: ModelCfg, i: int) -> bool:
    return any(cfg.layers[y].inputs[0] == i for y in cfg.yolo_indices)
