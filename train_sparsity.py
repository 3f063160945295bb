"""Step 2: sparsity training - the training of step 1 plus an L1 penalty on BatchNorm gammas.

    python train_sparsity.py --img 640 --batch 16 --epochs 50 --data data/coco_hand.yaml \
        --cfg models/yolov5s.yaml --weights runs/train/s_hand/weights/last.pt \
        --name s_hand_sparsity -sr --scale 0.001 --prune 1

``--prune 0`` regularises the layers that prune_yolov5s.py (strategy 1) may prune; ``--prune 1``
every prunable layer (strategies 2, 3 and 8x). Without ``-sr`` it trains normally but still
logs the gamma statistics. With SGD the penalty is added to the gradient (the original method);
with Adam/AdamW it is applied decoupled, as a soft-threshold after each step. Effective strength:
see utils/prune/sparsity.py (``--sr-per-image``).
"""
from __future__ import annotations

import argparse
import sys

from utils.engine import TrainConfig, Trainer, TrainError, add_config_args, config_from_args, run_training
from utils.errors import cli_main
from utils.prune.graph import sparsity_layers
from utils.prune.sparsity import SparsityHook, SparsityLogger, sparsity_form

GROUPS = ("train", "sparsity")


def parse_args(argv=None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_args(p, GROUPS)
    return config_from_args(p.parse_args(argv))


def configure(trainer: Trainer) -> None:
    """Register the penalty hook and the gamma statistics with the engine."""
    c = trainer.config
    layers = sparsity_layers(trainer.model.cfg, c.prune, include_upsample=c.include_upsample,
                             include_sppf=c.include_sppf)
    if not layers:
        raise TrainError(f"--prune {c.prune}: the model has no prunable BatchNorm layers "
                         f"(-sr needs convs with batch_normalize=1)")
    form = sparsity_form(c.optimizer)
    print(("shortcut" if c.prune else "normal") + f" sparse training: {len(layers)} layers"
          + (f" ({form} {c.sr_penalty} penalty for {c.optimizer})" if c.sr else " (-sr off: statistics only)"))
    trainer.register(SparsityLogger(layers, trainer.save_dir))
    if c.sr:
        try:
            hook = SparsityHook(layers, c.scale, c.sr_schedule, c.sr_decay_epoch_frac, c.sr_decay_factor,
                                c.sr_local_keep, c.sr_per_image, c.epochs, form=form, penalty=c.sr_penalty,
                                polar_t=c.sr_polar_t, polar_mean=c.sr_polar_mean, polar_quantile=c.sr_polar_quantile)
        except ValueError as e:  # a flag value out of its range: the message names the flag
            raise TrainError(str(e)) from None
        trainer.register(hook)
    polar = c.sr and c.sr_penalty == "polarization"
    trainer.history_extra.update({
        "sr": bool(c.sr), "scale": c.scale if c.sr else 0.0, "schedule": c.sr_schedule,
        "per_image": bool(c.sr_per_image), "prune": c.prune, "layers": layers,
        "sr_form": form if c.sr else None, "sr_penalty": c.sr_penalty if c.sr else None,
        "sr_polar_t": c.sr_polar_t if polar else None, "sr_polar_mean": c.sr_polar_mean if polar else None,
        "sr_polar_quantile": c.sr_polar_quantile if polar else None})


@cli_main
def main(argv=None) -> int:
    run_training(parse_args(argv), step="sparsity", configure=configure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
