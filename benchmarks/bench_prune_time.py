"""Time and peak memory of the pruning step itself (no evaluation, no checkpoint loading).

    python benchmarks/bench_prune_time.py                       # yolov5s and yolov5l, every strategy
    python benchmarks/bench_prune_time.py --models s --repeats 5 --json runs/bench/prune_time.json

For each model a freshly initialised network is made to look sparsity-trained (60% of every BN
layer's gammas scaled by 0.01, calibrated BN statistics), then ``utils.prune.prune`` runs: graph
analysis, masks, constant absorption, surgery (compact cfg, state dict, model) and the verification
forward passes at 256 px. Reported per model and strategy: the median and the first (cold) wall time
with its split into stages, and the peak resident memory the step added. Memory is measured in a
fresh process per model and strategy with glibc's mmap threshold pinned (``MALLOC_MMAP_THRESHOLD_``),
so that freed tensors leave the resident set and the high-water mark (reset through
/proc/self/clear_refs on Linux) shows what the step itself needs.
Torch runs on one CPU thread: the figure is per-core cost, not the scheduling of a shared machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import resource
import statistics
import sys
from pathlib import Path
from typing import Sequence

from machine import cpu_name, write_report  # benchmarks/ is on sys.path when these run

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("analyse", "masks", "absorb", "surgery", "verify")




def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0); False when impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory_mb(fn) -> tuple[object, float, str]:
    """Run ``fn()``; return its result, the peak RSS it added (MB) and how that was measured."""
    if _reset_peak() and _status_kb("VmRSS") is not None:
        base = _status_kb("VmRSS")
        out = fn()
        return out, (_status_kb("VmHWM") - base) / 1024, "VmHWM - VmRSS before (clear_refs reset)"
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = fn()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    return out, grown / 1024, "growth of the process peak (ru_maxrss), a lower bound"


def _model(name: str, nc: int):
    from models import build_model
    from utils.prune.fake import fake_sparsity_

    return fake_sparsity_(build_model(ROOT / "models" / f"yolov5{name}.yaml", nc=nc)).eval()


def _options(strategy: str, ratio: float):
    """The strategy's command-line defaults: --layer_keep 0.01 where it applies."""
    from utils.prune import PruneOptions, get_strategy

    return PruneOptions(strategy, ratio, layer_keep=0.01 if get_strategy(strategy).uses_layer_keep else 0.0)


def probe_memory(name: str, strategy: str, ratio: float, nc: int) -> dict:
    """Peak memory of one prune in a fresh process (see the module docstring)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", name, strategy, str(ratio), str(nc)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _probe_main(name: str, strategy: str, ratio: str, nc: str) -> int:
    import torch
    from utils.prune import prune

    torch.set_num_threads(1)
    model = _model(name, int(nc))
    options = _options(strategy, float(ratio))
    _, peak, how = peak_memory_mb(lambda: prune(model, options))
    print(json.dumps({"peak_rss_added_mb": peak, "peak_method": how}))
    return 0


def bench_model(name: str, strategies: Sequence[str], ratio: float, repeats: int, nc: int) -> list[dict]:
    from utils.prune import prune
    from utils.torch_utils import count_params

    model = _model(name, nc)
    rows = []
    for strategy in strategies:
        options = _options(strategy, ratio)
        first = prune(model, options)
        memory = probe_memory(name, strategy, ratio, nc)
        peak = memory["peak_rss_added_mb"]
        runs = [first.timings]
        for _ in range(repeats):
            runs.append(prune(model, options).timings)
        totals = [r["total"] for r in runs[1:]] or [first.timings["total"]]
        median_run = sorted(runs[1:] or runs, key=lambda r: r["total"])[len(runs[1:] or runs) // 2]
        rows.append({
            "model": f"yolov5{name}", "strategy": strategy, "ratio": ratio, "layer_keep": options.layer_keep,
            "params_before": count_params(model), "params_after": count_params(first.model),
            "first_s": first.timings["total"], "median_s": statistics.median(totals),
            "min_s": min(totals), "stages_median_run_s": {k: median_run[k] for k in STAGES},
            "peak_rss_added_mb": peak, "peak_method": memory["peak_method"],
            "verify_img_size": first.verification["img_size"],
            "verify_max_rel_diff": first.verification["max_rel_diff"],
        })
        print(f"yolov5{name} strategy {strategy}: median {rows[-1]['median_s'] * 1000:.0f} ms "
              f"(first {rows[-1]['first_s'] * 1000:.0f} ms), peak +{peak:.0f} MB", flush=True)
    return rows


def format_table(rows: list[dict]) -> str:
    from terminaltables import AsciiTable

    data = [["model", "strategy", "ratio", "median ms", "first ms", *[f"{s} ms" for s in STAGES],
             "peak +MB", "params after"]]
    for r in rows:
        st = r["stages_median_run_s"]
        data.append([r["model"], r["strategy"], str(r["ratio"]), f"{r['median_s'] * 1000:.0f}",
                     f"{r['first_s'] * 1000:.0f}", *[f"{st[s] * 1000:.0f}" for s in STAGES],
                     f"{r['peak_rss_added_mb']:.0f}", f"{r['params_after']:,} / {r['params_before']:,}"])
    return AsciiTable(data).table


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", default=["s", "l"], help="yolov5 sizes (n s m l x n6 ...)")
    p.add_argument("--strategies", nargs="+", default=["1", "2", "3", "8x"])
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--repeats", type=int, default=5, help="timed runs after the first (cold) one")
    p.add_argument("--nc", type=int, default=80, help="classes of the benchmark models")
    p.add_argument("--json", default="runs/bench/prune_time.json", help="where to write the report")
    opt = p.parse_args(argv)
    if opt.repeats < 0:
        p.error("--repeats must be >= 0")
    for m in opt.models:
        if not (ROOT / "models" / f"yolov5{m}.yaml").is_file():
            p.error(f"--models: models/yolov5{m}.yaml not found")
    return opt


def main(argv: Sequence[str] | None = None) -> int:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--probe"]:  # internal: one memory measurement in a fresh process
        return _probe_main(*argv[1:5])
    import torch

    opt = parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name in opt.models:
        rows += bench_model(name, opt.strategies, opt.ratio, opt.repeats, opt.nc)
    table = format_table(rows)
    print(f"prune step (analysis, masks, absorption, surgery, verification at 256 px), torch "
          f"{torch.__version__}, 1 thread, {cpu_name()}; median of {opt.repeats} runs after a cold one")
    print(table)
    report = {"cpu": cpu_name(), "torch": torch.__version__, "threads": 1, "repeats": opt.repeats,
              "rows": rows, "table": table}
    write_report(opt.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
