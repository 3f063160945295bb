"""Accuracy against compression: mAP after finetuning for strategies 3 and 8x at several ratios.

    python benchmarks/bench_compression.py                      # runs/pipeline/default, FLOPs 0.7 0.5 0.3
    python benchmarks/bench_compression.py --global-percent 0.3 0.5 0.7 --epochs 5
    python benchmarks/bench_compression.py --run runs/pipeline/quick --quick   # smoke test

Every point prunes the run's sparse checkpoint with the prune script of its strategy (by
``--target-flops`` fractions, searched by the script, or by ratio with ``--global-percent``), then
finetunes the compact model with the settings of the pipeline's finetune stage (read from its
checkpoint; ``--epochs`` shortens them, ``--distill`` distils from the sparse model as the
pipeline's second finetune does). Reported per point: the ratio the script chose, parameters and
FLOPs of the compact model relative to the unpruned one, mAP@0.5 of the masked and compact models
before finetuning (the prune script's figures) and mAP@0.5 / mAP@0.5:.95 after (``best.pt``),
and the time of both steps. Writes ``benchmarks/results/compression.json`` (``--quick``:
``runs/bench/quick/results``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy_common as ac  # noqa: E402

# strategy -> (prune script, its ratio flag, whether it takes --layer_keep)
SCRIPTS = {"1": ("prune_yolov5s.py", "--percent", False),
           "2": ("shortcut_prune_yolov5s.py", "--percent", False),
           "3": ("slim_prune_yolov5s.py", "--global_percent", True),
           "8x": ("slim_prune_yolov5s_8x.py", "--global_percent", True)}
SETTING_KEYS = [*ac.TRAIN_FLAGS, *ac.TRAIN_SWITCHES]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", default=ac.DEFAULT_RUN, help="a finished scripts/run_pipeline.sh run")
    p.add_argument("--strategies", nargs="+", choices=sorted(SCRIPTS), default=["3", "8x"])
    how = p.add_mutually_exclusive_group()
    how.add_argument("--target-flops", type=float, nargs="+", default=None,
                     help="fractions of the FLOPs to keep (default 0.7 0.5 0.3)")
    how.add_argument("--global-percent", "--percent", dest="percent", type=float, nargs="+", default=None,
                     help="prune ratios instead of FLOPs targets")
    p.add_argument("--layer-keep", type=float, default=None,
                   help="strategies 3/8x: per-layer minimum (default: the pipeline's prune setting)")
    p.add_argument("--epochs", type=int, default=None, help="finetune epochs (default: the pipeline's)")
    p.add_argument("--distill", action="store_true", help="finetune with distillation from the sparse model")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: {ac.QUICK_EPOCHS} epoch on {ac.QUICK_TRAIN_IMAGES} images, "
                        f"results under runs/bench only")
    p.add_argument("--fresh", action="store_true", help="redo points even where an identical finished run exists")
    p.add_argument("--json", default=None,
                   help="where to write the results (default benchmarks/results/compression.json)")
    opt = p.parse_args(argv)
    if opt.percent is None and opt.target_flops is None:
        opt.target_flops = [0.7, 0.5, 0.3]
    for v in opt.target_flops or []:
        if not 0.0 < v <= 1.0:
            p.error(f"--target-flops {v}: a fraction of the FLOPs in (0, 1]")
    for v in opt.percent or []:
        if not 0.0 <= v < 1.0:
            p.error(f"--global-percent {v}: a prune ratio in [0, 1)")
    return opt


def points(opt: argparse.Namespace) -> list[tuple[str, str, float]]:
    """(strategy, 'flops' or 'ratio', value) for every point, strategy by strategy."""
    kind, values = ("flops", opt.target_flops) if opt.target_flops else ("ratio", opt.percent)
    return [(s, kind, v) for s in opt.strategies for v in values]


def prune_cmd(strategy: str, kind: str, value: float, sparse: Path, data: str | None, img: int,
              layer_keep: float, out: Path) -> list[str]:
    script, ratio_flag, keeps = SCRIPTS[strategy]
    cmd = [sys.executable, script, "--weights", str(sparse), "--img_size", str(img), "--out-dir", str(out)]
    cmd += ["--data", str(data)] if data else []
    cmd += ["--layer_keep", str(layer_keep)] if keeps else []
    cmd += ["--target-flops", str(value)] if kind == "flops" else [ratio_flag, str(value)]
    return cmd


def finetune_cmd(settings: dict, pruned: Path, name: str, project: Path, teacher: Path | None,
                 distill_opt: dict) -> list[str]:
    cmd = [sys.executable, "prune_finetune.py", *ac.flags_from_opt(settings, ac.TRAIN_FLAGS, ac.TRAIN_SWITCHES),
           "--weights", str(pruned), "--project", str(project), "--exist-ok", "--name", name]
    if teacher is not None:
        cmd += ["--distill", "--t_weights", str(teacher),
                *ac.flags_from_opt(distill_opt, ac.DISTILL_FLAGS, ac.DISTILL_SWITCHES)]
    return cmd


def point_row(strategy: str, kind: str, value: float, report: dict, after: dict, prune_s: float,
              ft_s: float, pruned: Path) -> dict:
    """One point's figures from the prune script's JSON report and the finetuned evaluation."""
    fig = report.get("figures") or {}
    maps = fig.get("mAP50") or {}
    return {"strategy": strategy, "target_kind": kind, "target": value, "ratio": report.get("ratio"),
            "safe_ratio": report.get("safe_ratio"),
            "params": fig["params"]["after"], "params_ratio": fig["params"]["ratio"],
            "flops": fig["flops"]["after"], "flops_ratio": fig["flops"]["ratio"],
            "latency_ratio": (fig.get("latency_ms") or {}).get("ratio"),
            "mAP50_sparse": maps.get("original"), "mAP50_masked": maps.get("masked"),
            "mAP50_compact": maps.get("compact"),
            "mAP50_finetuned": after["mAP50"], "mAP50-95_finetuned": after["mAP50-95"],
            "prune_s": prune_s, "finetune_s": ft_s, "pruned_weights": str(pruned)}


def _f(v, fmt: str = "{:.4f}") -> str:
    return "-" if v is None else fmt.format(v)


def format_table(rows: list[dict], base: dict) -> str:
    header = ["strategy", "target", "ratio", "params ratio", "FLOPs ratio", "mAP@.5 masked",
              "mAP@.5 compact", "mAP@.5 finetuned", "vs baseline", "mAP@.5:.95 finetuned", "prune + finetune s"]
    out = [["baseline (unpruned)", "-", "-", "1.000", "1.000", "-", "-", _f(base["mAP50"]), "+0.0000",
            _f(base["mAP50-95"]), "-"]]
    for r in rows:
        target = f"FLOPs {r['target']:g}" if r["target_kind"] == "flops" else f"ratio {r['target']:g}"
        out.append([r["strategy"], target, _f(r["ratio"], "{:.4g}"), f"{r['params_ratio']:.3f}",
                    f"{r['flops_ratio']:.3f}", _f(r["mAP50_masked"]), _f(r["mAP50_compact"]),
                    f"{r['mAP50_finetuned']:.4f}", f"{r['mAP50_finetuned'] - base['mAP50']:+.4f}",
                    f"{r['mAP50-95_finetuned']:.4f}", f"{r['prune_s']:.0f} + {r['finetune_s']:.0f}"])
    return ac.md_table(header, out)


def run_point(run: ac.PipelineRun, opt, point: tuple[str, str, float], settings: dict, layer_keep: float,
              teacher: Path | None, distill_opt: dict) -> dict:
    strategy, kind, value = point
    bdir = ac.bench_dir(run, "compression", opt.quick)
    tag = f"s{strategy}_{kind}{value:g}"
    data, img = settings.get("data"), int(settings["img"])
    pruned_meta = ac.cached_run(prune_cmd(strategy, kind, value, run.sparse, data, img, layer_keep,
                                          bdir / f"prune_{tag}"), bdir / f"prune_{tag}", "prune_*.json", opt.fresh)
    report_path = pruned_meta["outputs"][-1]
    report = json.loads(report_path.read_text())
    pruned = Path(report["outputs"]["weights"])
    name = f"finetune_{tag}" + ("_distill" if teacher is not None else "")
    ft_meta = ac.cached_run(finetune_cmd(settings, pruned, name, bdir, teacher, distill_opt), bdir / name,
                            "weights/best.pt", opt.fresh)
    after = ac.evaluate_weights(ft_meta["outputs"][0], data, img)
    return point_row(strategy, kind, value, report, after, pruned_meta["wall_s"], ft_meta["wall_s"], pruned)


def main(argv: Sequence[str] | None = None) -> int:
    opt = parse_args(argv)
    ac.setup_main()
    run = ac.find_run(opt.run)
    smoke = ac.is_smoke(run, opt.quick)
    pipe = ac.checkpoint_opt(ac.require(run.finetune, "finetune", run))
    settings = ac.override(pipe, opt.epochs, opt.quick)
    distill_opt = ac.checkpoint_opt(run.distill) if run.distill else {}
    teacher = ac.project_path(distill_opt.get("t_weights") or run.sparse) if opt.distill else None
    prune_entry = ac.last_history(run.pruned, "prune") if run.pruned else {}
    layer_keep = opt.layer_keep if opt.layer_keep is not None else \
        float((prune_entry.get("settings") or {}).get("layer_keep", 0.01))
    data, img = settings.get("data"), int(settings["img"])

    rows = [run_point(run, opt, pt, settings, layer_keep, teacher, distill_opt) for pt in points(opt)]
    base = ac.evaluate_weights(run.base, data, img)
    table = format_table(rows, base)
    print(f"\nPruning {run.sparse} (strategies {' '.join(opt.strategies)}, layer_keep {layer_keep}), then "
          f"{'distilled ' if opt.distill else ''}finetuning {settings['epochs']} epochs at img {img}, batch "
          f"{settings.get('batch_size')}, nbs {settings.get('nbs')}, {settings.get('optimizer')}; ratios are "
          f"compact / unpruned, mAP of best.pt\n")
    print(table)
    report = {"benchmark": "compression", "quick": smoke, "date": ac.now(), "machine": ac.machine_info(),
              "run": str(run.root), "sparse": str(run.sparse), "layer_keep": layer_keep,
              "distill": opt.distill, "settings": {k: settings.get(k) for k in SETTING_KEYS if k in settings},
              "baseline": base, "rows": rows, "table_markdown": table}
    ac.write_report(ac.results_path("compression", smoke, opt.json), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
