"""Step 2: sparsity training - the training of step 1 plus an L1 penalty on BatchNorm gammas.

    python train_sparsity.py --img 640 --batch 16 --epochs 50 --data data/coco_hand.yaml \
        --cfg models/yolov5s.yaml --weights runs/train/s_hand/weights/last.pt \
        --name s_hand_sparsity -sr --scale 0.001 --prune 1

``--prune 0`` regularises the layers that prune_yolov5s.py (strategy 1) may prune; ``--prune 1``
every prunable layer (strategies 2, 3 and 8x). Without ``-sr`` it trains normally but still
logs the gamma statistics. Effective strength: see utils/sparsity.py (``--sr-per-image``).
"""
from __future__ import annotations

import argparse
import sys

from utils.engine import Trainer, add_train_args, run_training


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_train_args(p)
    p.add_argument("-sr", "--sparsity-regularization", dest="sr", action="store_true",
                   help="apply the L1 penalty on BN gammas")
    p.add_argument("--scale", "--s", dest="scale", type=float, default=0.001,
                   help="sparsity strength s")
    p.add_argument("--prune", type=int, default=1,
                   help="0: layers of strategy 1 (no shortcut groups); 1: all prunable layers")
    p.add_argument("--sr-schedule", choices=["constant", "global", "local"], default="constant")
    p.add_argument("--sr-decay-epoch-frac", type=float, default=0.5,
                   help="fraction of the epochs after which global/local decay starts")
    p.add_argument("--sr-decay-factor", type=float, default=0.01, help="decayed strength = s * factor")
    p.add_argument("--sr-local-keep", type=float, default=0.85,
                   help="local schedule: channels above this |gamma| quantile get the decayed strength")
    p.add_argument("--sr-per-image", action="store_true",
                   help="scale the penalty by images per step / 16, independent of batch size "
                        "and accumulation (default: once per accumulated batch, as the original)")
    p.add_argument("--include-upsample", action="store_true",
                   help="also regularise the convs before an upsample")
    p.add_argument("--include-sppf", action="store_true", help="also regularise the SPPF input conv")
    opt = p.parse_args(argv)
    if opt.prune not in (0, 1):
        p.error(f"--prune {opt.prune}: use 0 (strategy 1 layers) or 1 (all prunable layers)")
    if opt.scale < 0:
        p.error(f"--scale {opt.scale}: the sparsity strength must be >= 0")
    return opt


def configure(trainer: Trainer) -> None:
    """Attach the penalty hook and the gamma statistics to the engine."""
    from utils.prune.graph import sparsity_layers
    from utils.sparsity import SparsityHook, SparsityLogger

    opt = trainer.opt
    model = trainer.model
    layers = sparsity_layers(model.cfg, opt.prune, include_upsample=opt.include_upsample,
                             include_sppf=opt.include_sppf)
    if not layers:
        raise ValueError(f"--prune {opt.prune}: the model has no prunable BatchNorm layers "
                         f"(-sr needs convs with batch_normalize=1)")
    print(("shortcut" if opt.prune else "normal") + f" sparse training: {len(layers)} layers"
          + ("" if opt.sr else " (-sr off: statistics only)"))
    logger = SparsityLogger(layers, trainer.save_dir)
    trainer.train_start.append(logger.start)
    trainer.epoch_end.append(logger.epoch_end)
    trainer.train_end.append(logger.end)
    if opt.sr:
        hook = SparsityHook(layers, opt.scale, opt.sr_schedule, opt.sr_decay_epoch_frac,
                            opt.sr_decay_factor, opt.sr_local_keep, opt.sr_per_image, opt.epochs)
        trainer.after_backward.append(hook)
    trainer.history_extra.update({
        "sr": bool(opt.sr), "scale": opt.scale if opt.sr else 0.0, "schedule": opt.sr_schedule,
        "per_image": bool(opt.sr_per_image), "prune": opt.prune, "layers": layers})


def main(argv=None) -> int:
    opt = parse_args(argv)
    run_training(opt, step="sparsity", configure=configure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
