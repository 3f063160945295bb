"""The pipeline report: every stage's accuracy, size and speed, side by side, each compared with its control.

    python scripts/pipeline_report.py --run runs/pipeline/default --data data/builtin.yaml --img 160 \
        --base B.pt --sparse S.pt --pruned P.pt --finetune F.pt --distill D.pt \
        [--control-sparse CS.pt --control-final CF.pt --scratch-small SS.pt] [--int8 int8.json]

Writes ``<run>/report.json``, ``<run>/report.md`` (with the plots of the run) and prints the table.
Accuracy is measured on the held-out test split when the dataset has one (``--split auto``), else on
val, the split that selected each run's best.pt (the report says which). Every accuracy comparison
names its matched control, the model trained with the same data, image size and total epochs
(summed from each checkpoint's training history) without the step under test:

- sparse vs control_sparse (the same training without -sr),
- the final model (pruned + finetuned) vs control_final (the unpruned model trained as long),
- the final model vs scratch_small (a width-scaled model with the pruned model's FLOPs, trained
  from scratch for the same total epochs: the "just train a smaller model" alternative); when it
  was also trained with the cosine schedule (scratch_small_cos), the more accurate of the two,
- distilled vs plain finetuning.

Each line shows the signed mAP difference and a stated target; "met" only when that target is met.
Latency: batch 1, BN fused, one CPU thread, median of 50 rounds in which all models are timed
one after the other (round-robin, so a change of machine load hits all of them alike), after
warm-up; plus CUDA when present. ``--int8 int8.json`` (quantize.py's output, INT8=1 in the
pipeline) adds the row "INT8 (ONNX Runtime)": the final model quantized, its mAP on the split
quantize.py used, the INT8 file's size, and its ONNX Runtime latency (1 thread, batch 1) with the
FP32 ONNX Runtime latency measured alongside it in the note below the table (runtimes differ from
the PyTorch rows).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import load_checkpoint, load_model  # noqa: E402
from utils.dataconfig import load_data_config  # noqa: E402
from utils.errors import cli_main, positive_int  # noqa: E402
from utils.evaluate import evaluate_dataset  # noqa: E402
from utils.fileio import atomic_write_text  # noqa: E402
from utils.torch_utils import count_flops, count_params  # noqa: E402

# (row name, flag, required): the rows in table order; the controls are optional (CONTROLS=0)
STAGES = [("baseline", "base", True), ("sparse", "sparse", True), ("control_sparse", "control-sparse", False),
          ("pruned", "pruned", True), ("finetuned", "finetune", True), ("finetuned+distill", "distill", True),
          ("control_final", "control-final", False), ("scratch_small", "scratch-small", False),
          ("scratch_small_cos", "scratch-small-cos", False)]
FINAL = "finetuned"  # the pipeline's final model: plain finetuning
INT8_STAGE = "INT8 (ONNX Runtime)"
TRAIN_STEPS = ("train", "sparsity", "finetune")  # history steps that train (their epochs add up)
METRIC, METRIC_NAME = "mAP50-95", "mAP@.5:.95"  # the metric the accuracy targets are stated in
SCRATCH = {"scratch_small": "scratch_small (width-scaled to the same FLOPs, trained from scratch)",
           "scratch_small_cos": "scratch_small_cos (width-scaled to the same FLOPs, trained from scratch, cosine lr)"}
# (stage, stage as the text names it, {control: control as the text names it}, tolerance, strict):
# the stage meets its target when stage - control >= -tolerance (> when strict). Where several
# controls are given (the scratch model trained with either schedule), the stage is compared with
# the most accurate of those that were run: the strongest alternative. Only the sparse model may
# trail its control (by 0.02: the sparsity step's stated budget); the final model must match both
# of its controls: a loss is not "as accurate as" the alternative.
COMPARISONS = [
    ("sparse", "sparse (-sr)", {"control_sparse": "control_sparse (same training, no -sr)"}, 0.02, False),
    (FINAL, "final (pruned + finetuned)", {"control_final": "control_final (unpruned, trained as long)"}, 0.0, False),
    (FINAL, "final (pruned + finetuned)", SCRATCH, 0.0, False),
    ("finetuned+distill", "finetuned+distill", {FINAL: "finetuned (plain finetuning, the final model)"}, 0.0, True),
]
SIZE_TARGETS = {"params": 0.5, "flops": 0.5}  # final / baseline at most this
BASELINE_MAP50 = 0.7  # the baseline is trained well enough to be worth pruning


# ------------------------------------------------------------------------------------ measuring
def trained_epochs(history: Sequence[dict]) -> int:
    """Total planned epochs of the training steps in a checkpoint's history (baseline, sparsity
    training, finetuning: whatever the model went through)."""
    return sum(int(e.get("epochs") or 0) for e in history if e.get("step") in TRAIN_STEPS)


def measure_stage(weights: Path, data_cfg, img: int, batch: int, workers: int,
                  split: str) -> tuple[dict, torch.nn.Module]:
    """Accuracy on ``split``, size, FLOPs and training epochs of one checkpoint; returns the
    figures and the fused model."""
    model = load_model(weights, device="cpu", verbose=False)
    history = load_checkpoint(weights, verbose=False).get("history") or []
    res = evaluate_dataset(model, data_cfg, img_size=img, batch_size=batch, workers=workers, task=split,
                           progress=False)
    out = {
        "weights": str(weights), "epochs": trained_epochs(history), "mAP50": float(res.mAP50),
        "mAP50-95": float(res.mAP50_95), "params": count_params(model), "flops": count_flops(model, img),
        "size_mb": weights.stat().st_size / 1e6, "cpu_ms": None, "gpu_ms": None,
    }
    return out, model.fused_copy()


def interleaved_latency(models: list, img: int, device: str, rounds: int, warmup: int = 3) -> list[float]:
    """Median batch-1 latency (ms) of each model, timed round-robin so load changes hit all alike."""
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
    return {"weights": str(out), "epochs": final.get("epochs"), "mAP50": float(int8["mAP50"]),
            "mAP50-95": float(int8["mAP50-95"]), "params": final["params"], "flops": final["flops"],
            "size_mb": size / 1e6, "cpu_ms": float(int8["median_ms"]), "gpu_ms": None, "runtime": res["runtime"],
            "split": res.get("task"),
            "fp32_runtime": {"mAP50": float(fp32["mAP50"]), "mAP50-95": float(fp32["mAP50-95"]),
                             "cpu_ms": float(fp32["median_ms"])}, "head": res.get("head")}


def int8_note(stages: dict, split: str | None = None) -> str | None:
    s = stages.get(INT8_STAGE)
    if s is None:
        return None
    f = s["fp32_runtime"]
    other = s.get("split") and split and s["split"] != split
    return (f"{INT8_STAGE}: latency measured with {s['runtime']} (1 thread, batch 1); the same model in FP32 "
            f"there: {f['cpu_ms']:.1f} ms, mAP@.5 {f['mAP50']:.4f}, mAP@.5:.95 {f['mAP50-95']:.4f} "
            f"(INT8 {s['cpu_ms'] and f['cpu_ms'] / s['cpu_ms']:.2f}x faster); detection head kept {s['head']}"
            + (f"; its mAP is on the {s['split']} split, not {split}" if other else ""))


def ratios(stages: dict) -> None:
    base = stages["baseline"]
    for s in stages.values():
        s["ratio"] = {k: (s[k] / base[k] if base.get(k) else None)
                      for k in ("params", "flops", "size_mb", "cpu_ms", "gpu_ms")
                      if s.get(k) is not None and base.get(k)}


# ------------------------------------------------------------------------------------ comparisons
def choose_split(data_cfg, split: str) -> str:
    """``auto``: the held-out test split when the dataset declares one, else val."""
    if split == "auto":
        return "test" if data_cfg.test else "val"
    return split


def split_note(split: str) -> str:
    if split == "test":
        return "accuracy on the held-out test split (val selected each run's best.pt and the pruning settings)"
    return ("accuracy on the val split: the dataset has no test split, and val also selected each run's "
            "best.pt, so these numbers flatter every model a little")


def signed(x: float) -> str:
    return f"{x:+.4f}"


def change_words(diff: float) -> str:
    """A difference said plainly: a loss is called a loss."""
    if diff < 0:
        return f"a loss of {-diff:.4f}"
    return f"a gain of {diff:.4f}" if diff > 0 else "no difference"


def target_words(control: str, tolerance: float, strict: bool) -> str:
    if strict:
        return f"above {control}"
    return f"at most {tolerance:g} below {control}" if tolerance > 0 else f"at least equal to {control}"


def epochs_words(a: dict, b: dict) -> str:
    ea, eb = a.get("epochs"), b.get("epochs")
    if ea == eb:
        return f"both {ea} epochs"
    return f"NOT matched: {ea} vs {eb} epochs"


def flops_words(a: dict, b: dict) -> str:
    """The FLOPs of a stage relative to its control, when they differ."""
    r = a["flops"] / b["flops"]
    return "" if abs(r - 1) < 1e-9 else f"; FLOPs {r:.3f}x the control's"


def compare(stages: dict, stage: str, stage_label: str, controls: dict[str, str], tolerance: float,
            strict: bool, split: str) -> dict | None:
    """One accuracy comparison of ``stage`` with the most accurate of ``controls`` on ``split``
    (None when the stage or every control is missing): signed differences, the stated target,
    whether it is met and a sentence saying so."""
    ran = [c for c in controls if c in stages]
    if stage not in stages or not ran:
        return None
    control = max(ran, key=lambda c: stages[c][METRIC])
    control_label = controls[control] + (f", the more accurate of {' and '.join(ran)}" if len(ran) > 1 else "")
    a, b = stages[stage], stages[control]
    diff = a[METRIC] - b[METRIC]
    shown = round(diff, 4)  # verdict and words follow the difference as printed
    met = shown > -tolerance if strict else shown >= -tolerance
    target = target_words(control, tolerance, strict)
    text = (f"{stage_label} vs {control_label}, {epochs_words(a, b)}, {split} split: {METRIC_NAME} "
            f"{signed(diff)} ({change_words(shown)}; mAP@.5 {signed(a['mAP50'] - b['mAP50'])}"
            f"{flops_words(a, b)}); target: {target}")
    return {"stage": stage, "control": control, "alternatives": ran, "split": split, "metric": METRIC, "diff": diff,
            "diff_mAP50": a["mAP50"] - b["mAP50"], "flops_ratio": a["flops"] / b["flops"],
            "epochs": [a.get("epochs"), b.get("epochs")],
            "matched": a.get("epochs") == b.get("epochs"), "target": target, "met": bool(met), "text": text}


def size_checks(stages: dict, split: str) -> list[dict]:
    """Not accuracy comparisons: the final model's size and speed relative to the baseline, and
    the baseline's own accuracy (worth pruning at all)."""
    base, final = stages["baseline"], stages[FINAL]
    out = [{"stage": "baseline", "control": None, "split": split, "metric": "mAP50",
            "met": base["mAP50"] >= BASELINE_MAP50, "target": f"at least {BASELINE_MAP50}",
            "text": f"baseline mAP@.5 {base['mAP50']:.4f} on the {split} split; target: at least {BASELINE_MAP50}"}]
    for key, word in (("params", "parameters"), ("flops", "FLOPs")):
        r = final[key] / base[key]
        out.append({"stage": FINAL, "control": "baseline", "metric": key, "ratio": r, "met": r <= SIZE_TARGETS[key],
                    "target": f"at most {SIZE_TARGETS[key]:g} of the baseline",
                    "text": f"final {word}: {r:.3f} of the baseline's; target: at most {SIZE_TARGETS[key]:g}"})
    if final.get("cpu_ms") and base.get("cpu_ms"):
        r = final["cpu_ms"] / base["cpu_ms"]
        out.append({"stage": FINAL, "control": "baseline", "metric": "cpu_ms", "ratio": r, "met": None,
                    "target": None, "text": f"final CPU latency: {r:.3f} of the baseline's (reported, no target)"})
    return out


