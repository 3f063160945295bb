"""The one training engine behind train.py, train_sparsity.py and prune_finetune.py.

Upstream YOLOv5 v6 training semantics: SGD (nesterov) or Adam/AdamW with three parameter groups
(no weight decay on BatchNorm weights and biases), warm-up of learning rate, momentum and bias
learning rate, linear or cosine one-cycle schedule, EMA of the weights, gradient accumulation to a
nominal batch, AMP on CUDA, ``last.pt`` every epoch and ``best.pt`` by fitness, exact ``--resume``,
``results.csv``/``results.png``, DDP under torchrun (gloo on CPU).

Every option is declared once, in :class:`TrainConfig` (default and help text); the scripts' flags
are generated from it (:func:`add_config_args`). Later steps plug in through one :class:`Hook` class
registered with ``trainer.register(hook)`` instead of copying the loop.

``--weights`` must fit the model: when a tensor outside the detection head is missing or has another
shape the run stops (:class:`TrainError`) unless ``--allow-partial`` is given, and then the run does
not inherit the weights' history (a pruned checkpoint started under the original cfg does not claim
its ``prune`` step). A head that differs only in the number of classes is re-initialised (transfer
learning) and keeps the history.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml

from models import (Darknet, atomic_save, build_model, load_cfg_file, load_checkpoint, make_checkpoint,
                    model_from_checkpoint)
from utils.autoanchor import check_anchors
from utils.dataconfig import list_image_files, load_data_config
from utils.datasets import create_dataloader
from utils.errors import UserError, fraction, nonneg_float, nonneg_int, positive_float, positive_int
from utils.evaluate import EvalResult, evaluate
from utils.fileio import atomic_write_text, remove_stale_temps
from utils.general import LOGGER, check_img_size, increment_path, init_seeds, set_cpu_threads, setup_logging
from utils.hyp import load_hyp
from utils.loss import ComputeLoss, scale_loss_gains
from utils.plots import plot_results
from utils.torch_utils import ModelEMA, de_parallel, select_device

__all__ = ["TrainConfig", "TrainError", "STEP_GROUPS", "resume_config", "Hook", "Trainer", "add_config_args", "config_from_args",
           "run_training", "DEFAULT_CFG", "ddp_env", "weight_fit", "WeightFit", "build_optimizer",
           "lr_lambda", "add_train_args"]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CFG = ROOT / "models" / "yolov5s.yaml"
CLIP_NORM = 10.0  # gradient clipping (upstream YOLOv5)


class TrainError(UserError, ValueError):
    """A training run cannot start or continue as asked; the message names the flag or file."""


# ---------------------------------------------------------------------------------------------
# options: declared once, flags generated
# ---------------------------------------------------------------------------------------------
def _label_smoothing(text: str) -> float:
    """argparse type: a float in [0, 1)."""
    v = nonneg_float(text)
    if v >= 1.0:
        raise argparse.ArgumentTypeError(f"{v} must be at least 0 and below 1")
    return v


def _save_period(text: str) -> int:
    """argparse type: -1 (off) or a whole number of epochs >= 0 (0 is off too)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < -1:
        raise argparse.ArgumentTypeError(f"{v} must be -1 (off) or a number of epochs")
    return v


def _opt(default: Any, help: str, *flags: str, group: str = "train", **argparse_kw) -> Any:
    """A TrainConfig field: default, help and command-line spelling (no flags: set by the script)."""
    return field(default=default, metadata={"flags": flags, "help": help, "group": group, "kw": argparse_kw})


