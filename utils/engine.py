"""The one training engine behind train.py, train_sparsity.py and prune_finetune.py.

Upstream YOLOv5 v6 training semantics: SGD (nesterov) or Adam/AdamW with three parameter groups
(no weight decay on BatchNorm weights and biases), warm-up of learning rate, momentum and bias
learning rate, linear or cosine one-cycle schedule, EMA of the weights, gradient accumulation to a
nominal batch, AMP on CUDA, ``last.pt`` every epoch and ``best.pt`` by fitness, exact ``--resume``,
``results.csv``/``results.png``, DDP under torchrun (gloo on CPU).

Later steps plug in through seams instead of copying the loop:

* ``trainer.after_backward`` - callables ``f(trainer, n_micro, n_images)`` run once per optimizer step
  on the live model's gradients after AMP unscaling and gradient clipping, right before the step
  (``n_micro`` micro-batches with ``n_images`` images were accumulated into those gradients);
* ``trainer.loss_terms`` - callables ``f(trainer, imgs, targets, preds) -> (loss, {name: value})``
  whose loss is added to the detection loss;
* ``trainer.epoch_end`` - callables ``f(trainer, epoch, row)`` that may add columns to ``row``
  (the results.csv line) after validation;
* ``trainer.train_start`` / ``trainer.train_end`` - callables ``f(trainer)``.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml

from models import (CheckpointError, Darknet, build_model, load_cfg_file, load_checkpoint,
                    make_checkpoint, model_from_checkpoint)
from models import _initialize, atomic_save, check_cfg_matches
from utils.general import increment_path, init_seeds, set_cpu_threads, setup_logging
from utils.torch_utils import ModelEMA, de_parallel, select_device

__all__ = ["add_train_args", "Trainer", "run_training", "DEFAULT_CFG", "ddp_env"]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CFG = ROOT / "models" / "yolov5s.yaml"


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def add_train_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags every training script shares (upstream train.py names and aliases)."""
    p.add_argument("--weights", type=str, default="",
                   help="initial weights: our checkpoint, an upstream .pt, or '' to start from scratch")
    p.add_argument("--cfg", type=str, default="", help="model description (.yaml or .cfg)")
    p.add_argument("--data", type=str, default=None, help="dataset .yaml or .data (default: built-in)")
    p.add_argument("--hyp", type=str, default=None,
                   help="hyperparameter yaml (default: data/hyps/hyp.scratch-low.yaml)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", "--batch", dest="batch_size", type=int, default=16,
                   help="total batch size over all processes")
    p.add_argument("--img", "--img-size", "--imgsz", dest="img", type=int, default=640,
                   help="train and val image size (pixels)")
    p.add_argument("--rect", action="store_true", help="rectangular training batches")
    p.add_argument("--resume", nargs="?", const=True, default=False,
                   help="resume the most recent run, or the given last.pt")
    p.add_argument("--nosave", action="store_true", help="only save the final checkpoint")
    p.add_argument("--noval", action="store_true", help="only validate after the final epoch")
    p.add_argument("--noautoanchor", action="store_true", help="skip the anchor check")
    p.add_argument("--device", default="", help="cuda device, e.g. 0 or 0,1, or cpu")
    p.add_argument("--workers", type=int, default=None,
                   help="dataloader workers per process (default: cores - 1, at most 8)")
    p.add_argument("--project", default=str(ROOT / "runs" / "train"), help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="reuse project/name instead of incrementing")
    p.add_argument("--optimizer", choices=["SGD", "Adam", "AdamW"], default="SGD")
    p.add_argument("--cos-lr", action="store_true", help="cosine one-cycle learning rate (default linear)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under DDP")
    p.add_argument("--freeze", type=int, default=0, help="freeze the first N cfg layers")
    p.add_argument("--patience", type=int, default=100, help="stop after N epochs without improvement")
    p.add_argument("--cache", nargs="?", const="ram", default=None, help="cache images in ram")
    p.add_argument("--seed", type=int, default=0, help="global training seed")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--nbs", type=int, default=64,
                   help="nominal batch size: gradients are accumulated to about this many images")
    p.add_argument("--save-period", type=int, default=-1, help="also save epoch<N>.pt every N epochs")
    p.add_argument("--max-train-images", type=int, default=0,
                   help="train on the first N training images only (smoke tests)")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (slower)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    return p


