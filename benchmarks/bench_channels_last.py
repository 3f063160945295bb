"""The channels-last trade of ``train.py --channels-last`` on the CPU: BatchNorm precision vs step speed.

    python benchmarks/bench_channels_last.py              # about 2-3 minutes on one thread
    python benchmarks/bench_channels_last.py --quick      # smoke run, JSON under runs/bench

Everything runs in this one process with torch's intra-op (OpenMP) and inter-op threads pinned to one. Like the
trainer, the channels-last side only makes the input batch channels-last (NHWC); the layout then
carries through the network.

* **precision**: the stem of yolov5n (its first two conv+BN+SiLU layers, ``models/yolov5n.yaml``) in
  training mode, batch ``--batch``, one row per ``--precision-sizes`` input size. A fixed random loss
  ``sum(out * R)`` is back-propagated in float32 default layout, float32 channels-last, and in float64
  default layout as the reference (same weights, input and ``R``, made double). Reported per layout:
  max-abs error of the input gradient and of the BN weight gradients, and the same relative to the
  reference's largest magnitude.
* **speed**: one training step of the whole yolov5n (forward, sum of the outputs as the loss,
  backward, SGD step) per layout, both models starting from the same weights. After ``--warmup``
  steps each, ``--rounds`` rounds alternate which layout goes first; the figure is the median of the
  per-round ratios channels-last / default (below 1 = channels-last faster) with their p10/p90, by
  wall clock and by CPU time of this thread (which a competing process on a shared machine does
  not inflate).
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: only benchmarks/ is on the path
    sys.path.insert(0, str(ROOT))
from machine import cpu_name, write_report  # noqa: E402  (benchmarks/ is on sys.path when these run)
from models import build_model  # noqa: E402
from utils.errors import cli_main, nonneg_int, positive_int  # noqa: E402
from utils.general import check_img_size  # noqa: E402

CFG = ROOT / "models" / "yolov5n.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "channels_last.json"
QUICK_JSON = ROOT / "runs" / "bench" / "channels_last_quick.json"
LAYOUTS = ("default", "channels_last")
FULL = {"precision_sizes": [80, 160, 320], "speed_sizes": [160, 320], "batch": 16, "rounds": 40, "warmup": 2}
QUICK = {"precision_sizes": [32, 64], "speed_sizes": [64], "batch": 4, "rounds": 2, "warmup": 1}


# ------------------------------------------------------------------------------------ pure helpers
def grad_errors(test: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Max-abs error of ``test`` against ``ref`` and that error over the reference's largest magnitude."""
    err = (test.double() - ref.double()).abs().max().item()
    scale = ref.double().abs().max().item()
    return {"max_abs": err, "rel": err / scale if scale > 0 else float("inf") if err > 0 else 0.0}


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile, ``q`` in [0, 100]."""
    s = sorted(values)
    if not s:
        raise ValueError("percentile of no values")
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def ratio_summary(test: Sequence[float], base: Sequence[float]) -> dict:
    """Per-round ratios test / base (paired by round) and their median, p10 and p90."""
    if len(test) != len(base) or not test:
        raise ValueError(f"need paired rounds, got {len(test)} and {len(base)} times")
    ratios = [t / b for t, b in zip(test, base)]
    return {"median": statistics.median(ratios), "p10": percentile(ratios, 10), "p90": percentile(ratios, 90),
            "ratios": ratios}


# ------------------------------------------------------------------------------------ precision
def stem(model: nn.Module, n: int = 2) -> nn.Sequential:
    """A copy of the first ``n`` conv+BN+SiLU layers of a model, chained."""
    layers = [m for _, m in model.conv_layers()][:n]
    return copy.deepcopy(nn.Sequential(*layers))


def gradients(block: nn.Module, x: torch.Tensor, r: torch.Tensor, channels_last: bool) -> dict[str, torch.Tensor]:
    """Input and BN weight gradients of ``sum(block(x) * r)`` in training mode."""
    block = copy.deepcopy(block).train()
    x = x.clone().contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    x.requires_grad_(True)
    (block(x) * r).sum().backward()
    bn = [m.weight.grad.flatten() for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    return {"input": x.grad.contiguous(), "bn_weight": torch.cat(bn)}


def precision_row(block: nn.Module, batch: int, size: int, seed: int = 0) -> dict:
    """Gradient errors of both float32 layouts against float64 for one input size."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=g)
    with torch.no_grad():
        r = torch.randn(block(x).shape, generator=g)
    ref = gradients(copy.deepcopy(block).double(), x.double(), r.double(), False)
    row: dict = {"size": size}
    for layout in LAYOUTS:
        got = gradients(block, x, r, layout == "channels_last")
        row[layout] = {k: grad_errors(got[k], ref[k]) for k in ref}
    return row


