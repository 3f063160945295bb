"""Step 4: finetune a pruned model, optionally distilled from the unpruned teacher.

    python prune_finetune.py --img 640 --batch 16 --epochs 50 --data data/coco_hand.yaml \
        --cfg ./cfg/prune_0.6_keep_0.01_8x_yolov5s_v6_hand.cfg \
        --weights ./weights/prune_0.6_keep_0.01_8x_last_v6s.pt --name s_hand_finetune [--distill]

The pruned checkpoint describes its own architecture, so ``--cfg`` may be omitted; given, it must
agree with the checkpoint. Anchors, strides and class names come from the checkpoint. The teacher
defaults to the unpruned checkpoint recorded in the pruned file's history.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models import load_model
from utils.distill import Distiller, check_teacher
from utils.engine import TrainConfig, Trainer, TrainError, add_config_args, config_from_args, run_training
from utils.errors import cli_main

GROUPS = ("train", "finetune")


def parse_args(argv=None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_args(p, GROUPS)
    ns = p.parse_args(argv)
    if not ns.weights and not ns.resume:
        p.error("--weights: give the pruned checkpoint to finetune")
    # anchors were trained with the model (never re-evolved here); the checkpoint defines the classes
    return config_from_args(ns, keep_anchors=True, keep_names=True)


PRUNE_STEPS = ("prune", "layer_prune")  # history steps that remove channels or blocks


def _teacher_path(trainer: Trainer) -> str:
    c = trainer.config
    if c.t_weights:
        return c.t_weights
    for entry in trainer.history:  # the model before the first pruning step: the unpruned one
        if entry.get("step") in PRUNE_STEPS and entry.get("parent"):
            return entry["parent"]
    raise TrainError("--distill: no teacher given and none recorded in the pruned checkpoint's "
                     "history; pass --t_weights (the unpruned checkpoint)")


def configure(trainer: Trainer) -> None:
    """Register the distillation hook (``--distill``) with the engine."""
    c = trainer.config
    if not any(e.get("step") in PRUNE_STEPS for e in trainer.history):
        print(f"WARNING: {c.weights} records no pruning step; finetuning it as it is")
    trainer.history_extra["distill"] = bool(c.distill)
    if not c.distill:
        return
    t_path = _teacher_path(trainer)
    if not Path(t_path).is_file():
        raise TrainError(f"--t_weights {t_path}: teacher checkpoint not found; pass the unpruned checkpoint")
    teacher = load_model(t_path, device=trainer.device, cfg=c.t_cfg or None, verbose=trainer.main)
    check_teacher(trainer.model, teacher, t_path)
    trainer.register(Distiller(teacher, c.distill_mode, c.temperature, c.distill_soft_weight,
                               c.distill_box_weight, c.distill_kd1_weight, c.distill_margin, c.distill_compat))
    trainer.history_extra.update({"teacher": t_path, "distill_mode": c.distill_mode,
                                  "temperature": c.temperature})
    print(f"Distilling from {t_path} (mode {c.distill_mode}, T={c.temperature})")


@cli_main
def main(argv=None) -> int:
    run_training(parse_args(argv), step="finetune", configure=configure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