def ddp_env() -> tuple[int, int, int]:
    """(local_rank, rank, world_size) from torchrun's environment; (-1, -1, 1) without DDP."""
    return (int(os.getenv("LOCAL_RANK", -1)), int(os.getenv("RANK", -1)), int(os.getenv("WORLD_SIZE", 1)))


# ---------------------------------------------------------------------------------------------
# pieces
# ---------------------------------------------------------------------------------------------
def transfer_weights(src: nn.Module, dst: nn.Module) -> tuple[int, int]:
    """Copy every state entry whose key and shape match; returns (copied, total)."""
    sd, dd = src.state_dict(), dst.state_dict()
    common = {k: v for k, v in sd.items() if k in dd and dd[k].shape == v.shape}
    dst.load_state_dict(common, strict=False)
    return len(common), len(dd)


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
        raise ValueError(f"--optimizer {name}: use SGD, Adam or AdamW")
    opt.add_param_group({"params": w, "weight_decay": decay})
    opt.add_param_group({"params": b, "weight_decay": 0.0})
    return opt


def lr_lambda(epochs: int, lrf: float, cosine: bool) -> Callable[[float], float]:
    """Multiplier of lr0 at (fractional) epoch x: linear or cosine one-cycle from 1 to lrf."""
    if cosine:
        return lambda x: ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return lambda x: (1 - x / epochs) * (1.0 - lrf) + lrf


