"""Convert weights to this toolkit's checkpoint format.

    python convert.py --weights yolov5s.pt                      # -> yolov5s_converted.pt beside it
    python convert.py --weights yolov5s.pt --output weights/yolov5s_v6.pt --save-cfg

Reads an upstream YOLOv5 v6.x/v7.0 ``.pt`` (released weights or a ``train.py`` checkpoint, EMA
weights preferred) without running upstream code, or a bare cfg-model state dict together with its
``--cfg``, and writes a self-describing checkpoint (cfg text, weights, names, anchors, strides).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.cfg import CfgError
from models.checkpoint import CheckpointError, atomic_save, load_checkpoint


def default_output(weights: Path) -> Path:
    """``dir/name.pt`` -> ``dir/name_converted.pt`` (never the input itself)."""
    return weights.with_name(f"{weights.stem}_converted.pt")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True, help="upstream YOLOv5 .pt, or a bare state dict with --cfg")
    ap.add_argument("--output", default="", help="output checkpoint (default: <weights>_converted.pt)")
    ap.add_argument("--cfg", default=None, help="the .cfg of a bare cfg-model state dict")
    ap.add_argument("--save-cfg", action="store_true", help="also write the model's cfg beside --output")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    weights = Path(args.weights)
    output = Path(args.output) if args.output else default_output(weights)
    if output.resolve() == weights.resolve():
        print(f"convert.py: error: --output {output} would overwrite the input", file=sys.stderr)
        return 2
    try:
        ckpt = load_checkpoint(weights, cfg=args.cfg)
    except (CheckpointError, CfgError) as e:
        print(f"convert.py: error: {e}", file=sys.stderr)
        return 1
    atomic_save(ckpt, output)
    print(f"wrote {output} ({len(ckpt['names'])} classes, strides {ckpt['stride']})")
    if args.save_cfg:
        cfg_path = output.with_suffix(".cfg")
        cfg_path.write_text(ckpt["cfg"])
        print(f"wrote {cfg_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
