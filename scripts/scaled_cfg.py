"""Write a width-scaled copy of a model yaml whose FLOPs match those of a given (pruned) checkpoint.

    python scripts/scaled_cfg.py --cfg models/yolov5n.yaml --match runs/pipeline/default/pruned/prune_x.pt \
        --img 160 --out runs/pipeline/default/scratch_small.yaml

The width multiple is found by bisection on the FLOPs at ``--img`` (models/scaling.py); the classes
are those of ``--match``. Training the written yaml from scratch gives the "just train a smaller
model" alternative to pruning, at the same FLOPs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import load_model  # noqa: E402
from models.scaling import matched_width, width_yaml  # noqa: E402
from utils.errors import cli_main, positive_int  # noqa: E402
from utils.fileio import atomic_write_text  # noqa: E402
from utils.torch_utils import count_flops  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cfg", required=True, help="upstream model yaml to scale (with width_multiple)")
    p.add_argument("--match", required=True, help="checkpoint whose FLOPs (and classes) to match")
    p.add_argument("--img", type=positive_int, required=True, help="image size the FLOPs are counted at")
    p.add_argument("--out", required=True, help="the yaml to write")
    return p.parse_args(argv)


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    opt = parse_args(argv)
    model = load_model(opt.match, device="cpu", verbose=False)
    target = count_flops(model, opt.img)
    width, flops = matched_width(opt.cfg, target, lambda m: count_flops(m, opt.img), nc=int(model.nc))
    note = f"FLOPs of {Path(opt.match).name} at {opt.img} px"
    atomic_write_text(opt.out, width_yaml(opt.cfg, width, note))
    print(f"{opt.out}: {Path(opt.cfg).name} at width_multiple {width:g}: {flops / 1e9:.4f} GFLOPs at "
          f"{opt.img} px ({Path(opt.match).name}: {target / 1e9:.4f}, ratio {flops / target:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