def _plain_metrics(res) -> dict[str, float]:
    if res is None:
        return {}
    d = res.as_dict() if hasattr(res, "as_dict") else dict(res)
    return {k: float(d[k]) for k in ("P", "R", "mAP50", "mAP50-95") if k in d}


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------
class Trainer:
    """Set up from parsed options; ``run()`` trains and returns the final metrics dict."""

    step_name = "train"

    def __init__(self, opt: argparse.Namespace, step: str = "train"):
        self.opt = opt
        self.step_name = step
        self.after_backward: list[Callable] = []
        self.loss_terms: list[Callable] = []
        self.epoch_end: list[Callable] = []
        self.train_start: list[Callable] = []
        self.train_end: list[Callable] = []
        self.history_extra: dict[str, Any] = {}
        self.extra_columns: list[str] = []
        self.local_rank, self.rank, self.world_size = ddp_env()
        if opt.local_rank != -1 and self.local_rank == -1:
            self.local_rank = opt.local_rank
        self.main = self.rank in (-1, 0)
        setup_logging(self.main)
        self._setup()

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        opt = self.opt
        if opt.resume:
            self._load_resume_options()
        self.device = select_device(opt.device)
        if self.world_size > 1:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.local_rank)
                self.device = torch.device("cuda", self.local_rank)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            if opt.batch_size % self.world_size:
                raise ValueError(f"--batch-size {opt.batch_size} must be a multiple of the "
                                 f"{self.world_size} processes")
        cpus = os.cpu_count() or 1
        if opt.workers is None:
            opt.workers = min(8, max(cpus // max(self.world_size, 1) - 1, 0))
        if self.device.type == "cpu":
            set_cpu_threads(opt.workers if self.world_size == 1 else max(cpus // self.world_size - 1, 0))
        init_seeds(opt.seed + 1 + max(self.rank, 0), deterministic=opt.deterministic)

        from utils.datasets import load_data_config, load_hyp
        self.data = load_data_config(opt.data)
        self.hyp = load_hyp(opt.hyp)
        if not opt.resume:
            opt.save_dir = str(increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok))
        self.save_dir = Path(opt.save_dir)
        self.wdir = self.save_dir / "weights"
        if self.main:
            self.wdir.mkdir(parents=True, exist_ok=True)
            (self.save_dir / "hyp.yaml").write_text(yaml.safe_dump(self.hyp, sort_keys=False))
            (self.save_dir / "opt.yaml").write_text(
                yaml.safe_dump({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opt).items()},
                               sort_keys=False))
        self.model, self.source_ckpt = self._make_model()
        self.model.to(self.device)
        self.history = list(self.source_ckpt.get("history", [])) if self.source_ckpt else []
        self.parent_weights = str(opt.weights) if opt.weights else None

    def _load_resume_options(self) -> None:
        opt = self.opt
        if opt.resume is True:
            runs = sorted(Path(opt.project).glob("*/weights/last.pt"), key=os.path.getmtime)
            if not runs:
                raise FileNotFoundError(f"--resume: no last.pt found under {opt.project}")
            last = runs[-1]
        else:
            last = Path(opt.resume)
        ckpt = load_checkpoint(last, verbose=False)
        if ckpt.get("optimizer") is None or ckpt.get("epoch", -1) < 0:
            raise ValueError(f"--resume {last}: this checkpoint is finished (stripped); nothing to resume")
        saved = dict(ckpt.get("opt") or {})
        keep = {"device": opt.device, "workers": opt.workers}
        for k, v in saved.items():
            setattr(opt, k, v)
        for k, v in keep.items():
            if v not in (None, ""):
                setattr(opt, k, v)
        opt.resume = str(last)
        opt.save_dir = str(last.parent.parent)
        self._resume_ckpt = ckpt

    def _make_model(self) -> tuple[Darknet, dict | None]:
        """The model to train from --weights/--cfg and the dataset's classes."""
        opt, nc = self.opt, self.data.nc
        if opt.resume:
            ckpt = self._resume_ckpt
            model = model_from_checkpoint(ckpt, prefer_ema=False, source=opt.resume)
            return model, ckpt
        if not opt.weights:
            model = build_model(opt.cfg or DEFAULT_CFG, nc=nc)
            model.names = list(self.data.names)
            return model, None
        ckpt = load_checkpoint(opt.weights, cfg=opt.cfg if str(opt.cfg).endswith(".cfg") else None)
        src = model_from_checkpoint(ckpt, prefer_ema=True, verbose=self.main, source=str(opt.weights))
        model = src
        keep = getattr(opt, "keep_names", False)  # finetuning: the checkpoint defines the head
        if opt.cfg:
            given = load_cfg_file(opt.cfg)
            try:
                check_cfg_matches(given, src.cfg, str(opt.cfg), str(opt.weights))
            except CheckpointError:
                if keep:
                    raise
                model = build_model(given, nc=nc)
                n, total = transfer_weights(src, model)
                self._log(f"Transferred {n}/{total} items from {opt.weights} into {opt.cfg}")
        if model.nc != nc:
            if keep:
                raise ValueError(f"--data {self.data.source} has {nc} classes but {opt.weights} "
                                 f"was trained for {model.nc}; use the dataset the model was trained on")
            self._log(f"WARNING: {opt.weights} has {model.nc} classes, the dataset {nc}: "
                      f"the detection convs are re-initialised for {nc} classes")
            new = Darknet(model.cfg.with_head(nc=nc))
            _initialize(new)
            n, total = transfer_weights(model, new)
            self._log(f"Transferred {n}/{total} items from {opt.weights}")
            model = new
        if not keep or not src.names:
            model.names = list(self.data.names)
        return model, ckpt

    def _log(self, msg: str) -> None:
        if self.main:
            print(msg, flush=True)

    # ------------------------------------------------------------------ training
    def run(self) -> dict:
        from utils.datasets import create_dataloader
        from utils.evaluate import evaluate
        from utils.loss import ComputeLoss, scale_loss_gains

        opt, hyp, device, model = self.opt, self.hyp, self.device, self.model
        cuda = device.type == "cuda"
        gs = max(int(model.stride.max()), 32)
        imgsz = int(math.ceil(opt.img / gs) * gs)
        if imgsz != opt.img:
            self._log(f"--img {opt.img} is not a multiple of the max stride {gs}; using {imgsz}")

        # freeze
        freeze = [f"module_list.{i}." for i in range(opt.freeze)]
        for k, p in model.named_parameters():
            p.requires_grad_(not any(k.startswith(f) for f in freeze))

        batch = opt.batch_size // self.world_size
        train_files = self.data.train
        if opt.max_train_images:
            from utils.datasets import list_image_files
            train_files = list_image_files(train_files)[:opt.max_train_images]
        loader, dataset = create_dataloader(
            train_files, imgsz, batch, gs, hyp=hyp, augment=True, rect=opt.rect,
            workers=opt.workers, shuffle=not opt.rect, seed=opt.seed, rank=self.rank,
            world_size=self.world_size, cache=opt.cache, nc=self.data.nc, prefix="train: ")
        self.dataset = dataset
        val_loader = None
        if self.main:
            val_loader, _ = create_dataloader(
                self.data.val, imgsz, batch * 2, gs, hyp=hyp, rect=True, pad=0.5,
                workers=opt.workers, cache=opt.cache, nc=self.data.nc, prefix="val: ")
        nb = len(loader)

        if not opt.resume and not opt.noautoanchor and not getattr(opt, "keep_anchors", False):
            from utils.autoanchor import check_anchors
            if self.main:
                check_anchors(dataset, model, thr=hyp["anchor_t"], img_size=imgsz, seed=opt.seed)
            if self.world_size > 1:  # share rank 0's anchors
                for m in model.yolo_layers:
                    dist.broadcast(m.anchors, 0)

        nbs = opt.nbs
        accumulate = max(round(nbs / opt.batch_size), 1)
        hyp = dict(hyp)
        hyp["weight_decay"] *= opt.batch_size * accumulate / nbs
        optimizer = build_optimizer(model, opt.optimizer, hyp["lr0"], hyp["momentum"], hyp["weight_decay"])
        lf = lr_lambda(opt.epochs, hyp["lrf"], opt.cos_lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)
        ema = ModelEMA(model) if self.main else None

        start_epoch, best_fitness = 0, 0.0
        if opt.resume:
            ck = self._resume_ckpt
            optimizer.load_state_dict(ck["optimizer"])
            if ema is not None and ck.get("ema") is not None:
                ema.ema.load_state_dict(ck["ema"])
                ema.updates = int(ck.get("updates", 0))
            start_epoch = int(ck["epoch"]) + 1
            best_fitness = float(ck.get("best_fitness") or 0.0)
            self._log(f"Resuming {opt.resume} from epoch {start_epoch} of {opt.epochs}")
            if start_epoch >= opt.epochs:
                raise ValueError(f"--resume {opt.resume}: already trained {opt.epochs} epochs")
        scheduler.last_epoch = start_epoch - 1

        if self.world_size > 1:
            if opt.sync_bn and cuda:
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.local_rank] if cuda else None,
                output_device=self.local_rank if cuda else None)
        self.model = model
        self.ema = ema
        self.optimizer = optimizer

        nl = len(de_parallel(model).yolo_layers)
        self.hyp = hyp = scale_loss_gains(hyp, nl, self.data.nc, imgsz)
        compute_loss = ComputeLoss(de_parallel(model), hyp, label_smoothing=opt.label_smoothing)
        self.compute_loss = compute_loss
        scaler = torch.amp.GradScaler("cuda", enabled=cuda)
        nw = max(round(hyp["warmup_epochs"] * nb), 100) if hyp["warmup_epochs"] > 0 else 0
        stopper_best, stopper_epoch = best_fitness, start_epoch
        results_csv = self.save_dir / "results.csv"
        last, best = self.wdir / "last.pt", self.wdir / "best.pt"
        metrics: dict = {}
        self.epochs = opt.epochs
        for f in self.train_start:
            f(self)
        self._log(f"Image sizes {imgsz} train, {imgsz} val; {opt.workers} dataloader workers; "
                  f"{torch.get_num_threads()} torch threads on {device}\n"
                  f"Logging results to {self.save_dir}\nStarting training for {opt.epochs} epochs...")
        t0 = time.time()
        epoch = start_epoch
        for epoch in range(start_epoch, opt.epochs):
            self.epoch = epoch
            model.train()
            if hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            mloss = torch.zeros(3, device=device)
            extra_sums: dict[str, float] = {}
            optimizer.zero_grad()
            n_micro = n_images = 0
            pbar = enumerate(loader)
            if self.main:
                from tqdm import tqdm
                pbar = tqdm(pbar, total=nb, bar_format="{l_bar}{bar:10}{r_bar}", mininterval=1.0,
                            disable=not sys.stdout.isatty())
            t_epoch = time.time()
            for i, (imgs, targets, _paths, _) in pbar:
                ni = i + nb * epoch
                imgs = imgs.to(device, non_blocking=True).float() / 255
                if device.type == "cpu":  # oneDNN: NHWC conv forward+backward ~1.3x faster; the layout propagates
                    imgs = imgs.contiguous(memory_format=torch.channels_last)
                if ni <= nw:  # warm-up
                    xi = [0, nw]
                    accumulate = max(1, round(np.interp(ni, xi, [1, nbs / opt.batch_size])))
                    for j, g in enumerate(optimizer.param_groups):
                        g["lr"] = float(np.interp(ni, xi, [hyp["warmup_bias_lr"] if j == 2 else 0.0,
                                                           g["initial_lr"] * lf(epoch)]))
                        if "momentum" in g:
                            g["momentum"] = float(np.interp(ni, xi, [hyp["warmup_momentum"],
                                                                     hyp["momentum"]]))
                with torch.autocast(device_type=device.type, enabled=cuda):
                    preds = model(imgs)
                    loss, loss_items = compute_loss(preds, targets.to(device))
                    for term in self.loss_terms:
                        extra, named = term(self, imgs, targets, preds)
                        loss = loss + extra
                        for k, v in named.items():
                            extra_sums[k] = (extra_sums.get(k, 0.0) * i + float(v)) / (i + 1)
                    if self.world_size > 1:
                        loss = loss * self.world_size  # DDP averages gradients over processes
                scaler.scale(loss).backward()
                n_micro += 1
                n_images += imgs.shape[0]
                if n_micro >= accumulate or i == nb - 1:
                    self._optimizer_step(scaler, n_micro, n_images * self.world_size)
                    n_micro = n_images = 0
                mloss = (mloss * i + loss_items) / (i + 1)
                if self.main:
                    mem = f"{torch.cuda.memory_reserved() / 1e9:.3g}G" if cuda else "cpu"
                    extras = "".join(f" {k} {v:.4g}" for k, v in extra_sums.items())
                    pbar.set_description(
                        f"{epoch + 1}/{opt.epochs} {mem} box {mloss[0]:.4g} obj {mloss[1]:.4g} "
                        f"cls {mloss[2]:.4g}{extras} inst {targets.shape[0]} {imgsz}")
            if self.main and not sys.stdout.isatty():  # logs: one line per epoch instead of a bar
                extras = "".join(f" {k} {v:.4g}" for k, v in extra_sums.items())
                print(f"{epoch + 1}/{opt.epochs} box {mloss[0]:.4g} obj {mloss[1]:.4g} cls {mloss[2]:.4g}"
                      f"{extras} ({nb} batches, {time.time() - t_epoch:.1f}s)", flush=True)
            lrs = [g["lr"] for g in optimizer.param_groups]
            scheduler.step()

            stop = False
            if self.main:
                final = epoch + 1 == opt.epochs
                res = None
                if not opt.noval or final:
                    res = evaluate(ema.ema, val_loader, conf_thres=0.001, iou_thres=0.6,
                                   names=self.data.names, save_dir=self.save_dir if final else None,
                                   plots=final, compute_loss=compute_loss, progress=False,
                                   verbose=final)
                metrics = _plain_metrics(res)
                fi = 0.1 * metrics.get("mAP50", 0.0) + 0.9 * metrics.get("mAP50-95", 0.0)
                vloss = list(res.loss) if res is not None and res.loss is not None else [0.0, 0.0, 0.0]
                row = {"epoch": epoch,
                       "train/box_loss": float(mloss[0]), "train/obj_loss": float(mloss[1]),
                       "train/cls_loss": float(mloss[2]),
                       "metrics/precision": metrics.get("P", 0.0), "metrics/recall": metrics.get("R", 0.0),
                       "metrics/mAP_0.5": metrics.get("mAP50", 0.0),
                       "metrics/mAP_0.5:0.95": metrics.get("mAP50-95", 0.0),
                       "val/box_loss": vloss[0], "val/obj_loss": vloss[1], "val/cls_loss": vloss[2],
                       "x/lr0": lrs[0], "x/lr1": lrs[1], "x/lr2": lrs[2]}
                row.update({f"train/{k}": v for k, v in extra_sums.items()})
                for f in self.epoch_end:
                    f(self, epoch, row)
                self._append_csv(results_csv, row)
                if fi > best_fitness or res is None and epoch == start_epoch:
                    best_fitness = max(fi, best_fitness)
                if fi >= stopper_best:
                    stopper_best, stopper_epoch = fi, epoch
                is_best = fi >= best_fitness and res is not None
                if not opt.nosave or final:
                    ckpt = self._checkpoint(epoch, best_fitness, metrics, optimizer, scaler)
                    atomic_save(ckpt, last)
                    if is_best:
                        atomic_save(ckpt, best)
                    if opt.save_period > 0 and (epoch + 1) % opt.save_period == 0:
                        atomic_save(ckpt, self.wdir / f"epoch{epoch}.pt")
                stop = epoch - stopper_epoch >= opt.patience and not final
                if stop:
                    self._log(f"Stopping early: no improvement in the last {opt.patience} epochs "
                              f"(best at epoch {stopper_epoch})")
            if self.world_size > 1:
                flag = torch.tensor([int(stop)], device=device)
                dist.broadcast(flag, 0)
                stop = bool(flag.item())
            if stop:
                break

        if self.main:
            hours = (time.time() - t0) / 3600
            self._log(f"{epoch - start_epoch + 1} epochs completed in {hours:.3f} hours.")
            for f in (last, best):
                if f.exists():
                    self._strip(f)
            self._plot_results(results_csv)
            self.final_metrics = metrics
            for f in self.train_end:
                f(self)
            self._log(f"Results saved to {self.save_dir}")
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()
        return metrics

    def _optimizer_step(self, scaler, n_micro: int, n_images: int) -> None:
        model, optimizer = self.model, self.optimizer
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
        for hook in self.after_backward:
            hook(self, n_micro, n_images)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        if self.ema is not None:
            self.ema.update(model)

    # ------------------------------------------------------------------ outputs
    def _history_entry(self, epoch: int, metrics: dict) -> dict:
        opt = self.opt
        entry = {"step": self.step_name, "weights": self.parent_weights,
                 "data": str(self.data.source), "epochs": opt.epochs, "epoch": epoch,
                 "img": opt.img, "batch_size": opt.batch_size, "metrics": metrics,
                 "save_dir": str(self.save_dir)}
        entry.update(self.history_extra)
        return entry

    def _checkpoint(self, epoch: int, best_fitness: float, metrics: dict, optimizer, scaler) -> dict:
        m = de_parallel(self.model)
        return make_checkpoint(
            m, ema=self.ema.ema if self.ema else None, updates=self.ema.updates if self.ema else 0,
            epoch=epoch, best_fitness=best_fitness, optimizer=optimizer, hyp=self.hyp,
            opt=self.opt, history=self.history + [self._history_entry(epoch, metrics)])

    @staticmethod
    def _strip(path: Path) -> None:
        """Finished checkpoint: EMA weights as ``model``, no optimizer state (smaller file)."""
        ckpt = load_checkpoint(path, verbose=False)
        if ckpt.get("ema") is not None:
            ckpt["model"] = ckpt["ema"]
        ckpt.update(ema=None, optimizer=None, updates=0, epoch=-1)
        atomic_save(ckpt, path)

    def _append_csv(self, path: Path, row: dict) -> None:
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(list(row))
            w.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row.values()])

    def _plot_results(self, path: Path) -> None:
        if not path.exists():
            return
        try:
            from utils.plots import plot_results
        except ImportError:
            return
        plot_results(path)


def run_training(opt: argparse.Namespace, step: str = "train",
                 configure: Callable[[Trainer], None] | None = None) -> dict:
    """Build a Trainer, let ``configure`` add hooks, train. Returns final metrics."""
    trainer = Trainer(opt, step=step)
    if configure is not None:
        configure(trainer)
    return trainer.run()