@dataclass(frozen=True)
class TrainConfig:
    """Every option of the three training scripts (groups: train, sparsity, finetune)."""

    # --- every training script (upstream train.py names and aliases)
    weights: str = _opt("", "initial weights: our checkpoint, an upstream .pt, or '' to start from scratch",
                        "--weights")
    cfg: str = _opt("", "model description (.yaml or .cfg)", "--cfg")
    data: str | None = _opt(None, "dataset .yaml or .data (default: built-in)", "--data")
    hyp: str | None = _opt(None, "hyperparameter yaml (default: data/hyps/hyp.scratch-low.yaml)", "--hyp")
    epochs: int = _opt(100, "number of epochs (>= 1)", "--epochs", type=positive_int)
    batch_size: int = _opt(16, "total batch size over all processes", "--batch-size", "--batch",
                           type=positive_int)
    img: int = _opt(640, "train and val image size (pixels; rounded up to the model stride)",
                    "--img", "--img-size", "--imgsz", type=positive_int)
    rect: bool = _opt(False, "rectangular training batches", "--rect", action="store_true")
    resume: bool | str = _opt(False, "resume the most recent run, or the given last.pt", "--resume",
                              nargs="?", const=True)
    nosave: bool = _opt(False, "only save the final checkpoint", "--nosave", action="store_true")
    noval: bool = _opt(False, "only validate after the final epoch", "--noval", action="store_true")
    noautoanchor: bool = _opt(False, "skip the anchor check", "--noautoanchor", action="store_true")
    device: str = _opt("", "cuda device, e.g. 0 or 0,1, or cpu", "--device")
    workers: int | None = _opt(None, "dataloader workers per process (default: cores - 1, at most 8)",
                               "--workers", type=nonneg_int)
    project: str = _opt(str(ROOT / "runs" / "train"), "save to project/name", "--project")
    name: str = _opt("exp", "save to project/name", "--name")
    exist_ok: bool = _opt(False, "reuse project/name instead of incrementing", "--exist-ok",
                          action="store_true")
    optimizer: str = _opt("SGD", "optimizer", "--optimizer", choices=["SGD", "Adam", "AdamW"])
    cos_lr: bool = _opt(False, "cosine one-cycle learning rate (default linear)", "--cos-lr",
                        action="store_true")
    sync_bn: bool = _opt(False, "SyncBatchNorm under DDP", "--sync-bn", action="store_true")
    freeze: int = _opt(0, "freeze the first N cfg layers", "--freeze", type=nonneg_int)
    patience: int = _opt(100, "stop after N epochs without improvement", "--patience", type=nonneg_int)
    cache: str | None = _opt(None, "cache images in ram", "--cache", nargs="?", const="ram")
    seed: int = _opt(0, "global training seed", "--seed", type=int)
    label_smoothing: float = _opt(0.0, "label smoothing epsilon in [0, 1)", "--label-smoothing",
                                  type=_label_smoothing)
    nbs: int = _opt(64, "nominal batch size: gradients are accumulated to about this many images", "--nbs",
                    type=positive_int)
    save_period: int = _opt(-1, "also save epoch<N>.pt every N epochs (-1: off)", "--save-period",
                            type=_save_period)
    max_train_images: int = _opt(0, "train on the first N training images only (smoke tests; 0: all)",
                                 "--max-train-images", type=nonneg_int)
    deterministic: bool = _opt(False, "deterministic algorithms (slower)", "--deterministic",
                               action="store_true")
    allow_partial: bool = _opt(False, "start from the tensors of --weights that fit --cfg even when others "
                               "do not (the rest stay random)", "--allow-partial", action="store_true")
    allow_unlabelled: bool = _opt(False, "accept train/val sets without any label file", "--allow-unlabelled",
                                  action="store_true")
    channels_last: bool = _opt(False, "channels-last (NHWC) input batches: faster convolutions on some CPUs, "
                               "but BatchNorm numerics differ slightly", "--channels-last", action="store_true")
    local_rank: int = _opt(-1, argparse.SUPPRESS, "--local_rank", "--local-rank", type=int)

    # --- train_sparsity.py
    sr: bool = _opt(False, "apply the L1 penalty on BN gammas", "-sr", "--sparsity-regularization",
                    group="sparsity", action="store_true")
    scale: float = _opt(0.001, "sparsity strength s", "--scale", "--s", group="sparsity", type=nonneg_float)
    prune: int = _opt(1, "0: layers of strategy 1 (no shortcut groups); 1: all prunable layers", "--prune",
                      group="sparsity", type=int, choices=[0, 1])
    sr_schedule: str = _opt("constant", "strength over the epochs", "--sr-schedule", group="sparsity",
                            choices=["constant", "global", "local"])
    sr_penalty: str = _opt("l1", "l1: s * |gamma| (the original); hoyer: the same pull on small gammas with each "
                           "layer's norm kept (scale-invariant); polarization: (t+1) s below the mean |gamma|, "
                           "(t-1) s above it, the channels split (see utils/prune/sparsity.py)", "--sr-penalty",
                           group="sparsity", choices=["l1", "hoyer", "polarization"])
    sr_polar_t: float = _opt(1.0, "polarization penalty: t >= 1, the pull on channels above the mean |gamma| "
                             "is (t-1) s", "--sr-polar-t", group="sparsity", type=nonneg_float)
    sr_polar_mean: str = _opt("global", "polarization penalty: split each layer's channels around the mean "
                              "|gamma| of all regularised channels (global) or of the layer (layer)", "--sr-polar-mean",
                              group="sparsity", choices=["global", "layer"])
    sr_polar_quantile: float = _opt(0.0, "polarization penalty: split at this quantile of |gamma| instead of "
                                    "the mean, so about this share of the channels falls to zero (0: the mean)",
                                    "--sr-polar-quantile", group="sparsity", type=fraction)
    sr_decay_epoch_frac: float = _opt(0.5, "fraction of the epochs after which global/local decay starts",
                                      "--sr-decay-epoch-frac", group="sparsity", type=fraction)
    sr_decay_factor: float = _opt(0.01, "decayed strength = s * factor", "--sr-decay-factor",
                                  group="sparsity", type=nonneg_float)
    sr_local_keep: float = _opt(0.85, "local schedule: channels above this |gamma| quantile get the decayed "
                                "strength", "--sr-local-keep", group="sparsity", type=fraction)
    sr_per_image: bool = _opt(False, "scale the penalty by images per step / 16, independent of batch size "
                              "and accumulation (default: once per accumulated batch, as the original)",
                              "--sr-per-image", group="sparsity", action="store_true")
    include_upsample: bool = _opt(False, "also regularise the convs before an upsample", "--include-upsample",
                                  group="sparsity", action="store_true")
    include_sppf: bool = _opt(False, "also regularise the SPPF input conv", "--include-sppf",
                              group="sparsity", action="store_true")

    # --- prune_finetune.py
    distill: bool = _opt(False, "distil from the unpruned teacher", "--distill", group="finetune",
                         action="store_true")
    t_weights: str = _opt("", "teacher weights (default: the unpruned source recorded in --weights)",
                          "--t_weights", "--t_weight", "--t-weights", group="finetune")
    t_cfg: str = _opt("", "teacher cfg/yaml; must agree with --t_weights (classes/anchors from the file)",
                      "--t_cfg", "--t-cfg", group="finetune")
    distill_mode: int = _opt(2, "2: soft obj/cls targets + teacher-bounded box loss; 1: Hinton soft targets",
                             "--distill-mode", group="finetune", type=int, choices=[1, 2])
    temperature: float = _opt(3.0, "distillation temperature T", "--temperature", group="finetune",
                              type=positive_float)
    distill_soft_weight: float = _opt(1e-4, "mode 2 soft-target weight", "--distill-soft-weight",
                                      group="finetune", type=nonneg_float)
    distill_box_weight: float = _opt(1e-3, "mode 2 bounded box weight", "--distill-box-weight",
                                     group="finetune", type=nonneg_float)
    distill_kd1_weight: float = _opt(1e-3, "mode 1 weight", "--distill-kd1-weight", group="finetune",
                                     type=nonneg_float)
    distill_margin: float = _opt(0.0, "bounded box margin m", "--distill-margin", group="finetune", type=float)
    distill_compat: bool = _opt(False, "the original formulas: softmax over [obj, cls] and YOLOv3 box decode",
                                "--distill-compat", group="finetune", action="store_true")
    keep_anchors: bool = _opt(False, "never re-evolve the anchors (set by prune_finetune.py)", group="finetune")
    keep_names: bool = _opt(False, "the checkpoint defines classes and names (set by prune_finetune.py)",
                            group="finetune")

    def __post_init__(self):
        """The flags' own range checks, for configs built in code too (a TrainError names the flag)."""
        for f in fields(self):
            kw, value = f.metadata["kw"], getattr(self, f.name)
            if value is None or not f.metadata["flags"]:
                continue
            flag = f.metadata["flags"][0]
            if "choices" in kw and value not in kw["choices"]:
                raise TrainError(f"{flag} {value}: use one of {', '.join(map(str, kw['choices']))}")
            if kw.get("type") is not None:
                try:
                    kw["type"](str(value))
                except argparse.ArgumentTypeError as e:
                    raise TrainError(f"{flag} {value}: {e}") from None

    def to_dict(self, groups: Iterable[str] | None = None) -> dict[str, Any]:
        """Plain values (of ``groups``; default all) for checkpoints (``torch.load(weights_only=True)``)
        and opt.yaml."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if groups is None or f.metadata["group"] in groups}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> tuple["TrainConfig", list[str]]:
        """A config from stored options; unknown keys are returned (ignored), missing ones take defaults."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in values if k not in known)
        return cls(**{k: v for k, v in values.items() if k in known}), unknown


