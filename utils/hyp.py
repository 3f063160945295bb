"""Training and augmentation hyperparameters (``--hyp``): a flat yaml of numbers.

The default, data/hyps/hyp.scratch-low.yaml, holds upstream YOLOv5 v6.2's values so results stay
comparable with upstream's; data/hyps/hyp.finetune.yaml is the gentler set for continuing from trained
weights (sparsity training, finetuning a pruned model).
"""
from __future__ import annotations

from pathlib import Path

import yaml

from utils.errors import UserError

__all__ = ["DEFAULT_HYP", "HypError", "load_hyp"]

DEFAULT_HYP = Path(__file__).resolve().parents[1] / "data" / "hyps" / "hyp.scratch-low.yaml"


class HypError(UserError, ValueError):
    """A hyperparameter file that cannot be used as given."""


def load_hyp(path: str | Path | dict | None = None) -> dict:
    """Hyperparameters {name: float} from a yaml file (default: data/hyps/hyp.scratch-low.yaml) or a dict."""
    if isinstance(path, dict):
        return dict(path)
    p = Path(path) if path else DEFAULT_HYP
    if not p.is_file():
        raise FileNotFoundError(f"--hyp {p}: hyperparameter file not found; pass a yaml such as {DEFAULT_HYP}")
    try:
        d = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise HypError(f"--hyp {p}: not a valid yaml file ({str(e).splitlines()[0]}); "
                       f"compare it with {DEFAULT_HYP.name}") from e
    if not isinstance(d, dict):
        raise HypError(f"--hyp {p}: expected 'name: number' lines, got a {type(d).__name__}; "
                       f"compare it with {DEFAULT_HYP.name}")
    bad = {k: v for k, v in d.items() if not isinstance(v, (int, float))}
    if bad:
        raise HypError(f"--hyp {p}: values must be numbers, got {bad}; fix those lines")
    return {k: float(v) for k, v in d.items()}
