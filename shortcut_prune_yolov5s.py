"""Channel pruning, strategy 2 (shortcut): shortcut groups are pruned too, every member taking the
mask of the group's first conv; for models sparsity-trained with ``--prune 1``.

    python shortcut_prune_yolov5s.py --cfg cfg/yolov5s.cfg --data data/oxfordhand.data \
        --weights weights/yolov5s_prune1.pt --percent 0.3

Writes the pruned cfg and checkpoint (seed names: ``prune_<p>_...``), a JSON report and a channel
chart; ``--help`` lists every flag. The pipeline lives in ``utils/prune``.
"""
from __future__ import annotations

from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from utils.prune.cli import run

    return run("2", argv)


if __name__ == "__main__":
    raise SystemExit(main())