def add_config_args(p: argparse.ArgumentParser, groups: Iterable[str] = ("train",)) -> argparse.ArgumentParser:
    """The command-line flags of ``groups``, generated from :class:`TrainConfig`."""
    groups = set(groups)
    for f in fields(TrainConfig):
        meta = f.metadata
        if meta["group"] in groups and meta["flags"]:
            p.add_argument(*meta["flags"], dest=f.name, default=f.default, help=meta["help"], **meta["kw"])
    return p


def add_train_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags every training script shares (``add_config_args(p, ("train",))``)."""
    return add_config_args(p, ("train",))


def config_from_args(ns: argparse.Namespace, **fixed: Any) -> TrainConfig:
    """A frozen config from parsed flags (fields without a flag keep their default unless in ``fixed``)."""
    values = {f.name: getattr(ns, f.name) for f in fields(TrainConfig) if hasattr(ns, f.name)}
    return TrainConfig(**{**values, **fixed})


ALL_GROUPS = ("train", "sparsity", "finetune")
STEP_GROUPS = {"train": ("train",), "sparsity": ("train", "sparsity"), "finetune": ("train", "finetune")}


def ddp_env() -> tuple[int, int, int]:
    """(local_rank, rank, world_size) from torchrun's environment; (-1, -1, 1) without DDP."""
    return (int(os.getenv("LOCAL_RANK", -1)), int(os.getenv("RANK", -1)), int(os.getenv("WORLD_SIZE", 1)))


# ---------------------------------------------------------------------------------------------
# hooks
# ---------------------------------------------------------------------------------------------
class Hook:
    """Base class of everything that plugs into the loop; override the methods you need.

    Call order in one run::

        before_train(trainer)                                   once, after set-up, before epoch 1
        for each epoch, for each micro-batch:
            loss(trainer, imgs, targets, preds)                 -> (extra loss, {name: value}) or None;
                                                                   the extra loss is added to the
                                                                   detection loss before backward
            every accumulated step (after AMP unscaling and gradient clipping):
                after_backward(trainer, n_micro, n_images)      edit gradients, right before the step
                after_step(trainer, n_micro, n_images)          edit weights, right after the step
                                                                   (``trainer.stepped``: False when
                                                                   AMP skipped the step), before EMA
        after_epoch(trainer, epoch, row)                        after validation; may add results.csv
                                                                   columns to ``row``
        after_train(trainer)                                    once, after the final checkpoints

    ``n_micro`` micro-batches with ``n_images`` images (all processes) made that step's gradients.
    Hooks run in the order they were registered.
    """

    def before_train(self, trainer: "Trainer") -> None:
        pass

    def loss(self, trainer: "Trainer", imgs: torch.Tensor, targets: torch.Tensor,
             preds: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]] | None:
        return None

    def after_backward(self, trainer: "Trainer", n_micro: int, n_images: int) -> None:
        pass

    def after_step(self, trainer: "Trainer", n_micro: int, n_images: int) -> None:
        pass

    def after_epoch(self, trainer: "Trainer", epoch: int, row: dict) -> None:
        pass

    def after_train(self, trainer: "Trainer") -> None:
        pass


