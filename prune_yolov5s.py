"""Channel pruning, strategy 1 (conservative): the convs outside shortcut groups lose their
low-gamma channels; for models sparsity-trained with ``train_sparsity.py --prune 0``.

    python prune_yolov5s.py --cfg cfg/yolov5s.cfg --data data/oxfordhand.data \
        --weights weights/yolov5s_prune0.pt --percent 0.8
    python prune_yolov5s.py --weights runs/train/exp/weights/last.pt --target-flops 0.5 --no-eval

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
    return run("1", argv)


if __name__ == "__main__":
    raise SystemExit(main())