# ------------------------------------------------------------------------------------ speed
def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    loss = sum(p.sum() for p in model(x))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def timed(fn: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this thread) of one call."""
    w, c = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - w, time.thread_time() - c


def speed_row(model: nn.Module, batch: int, size: int, rounds: int, warmup: int) -> dict:
    """Round-robin training-step times of both layouts at one input size."""
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    inputs = {"default": x, "channels_last": x.contiguous(memory_format=torch.channels_last)}
    steps = {}
    for layout in LAYOUTS:
        m = copy.deepcopy(model).train()
        opt = torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.937, nesterov=True)
        steps[layout] = (lambda m=m, opt=opt, xi=inputs[layout]: train_step(m, opt, xi))
        for _ in range(warmup):
            steps[layout]()
    wall = {k: [] for k in LAYOUTS}
    cpu = {k: [] for k in LAYOUTS}
    for i in range(rounds):
        for layout in (LAYOUTS if i % 2 == 0 else LAYOUTS[::-1]):
            w, c = timed(steps[layout])
            wall[layout].append(w)
            cpu[layout].append(c)
    return {"size": size, "median_step_s": {k: statistics.median(v) for k, v in wall.items()},
            "ratio_wall": ratio_summary(wall["channels_last"], wall["default"]),
            "ratio_cpu": ratio_summary(cpu["channels_last"], cpu["default"])}


# ------------------------------------------------------------------------------------ report
def print_tables(report: dict) -> None:
    m = report["machine"]
    print(f"\ntorch {m['torch']}, threads pinned: intra-op/OpenMP {m['torch_threads']}, inter-op "
          f"{m['torch_interop_threads']} (OMP_NUM_THREADS={m['omp_num_threads']}); batch {report['settings']['batch']}")
    print("\nprecision: float32 gradients vs float64 (max-abs / relative to the largest reference value)")
    print(f"{'size':>5} | {'input grad default':>22} | {'input grad ch-last':>22} | "
          f"{'BN w grad default':>22} | {'BN w grad ch-last':>22}")
    for row in report["precision"]:
        cells = [row[lay][k] for k in ("input", "bn_weight") for lay in LAYOUTS]
        print(f"{row['size']:>5} | " + " | ".join(f"{c['max_abs']:.1e} / {c['rel']:.1e}".rjust(22) for c in cells))
    print(f"\nspeed: yolov5n training step, ratio channels-last / default (median [p10, p90] of "
          f"{report['settings']['rounds']} rounds; < 1 = channels-last faster)")
    print(f"{'size':>5} | {'default s':>9} | {'ch-last s':>9} | {'wall ratio':>20} | {'CPU-time ratio':>20}")
    for row in report["speed"]:
        t = row["median_step_s"]
        r = [f"{s['median']:.3f} [{s['p10']:.3f}, {s['p90']:.3f}]" for s in (row["ratio_wall"], row["ratio_cpu"])]
        print(f"{row['size']:>5} | {t['default']:>9.3f} | {t['channels_last']:>9.3f} | {r[0]:>20} | {r[1]:>20}")


def display_path(path: str) -> str:
    """``path`` relative to the repository when inside it (reports do not record the checkout's location)."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision-sizes", type=positive_int, nargs="+",
                   help=f"input sizes of the gradient-error rows (default {FULL['precision_sizes']})")
    p.add_argument("--speed-sizes", type=positive_int, nargs="+",
                   help=f"input sizes of the step-time rows, rounded up to the model's stride "
                        f"(default {FULL['speed_sizes']})")
    p.add_argument("--batch", type=positive_int, help=f"default {FULL['batch']}")
    p.add_argument("--rounds", type=positive_int, help=f"timed round-robin rounds per speed size "
                                                       f"(default {FULL['rounds']})")
    p.add_argument("--warmup", type=nonneg_int, help=f"untimed steps per layout before the rounds "
                                                     f"(default {FULL['warmup']})")
    p.add_argument("--quick", action="store_true", help=f"smoke run; defaults become {QUICK}")
    p.add_argument("--json", default=None, help=f"report path (default {RESULTS.relative_to(ROOT)}, "
                                                f"--quick: {QUICK_JSON.relative_to(ROOT)})")
    opt = p.parse_args(argv)
    for name, default in (QUICK if opt.quick else FULL).items():
        if getattr(opt, name) is None:
            setattr(opt, name, default)
    if opt.quick and opt.json and Path(opt.json).resolve().parent == RESULTS.parent:
        p.error(f"--json {opt.json}: --quick runs never write into {RESULTS.parent}")
    opt.json = opt.json or str(QUICK_JSON if opt.quick else RESULTS)
    return opt


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    opt = parse_args(argv)
    torch.set_num_threads(1)  # also OpenMP's thread count for torch's kernels
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already ran in this process
        pass
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_model(CFG)
    stride = int(model.stride.max())
    opt.speed_sizes = [check_img_size(s, stride, "--speed-sizes")[0] for s in opt.speed_sizes]
    report = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                          "torch_threads": torch.get_num_threads(),
                          "torch_interop_threads": torch.get_num_interop_threads(),
                          "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                          "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                          "python": platform.python_version(), "load_average": list(os.getloadavg())},
              "shared_machine_note": "timed on a machine shared with other jobs; ratios are paired per "
                                     "round, absolute step times vary with the load",
              "settings": vars(opt) | {"cfg": str(CFG.relative_to(ROOT)), "json": display_path(opt.json)},
              "precision": [precision_row(stem(model), opt.batch, s) for s in opt.precision_sizes],
              "speed": [speed_row(model, opt.batch, s, opt.rounds, opt.warmup) for s in opt.speed_sizes]}
    report["machine"]["load_average_end"] = list(os.getloadavg())
    report["seconds"] = time.perf_counter() - t0
    print_tables(report)
    write_report(opt.json, report, f" ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
