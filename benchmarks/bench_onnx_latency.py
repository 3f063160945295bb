"""ONNX Runtime CPU latency of detectors side by side (e.g. original vs pruned).

    python benchmarks/bench_onnx_latency.py --weights weights/last_v6s.pt \
        weights/prune_0.5_keep_0.01_8x_last_v6s.pt --labels original pruned --img 320 640

Each checkpoint is exported (static shape, BN folded) for every ``--img`` size into a temporary
folder, then run by onnxruntime on the CPU with one intra-op thread (``--threads``) and sequential
execution, so the figure is per-core cost and not the machine's thread scheduling. Models are timed
round-robin, one run of each in turn, so drifting load on a shared machine hits all of them alike.
Reported: median (and p10/p90) milliseconds after ``--warmup`` runs, FLOPs, parameters, and ratios
to the first model. ``.onnx`` files are accepted as they are (timed at their own input size).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from machine import cpu_name, write_report  # benchmarks/ is on sys.path when these run

ROOT = Path(__file__).resolve().parents[1]




def _session(path: Path, threads: int):
    from utils.onnx_backend import require_onnxruntime
    ort = require_onnxruntime()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _prepare(weights: str, sizes: list[int], tmp: Path, opset: int) -> dict:
    """Exported files per size plus parameter and FLOP counts for one checkpoint."""
    from utils.export import export_onnx
    from models import load_model
    from utils.onnx_backend import OnnxModel, is_onnx
    from utils.torch_utils import count_flops, count_params

    if is_onnx(weights):
        fixed = OnnxModel(weights).fixed_shape
        if fixed is None or fixed[0] != fixed[1]:
            raise ValueError(f"{weights}: only square static .onnx files can be timed here; "
                             f"pass the .pt checkpoint instead")
        return {"files": {fixed[0]: Path(weights)}, "params": None, "flops": {}}
    model = load_model(weights, "cpu", verbose=False)
    files, flops = {}, {}
    for s in sizes:
        files[s] = export_onnx(model, tmp / f"{Path(weights).stem}_{len(list(tmp.iterdir()))}_{s}.onnx",
                               (s, s), opset=opset)
        flops[s] = count_flops(model, s)
    return {"files": files, "params": count_params(model), "flops": flops}


def _time_round_robin(sessions: list, size: int, runs: int, warmup: int) -> list[list[float]]:
    """Milliseconds per run for every session, interleaved run by run."""
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    name = [s.get_inputs()[0].name for s in sessions]
    for _ in range(warmup):
        for s, n in zip(sessions, name):
            s.run(None, {n: x})
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for k, (s, n) in enumerate(zip(sessions, name)):
            t = time.perf_counter()
            s.run(None, {n: x})
            times[k].append((time.perf_counter() - t) * 1e3)
    return times


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run(weights: list[str], labels: list[str], sizes: list[int], runs: int, warmup: int,
        threads: int, opset: int) -> dict:
    """Measure every model at every size; returns the JSON-ready report."""
    import onnxruntime
    report = {"benchmark": "onnxruntime CPU latency", "cpu": cpu_name(), "threads": threads,
              "onnxruntime": onnxruntime.__version__, "runs": runs, "warmup": warmup,
              "models": [], "results": []}
    with tempfile.TemporaryDirectory(prefix="onnx_latency_") as tmp:
        prepared = [_prepare(w, sizes, Path(tmp), opset) for w in weights]
        for w, label, prep in zip(weights, labels, prepared):
            report["models"].append({"label": label, "weights": str(w), "params": prep["params"]})
        for size in sizes:
            usable = [k for k, p in enumerate(prepared) if size in p["files"]]
            if not usable:
                continue
            sessions = [_session(prepared[k]["files"][size], threads) for k in usable]
            times = _time_round_robin(sessions, size, runs, warmup)
            row = {"img": size, "models": {}}
            for k, t in zip(usable, times):
                flops = prepared[k]["flops"].get(size)
                row["models"][labels[k]] = {
                    "ms_median": statistics.median(t), "ms_p10": _percentile(t, 10),
                    "ms_p90": _percentile(t, 90), "gflops": flops / 1e9 if flops else None}
            report["results"].append(row)
    return report


def format_table(report: dict) -> str:
    """Markdown table: median ms per model, then ratios (latency and FLOPs) to the first model."""
    labels = [m["label"] for m in report["models"]]
    head = ["img"] + [f"{l} ms (p10-p90)" for l in labels] + [f"{l} GFLOPs" for l in labels]
    head += [f"{l}/{labels[0]} latency" for l in labels[1:]] + [f"{l}/{labels[0]} FLOPs" for l in labels[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["results"]:
        m = row["models"]
        cells = [str(row["img"])]
        cells += [f"{m[l]['ms_median']:.2f} ({m[l]['ms_p10']:.2f}-{m[l]['ms_p90']:.2f})" if l in m else "-"
                  for l in labels]
        cells += [f"{m[l]['gflops']:.2f}" if l in m and m[l]["gflops"] else "-" for l in labels]
        base = m.get(labels[0])
        for key, fmt in (("ms_median", "{:.3f}"), ("gflops", "{:.3f}")):
            for l in labels[1:]:
                ok = base and l in m and base[key] and m[l][key]
                cells.append(fmt.format(m[l][key] / base[key]) if ok else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", nargs="+", required=True, help="checkpoints (.pt) or .onnx files")
    p.add_argument("--labels", nargs="+", default=None, help="one name per weights file")
    p.add_argument("--img", "--img-size", dest="img", type=int, nargs="+", default=[320, 640])
    p.add_argument("--runs", type=int, default=30, help="timed runs per model and size")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--json", default="runs/bench/onnx_latency.json", help="where to write the report")
    opt = p.parse_args(argv)
    opt.labels = opt.labels or [Path(w).stem for w in opt.weights]
    if len(opt.labels) != len(opt.weights):
        p.error(f"--labels: {len(opt.labels)} names for {len(opt.weights)} weights files")
    if len(set(opt.labels)) != len(opt.labels):
        p.error("--labels: names must be distinct")
    if opt.runs < 1 or opt.warmup < 0 or opt.threads < 1:
        p.error("--runs and --threads must be >= 1, --warmup >= 0")
    missing = [w for w in opt.weights if not Path(w).is_file()]
    if missing:
        p.error(f"--weights: not found: {', '.join(missing)}")
    return opt


def main(argv: Sequence[str] | None = None) -> int:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import torch
    opt = parse_args(argv)
    torch.set_num_threads(opt.threads)  # export and FLOP counting; latency threads are ORT's
    report = run(opt.weights, opt.labels, opt.img, opt.runs, opt.warmup, opt.threads, opt.opset)
    table = format_table(report)
    print(f"onnxruntime {report['onnxruntime']} on {report['cpu']}, {opt.threads} intra-op thread(s), "
          f"median of {opt.runs} runs after {opt.warmup} warm-up, batch 1")
    print(table)
    report["table"] = table
    write_report(opt.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
