"""Opening any weights file: ours, upstream YOLOv5 ``.pt``, or a bare cfg-model state dict.

:func:`load_checkpoint` returns a checkpoint dict in our format whatever the file was:

- our own checkpoints (read with ``weights_only=True``, checksum verified);
- upstream YOLOv5 v6.x/v7.0 pickles, through the restricted importer in :mod:`models.upstream`;
- the bare ``module_list.*`` state dicts of older prune tools, whose ``.cfg`` must then be given.

:func:`load_model` goes on to the evaluation-ready model.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .build import check_cfg_matches, load_cfg_file, load_state, model_from_checkpoint
from .checkpoint import CheckpointError, is_checkpoint, looks_like_torch_file, make_checkpoint, read_checkpoint
from .darknet import Darknet
from .upstream import UpstreamError, import_upstream

__all__ = ["load_checkpoint", "load_model"]

_DESCRIPTIONS = (".yaml", ".yml", ".cfg", ".data")


def _check_file(path: Path) -> None:
    """One sentence for files that cannot be weights at all."""
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found; check the path given to --weights")
    if path.suffix.lower() in _DESCRIPTIONS:
        raise CheckpointError(f"{path}: this is a {path.suffix} description, not a weights file; "
                              f"pass it to --cfg or --data and give a .pt file to --weights")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the weights file is empty; write or download it again")
    if not looks_like_torch_file(path):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint, or a truncated one (no zip "
                              f"directory or pickle header found); write or download it again")


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [""])[0][:200]


def load_checkpoint(weights: str | Path, cfg: str | Path | None = None, verbose: bool = True) -> dict:
    """Read any supported weights file and return a checkpoint dict in our format.

    ``cfg`` is needed only for bare state dicts written by older prune tools.
    """
    path = Path(weights)
    _check_file(path)
    try:
        obj = read_checkpoint(path)
    except CheckpointError:
        raise
    except Exception as e:  # upstream pickles need the restricted importer
        try:
            return import_upstream(path, verbose=verbose)
        except UpstreamError:
            raise
        except Exception as e2:
            raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: "
                                  f"{_first_line(e)}; as upstream file: {_first_line(e2)}); the file "
                                  f"may be truncated or from another program") from None
    if is_checkpoint(obj):
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
    model = Darknet(load_cfg_file(cfg))
    load_state(model, {k: v.float() if v.is_floating_point() else v for k, v in state.items()},
               f"{path} with {cfg}")
    return make_checkpoint(model, history=[{"step": "import", "source": str(path),
                                            "format": "cfg state dict", "cfg": str(cfg)}])


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
