"""Per-stage wall-clock timing of an inference loop (pre-process, inference, NMS).

GPU kernels run asynchronously, so a plain clock would charge a stage's GPU work to whichever later
stage first waits for it. :class:`StageTimer` synchronises the CUDA device at every boundary, so
each stage is charged its own work; on the CPU it is a plain ``time.perf_counter`` stopwatch.
"""
from __future__ import annotations

import time
from typing import Sequence

import torch

__all__ = ["StageTimer"]


class StageTimer:
    """Accumulated seconds per stage: ``start()`` before the first stage, ``lap(stage)`` after each.

    ``total`` holds every stage named at construction (0.0 until timed), in that order.
    """

    def __init__(self, device: torch.device | str, stages: Sequence[str]):
        device = torch.device(device)
        self.device = device if device.type == "cuda" else None
        self.total: dict[str, float] = {s: 0.0 for s in stages}
        self._t = 0.0

    def _sync(self) -> None:
        if self.device is not None:
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        self._sync()
        self._t = time.perf_counter()

    def lap(self, stage: str) -> float:
        """Charge the time since the last ``start``/``lap`` to ``stage``; returns those seconds."""
        self._sync()
        now = time.perf_counter()
        dt, self._t = now - self._t, now
        self.total[stage] = self.total.get(stage, 0.0) + dt
        return dt

    def per_item_ms(self, items: int) -> dict[str, float]:
        """Mean milliseconds per item (image) for every stage; zeros when nothing was timed."""
        return {k: v / max(items, 1) * 1e3 for k, v in self.total.items()}
