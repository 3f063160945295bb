"""The five-step pipeline as a benchmark: run ``scripts/run_pipeline.sh`` (or collect a finished run)
and keep its report as ``benchmarks/results/pipeline.json``.

    python benchmarks/bench_pipeline.py                                   # NAME=default, full settings
    IMG=256 EPOCHS=40 python benchmarks/bench_pipeline.py --run runs/pipeline/img256
    python benchmarks/bench_pipeline.py --existing runs/pipeline/default  # collect only
    python benchmarks/bench_pipeline.py --quick                           # smoke test (QUICK=1)

The pipeline's settings are its environment variables (DATA CFG IMG BATCH EPOCHS SP_EPOCHS
FT_EPOCHS SCALE STRATEGY TARGET_FLOPS ...; see the script's header): they are passed through, and
``--epochs``/``--quick`` set EPOCHS/QUICK (CONTROLS=0 skips the matched controls). Every step runs
with one torch thread (``OMP_NUM_THREADS=1`` unless set). The saved file is the run's
``report.json`` (every stage's and every control's training epochs, mAP on the split named in
``split``, size, FLOPs and latency with ratios to the baseline; each comparison with its matched
control as a signed difference and a verdict; step times) plus the settings each stage recorded,
the wall time, the machine and the date. A run whose report says it was a quick run is never
written into ``benchmarks/results`` (``runs/bench/quick/results`` instead).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy_common as ac  # noqa: E402

ENV_VARS = ["DATA", "CFG", "WEIGHTS", "IMG", "BATCH", "NBS", "OPTIMIZER", "EPOCHS", "SP_EPOCHS", "FT_EPOCHS",
            "SCALE", "SR_PENALTY", "SR_POLAR_T", "SP_OPTIMIZER", "SP_HYP", "STRATEGY", "PERCENT", "LAYER_KEEP",
            "TARGET_FLOPS", "LAYERS", "LATENCY_AWARE", "FT_COS_LR", "SCRATCH_COS_LR", "NAME", "DEVICE", "WORKERS",
            "NTRAIN", "QUICK", "CONTROLS", "PYTHON"]
STAGE_KEYS = ["epochs", "img", "batch_size", "nbs", "optimizer", "hyp", "cos_lr", "seed", "max_train_images", "weights",
              "sr", "scale", "sr_penalty", "sr_polar_t", "sr_polar_mean", "sr_polar_quantile",
              "prune", "distill", "t_weights"]
STAGES = ["base", "sparse", "finetune", "finetune_distill", "control_sparse", "control_final", "scratch_small",
          "scratch_small_cos"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--run", default=None,
                   help="the run folder to create, runs/pipeline/<NAME> (default: $NAME, else default/quick)")
    p.add_argument("--existing", default=None, metavar="RUN", help="only collect this finished run")
    p.add_argument("--epochs", type=int, default=None, help="baseline epochs (EPOCHS)")
    p.add_argument("--quick", action="store_true", help="QUICK=1: the same chain and controls at toy size (a few minutes)")
    p.add_argument("--json", default=None, help="where to write (default benchmarks/results/pipeline.json)")
    opt = p.parse_args(argv)
    if opt.existing and (opt.run or opt.epochs or opt.quick):
        p.error("--existing only collects: it takes no --run, --epochs or --quick")
    if opt.epochs is not None and opt.epochs < 1:
        p.error(f"--epochs {opt.epochs}: must be at least 1")
    return opt


def run_name(opt: argparse.Namespace) -> str:
    """NAME for run_pipeline.sh; ``--run`` must lie in runs/pipeline, where the script writes."""
    if opt.run is None:
        return os.environ.get("NAME") or ("quick" if opt.quick else "default")
    folder = ac.project_path(opt.run).resolve()
    if folder.parent != (ac.ROOT / "runs" / "pipeline").resolve():
        raise SystemExit(f"--run {opt.run}: scripts/run_pipeline.sh writes runs/pipeline/<NAME>; "
                         f"give a folder there")
    return folder.name


def run_pipeline(opt: argparse.Namespace) -> tuple[Path, float]:
    """Run the pipeline script in the foreground; returns its folder and wall seconds."""
    env = dict(os.environ, NAME=run_name(opt))
    env.setdefault("PYTHON", sys.executable)
    env.setdefault("OMP_NUM_THREADS", "1")
    if opt.quick:
        env["QUICK"] = "1"
    if opt.epochs is not None:
        env["EPOCHS"] = str(opt.epochs)
    shown = " ".join(f"{k}={env[k]}" for k in ENV_VARS + ["OMP_NUM_THREADS"] if k in env)
    print(f"==> {shown} bash scripts/run_pipeline.sh", flush=True)
    t0 = time.perf_counter()
    rc = subprocess.run(["bash", "scripts/run_pipeline.sh"], cwd=ac.ROOT, env=env).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"scripts/run_pipeline.sh failed (exit {rc}) after {wall:.0f}s; see its output above")
    return ac.ROOT / "runs" / "pipeline" / env["NAME"], wall


def stage_settings(run: Path) -> dict:
    """What each stage was run with: training options from its opt.yaml, pruning from its checkpoint."""
    import yaml

    out: dict = {}
    for stage in STAGES:
        f = run / stage / "opt.yaml"
        if f.is_file():
            o = yaml.safe_load(f.read_text()) or {}
            out[stage] = {k: o[k] for k in STAGE_KEYS if k in o}
    pruned = sorted((run / "pruned").glob("prune_*.pt"), key=os.path.getmtime)
    if pruned:
        e = ac.last_history(pruned[-1], "prune")
        s = e.get("settings") or {}
        out["prune"] = {"strategy": e.get("strategy"), "ratio": e.get("ratio"), "safe_ratio": e.get("safe_ratio"),
                        "layer_keep": s.get("layer_keep"), "target": s.get("target")}
    return out


def format_table(report: dict) -> str:
    """The stages as a markdown table; the mAP columns name the split they were measured on (reports
    written before the split was recorded measured on val)."""
    split = report.get("split", "val")
    header = ["stage", "epochs", f"mAP@.5 ({split})", f"mAP@.5:.95 ({split})", "params", "GFLOPs", "CPU ms",
              "params ratio", "FLOPs ratio", "CPU latency ratio"]
    rows = []
    for name, s in report["stages"].items():
        r = s.get("ratio") or {}
        rows.append([name, s.get("epochs", "-"), f"{s['mAP50']:.4f}", f"{s['mAP50-95']:.4f}",
                     f"{s['params'] / 1e6:.3f} M", f"{s['flops'] / 1e9:.3f}", f"{s['cpu_ms']:.1f}",
                     f"{r.get('params', 1):.3f}", f"{r.get('flops', 1):.3f}", f"{r.get('cpu_ms', 1):.3f}"])
    return ac.md_table(header, rows)


def comparison_lines(report: dict) -> list[str]:
    """``met|MISSED|reported  text`` per comparison of the report, then those it could not make."""
    lines = []
    for c in report.get("comparisons") or []:
        word = "reported" if c.get("met") is None else ("met" if c["met"] else "MISSED")
        lines.append(f"{word:8s}  {c['text']}")
    return lines + [f"{'-':8s}  {m}" for m in report.get("not_compared") or []]


def print_comparisons(report: dict, quick: bool) -> None:
    """Each comparison with its matched control (older reports: their targets)."""
    lines = comparison_lines(report)
    if not lines:
        if report.get("targets"):
            ac.print_targets(report["targets"], quick)
        return
    note = "  (smoke run: far too short for the verdicts to mean anything)" if quick else ""
    print(f"Comparisons on the {report.get('split', 'val')} split, each with its matched control:{note}")
    for line in lines:
        print(f"  {line}")


def collect(run: Path, wall: float | None, started: float | None) -> dict:
    """report.json of ``run`` plus settings, machine and dates."""
    import json

    path = run / "report.json"
    if not path.is_file():
        raise SystemExit(f"{path}: no report; is the pipeline run finished?")
    if started is not None and path.stat().st_mtime < started:
        raise SystemExit(f"{path} is older than this run: the pipeline did not reach its report step")
    report = json.loads(path.read_text())
    platform = ac.machine_info()
    if started is None:  # collected afterwards: this process's thread setting says nothing about the run
        platform["torch_threads"] = None
    report.update({
        "benchmark": "pipeline", "run": str(run),
        "date": _dt.datetime.fromtimestamp(path.stat().st_mtime).isoformat(timespec="seconds"),
        "collected": ac.now(), "platform": platform, "settings": stage_settings(run),
        "wall_s": wall if wall is not None else (report.get("timings") or {}).get("total"),
    })
    report["table_markdown"] = format_table(report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    opt = parse_args(argv)
    ac.setup_main()
    if opt.existing:
        run, wall, started = ac.project_path(opt.existing).resolve(), None, None
    else:
        started = time.time()
        run, wall = run_pipeline(opt)
    report = collect(run, wall, started)
    quick = bool(opt.quick or report.get("quick"))
    if quick and not opt.quick:
        print(f"{run} is a quick (smoke) run: its report is not a measured result")
    print(f"\nPipeline {run.name}: {report.get('machine')}, image size {report.get('img')}, "
          f"data {report.get('data')}, mAP on the {report.get('split', 'val')} split; "
          f"total {report['wall_s'] or 0:.0f}s\n")
    print(report["table_markdown"])
    print_comparisons(report, quick)
    ac.write_report(ac.results_path("pipeline", quick, opt.json), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
