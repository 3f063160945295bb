"""The pipeline report: every stage's accuracy, size and speed, measured side by side.

    python scripts/pipeline_report.py --run runs/pipeline/default --data data/builtin.yaml --img 256 \
        --base B.pt --sparse S.pt --pruned P.pt --finetune F.pt --distill D.pt

Writes ``<run>/report.json``, ``<run>/report.md`` (with the plots of the run) and prints the table.
Latency: batch 1, BN fused, one CPU thread, median of 50 rounds in which the five models are timed
one after the other (round-robin, so a change of machine load hits all of them alike), after
warm-up; plus CUDA when present. ``--int8 int8.json`` (quantize.py's output, INT8=1 in the
pipeline) adds the row "INT8 (ONNX Runtime)": the final model quantized, its mAP on the same split,
the INT8 file's size, and its ONNX Runtime latency (1 thread, batch 1) with the FP32 ONNX Runtime
latency measured alongside it in the note below the table (runtimes differ from the PyTorch rows).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = {"baseline_mAP50": 0.7, "param_reduction": 0.5, "flop_reduction": 0.5, "mAP50_drop": 0.03}
STAGES = [("baseline", "base"), ("sparse", "sparse"), ("pruned", "pruned"),
          ("finetuned", "finetune"), ("finetuned+distill", "distill")]
INT8_STAGE = "INT8 (ONNX Runtime)"


def measure_stage(weights: Path, data_cfg, img: int, batch: int, workers: int) -> tuple[dict, object]:
    """Accuracy, size and FLOPs of one checkpoint; returns the figures and the fused model."""
    from models import load_model
    from utils.evaluate import evaluate_dataset
    from utils.torch_utils import count_flops, count_params

    model = load_model(weights, device="cpu", verbose=False)
    res = evaluate_dataset(model, data_cfg, img_size=img, batch_size=batch, workers=workers,
                           progress=False)
    out = {
        "weights": str(weights), "mAP50": float(res.mAP50), "mAP50-95": float(res.mAP50_95),
        "params": count_params(model), "flops": count_flops(model, img),
        "size_mb": weights.stat().st_size / 1e6, "cpu_ms": None, "gpu_ms": None,
    }
    return out, model.fused_copy()


def interleaved_latency(models: list, img: int, device: str, rounds: int, warmup: int = 3) -> list[float]:
    """Median batch-1 latency (ms) of each model, timed round-robin so load changes hit all alike."""
    import statistics

    import torch
    x = torch.rand(1, 3, img, img, device=device)
    models = [m.to(device) for m in models]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times: list[list[float]] = [[] for _ in models]
    with torch.no_grad():
        for m in models:
            for _ in range(warmup):
                m(x)
        for _ in range(rounds):
            for k, m in enumerate(models):
                sync()
                t = time.perf_counter()
                m(x)
                sync()
                times[k].append((time.perf_counter() - t) * 1000)
    return [statistics.median(t) for t in times]


def int8_stage(path: Path, final: dict) -> dict:
    """The report row of quantize.py's results: architecture figures of the final model, INT8's
    accuracy, file size and ONNX Runtime latency; FP32 ONNX Runtime figures kept for the note."""
    res = json.loads(path.read_text())
    int8, fp32 = res["models"]["INT8"], res["models"]["FP32"]
    out = Path(res["int8"])
    size = sum(f.stat().st_size for f in out.rglob("*")) if out.is_dir() else out.stat().st_size
    return {"weights": str(out), "mAP50": float(int8["mAP50"]), "mAP50-95": float(int8["mAP50-95"]),
            "params": final["params"], "flops": final["flops"], "size_mb": size / 1e6,
            "cpu_ms": float(int8["median_ms"]), "gpu_ms": None, "runtime": res["runtime"],
            "fp32_runtime": {"mAP50": float(fp32["mAP50"]), "mAP50-95": float(fp32["mAP50-95"]),
                             "cpu_ms": float(fp32["median_ms"])}, "head": res.get("head")}


def int8_note(stages: dict) -> str | None:
    s = stages.get(INT8_STAGE)
    if s is None:
        return None
    f = s["fp32_runtime"]
    return (f"{INT8_STAGE}: latency measured with {s['runtime']} (1 thread, batch 1); the same model in FP32 "
            f"there: {f['cpu_ms']:.1f} ms, mAP@.5 {f['mAP50']:.4f}, mAP@.5:.95 {f['mAP50-95']:.4f} "
            f"(INT8 {s['cpu_ms'] and f['cpu_ms'] / s['cpu_ms']:.2f}x faster); detection head kept {s['head']}")


def ratios(stages: dict) -> None:
    base = stages["baseline"]
    for s in stages.values():
        s["ratio"] = {k: (s[k] / base[k] if base.get(k) else None)
                      for k in ("params", "flops", "size_mb", "cpu_ms", "gpu_ms")
                      if s.get(k) is not None and base.get(k)}


def check_targets(stages: dict) -> dict:
    base, final = stages["baseline"], stages["finetuned"]
    checks = {
        "baseline mAP@0.5 >= 0.7": base["mAP50"] >= TARGETS["baseline_mAP50"],
        "final params >= 50% fewer": final["params"] <= (1 - TARGETS["param_reduction"]) * base["params"],
        "final FLOPs >= 50% fewer": final["flops"] <= (1 - TARGETS["flop_reduction"]) * base["flops"],
        "final mAP@0.5 within 0.03 of baseline": final["mAP50"] >= base["mAP50"] - TARGETS["mAP50_drop"],
    }
    return checks


def table(stages: dict) -> str:
    from terminaltables import AsciiTable
    rows = [["stage", "mAP@.5", "mAP@.5:.95", "params", "GFLOPs", "size MB", "CPU ms", "GPU ms",
             "params x", "FLOPs x", "CPU ms x"]]
    for name, s in stages.items():
        r = s["ratio"]
        rows.append([name, f"{s['mAP50']:.4f}", f"{s['mAP50-95']:.4f}", f"{s['params']:,}",
                     f"{s['flops'] / 1e9:.3f}", f"{s['size_mb']:.2f}", f"{s['cpu_ms']:.1f}",
                     "-" if s["gpu_ms"] is None else f"{s['gpu_ms']:.2f}",
                     f"{r.get('params', 0):.3f}", f"{r.get('flops', 0):.3f}", f"{r.get('cpu_ms', 0):.3f}"])
    return AsciiTable(rows).table


def markdown(report: dict, run: Path) -> str:
    lines = [f"# Pipeline report: {run.name}", "",
             f"Machine: {report['machine']}; image size {report['img']}; data {report['data']}.", "",
             "| stage | mAP@.5 | mAP@.5:.95 | params | GFLOPs | size MB | CPU ms (1 thread) | GPU ms | "
             "params ratio | FLOPs ratio | CPU latency ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in report["stages"].items():
        r = s["ratio"]
        gpu = "-" if s["gpu_ms"] is None else f"{s['gpu_ms']:.2f}"
        lines.append(f"| {name} | {s['mAP50']:.4f} | {s['mAP50-95']:.4f} | {s['params']:,} | "
                     f"{s['flops'] / 1e9:.3f} | {s['size_mb']:.2f} | {s['cpu_ms']:.1f} | {gpu} | "
                     f"{r.get('params', 0):.3f} | {r.get('flops', 0):.3f} | {r.get('cpu_ms', 0):.3f} |")
    note = int8_note(report["stages"])
    if note:
        lines += ["", note]
    lines += ["", "Step times (s): " + ", ".join(f"{k} {v}" for k, v in report["timings"].items()), ""]
    if report["targets"] is not None:
        lines.append("Targets: " + "; ".join(f"{k}: {'met' if v else 'MISSED'}"
                                             for k, v in report["targets"].items()))
        lines.append("")
    for title, rel in report["figures"].items():
        lines += [f"## {title}", "", f"![{title}]({rel})", ""]
    return "\n".join(lines)


def figures(run: Path) -> dict:
    out = {}
    for title, pattern in [("gamma histograms during sparsity training", "sparse/gamma_hist.png"),
                           ("per-layer gamma before/after sparsity training", "sparse/gamma_layers.png"),
                           ("channels per layer before/after pruning", "pruned/*.png"),
                           ("detections of the final model", "detect/*.jpg"),
                           ("baseline training curves", "base/results.png")]:
        hits = sorted(run.glob(pattern))
        if hits:
            out[title] = str(hits[0].relative_to(run))
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="the pipeline's output folder")
    p.add_argument("--data", default=None)
    p.add_argument("--img", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--quick", type=int, default=0, help="1: smoke run, accuracy targets do not apply")
    for _, key in STAGES:
        p.add_argument(f"--{key}", required=True, help=f"{key} checkpoint")
    p.add_argument("--int8", default=None, help="quantize.py --json output: adds the INT8 row")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import torch

    from utils.dataconfig import load_data_config
    opt = parse_args(argv)
    run = Path(opt.run)
    data_cfg = load_data_config(opt.data)
    stages, fused = {}, []
    for name, key in STAGES:
        t = time.time()
        stages[name], model = measure_stage(Path(getattr(opt, key)), data_cfg, opt.img,
                                            opt.batch_size, opt.workers)
        fused.append(model)
        print(f"{name}: measured in {time.time() - t:.1f}s", flush=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for s, ms in zip(stages.values(), interleaved_latency(fused, opt.img, "cpu", rounds=50)):
            s["cpu_ms"] = ms
    finally:
        torch.set_num_threads(threads)
    if torch.cuda.is_available():
        for s, ms in zip(stages.values(), interleaved_latency(fused, opt.img, "cuda", rounds=100)):
            s["gpu_ms"] = ms
    if opt.int8:
        stages[INT8_STAGE] = int8_stage(Path(opt.int8), stages["finetuned"])
    ratios(stages)
    timings = {}
    tf = run / "timings.txt"
    if tf.exists():
        for line in tf.read_text().split("\n"):
            if line.strip():
                k, v = line.split()
                timings[k] = int(v)
    report = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads available, "
                   f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}",
        "img": opt.img, "data": str(data_cfg.source), "quick": bool(opt.quick),
        "stages": stages, "timings": timings,
        "targets": None if opt.quick else check_targets(stages),
        "figures": figures(run),
    }
    (run / "report.json").write_text(json.dumps(report, indent=2))
    (run / "report.md").write_text(markdown(report, run))
    print(table(stages))
    if int8_note(stages):
        print(int8_note(stages))
    if report["targets"] is not None:
        for k, ok in report["targets"].items():
            print(f"  {'met   ' if ok else 'MISSED'}  {k}")
        if not all(report["targets"].values()):
            print("WARNING: the run missed at least one of its stated targets (see above)")
    print(f"Report: {run / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
