"""Channel pruning, strategy 3 with every kept channel count a multiple of 8 (or the full width),
groups included; for ``--prune 1`` models.

    python slim_prune_yolov5s_8x.py --cfg cfg/yolov5s_v6_hand.cfg --data data/oxfordhand.data \
        --weights weights/last_v6s.pt --global_percent 0.5 --layer_keep 0.01 --img_size 640
    python slim_prune_yolov5s_8x.py --weights weights/last_v6s.pt --layers 2 --global_percent 0.5

``--layers N`` first removes the N least important residual blocks (as ``layer_prune_yolov5s.py``)
and prunes the channels of the result: one set of outputs (prefix ``prune_<p>_keep_<k>_8x_layer_<N>_``)
whose history records both steps.

Writes the pruned cfg and checkpoint (the original yolov5_prune's names: ``prune_<p>_...``), a JSON
report and a channel chart, all four or none; ``--help`` lists every flag. The pipeline lives in
``utils/prune``.
"""
from __future__ import annotations

from typing import Sequence

from utils.errors import cli_main
from utils.prune.cli import run


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    return run("8x", argv)


if __name__ == "__main__":
    raise SystemExit(main())