def comparisons(stages: dict, split: str) -> list[dict]:
    """Every accuracy comparison whose rows exist, then the size/speed checks."""
    found = [compare(stages, *c, split=split) for c in COMPARISONS]
    return [c for c in found if c is not None] + size_checks(stages, split)


def missing_controls(stages: dict) -> list[str]:
    out = []
    for stage, _, controls, *_ in COMPARISONS:
        if stage in stages and not any(c in stages for c in controls):
            names = " or ".join(controls)
            out.append(f"{stage} vs {names}: not compared ({names} {'was' if len(controls) == 1 else 'were'} "
                       f"not run; CONTROLS=0?)")
    return out


def targets(checks: Sequence[dict]) -> dict[str, bool]:
    """{line: met} of the checks that state a target (the form the benchmarks and README print)."""
    return {c["text"]: c["met"] for c in checks if c["met"] is not None}


def verdict(met: bool | None) -> str:
    return "reported" if met is None else ("met" if met else "MISSED")


# ------------------------------------------------------------------------------------ output
def header(split: str) -> list[str]:
    return ["stage", "epochs", f"mAP@.5 ({split})", f"mAP@.5:.95 ({split})", "params", "GFLOPs", "size MB",
            "CPU ms", "GPU ms", "params x", "FLOPs x", "CPU ms x"]


