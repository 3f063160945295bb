"""Network-Slimming sparsity: the L1 penalty on BatchNorm scale factors (gamma) and its statistics.

The penalty ``s * sum |gamma|`` over the prunable layers is applied once per optimizer step, on the
live training modules, in one of two forms (``SparsityHook.form``):

* ``"gradient"`` (SGD, the original method): its subgradient ``k * s * sign(gamma)`` is added to the
  gradient after AMP unscaling and gradient clipping, right before the step.
* ``"decoupled"`` (Adam/AdamW): Adam divides every gradient by its running magnitude, so a penalty
  added to the gradient would shrink each gamma with a small data gradient by about ``lr`` per step
  whatever ``s`` is. Instead, like AdamW's decoupled weight decay, after the step each gamma gets the
  proximal soft-threshold of the L1 term: ``gamma <- sign(gamma) * max(|gamma| - lr * k * s / (1 - beta1), 0)``,
  with ``lr`` the current learning rate of the gamma's parameter group and ``beta1`` its first-moment
  decay. Under SGD with momentum m a constant subgradient moves a weight by ``lr * g / (1 - m)`` per
  step once the momentum buffer has filled; Adam's ``beta1`` is the same average, so dividing by
  ``1 - beta1`` gives ``--scale`` the same per-step pull toward zero under both optimizers at the
  same learning rate.

Two penalties (``SparsityHook.penalty``, ``--sr-penalty``):

* ``"l1"`` (the original): ``s * sum |gamma|``, pull direction ``sign(gamma)``.
* ``"hoyer"``: per BatchNorm layer the pull direction ``sign(gamma) - gamma * mean|gamma| / mean(gamma^2)``,
  which is ``||gamma||_2`` times the gradient of the layer's Hoyer measure ``||gamma||_1 / ||gamma||_2``.
  Why: under L1 the pipeline's gammas slide down together instead of splitting (its -sr model is
  its matched control shifted by about -0.5, slope 0.9, ranking largely kept; see
  :func:`slide_fit` and ``benchmarks/results/sparsity.json``). A BatchNorm whose output feeds
  (through the activation) a conv and another BatchNorm is nearly scale-invariant (the next
  BatchNorm divides the scale out), so the data term barely resists shrinking a whole layer. The Hoyer direction is orthogonal to gamma (the layer's L2
  norm is kept to first order), pulls a channel at zero by ``s`` like L1, pulls channels below
  ``mean(gamma^2) / mean|gamma|`` down and pushes those above it up: the layer's channels separate
  and the data term decides which side each lands on.

* ``"polarization"``: ``s * (t * sum|gamma| - sum| |gamma| - mean|gamma| |)`` with the mean over all
  regularised channels (``--sr-polar-mean global``; ``layer``: each layer's own) (``--sr-polar-t``,
  ``t >= 1``), per channel the pull ``sign(gamma) * (t - 1)`` on
  channels above the mean and ``sign(gamma) * (t + 1)`` on those below it. ``--sr-polar-quantile q``
  splits at the q-quantile of |gamma| instead of the mean, so about a share q of the channels fall to
  zero (with the mean, about half of them do). Why: L1 pulls every channel
  alike, so an unimportant channel and an important one only part where the data term pushes back,
  and over a short run the channels in transit fill the gap (the valley). The second term's
  minimisers are two-valued (zero and a common level), so channels below the mean fall toward zero
  quickly while those above it feel only ``t - 1`` of the pull: the distribution splits around the
  mean and the data term moves an important channel to the upper side. (Zhuang et al., "Neuron-level
  structured pruning using polarization regularizer", NeurIPS 2020, proposed this regulariser for
  BatchNorm scaling factors.)

``k`` is the number of accumulated micro-batches by default, which reproduces the original method's
per-iteration update. The detection loss is a sum over the images of a step, so with that default the
penalty's weight relative to the data term is about ``s / batch_size``: halving the batch doubles the
sparsifying pressure. ``per_image=True`` (``--sr-per-image``) uses ``k = images in the step / 16``
instead, which equals the default at batch 16 and keeps the strength independent of batch size and
accumulation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
from terminaltables import AsciiTable

from utils.engine import Hook
from utils.plots import plot_gamma_boxes, plot_gamma_histograms
from utils.torch_utils import de_parallel

from .masks import safe_ratio
from .report import gamma_quantiles

__all__ = ["SparsityHook", "SparsityLogger", "bn_gammas", "gamma_stats", "quantile_table", "sparsity_form",
           "bimodality", "sarle_coefficient", "pull_direction", "slide_fit", "REFERENCE_BATCH", "FORMS", "PENALTIES"]

REFERENCE_BATCH = 16  # batch size at which --sr-per-image equals the default strength
FORMS = ("gradient", "decoupled")
PENALTIES = ("l1", "hoyer", "polarization")
TABLE_QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def sparsity_form(optimizer: str) -> str:
    """The penalty form that is correct for ``--optimizer``: SGD -> gradient, Adam/AdamW -> decoupled."""
    return "gradient" if optimizer == "SGD" else "decoupled"


def pull_direction(gamma: torch.Tensor, penalty: str = "l1", mean_abs: float | None = None,
                   polar_t: float = 1.0) -> torch.Tensor:
    """The direction the penalty pulls one layer's gammas (per channel; see the module docstring):
    ``sign(gamma)`` for l1; ``sign(gamma) - gamma * mean|gamma| / mean(gamma^2)`` for hoyer;
    ``sign(gamma) * (polar_t - sign(|gamma| - mean_abs))`` for polarization, ``mean_abs`` being the
    mean |gamma| over all regularised channels (this layer's when None)."""
    sign = torch.sign(gamma)
    if penalty == "l1":
        return sign
    if penalty == "polarization":
        m = gamma.abs().mean() if mean_abs is None else mean_abs
        return sign * (polar_t - torch.sign(gamma.abs() - m))
    if penalty != "hoyer":
        raise ValueError(f"sparsity penalty {penalty!r}: use one of {', '.join(PENALTIES)}")
    m2 = gamma.square().mean()
    if m2 <= 0:
        return sign  # all zero: nothing to pull
    return sign - gamma * (gamma.abs().mean() / m2)


def _bn(model: nn.Module, i: int) -> nn.Module:
    return de_parallel(model).module_list[i].BatchNorm2d


def bn_gammas(model: nn.Module, layers: list[int]) -> list[torch.Tensor]:
    """Detached |gamma| of the given conv layers' BatchNorms, as float32 CPU tensors."""
    return [_bn(model, i).weight.detach().abs().float().cpu() for i in layers]


def gamma_stats(gammas: list[torch.Tensor]) -> dict[str, float]:
    """Mean |gamma|, shares below 0.01 and 0.001, and the safe prune ratio (utils.prune.masks)."""
    if not gammas:
        return {"gamma_mean": 0.0, "gamma_lt_0.01": 0.0, "gamma_lt_0.001": 0.0, "safe_ratio": 0.0}
    flat = torch.cat([g.flatten() for g in gammas])
    return {
        "gamma_mean": float(flat.mean()),
        "gamma_lt_0.01": float((flat < 0.01).float().mean()),
        "gamma_lt_0.001": float((flat < 0.001).float().mean()),
        "safe_ratio": safe_ratio(dict(enumerate(gammas)), range(len(gammas))),
    }


# bimodality(): the regions of |gamma| / p95 and the tests, justified in its docstring
BIMODAL_SCALE_Q = 0.95      # robust scale: this quantile of |gamma|
BIMODAL_LOW = 0.05          # the pile: |gamma| < 0.05 x scale
BIMODAL_VALLEY = 0.25       # the valley: 0.05 .. 0.25 x scale; the group: 0.25 .. 1 x scale
BIMODAL_MIN_SHARE = 0.10    # each mode holds at least this share of the channels
BIMODAL_MAX_VALLEY = 0.5    # valley density at most this fraction of the smaller mode density


def sarle_coefficient(x: np.ndarray) -> float | None:
    """Sarle's bimodality coefficient (g^2 + 1) / (k + 3 (n-1)^2 / ((n-2)(n-3))) with the bias-corrected
    sample skewness g and excess kurtosis k; None for fewer than 4 values or zero spread.

    5/9 (a uniform distribution) is the usual cut: above it hints at two modes. A strongly skewed
    unimodal sample (a long right tail) scores high too, which is why it is only a second figure.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    n = x.size
    if n < 4:
        return None
    d = x - x.mean()
    m2 = float(np.mean(d ** 2))
    if m2 <= 1e-24:
        return None
    g1 = float(np.mean(d ** 3)) / m2 ** 1.5
    g2 = float(np.mean(d ** 4)) / m2 ** 2 - 3.0
    skew = g1 * math.sqrt(n * (n - 1)) / (n - 2)
    kurt = ((n + 1) * g2 + 6.0) * (n - 1) / ((n - 2) * (n - 3))
    return (skew ** 2 + 1.0) / (kurt + 3.0 * (n - 1) ** 2 / ((n - 2) * (n - 3)))


def _flat_abs(gammas: np.ndarray | torch.Tensor | Sequence) -> np.ndarray:
    """All |gamma| of one array or of a list of per-layer arrays/tensors, as one float64 vector."""
    if isinstance(gammas, (np.ndarray, torch.Tensor)):
        gammas = [gammas]
    parts = [np.abs(np.asarray(g.detach().cpu() if isinstance(g, torch.Tensor) else g, dtype=np.float64)).ravel()
             for g in gammas]
    return np.concatenate(parts) if parts else np.zeros(0)


def bimodality(gammas: np.ndarray | torch.Tensor | Sequence) -> dict:
    """Whether the |gamma| of the prunable layers split into a pile near zero and a separated group.

    ``gammas``: one array or a list of per-layer arrays/tensors (concatenated; order and layer
    split do not matter). Values are divided by a robust scale, their 95th percentile ``scale``
    (the largest few, often outliers, do not set it), and cut into three regions: the pile
    ``[0, 0.05)``, the valley ``[0.05, 0.25)`` and the group ``[0.25, 1]``. Returned: ``n``,
    ``scale``, ``low_share``, ``valley_share``, ``high_share`` (share >= 0.25, the top 5% included),
    ``valley_ratio`` (the valley's mean density over the smaller of the two modes' mean densities,
    each share divided by its region's width), ``sarle_bc`` (see :func:`sarle_coefficient`) and
    ``bimodal``: ``low_share >= 0.1 and high_share >= 0.1 and valley_ratio <= 0.5``.

    Why these tests: for any unimodal density the mean density over an interval lying between two
    others is at least the smaller of their mean densities (on each side of the mode the density
    is monotone), so ``valley_ratio < 1`` contradicts a single mode; 0.5 leaves room for sampling
    noise. The two share minimums make both modes real: a pile of a few dead channels, or a group
    of a few survivors, is no split worth pruning along. The pile ends at 5% of the scale (a
    channel at 1/20 of a typical important gamma contributes little); the valley ends at 25%, so a
    group spread from its peak down to a quarter of it still counts as the group. A distribution
    that merely slid left (all near 0.3, a uniform smear, a log-normal tail) has no empty middle
    and fails; all-zero or all-equal gammas have no second mode (the scale is 0, or the pile empty).
    With more than 90% of the channels in the pile the group holds < 10% and the test fails too.
    """
    x = _flat_abs(gammas)
    n = int(x.size)
    scale = float(np.quantile(x, BIMODAL_SCALE_Q)) if n else 0.0
    out = {"n": n, "scale": scale, "low_share": 0.0, "valley_share": 0.0, "high_share": 0.0,
           "valley_ratio": None, "sarle_bc": None, "bimodal": False}
    if n == 0:
        return out
    if scale <= 1e-12:  # (nearly) all zero: one pile, no group
        return {**out, "low_share": float(np.mean(x <= 1e-12))}
    r = x / scale  # (n,) |gamma| in units of the scale
    low = float(np.mean(r < BIMODAL_LOW))
    valley = float(np.mean((r >= BIMODAL_LOW) & (r < BIMODAL_VALLEY)))
    high = float(np.mean(r >= BIMODAL_VALLEY))
    group = float(np.mean((r >= BIMODAL_VALLEY) & (r <= 1.0)))
    smaller_mode = min(low / BIMODAL_LOW, group / (1.0 - BIMODAL_VALLEY))  # mean densities of the modes
    ratio = valley / (BIMODAL_VALLEY - BIMODAL_LOW) / smaller_mode if smaller_mode > 0 else None
    bimodal = (low >= BIMODAL_MIN_SHARE and high >= BIMODAL_MIN_SHARE and ratio is not None
               and ratio <= BIMODAL_MAX_VALLEY)
    return {**out, "low_share": low, "valley_share": valley, "high_share": high, "valley_ratio": ratio,
            "sarle_bc": sarle_coefficient(r), "bimodal": bool(bimodal)}


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), 0-based."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def slide_fit(gammas: Sequence, reference: Sequence) -> dict:
    """How the |gamma| of a -sr model relate, channel by channel, to those of its matched control
    (the same channels: both trained from the same weights). Least squares ``|g| = slope * |ref| +
    intercept`` over the channels the penalty left above zero (``kept``: their share), Pearson
    ``corr`` over all channels and Spearman ``rank_corr``. A slope near 1 with a negative intercept is
    a slide: every gamma moved down by the same amount, the ranking (what pruning uses) stays the
    control's (rank_corr near 1); a split would show a slope above 1 with the low channels cut off,
    or a low rank correlation (the penalty reordered the channels)."""
    x, y = _flat_abs(reference), _flat_abs(gammas)
    if x.shape != y.shape:
        raise ValueError(f"slide_fit: {y.size} gammas against {x.size} reference gammas (not the same channels)")
    out = {"n": int(x.size), "slope": None, "intercept": None, "kept": None, "corr": None, "rank_corr": None}
    if x.size < 3:
        return out
    kept = y > 1e-3 * max(float(np.max(y)), 1e-12)
    out["kept"] = float(np.mean(kept))
    if kept.sum() >= 3 and np.ptp(x[kept]) > 0:
        slope, intercept = np.polyfit(x[kept], y[kept], 1)
        out.update(slope=float(slope), intercept=float(intercept))
    if np.ptp(x) > 0 and np.ptp(y) > 0:
        out["corr"] = float(np.corrcoef(x, y)[0, 1])
        out["rank_corr"] = float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])
    return out


def quantile_table(gammas: list[torch.Tensor], title: str) -> str:
    """Terminal table of |gamma| quantiles (utils.prune.report.gamma_quantiles) over the layers."""
    values = gamma_quantiles(gammas or [torch.zeros(1)], TABLE_QUANTILES)
    rows = [["quantile"] + [f"{q:.0%}" for q in TABLE_QUANTILES],
            ["|gamma|"] + [f"{v:.4g}" for v in values.values()]]
    return AsciiTable(rows, title).table


@dataclass
class SparsityHook(Hook):
    """The L1 penalty as a training-engine hook (``after_backward`` or ``after_step``, see ``form``).

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
    form: str = "gradient"
    penalty: str = "l1"
    polar_t: float = 1.0
    polar_mean: str = "global"
    polar_quantile: float = 0.0
    applied: int = field(default=0, init=False)

    def __post_init__(self):
        if self.scale < 0:
            raise ValueError(f"--scale {self.scale}: the sparsity strength must be >= 0")
        if self.schedule not in ("constant", "global", "local"):
            raise ValueError(f"--sr-schedule {self.schedule}: use constant, global or local")
        if self.form not in FORMS:
            raise ValueError(f"sparsity form {self.form!r}: use one of {', '.join(FORMS)}")
        if self.penalty not in PENALTIES:
            raise ValueError(f"--sr-penalty {self.penalty}: use one of {', '.join(PENALTIES)}")
        if self.polar_mean not in ("global", "layer"):
            raise ValueError(f"--sr-polar-mean {self.polar_mean}: use global or layer")
        if not 0 <= self.polar_quantile < 1:
            raise ValueError(f"--sr-polar-quantile {self.polar_quantile}: use 0 (split at the mean) or a "
                             "quantile in (0, 1)")
        if not self.polar_t >= 1:
            raise ValueError(f"--sr-polar-t {self.polar_t}: must be >= 1 (below 1 the channels above the mean "
                             "would be pushed up without bound)")

    def decayed(self, epoch: int | None = None) -> bool:
        """Whether the decay of the global/local schedules is active at ``epoch``."""
        epoch = self.epoch if epoch is None else epoch
        return self.schedule != "constant" and epoch >= math.ceil(self.decay_frac * self.epochs)

    def strength(self, epoch: int | None = None) -> float:
        """The scalar strength of the ``global``/``constant`` schedules at ``epoch``."""
        if self.schedule == "global" and self.decayed(epoch):
            return self.scale * self.decay_factor
        return self.scale

    def _params(self, model: nn.Module) -> list[torch.Tensor]:
        params = [_bn(model, i).weight for i in self.layers]
        return [p for p in params if p.requires_grad]

    def step_strengths(self, params: list[torch.Tensor], n_micro: int, n_images: int) -> list[torch.Tensor]:
        """Per-element ``k * s`` for each parameter this optimizer step (schedule and scaling applied)."""
        k = n_images / REFERENCE_BATCH if self.per_image else n_micro
        local = self.schedule == "local" and self.decayed()
        if local:
            flat = torch.cat([p.detach().abs().flatten() for p in params])
            idx = min(int(len(flat) * self.local_keep), len(flat) - 1)
            theta = flat.sort().values[idx]
        out = []
        for p in params:
            s = torch.full_like(p, self.strength())
            if local:
                s = torch.where(p.detach().abs() >= theta, s * self.decay_factor, s)
            out.append(k * s)
        return out

    @torch.no_grad()
    def apply(self, model: nn.Module, n_micro: int = 1, n_images: int = REFERENCE_BATCH) -> None:
        """Gradient form: grad(gamma) += k * s * direction for every regularised, trainable gamma
        (direction: :func:`pull_direction`, ``sign(gamma)`` for l1)."""
        params = self._params(model)
        if not params:
            return
        means = self._means(params)
        for p, s, m in zip(params, self.step_strengths(params, n_micro, n_images), means):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.add_(s * pull_direction(p.detach(), self.penalty, m, self.polar_t))
        self.applied += 1

    def _means(self, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """Polarization: per parameter, the |gamma| its channels are split around (over all regularised
        channels, or its own layer's with ``polar_mean="layer"``): the mean, or the ``polar_quantile``
        quantile when set; None for the other penalties."""
        if self.penalty != "polarization":
            return [None] * len(params)

        def pivot(a: torch.Tensor) -> torch.Tensor:
            a = a.detach().abs().flatten().float()
            return torch.quantile(a, self.polar_quantile) if self.polar_quantile else a.mean()

        if self.polar_mean == "layer":
            return [pivot(p) for p in params]
        m = pivot(torch.cat([p.detach().flatten() for p in params]))
        return [m] * len(params)

    @torch.no_grad()
    def apply_decoupled(self, model: nn.Module, optimizer: torch.optim.Optimizer, n_micro: int = 1,
                        n_images: int = REFERENCE_BATCH) -> None:
        """Decoupled form, after the step, with ``t = lr * k * s / (1 - beta1)``: l1, the soft
        threshold ``gamma <- sign(gamma) * max(|gamma| - t, 0)``; hoyer, the same threshold plus
        ``t * gamma * mean|gamma| / mean(gamma^2)`` (the layer's statistics before the step);
        polarization, the soft threshold with ``t * (polar_t - sign(|gamma| - mean|gamma|))`` per channel."""
        params = self._params(model)
        if not params:
            return
        pull = {id(p): g["lr"] / (1.0 - g.get("betas", (0.0,))[0]) for g in optimizer.param_groups
                for p in g["params"]}
        means = self._means(params)
        for p, s, m in zip(params, self.step_strengths(params, n_micro, n_images), means):
            threshold = pull[id(p)] * s
            if m is not None:  # polar_t >= 1: every channel's threshold is >= 0
                threshold = threshold * pull_direction(p, self.penalty, m, self.polar_t).abs()
            # hoyer: the part of the pull that is not the L1 sign, -t * gamma * mean|gamma| / mean(gamma^2)
            push = threshold * (torch.sign(p) - pull_direction(p, self.penalty)) if self.penalty == "hoyer" else None
            p.copy_(torch.sign(p) * (p.abs() - threshold).clamp_(min=0))
            if push is not None:
                p.add_(push)
        self.applied += 1

    # engine hooks
    def after_backward(self, trainer, n_micro: int, n_images: int) -> None:
        if self.form == "gradient":
            self.epoch = trainer.epoch
            self.apply(trainer.model, n_micro, n_images)

    def after_step(self, trainer, n_micro: int, n_images: int) -> None:
        if self.form == "decoupled" and trainer.stepped:
            self.epoch = trainer.epoch
            self.apply_decoupled(trainer.model, trainer.optimizer, n_micro, n_images)


class SparsityLogger(Hook):
    """Per-epoch gamma statistics (results.csv columns, progress line), plots and tables."""

    def __init__(self, layers: list[int], save_dir: Path):
        self.layers = layers
        self.save_dir = Path(save_dir)
        self.snapshots: list[tuple[int, np.ndarray]] = []  # (epoch, all |gamma|)
        self.first: list[torch.Tensor] | None = None
        self.tb = None

    def before_train(self, trainer) -> None:
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

    def after_epoch(self, trainer, epoch: int, row: dict) -> None:
        g = bn_gammas(trainer.model, self.layers)
        stats = gamma_stats(g)
        split = bimodality(g)
        row.update({f"sparsity/{k}": v for k, v in stats.items()})
        row.update({"sparsity/pile": split["low_share"], "sparsity/valley": split["valley_share"],
                    "sparsity/group": split["high_share"], "sparsity/bimodal": float(split["bimodal"])})
        self.snapshots.append((epoch, torch.cat(g).numpy()))
        print(_stats_line(stats, split), flush=True)
        if self.tb is not None:
            self.tb.add_histogram("bn_weights/hist", torch.cat(g).numpy(), epoch, bins="doane")

    def after_train(self, trainer) -> None:
        g = bn_gammas(trainer.model, self.layers)
        print(quantile_table(g, " |gamma| after training "))
        if self.tb is not None:
            for i, gi in zip(self.layers, g):
                self.tb.add_histogram("after_train_perlayer_bn_weights/hist", gi.numpy(), i, bins="doane")
            self.tb.close()
        plot_gamma_histograms(self.snapshots, self.save_dir / "gamma_hist.png")
        plot_gamma_boxes(self.first or g, g, self.layers, self.save_dir / "gamma_layers.png")


def _stats_line(stats: dict, split: dict | None = None) -> str:
    line = (f"sparsity: mean|gamma| {stats['gamma_mean']:.4g}  <0.01 {stats['gamma_lt_0.01']:.1%}  "
            f"<0.001 {stats['gamma_lt_0.001']:.1%}  safe prune ratio {stats['safe_ratio']:.3f}")
    if split is not None:  # see bimodality(): shares of |gamma| / p95 in the pile, valley and group
        line += (f"  pile {split['low_share']:.1%} valley {split['valley_share']:.1%} "
                 f"group {split['high_share']:.1%} bimodal {'yes' if split['bimodal'] else 'no'}")
    return line