# ---------------------------------------------------------------------------------------------
# pieces
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightFit:
    """How a source state dict fits a model: ``total`` model tensors, the keys outside the detection
    head that are missing from the source or have another shape, and those that fit."""

    total: int
    missing: tuple[str, ...]
    reshaped: tuple[str, ...]
    fitting: tuple[str, ...]

    @property
    def misfits(self) -> tuple[str, ...]:
        return self.missing + self.reshaped


def head_prefixes(model: Darknet) -> tuple[str, ...]:
    """State-dict prefixes of the detection convs (their width follows the number of classes)."""
    layers = model.cfg.layers
    return tuple(f"module_list.{layers[y].inputs[0]}." for y in model.yolo_indices)


def weight_fit(source: Mapping[str, torch.Tensor], model: Darknet) -> WeightFit:
    """Compare ``source`` with ``model``'s state dict; the detection head is not counted as a misfit."""
    own, head = model.state_dict(), head_prefixes(model)
    missing, reshaped, fitting = [], [], []
    for k, v in own.items():
        if k in source and source[k].shape == v.shape:
            fitting.append(k)
        elif not k.startswith(head):
            (reshaped if k in source else missing).append(k)
    return WeightFit(len(own), tuple(missing), tuple(reshaped), tuple(fitting))


def transfer_weights(src: nn.Module, dst: nn.Module) -> tuple[int, int]:
    """Copy every state entry whose key and shape match; returns (copied, total)."""
    sd, dd = src.state_dict(), dst.state_dict()
    common = {k: v for k, v in sd.items() if k in dd and dd[k].shape == v.shape}
    dst.load_state_dict(common, strict=False)
    return len(common), len(dd)


