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

from utils.engine import Trainer, add_train_args, run_training


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_train_args(p)
    p.add_argument("--distill", action="store_true", help="distil from the unpruned teacher")
    p.add_argument("--t_weights", "--t_weight", "--t-weights", dest="t_weights", default="",
                   help="teacher weights (default: the unpruned source recorded in --weights)")
    p.add_argument("--t_cfg", "--t-cfg", dest="t_cfg", default="",
                   help="teacher cfg/yaml; must agree with --t_weights (classes/anchors from the file)")
    p.add_argument("--distill-mode", type=int, default=2, choices=[1, 2],
                   help="2: soft obj/cls targets + teacher-bounded box loss; 1: Hinton soft targets")
    p.add_argument("--temperature", type=float, default=3.0, help="distillation temperature T")
    p.add_argument("--distill-soft-weight", type=float, default=1e-4, help="mode 2 soft-target weight")
    p.add_argument("--distill-box-weight", type=float, default=1e-3, help="mode 2 bounded box weight")
    p.add_argument("--distill-kd1-weight", type=float, default=1e-3, help="mode 1 weight")
    p.add_argument("--distill-margin", type=float, default=0.0, help="bounded box margin m")
    p.add_argument("--distill-compat", action="store_true",
                   help="the original formulas: softmax over [obj, cls] and YOLOv3 box decode")
    opt = p.parse_args(argv)
    if not opt.weights and not opt.resume:
        p.error("--weights: give the pruned checkpoint to finetune")
    opt.keep_anchors = True  # anchors were trained with the model; never re-evolved here
    opt.keep_names = True
    return opt


def _teacher_path(trainer: Trainer) -> str:
    opt = trainer.opt
    if opt.t_weights:
        return opt.t_weights
    for entry in reversed(trainer.history):
        if entry.get("step") == "prune" and entry.get("parent"):
            return entry["parent"]
    raise ValueError("--distill: no teacher given and none recorded in the pruned checkpoint's "
                     "history; pass --t_weights (the unpruned checkpoint)")


def configure(trainer: Trainer) -> None:
    from models import load_model
    from utils.distill import Distiller, check_teacher

    opt = trainer.opt
    if not any(e.get("step") == "prune" for e in trainer.history):
        print(f"WARNING: {opt.weights} records no pruning step; finetuning it as it is")
    trainer.history_extra["distill"] = bool(opt.distill)
    if not opt.distill:
        return
    t_path = _teacher_path(trainer)
    if not Path(t_path).is_file():
        raise FileNotFoundError(f"--t_weights {t_path}: teacher checkpoint not found")
    teacher = load_model(t_path, device=trainer.device, cfg=opt.t_cfg or None, verbose=trainer.main)
    check_teacher(trainer.model, teacher, t_path)
    distiller = Distiller(teacher, opt.distill_mode, opt.temperature, opt.distill_soft_weight,
                          opt.distill_box_weight, opt.distill_kd1_weight, opt.distill_margin,
                          opt.distill_compat)
    trainer.loss_terms.append(distiller)
    trainer.history_extra.update({"teacher": t_path, "distill_mode": opt.distill_mode,
                                  "temperature": opt.temperature})
    print(f"Distilling from {t_path} (mode {opt.distill_mode}, T={opt.temperature})")


def main(argv=None) -> int:
    opt = parse_args(argv)
    run_training(opt, step="finetune", configure=configure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
