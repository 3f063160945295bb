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

from models import atomic_save, load_checkpoint
from utils.errors import UserError, cli_main
from utils.fileio import atomic_write_text


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


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    weights = Path(args.weights)
    output = Path(args.output) if args.output else default_output(weights)
    if output.resolve() == weights.resolve():
        raise UserError(f"--output {output} would overwrite the input; choose another --output")
    ckpt = load_checkpoint(weights, cfg=args.cfg)
    atomic_save(ckpt, output)
    print(f"wrote {output} ({len(ckpt['names'])} classes, strides {ckpt['stride']})")
    if args.save_cfg:
        cfg_path = atomic_write_text(output.with_suffix(".cfg"), ckpt["cfg"])
        print(f"wrote {cfg_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
