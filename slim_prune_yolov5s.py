"""Channel pruning, strategy 3 (slim): a global threshold with a per-layer minimum
(``--layer_keep``); shortcut groups keep the union of their members' channels. For ``--prune 1`` models.

    python slim_prune_yolov5s.py --cfg cfg/yolov5s.cfg --data data/oxfordhand.data \
        --weights weights/yolov5s_prune1.pt --global_percent 0.8 --layer_keep 0.01

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
    return run("3", argv)


if __name__ == "__main__":
    raise SystemExit(main())
