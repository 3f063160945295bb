"""Step 1: train a YOLOv5 (v6) detector.

    python train.py --img 640 --batch 16 --epochs 50 --weights weights/yolov5s_v6.pt \
        --data data/coco_hand.yaml --cfg models/yolov5s.yaml --name s_hand

Writes runs/train/NAME/weights/{last,best}.pt (self-describing checkpoints), results.csv/png.
Multi-GPU: torchrun --nproc_per_node 2 train.py ... (DDP; gloo on CPU).
"""
from __future__ import annotations

import argparse
import sys

from utils.engine import TrainConfig, add_config_args, config_from_args, run_training
from utils.errors import cli_main

GROUPS = ("train",)


def parse_args(argv=None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_args(p, GROUPS)
    return config_from_args(p.parse_args(argv))


@cli_main
def main(argv=None) -> int:
    run_training(parse_args(argv), step="train")
    return 0


if __name__ == "__main__":
    sys.exit(main())