def row(name: str, s: dict) -> list[str]:
    r = s["ratio"]
    return [name, "-" if s.get("epochs") is None else str(s["epochs"]), f"{s['mAP50']:.4f}",
            f"{s['mAP50-95']:.4f}", f"{s['params']:,}", f"{s['flops'] / 1e9:.3f}", f"{s['size_mb']:.2f}",
            f"{s['cpu_ms']:.1f}", "-" if s["gpu_ms"] is None else f"{s['gpu_ms']:.2f}",
            f"{r.get('params', 0):.3f}", f"{r.get('flops', 0):.3f}", f"{r.get('cpu_ms', 0):.3f}"]


def table(stages: dict, split: str) -> str:
    from terminaltables import AsciiTable
    return AsciiTable([header(split)] + [row(n, s) for n, s in stages.items()]).table


def comparison_lines(report: dict) -> list[str]:
    """``met|MISSED|reported  text`` per check, smoke runs saying that their verdicts mean nothing."""
    lines = [f"{verdict(c['met']):8s}  {c['text']}" for c in report["comparisons"]]
    lines += [f"{'-':8s}  {m}" for m in report["not_compared"]]
    if report["quick"]:
        lines.append("(smoke run, QUICK=1: far too short for these verdicts to mean anything)")
    return lines


