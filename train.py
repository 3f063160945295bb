"""Step 1: train a YOLOv5 (v6) detector.

    python train.py --img 640 --batch 16 --epochs 50 --weights weights/yolov5s_v6.pt \
        --data data/coco_hand.yaml --cfg models/yolov5s.yaml --name s_hand

Writes runs/train/NAME/weights/{last,best}.pt (self-describing checkpoints), results.csv/png.
Multi-GPU: torchrun --nproc_per_node 2 train.py ... (DDP; gloo on CPU).
"""
from __future__ import annotations

import argparse
import sys

from utils.engine import add_train_args, run_training


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_train_args(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    opt = parse_args(argv)
    run_training(opt, step="train")
    return 0


if __name__ == "__main__":
    sys.exit(main())
