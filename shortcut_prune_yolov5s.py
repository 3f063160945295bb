"""Channel pruning, strategy 2 (shortcut): shortcut groups are pruned too, every member taking the
mask of the group's first conv; for models sparsity-trained with ``--prune 1``.

    python shortcut_prune_yolov5s.py --cfg cfg/yolov5s.cfg --data data/oxfordhand.data \
        --weights weights/yolov5s_prune1.pt --percent 0.3

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
    return run("2", argv)


if __name__ == "__main__":
    raise SystemExit(main())
