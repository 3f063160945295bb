"""Network-Slimming sparsity: the L1 penalty on BatchNorm scale factors (gamma) and its statistics.

The penalty ``s * sum |gamma|`` over the prunable layers is applied as its subgradient: once per
optimizer step, on the live training modules (after AMP unscaling and gradient clipping),
``grad(gamma) += k * s * sign(gamma)``. By default ``k`` is the number of accumulated micro-batches,
which reproduces the original method's per-iteration update. The detection loss is a sum over the
images of a step, so with that default the penalty's weight relative to the data term is about
``s / batch_size``: halving the batch doubles the sparsifying pressure. ``per_image=True``
(``--sr-per-image``) uses ``k = images in the step / 16`` instead, which equals the default at batch
16 and keeps the strength independent of batch size and accumulation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from utils.torch_utils import de_parallel

__all__ = ["SparsityHook", "bn_gammas", "gamma_stats", "safe_prune_ratio", "quantile_table",
           "SparsityLogger", "REFERENCE_BATCH"]

REFERENCE_BATCH = 16  # batch size at which --sr-per-image equals the default strength


def _bn(model: nn.Module, i: int) -> nn.Module:
    return de_parallel(model).module_list[i].BatchNorm2d


def bn_gammas(model: nn.Module, layers: list[int]) -> list[torch.Tensor]:
    """Detached |gamma| of the given conv layers' BatchNorms, as float32 CPU tensors."""
    return [_bn(model, i).weight.detach().abs().float().cpu() for i in layers]


def safe_prune_ratio(gammas: list[torch.Tensor]) -> float:
    """Largest global prune ratio at which no layer loses all its channels.

    A global threshold above the smallest per-layer maximum |gamma| empties that layer; the ratio is
    the share of all gammas strictly below that value.
    """
    if not gammas:
        return 0.0
    flat = torch.cat([g.flatten() for g in gammas])
    limit = min(float(g.max()) for g in gammas)
    return float((flat < limit).sum()) / flat.numel()


def gamma_stats(gammas: list[torch.Tensor]) -> dict[str, float]:
    """Mean |gamma|, shares below 0.01 and 0.001, and the safe prune ratio."""
    if not gammas:
        return {"gamma_mean": 0.0, "gamma_lt_0.01": 0.0, "gamma_lt_0.001": 0.0, "safe_ratio": 0.0}
    flat = torch.cat([g.flatten() for g in gammas])
    return {
        "gamma_mean": float(flat.mean()),
        "gamma_lt_0.01": float((flat < 0.01).float().mean()),
        "gamma_lt_0.001": float((flat < 0.001).float().mean()),
        "safe_ratio": safe_prune_ratio(gammas),
    }


def quantile_table(gammas: list[torch.Tensor], title: str) -> str:
    """Terminal table of |gamma| quantiles over all regularised layers."""
    from terminaltables import AsciiTable
    flat = torch.cat([g.flatten() for g in gammas]) if gammas else torch.zeros(1)
    qs = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]
    values = torch.quantile(flat, torch.tensor(qs)).tolist()
    rows = [["quantile"] + [f"{q:.0%}" for q in qs], ["|gamma|"] + [f"{v:.4g}" for v in values]]
    table = AsciiTable(rows, title)
    return table.table