def same_network(a: Darknet, b: Darknet) -> bool:
    """Same layer types and connections, and every tensor outside the detection head of equal shape."""
    la, lb = a.cfg.layers, b.cfg.layers
    if len(la) != len(lb) or any(x.type != y.type or list(x.inputs) != list(y.inputs) for x, y in zip(la, lb)):
        return False
    fit = weight_fit(a.state_dict(), b)
    return not fit.misfits and len(a.state_dict()) == len(b.state_dict())


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float, decay: float):
    """Three groups: BN weights (no decay), other weights (decay), biases (no decay)."""
    bn_w, w, b = [], [], []
    for mod in model.modules():
        for pname, p in mod.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if pname == "bias":
                b.append(p)
            elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
                bn_w.append(p)
            else:
                w.append(p)
    if name == "SGD":
        opt = torch.optim.SGD(bn_w, lr=lr, momentum=momentum, nesterov=True)
    elif name == "Adam":
        opt = torch.optim.Adam(bn_w, lr=lr, betas=(momentum, 0.999))
    elif name == "AdamW":
        opt = torch.optim.AdamW(bn_w, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    else:
        raise TrainError(f"--optimizer {name}: use SGD, Adam or AdamW")
    opt.add_param_group({"params": w, "weight_decay": decay})
    opt.add_param_group({"params": b, "weight_decay": 0.0})
    return opt


def lr_lambda(epochs: int, lrf: float, cosine: bool) -> Callable[[float], float]:
    """Multiplier of lr0 at (fractional) epoch x: linear or cosine one-cycle from 1 to lrf."""
    if cosine:
        return lambda x: ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return lambda x: (1 - x / epochs) * (1.0 - lrf) + lrf


def _plain_metrics(res: EvalResult | None) -> dict[str, float]:
    if res is None:
        return {}
    d = res.as_dict()
    return {k: float(d[k]) for k in ("P", "R", "mAP50", "mAP50-95") if k in d}


def find_last_run(project: str | Path) -> Path:
    """The most recent ``last.pt`` under ``project`` (``--resume`` without a path)."""
    runs = sorted(Path(project).glob("*/weights/last.pt"), key=os.path.getmtime)
    if not runs:
        raise TrainError(f"--resume: no last.pt found under {project}; pass the last.pt to resume")
    return runs[-1]


def resume_config(config: TrainConfig) -> tuple[TrainConfig, dict]:
    """The saved config of the run to resume (``dataclasses.replace``d with this call's device and
    workers) and its checkpoint."""
    last = find_last_run(config.project) if config.resume is True else Path(config.resume)
    ckpt = load_checkpoint(last, verbose=False)
    if ckpt.get("optimizer") is None or ckpt.get("epoch", -1) < 0:
        raise TrainError(f"--resume {last}: this checkpoint is finished (stripped); nothing to resume")
    saved, unknown = TrainConfig.from_dict(ckpt.get("opt") or {})
    if unknown:
        LOGGER.info(f"Note: --resume {last}: ignoring stored options this version does not know: "
                    f"{', '.join(unknown)}")
    keep = {k: getattr(config, k) for k in ("device", "workers", "local_rank")
            if getattr(config, k) not in (None, "", -1)}
    return dataclasses.replace(saved, resume=str(last), **keep), ckpt


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------
class Trainer:
    """Set up from a :class:`TrainConfig` (never modified); ``run()`` trains and returns the final metrics.

    Derived values (workers, save folder, image size, accumulation, scaled hyperparameters) live on
    the trainer, not in the config.
    """

    def __init__(self, config: TrainConfig, step: str = "train"):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"Trainer needs a TrainConfig, got {type(config).__name__}")
        self.step_name = step
        self.groups = STEP_GROUPS.get(step, ALL_GROUPS)  # the options this step records
        self.hooks: list[Hook] = []
        self.history_extra: dict[str, Any] = {}
        self.local_rank, self.rank, self.world_size = ddp_env()
        if config.local_rank != -1 and self.local_rank == -1:
            self.local_rank = config.local_rank
        self.main = self.rank in (-1, 0)
        self.epoch, self.stepped = 0, False
        setup_logging(self.main)
        self._resume_ckpt: dict | None = None
        if config.resume:
            config, self._resume_ckpt = resume_config(config)
        self.config = config
        self._setup_runtime()
        self._setup_outputs()
        self.model, self.history = self._make_model()
        self.model.to(self.device)
        self.parent_weights = str(config.weights) if config.weights else None

    def register(self, hook: Hook) -> Hook:
        """Add a hook; hooks run in registration order (see :class:`Hook` for the call order)."""
        if not isinstance(hook, Hook):
            raise TypeError(f"register() needs a Hook, got {type(hook).__name__}")
        self.hooks.append(hook)
        return hook

    def _call(self, name: str, *args) -> None:
        for hook in self.hooks:
            getattr(hook, name)(self, *args)

    # ------------------------------------------------------------------ set-up
    def _setup_runtime(self) -> None:
        c = self.config
        self.device = select_device(c.device)
        if self.world_size > 1:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.local_rank)
                self.device = torch.device("cuda", self.local_rank)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            if c.batch_size % self.world_size:
                raise TrainError(f"--batch-size {c.batch_size} must be a multiple of the "
                                 f"{self.world_size} processes")
        cpus = os.cpu_count() or 1
        self.workers = c.workers if c.workers is not None else min(8, max(cpus // max(self.world_size, 1) - 1, 0))
        if self.device.type == "cpu":
            set_cpu_threads(self.workers if self.world_size == 1 else max(cpus // self.world_size - 1, 0))
        init_seeds(c.seed + 1 + max(self.rank, 0), deterministic=c.deterministic)
        self.data = load_data_config(c.data)
        self.hyp = load_hyp(c.hyp)

    def _setup_outputs(self) -> None:
        c = self.config
        if c.resume:
            self.save_dir = Path(c.resume).parent.parent
        else:
            self.save_dir = increment_path(Path(c.project) / c.name, exist_ok=c.exist_ok)
        self.wdir = self.save_dir / "weights"
        if self.main:
            self.wdir.mkdir(parents=True, exist_ok=True)
            for stale in remove_stale_temps(self.wdir):
                self._log(f"Removed {stale.name}, left by an interrupted save")
            atomic_write_text(self.save_dir / "hyp.yaml", yaml.safe_dump(self.hyp, sort_keys=False))
            atomic_write_text(self.save_dir / "opt.yaml", yaml.safe_dump(c.to_dict(self.groups), sort_keys=False))

    def _make_model(self) -> tuple[Darknet, list[dict]]:
        """The model to train from --weights/--cfg and the dataset's classes, and the history it inherits.

        The history is inherited only when every tensor outside the detection head was loaded.
        """
        c, nc = self.config, self.data.nc
        if self._resume_ckpt is not None:
            ckpt = self._resume_ckpt
            history = list(ckpt.get("history", []))
            if history and Path(str(history[-1].get("save_dir"))).resolve() == self.save_dir.resolve():
                history = history[:-1]  # this run's own entry: written again at every save
            return model_from_checkpoint(ckpt, prefer_ema=False, source=str(c.resume)), history
        if not c.weights:
            model = build_model(c.cfg or DEFAULT_CFG, nc=nc)
            model.names = list(self.data.names)
            return model, []
        ckpt = load_checkpoint(c.weights, cfg=c.cfg if str(c.cfg).endswith(".cfg") else None)
        src = model_from_checkpoint(ckpt, prefer_ema=True, verbose=self.main, source=str(c.weights))
        model, complete = (src, True) if not c.cfg else self._fit_to_cfg(src)
        model = self._fit_to_classes(model)
        if not c.keep_names or not src.names:
            model.names = list(self.data.names)
        return model, list(ckpt.get("history", [])) if complete else []

    def _fit_to_cfg(self, src: Darknet) -> tuple[Darknet, bool]:
        """``--cfg`` given with ``--weights``: the checkpoint's own network when they agree; else a new
        network from the cfg that starts from the weights only if they fit (or ``--allow-partial``)."""
        c = self.config
        given_cfg = load_cfg_file(c.cfg)
        given = build_model(given_cfg, nc=self.data.nc)
        if same_network(src, given):
            if given_cfg.nc != src.cfg.nc or given_cfg.level_anchors() != src.cfg.level_anchors():
                self._log(f"WARNING: {c.cfg} differs from {c.weights} in classes or anchors; "
                          f"using the checkpoint's (nc={src.cfg.nc})")
            return src, True
        if c.keep_names:
            raise TrainError(f"--cfg {c.cfg} does not match the network stored in {c.weights} (layer types, "
                             f"connections or widths differ); omit --cfg to use the checkpoint's own cfg")
        fit = weight_fit(src.state_dict(), given)
        if fit.misfits and not c.allow_partial:
            raise TrainError(
                f"--weights {c.weights}: {fit.total} tensors, {len(fit.misfits)} do not fit {c.cfg} "
                f"({len(fit.missing)} missing, {len(fit.reshaped)} of another shape, e.g. {fit.misfits[0]}); "
                f"pass the cfg the weights were trained with, or --allow-partial to start from the matching ones")
        n, total = transfer_weights(src, given)
        if fit.misfits:
            self._log(f"WARNING --allow-partial: only {n}/{total} tensors of {c.weights} fit {c.cfg}; "
                      f"{len(fit.misfits)} tensors outside the detection head start from random values, "
                      f"and the run does not inherit the history of {c.weights}")
        else:
            self._log(f"Transferred {n}/{total} items from {c.weights} into {c.cfg}")
        return given, not fit.misfits

    def _fit_to_classes(self, model: Darknet) -> Darknet:
        """A checkpoint with another number of classes: re-initialise the detection convs (transfer)."""
        c, nc = self.config, self.data.nc
        if model.nc == nc:
            return model
        if c.keep_names:
            raise TrainError(f"--data {self.data.source} has {nc} classes but {c.weights} "
                             f"was trained for {model.nc}; use the dataset the model was trained on")
        self._log(f"WARNING: {c.weights} has {model.nc} classes, the dataset {nc}: "
                  f"the detection convs are re-initialised for {nc} classes")
        new = build_model(model.cfg, nc=nc)
        n, total = transfer_weights(model, new)
        self._log(f"Transferred {n}/{total} items from {c.weights}")
        return new

    def _log(self, msg: str) -> None:
        if self.main:
            print(msg, flush=True)

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        """Train; returns the final metrics (rank 0) or {} (other ranks)."""
        self._prepare_data()
        self._build_optimization()
        self._wrap_ddp()
        self._call("before_train")
        self._log(f"Image sizes {self.imgsz} train, {self.imgsz} val; {self.workers} dataloader workers; "
                  f"{torch.get_num_threads()} torch threads on {self.device}\n"
                  f"Logging results to {self.save_dir}\nStarting training for {self.config.epochs} epochs...")
        t0, epoch = time.time(), self.start_epoch
        for epoch in range(self.start_epoch, self.config.epochs):
            self.epoch = epoch
            self._train_epoch(epoch)
            if self._end_epoch(epoch):
                break
        return self._finish(epoch, t0)

    def _prepare_data(self) -> None:
        """Frozen layers, image size, loaders, anchor check."""
        c, model = self.config, self.model
        for k, p in model.named_parameters():
            p.requires_grad_(not any(k.startswith(f"module_list.{i}.") for i in range(c.freeze)))
        self.gs = max(int(model.stride.max()), 32)
        self.imgsz = check_img_size(c.img, self.gs, "--img")[0]
        batch = c.batch_size // self.world_size
        train_files = self.data.train
        if c.max_train_images:
            train_files = list_image_files(train_files)[:c.max_train_images]
        self.loader, self.dataset = create_dataloader(
            train_files, self.imgsz, batch, self.gs, hyp=self.hyp, augment=True, rect=c.rect,
            workers=self.workers, shuffle=not c.rect, seed=c.seed, rank=self.rank, world_size=self.world_size,
            cache=c.cache, nc=self.data.nc, prefix="train: ", allow_unlabelled=c.allow_unlabelled)
        self.val_loader = None
        if self.main:
            self.val_loader, _ = create_dataloader(
                self.data.val, self.imgsz, batch * 2, self.gs, hyp=self.hyp, rect=True, pad=0.5,
                workers=self.workers, cache=c.cache, nc=self.data.nc, prefix="val: ",
                allow_unlabelled=c.allow_unlabelled)
        if not c.resume and not c.noautoanchor and not c.keep_anchors:
            if self.main:
                check_anchors(self.dataset, model, thr=self.hyp["anchor_t"], img_size=self.imgsz, seed=c.seed)
            if self.world_size > 1:  # share rank 0's anchors
                for m in model.yolo_layers:
                    dist.broadcast(m.anchors, 0)

    def _build_optimization(self) -> None:
        """Optimizer, scheduler, EMA, loss, AMP scaler, and the state of a resumed run."""
        c, model = self.config, self.model
        self.accumulate = max(round(c.nbs / c.batch_size), 1)
        hyp = dict(self.hyp)
        hyp["weight_decay"] *= c.batch_size * self.accumulate / c.nbs
        self.optimizer = build_optimizer(model, c.optimizer, hyp["lr0"], hyp["momentum"], hyp["weight_decay"])
        self.lf = lr_lambda(c.epochs, hyp["lrf"], c.cos_lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda=self.lf)
        self.ema = ModelEMA(model) if self.main else None
        self.start_epoch, self.best_fitness = 0, 0.0
        if self._resume_ckpt is not None:
            self._load_resume_state(self._resume_ckpt)
        self.scheduler.last_epoch = self.start_epoch - 1
        self.hyp = scale_loss_gains(hyp, len(model.yolo_layers), self.data.nc, self.imgsz)
        self.compute_loss = ComputeLoss(model, self.hyp, label_smoothing=c.label_smoothing)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda")
        nb = len(self.loader)
        self.nw = max(round(self.hyp["warmup_epochs"] * nb), 100) if self.hyp["warmup_epochs"] > 0 else 0
        self.stopper_best, self.stopper_epoch = self.best_fitness, self.start_epoch
        self.metrics: dict = {}

    def _load_resume_state(self, ck: dict) -> None:
        c = self.config
        self.optimizer.load_state_dict(ck["optimizer"])
        if self.ema is not None and ck.get("ema") is not None:
            self.ema.ema.load_state_dict(ck["ema"])
            self.ema.updates = int(ck.get("updates", 0))
        self.start_epoch = int(ck["epoch"]) + 1
        self.best_fitness = float(ck.get("best_fitness") or 0.0)
        self._log(f"Resuming {c.resume} from epoch {self.start_epoch} of {c.epochs}")
        if self.start_epoch >= c.epochs:
            raise TrainError(f"--resume {c.resume}: already trained {c.epochs} epochs")

    def _wrap_ddp(self) -> None:
        if self.world_size <= 1:
            return
        cuda = self.device.type == "cuda"
        model = self.model
        if self.config.sync_bn and cuda:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = nn.parallel.DistributedDataParallel(
            model, device_ids=[self.local_rank] if cuda else None, output_device=self.local_rank if cuda else None)

    def _warmup(self, ni: int, epoch: int) -> None:
        """Iteration ``ni`` of the warm-up: accumulation, learning rates and momentum ramp up."""
        if ni > self.nw:
            return
        c, hyp, xi = self.config, self.hyp, [0, self.nw]
        self.accumulate = max(1, round(np.interp(ni, xi, [1, c.nbs / c.batch_size])))
        for j, g in enumerate(self.optimizer.param_groups):
            g["lr"] = float(np.interp(ni, xi, [hyp["warmup_bias_lr"] if j == 2 else 0.0,
                                               g["initial_lr"] * self.lf(epoch)]))
            if "momentum" in g:
                g["momentum"] = float(np.interp(ni, xi, [hyp["warmup_momentum"], hyp["momentum"]]))

    def _train_epoch(self, epoch: int) -> None:
        """One pass over the training loader; leaves mean losses in ``self.mloss``/``self.extra_means``."""
        c, nb = self.config, len(self.loader)
        self.model.train()
        if hasattr(self.loader.sampler, "set_epoch"):
            self.loader.sampler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        self.mloss = torch.zeros(3, device=self.device)
        self.extra_means: dict[str, float] = {}
        self.optimizer.zero_grad()
        n_micro = n_images = 0
        pbar, t_epoch = self._progress(enumerate(self.loader), nb), time.time()
        for i, (imgs, targets, _paths, _) in pbar:
            self._warmup(i + nb * epoch, epoch)
            loss_items, extras = self._forward_backward(imgs, targets)
            n_micro, n_images = n_micro + 1, n_images + imgs.shape[0]
            if n_micro >= self.accumulate or i == nb - 1:
                self._optimizer_step(n_micro, n_images * self.world_size)
                n_micro = n_images = 0
            self.mloss = (self.mloss * i + loss_items) / (i + 1)
            for k, v in extras.items():
                self.extra_means[k] = (self.extra_means.get(k, 0.0) * i + v) / (i + 1)
            if self.main and hasattr(pbar, "set_description"):
                mem = f"{torch.cuda.memory_reserved() / 1e9:.3g}G" if self.device.type == "cuda" else "cpu"
                pbar.set_description(f"{epoch + 1}/{c.epochs} {mem} {self._loss_text()} "
                                     f"inst {targets.shape[0]} {self.imgsz}")
        if self.main and not sys.stdout.isatty():  # logs: one line per epoch instead of a bar
            print(f"{epoch + 1}/{c.epochs} {self._loss_text()} ({nb} batches, {time.time() - t_epoch:.1f}s)",
                  flush=True)
        self.lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.scheduler.step()

    def _progress(self, it: Iterable, total: int) -> Iterable:
        if not self.main:
            return it
        from tqdm import tqdm  # optional dependency
        return tqdm(it, total=total, bar_format="{l_bar}{bar:10}{r_bar}", mininterval=1.0,
                    disable=not sys.stdout.isatty())

    def _loss_text(self) -> str:
        m = self.mloss
        extras = "".join(f" {k} {v:.4g}" for k, v in self.extra_means.items())
        return f"box {m[0]:.4g} obj {m[1]:.4g} cls {m[2]:.4g}{extras}"

    def _forward_backward(self, imgs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Forward, detection loss plus the hooks' loss terms, backward (scaled for AMP)."""
        imgs = imgs.to(self.device, non_blocking=True).float() / 255
        if self.config.channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        named: dict[str, float] = {}
        with torch.autocast(device_type=self.device.type, enabled=self.device.type == "cuda"):
            preds = self.model(imgs)
            loss, loss_items = self.compute_loss(preds, targets.to(self.device))
            for hook in self.hooks:
                term = hook.loss(self, imgs, targets, preds)
                if term is not None:
                    loss = loss + term[0]
                    named.update({k: float(v) for k, v in term[1].items()})
            if self.world_size > 1:
                loss = loss * self.world_size  # DDP averages gradients over processes
        self.scaler.scale(loss).backward()
        return loss_items, named

    def _optimizer_step(self, n_micro: int, n_images: int) -> None:
        """Unscale, clip, ``after_backward`` hooks, step, ``after_step`` hooks, EMA."""
        scaler, optimizer = self.scaler, self.optimizer
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=CLIP_NORM)
        self._call("after_backward", n_micro, n_images)
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        scaler.step(optimizer)
        scaler.update()
        self.stepped = not scaler.is_enabled() or scaler.get_scale() >= scale  # a lower scale: step skipped
        self._call("after_step", n_micro, n_images)
        optimizer.zero_grad()
        if self.ema is not None:
            self.ema.update(self.model)

    def _end_epoch(self, epoch: int) -> bool:
        """Evaluate, log, save (rank 0); returns whether to stop early (agreed over all processes)."""
        stop = False
        if self.main:
            c = self.config
            final = epoch + 1 == c.epochs
            res = None
            self.ema.flush_subnormal_()  # weights held at zero decay into slow subnormals in the average
            if not c.noval or final:
                res = evaluate(self.ema.ema, self.val_loader, conf_thres=0.001, iou_thres=0.6,
                               names=self.data.names, save_dir=self.save_dir if final else None, plots=final,
                               compute_loss=self.compute_loss, progress=False, verbose=final)
            self.metrics = _plain_metrics(res)
            fi = res.fitness if res is not None else 0.0
            row = self._results_row(epoch, res)
            self._call("after_epoch", epoch, row)
            self._append_csv(self.save_dir / "results.csv", row)
            if fi > self.best_fitness or res is None and epoch == self.start_epoch:
                self.best_fitness = max(fi, self.best_fitness)
            if fi >= self.stopper_best:
                self.stopper_best, self.stopper_epoch = fi, epoch
            if not c.nosave or final:
                self._save(epoch, is_best=fi >= self.best_fitness and res is not None)
            stop = epoch - self.stopper_epoch >= c.patience and not final
            if stop:
                self._log(f"Stopping early: no improvement in the last {c.patience} epochs "
                          f"(best at epoch {self.stopper_epoch})")
        if self.world_size > 1:
            flag = torch.tensor([int(stop)], device=self.device)
            dist.broadcast(flag, 0)
            stop = bool(flag.item())
        return stop

    def _results_row(self, epoch: int, res: EvalResult | None) -> dict:
        m, mt = self.mloss, self.metrics
        vloss = list(res.loss) if res is not None and res.loss is not None else [0.0, 0.0, 0.0]
        row = {"epoch": epoch,
               "train/box_loss": float(m[0]), "train/obj_loss": float(m[1]), "train/cls_loss": float(m[2]),
               "metrics/precision": mt.get("P", 0.0), "metrics/recall": mt.get("R", 0.0),
               "metrics/mAP_0.5": mt.get("mAP50", 0.0), "metrics/mAP_0.5:0.95": mt.get("mAP50-95", 0.0),
               "val/box_loss": vloss[0], "val/obj_loss": vloss[1], "val/cls_loss": vloss[2],
               "x/lr0": self.lrs[0], "x/lr1": self.lrs[1], "x/lr2": self.lrs[2]}
        row.update({f"train/{k}": v for k, v in self.extra_means.items()})
        return row

    def _save(self, epoch: int, is_best: bool) -> None:
        ckpt = self._checkpoint(epoch)
        atomic_save(ckpt, self.wdir / "last.pt")
        if is_best:
            atomic_save(ckpt, self.wdir / "best.pt")
        if self.config.save_period > 0 and (epoch + 1) % self.config.save_period == 0:
            atomic_save(ckpt, self.wdir / f"epoch{epoch}.pt")

    def _finish(self, epoch: int, t0: float) -> dict:
        if self.main:
            self._log(f"{epoch - self.start_epoch + 1} epochs completed in {(time.time() - t0) / 3600:.3f} hours.")
            for f in (self.wdir / "last.pt", self.wdir / "best.pt"):
                if f.exists():
                    self._strip(f)
            if (self.save_dir / "results.csv").exists():
                plot_results(self.save_dir / "results.csv")
            self.final_metrics = self.metrics
            self._call("after_train")
            self._log(f"Results saved to {self.save_dir}")
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()
        return self.metrics if self.main else {}

    # ------------------------------------------------------------------ outputs
    def _history_entry(self, epoch: int) -> dict:
        c = self.config
        entry = {"step": self.step_name, "weights": self.parent_weights, "data": str(self.data.source),
                 "epochs": c.epochs, "epoch": epoch, "img": c.img, "batch_size": c.batch_size,
                 "metrics": self.metrics, "save_dir": str(self.save_dir)}
        entry.update(self.history_extra)
        return entry

    def _checkpoint(self, epoch: int) -> dict:
        return make_checkpoint(
            de_parallel(self.model), ema=self.ema.ema if self.ema else None,
            updates=self.ema.updates if self.ema else 0, epoch=epoch, best_fitness=self.best_fitness,
            optimizer=self.optimizer, hyp=self.hyp, opt=self.config.to_dict(self.groups),
            history=self.history + [self._history_entry(epoch)])

    @staticmethod
    def _strip(path: Path) -> None:
        """Finished checkpoint: EMA weights as ``model``, no optimizer state (smaller file)."""
        ckpt = load_checkpoint(path, verbose=False)
        if ckpt.get("ema") is not None:
            ckpt["model"] = ckpt["ema"]
        ckpt.update(ema=None, optimizer=None, updates=0, epoch=-1)
        atomic_save(ckpt, path)

    @staticmethod
    def _append_csv(path: Path, row: dict) -> None:
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(list(row))
            w.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row.values()])


def run_training(config: TrainConfig, step: str = "train",
                 configure: Callable[[Trainer], None] | None = None) -> dict:
    """Build a Trainer, let ``configure`` register hooks, train. Returns final metrics."""
    trainer = Trainer(config, step=step)
    if configure is not None:
        configure(trainer)
    return trainer.run()