def markdown(report: dict, run: Path) -> str:
    split = report["split"]
    cols = header(split)
    lines = [f"# Pipeline report: {run.name}", "",
             f"Machine: {report['machine']}; image size {report['img']}; data {report['data']}; "
             f"{split_note(split)}.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(row(n, s)) + " |" for n, s in report["stages"].items()]
    note = int8_note(report["stages"], split)
    if note:
        lines += ["", note]
    lines += ["", "Step times (s): " + ", ".join(f"{k} {v}" for k, v in report["timings"].items()), "",
              f"## Comparisons ({split} split; each with its matched control)", ""]
    lines += [f"- {line}" for line in comparison_lines(report)] + [""]
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


def read_timings(run: Path) -> dict[str, int]:
    timings = {}
    tf = run / "timings.txt"
    if tf.exists():
        for line in tf.read_text().split("\n"):
            if line.strip():
                k, v = line.split()
                timings[k] = int(v)
    return timings


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="the pipeline's output folder")
    p.add_argument("--data", default=None)
    p.add_argument("--img", type=positive_int, default=256)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--split", choices=["auto", "test", "val"], default="auto",
                   help="split every accuracy is measured on (auto: test when the dataset has one, else val)")
    p.add_argument("--quick", type=int, default=0, help="1: smoke run, accuracy targets do not apply")
    for _, key, required in STAGES:
        p.add_argument(f"--{key}", required=required, help=f"{key} checkpoint" + ("" if required else " (optional)"))
    p.add_argument("--int8", default=None, help="quantize.py --json output: adds the INT8 row")
    return p.parse_args(argv)


def measure_all(opt: argparse.Namespace, data_cfg, split: str) -> dict:
    """Every given stage measured, then timed round-robin on CPU (1 thread) and CUDA when present."""
    stages, fused = {}, []
    for name, key, _ in STAGES:
        weights = getattr(opt, key.replace("-", "_"))
        if not weights:
            continue
        t = time.time()
        stages[name], model = measure_stage(Path(weights), data_cfg, opt.img, opt.batch_size, opt.workers, split)
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
        stages[INT8_STAGE] = int8_stage(Path(opt.int8), stages[FINAL])
    ratios(stages)
    return stages


def print_report(report: dict, run: Path) -> None:
    stages, split = report["stages"], report["split"]
    print(f"{split_note(split)}:")
    print(table(stages, split))
    if int8_note(stages, split):
        print(int8_note(stages, split))
    print(f"Comparisons ({split} split), each with its matched control:")
    for line in comparison_lines(report):
        print(f"  {line}")
    if report["targets"] and not all(report["targets"].values()):
        print("WARNING: the run missed at least one of its stated targets (see above)")
    print(f"Report: {run / 'report.md'}")


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    opt = parse_args(argv)
    run = Path(opt.run)
    data_cfg = load_data_config(opt.data)
    split = choose_split(data_cfg, opt.split)
    stages = measure_all(opt, data_cfg, split)
    checks = comparisons(stages, split)
    report = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads available, "
                   f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}",
        "img": opt.img, "data": str(data_cfg.source), "split": split, "split_note": split_note(split),
        "quick": bool(opt.quick), "stages": stages, "timings": read_timings(run),
        "comparisons": checks, "not_compared": missing_controls(stages),
        "targets": None if opt.quick else targets(checks),
        "figures": figures(run),
    }
    atomic_write_text(run / "report.json", json.dumps(report, indent=2))
    atomic_write_text(run / "report.md", markdown(report, run))
    print_report(report, run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