@dataclass
class SparsityHook:
    """``after_backward`` seam of the training engine: adds the L1 subgradient to BN gammas.

    ``schedule``: ``constant`` (s throughout), ``global`` (s * decay_factor after decay_frac of the
    epochs), ``local`` (after decay_frac, the channels with the largest |gamma| - the top
    ``1 - local_keep`` share over all regularised layers - get s * decay_factor, the rest keep s).
    """

    layers: list[int]
    scale: float = 1e-3
    schedule: str = "constant"
    decay_frac: float = 0.5
    decay_factor: float = 0.01
    local_keep: float = 0.85
    per_image: bool = False
    epochs: int = 1
    epoch: int = 0
    applied: int = field(default=0, init=False)

    def __post_init__(self):
        if self.scale < 0:
            raise ValueError(f"--scale {self.scale}: the sparsity strength must be >= 0")
        if self.schedule not in ("constant", "global", "local"):
            raise ValueError(f"--sr-schedule {self.schedule}: use constant, global or local")

    def decayed(self, epoch: int | None = None) -> bool:
        """Whether the decay of the global/local schedules is active at ``epoch``."""
        epoch = self.epoch if epoch is None else epoch
        return self.schedule != "constant" and epoch >= math.ceil(self.decay_frac * self.epochs)

    def strength(self, epoch: int | None = None) -> float:
        """The scalar strength of the ``global``/``constant`` schedules at ``epoch``."""
        if self.schedule == "global" and self.decayed(epoch):
            return self.scale * self.decay_factor
        return self.scale

    @torch.no_grad()
    def apply(self, model: nn.Module, n_micro: int = 1, n_images: int = REFERENCE_BATCH) -> None:
        """grad(gamma) += k * s * sign(gamma) for every regularised, trainable gamma."""
        k = n_images / REFERENCE_BATCH if self.per_image else n_micro
        params = [_bn(model, i).weight for i in self.layers]
        params = [p for p in params if p.requires_grad]
        if not params:
            return
        if self.schedule == "local" and self.decayed():
            flat = torch.cat([p.detach().abs().flatten() for p in params])
            idx = min(int(len(flat) * self.local_keep), len(flat) - 1)
            theta = flat.sort().values[idx]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            s = torch.full_like(p, self.strength())
            if self.schedule == "local" and self.decayed():
                s = torch.where(p.detach().abs() >= theta, s * self.decay_factor, s)
            p.grad.add_(k * s * torch.sign(p.detach()))
        self.applied += 1

    # engine seams
    def __call__(self, trainer, n_micro: int, n_images: int) -> None:
        self.epoch = trainer.epoch
        self.apply(trainer.model, n_micro, n_images)


class SparsityLogger:
    """Per-epoch gamma statistics (results.csv columns, progress line), plots and tables."""

    def __init__(self, layers: list[int], save_dir: Path):
        self.layers = layers
        self.save_dir = Path(save_dir)
        self.snapshots: list[tuple[int, np.ndarray]] = []  # (epoch, all |gamma|)
        self.first: list[torch.Tensor] | None = None
        self.tb = None

    def start(self, trainer) -> None:
        g = bn_gammas(trainer.model, self.layers)
        self.first = g
        self.snapshots.append((-1, torch.cat(g).numpy()))
        print(quantile_table(g, " |gamma| before training "))
        print(_stats_line(gamma_stats(g)))
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional dependency
            self.tb = SummaryWriter(str(self.save_dir))
            for i, gi in zip(self.layers, g):
                self.tb.add_histogram("before_train_perlayer_bn_weights/hist", gi.numpy(), i, bins="doane")
        except Exception:  # tensorboard not installed
            self.tb = None

    def epoch_end(self, trainer, epoch: int, row: dict) -> None:
        g = bn_gammas(trainer.model, self.layers)
        stats = gamma_stats(g)
        row.update({f"sparsity/{k}": v for k, v in stats.items()})
        self.snapshots.append((epoch, torch.cat(g).numpy()))
        print(_stats_line(stats), flush=True)
        if self.tb is not None:
            self.tb.add_histogram("bn_weights/hist", torch.cat(g).numpy(), epoch, bins="doane")

    def end(self, trainer) -> None:
        g = bn_gammas(trainer.model, self.layers)
        print(quantile_table(g, " |gamma| after training "))
        if self.tb is not None:
            for i, gi in zip(self.layers, g):
                self.tb.add_histogram("after_train_perlayer_bn_weights/hist", gi.numpy(), i, bins="doane")
            self.tb.close()
        from utils.plots import plot_gamma_boxes, plot_gamma_histograms
        plot_gamma_histograms(self.snapshots, self.save_dir / "gamma_hist.png")
        plot_gamma_boxes(self.first or g, g, self.layers, self.save_dir / "gamma_layers.png")


def _stats_line(stats: dict) -> str:
    return (f"sparsity: mean|gamma| {stats['gamma_mean']:.4g}  <0.01 {stats['gamma_lt_0.01']:.1%}  "
            f"<0.001 {stats['gamma_lt_0.001']:.1%}  safe prune ratio {stats['safe_ratio']:.3f}")
