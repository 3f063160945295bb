"""Small torch helpers: device selection, FLOP counting, timing."""
from __future__ import annotations

import copy
import math
import statistics
import time

import torch

from .errors import UserError

__all__ = ["DeviceError", "select_device", "count_flops", "count_params", "measure_latency", "de_parallel",
           "flush_subnormal_",
           "ModelEMA"]


class DeviceError(UserError, ValueError):
    """``--device`` names a device this machine does not have, or is not a device at all."""


def select_device(device: str | None = "") -> torch.device:
    """'' or None: CUDA if available, else CPU; 'cpu'; '0' or 'cuda:0'; '0,1' -> first listed.

    A malformed string, a CUDA device without CUDA, or an index past the last GPU raises
    :class:`DeviceError` naming ``--device`` and pointing to ``--device cpu``.
    """
    given = (device or "").strip()
    device = given.lower().replace("cuda:", "")
    if device in ("", "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise DeviceError("--device mps: Apple MPS is not available on this machine; use --device cpu")
        return torch.device("mps")
    indices = device.split(",")
    if not all(i.strip().isdigit() for i in indices):
        raise DeviceError(f"--device {given!r} is not a device: use --device cpu, a CUDA index such as "
                          f"--device 0, or a list such as --device 0,1")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {given}: CUDA is not available on this machine; use --device cpu")
    n = torch.cuda.device_count()
    bad = [int(i) for i in indices if int(i) >= n]
    if bad:
        raise DeviceError(f"--device {given}: this machine has {n} CUDA device(s) (0..{n - 1}); "
                          f"use one of them or --device cpu")
    return torch.device(f"cuda:{int(indices[0])}")


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: torch.nn.Module, img_size: int | tuple[int, int] = 640, batch: int = 1) -> int:
    """FLOPs of one forward (batch ``batch``) counted by torch.utils.flop_counter.

    PyTorch counts a multiply-add as 2 FLOPs; upstream YOLOv5 prints GFLOPs with the same convention.
    """
    from torch.utils.flop_counter import FlopCounterMode

    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    p = next(model.parameters())
    ch = getattr(getattr(model, "cfg", None), "in_channels", 3)
    x = torch.zeros(batch, ch, h, w, device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


@torch.no_grad()
def measure_latency(model: torch.nn.Module, img_size: int = 640, runs: int = 20, warmup: int = 3,
                    batch: int = 1) -> float:
    """Median forward latency in milliseconds (eval mode, warm-up, synchronised on CUDA)."""
    p = next(model.parameters())
    x = torch.rand(batch, 3, img_size, img_size, device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()
    sync = torch.cuda.synchronize if p.device.type == "cuda" else (lambda: None)
    try:
        for _ in range(warmup):
            model(x)
        sync()
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            model(x)
            sync()
            times.append((time.perf_counter() - t) * 1000)
    finally:
        model.train(was_training)
    return statistics.median(times)


def flush_subnormal_(t: torch.Tensor) -> torch.Tensor:
    """Set the subnormal values of a floating-point tensor (0 < |x| < the dtype's smallest normal
    number) to zero, in place; returns ``t``.

    Why: CPUs compute with subnormal floats many times slower. A weight that training holds at
    zero (a gamma the sparsity penalty soft-thresholded) makes its moving average decay
    geometrically into the subnormal range, and a conv folded with a nearly-zero gamma gets
    subnormal weights: a sparsity-trained model with many of them ran more than twice as slow on
    the CPU. Their contribution is below float precision anyway.
    """
    if t.dtype.is_floating_point:
        t.masked_fill_(t.abs() < torch.finfo(t.dtype).tiny, 0)
    return t


def de_parallel(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside DataParallel/DistributedDataParallel."""
    return model.module if isinstance(model, (torch.nn.parallel.DataParallel,
                                              torch.nn.parallel.DistributedDataParallel)) else model


class ModelEMA:
    """Exponential moving average of a model's state (upstream YOLOv5 semantics).

    decay(updates) = decay * (1 - exp(-updates / tau)): the average follows the live weights
    closely at first and smooths more as training goes on.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.9999, tau: float = 2000, updates: int = 0):
        self.ema = copy.deepcopy(de_parallel(model)).eval()
        self.updates = updates
        self._decay = lambda x: decay * (1 - math.exp(-x / tau))
        for p in self.ema.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = self._decay(self.updates)
        msd = de_parallel(model).state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)

    @torch.no_grad()
    def flush_subnormal_(self) -> None:
        """Zero the average's subnormal values (see :func:`flush_subnormal_`); the engine calls it
        once per epoch, before the average is evaluated and saved, not on every update."""
        for v in self.ema.state_dict().values():
            flush_subnormal_(v)
