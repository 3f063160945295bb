"""Layer pruning: remove the least important residual blocks (the bottlenecks inside C3 modules)
of any YOLOv5 model, P6 included; each block's constant output is absorbed into its readers.

    python layer_prune_yolov5s.py --weights runs/train/exp/weights/last.pt --shortcuts 4
    python layer_prune_yolov5s.py --weights last.pt --target-flops 0.8 --no-eval

Writes the pruned cfg and checkpoint (prefix ``layer_<N>_``), a JSON report and a block chart, all
four or none; ``--help`` lists every flag. The result is an ordinary model: finetune, evaluate,
export or channel-prune it like any other. The library lives in ``utils/prune/layers.py``.
"""
from __future__ import annotations

from typing import Sequence

from utils.errors import cli_main
from utils.prune.cli import run_layers


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    return run_layers(argv)


if __name__ == "__main__":
    raise SystemExit(main())
