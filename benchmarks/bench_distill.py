"""Plain against distilled finetuning of the pipeline's pruned model, over several seeds.

    python benchmarks/bench_distill.py                        # uses runs/pipeline/default, seeds 0 1 2
    python benchmarks/bench_distill.py --run runs/pipeline/quick --quick   # smoke test

From the run's pruned checkpoint, ``prune_finetune.py`` with the settings the pipeline's finetune
stage recorded in its checkpoint (epochs, image size, batch, nominal batch, optimizer, hyp,
learning-rate schedule, data), once plain and once with ``--distill`` (the teacher and distillation
settings of the pipeline's distilled run; without one, the run's baseline), for every ``--seed``.
The pipeline's own two runs are the seed it was trained with (0) and are reused when the settings
are unchanged; their wall time comes from the run's ``timings.txt``. Each seed trains plain then
distilled, so drifting machine load hits both.

Every mAP is measured on the dataset's held-out split (``test``; ``val`` when it has none, which
also picked ``best.pt``). Reported: per seed and mean ± standard deviation of mAP@.5:.95 and mAP@.5
and the wall time of both modes, beside the baseline, the teacher, the pruned model before
finetuning and the run's matched controls. Comparisons (mean over seeds, signed, "met" only when
at least the control): distilled vs plain (does distillation help?), plain vs ``control_final``
(the unpruned model trained as long, finetuned alike) and vs ``scratch_small`` (the width-scaled
model trained from scratch to the pruned model's FLOPs, as long; where the run also has
``scratch_small_cos``, the same with the cosine schedule, the more accurate of the two). Writes
``benchmarks/results/distill.json`` (``--quick``: ``runs/bench/quick/results``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy_common as ac  # noqa: E402

MODES = ("plain", "distill")
# the pipeline run's matched controls of the finetuned model: folder -> what it is
CONTROLS = {"control_final": "unpruned, trained as long, finetuned alike",
            "scratch_small": "width-scaled to the pruned FLOPs, trained from scratch as long",
            "scratch_small_cos": "scratch_small trained with the cosine schedule"}
# the plain finetune is compared with the most accurate control of each group that the run has (the
# scratch-trained model with either schedule: the stronger alternative, never the weaker one)
CONTROL_GROUPS = [("control_final",), ("scratch_small", "scratch_small_cos")]
SETTING_KEYS = [*ac.TRAIN_FLAGS, *ac.TRAIN_SWITCHES]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", default=ac.DEFAULT_RUN, help="a finished scripts/run_pipeline.sh run")
    p.add_argument("--seeds", "--seed", dest="seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="training seeds (each trains plain and distilled)")
    p.add_argument("--epochs", type=int, default=None, help="finetune epochs (default: the pipeline's)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: {ac.QUICK_EPOCHS} epoch on {ac.QUICK_TRAIN_IMAGES} images, "
                        f"results under runs/bench only")
    p.add_argument("--fresh", action="store_true",
                   help="retrain every seed, the pipeline's included, even where a finished run exists")
    p.add_argument("--json", default=None, help="where to write the results (default benchmarks/results/distill.json)")
    opt = p.parse_args(argv)
    if len(set(opt.seeds)) != len(opt.seeds):
        p.error(f"--seeds {opt.seeds}: give distinct seeds")
    return opt


def summarise(per_seed: dict[str, list[dict]]) -> dict[str, dict]:
    """Mean (and sample standard deviation) of mAPs and wall time per mode."""
    out = {}
    for mode, rows in per_seed.items():
        s = {}
        for key in ("mAP50", "mAP50-95", "wall_s"):
            vals = [r[key] for r in rows if r.get(key) is not None]
            s[key], s[f"{key}_std"] = ac.mean_std(vals) if vals else (None, None)
        out[mode] = s
    return out


def comparisons(summary: dict, refs: dict[str, dict]) -> list[dict]:
    """Signed mean differences (mAP@.5:.95, mAP@.5): distilled vs plain, and plain vs the matched
    controls of the run (``control_final``; the more accurate of ``scratch_small`` and
    ``scratch_small_cos``); met only when at least the control."""
    pairs = [("finetuned, distilled", summary["distill"], "finetuned, plain", summary["plain"])]
    for group in CONTROL_GROUPS:
        present = [n for n in group if n in refs and refs[n].get("mAP50-95") is not None]
        if present:
            best = max(present, key=lambda n: refs[n]["mAP50-95"])
            pairs.append(("finetuned, plain", summary["plain"], best, refs[best]))
    out = []
    for name, a, control, b in pairs:
        if a.get("mAP50-95") is None or b.get("mAP50-95") is None:
            continue
        d, d50 = a["mAP50-95"] - b["mAP50-95"], a["mAP50"] - b["mAP50"]
        out.append({"model": name, "control": control, "diff": d, "diff_mAP50": d50, "met": d >= 0,
                    "text": f"{name} (mean) vs {control}: mAP@.5:.95 {d:+.4f}, mAP@.5 {d50:+.4f}"})
    return out


def _std(v: float | None) -> str:
    return "" if v is None else f" ± {v:.4f}"


def format_table(per_seed: dict[str, list[dict]], summary: dict, refs: dict[str, dict]) -> str:
    seeds = [r["seed"] for r in per_seed["plain"]]
    header = ["model", *[f"mAP@.5:.95 seed {s}" for s in seeds], "mean mAP@.5:.95", "mean mAP@.5", "mean train s"]
    rows = [[name, *(["-"] * len(seeds)), f"{r['mAP50-95']:.4f}", f"{r['mAP50']:.4f}", "-"]
            for name, r in refs.items()]
    for mode in MODES:
        s = summary[mode]
        wall = "-" if s["wall_s"] is None else f"{s['wall_s']:.0f}"
        rows.append([f"finetuned, {'distilled' if mode == 'distill' else 'plain'}",
                     *[f"{r['mAP50-95']:.4f}" for r in per_seed[mode]],
                     f"{s['mAP50-95']:.4f}{_std(s['mAP50-95_std'])}", f"{s['mAP50']:.4f}{_std(s['mAP50_std'])}",
                     wall])
    return ac.md_table(header, rows)


def finetune_cmd(settings: dict, pruned: Path, seed: int, mode: str, teacher: Path, distill_opt: dict,
                 project: Path) -> list[str]:
    cmd = [sys.executable, "prune_finetune.py", *ac.flags_from_opt({**settings, "seed": seed},
                                                                   ac.TRAIN_FLAGS, ac.TRAIN_SWITCHES),
           "--weights", str(pruned), "--project", str(project), "--exist-ok", "--name", f"{mode}_seed{seed}"]
    if mode == "distill":
        cmd += ["--distill", "--t_weights", str(teacher),
                *ac.flags_from_opt(distill_opt, ac.DISTILL_FLAGS, ac.DISTILL_SWITCHES)]
    return cmd


def pipeline_result(run: ac.PipelineRun, mode: str) -> dict | None:
    """The pipeline's own finetune run of ``mode`` as a seed result, or None when it lacks one."""
    weights = run.finetune if mode == "plain" else run.distill
    if weights is None:
        return None
    step = "finetune" if mode == "plain" else "finetune_distill"
    return {"weights": weights, "wall_s": run.timings.get(step), "source": "pipeline"}


def train_seed(run: ac.PipelineRun, opt, settings: dict, pipe: dict, mode: str, seed: int,
               pruned: Path, teacher: Path, distill_opt: dict) -> dict:
    reusable = (not opt.fresh and seed == int(pipe.get("seed") or 0)
                and ac.same_settings(settings, pipe, SETTING_KEYS))
    if reusable and (hit := pipeline_result(run, mode)) is not None:
        print(f"==> seed {seed} {mode}: the pipeline's run {hit['weights']}")
        return hit
    out = ac.bench_dir(run, "distill", opt.quick)
    cmd = finetune_cmd(settings, pruned, seed, mode, teacher, distill_opt, out)
    save = out / f"{mode}_seed{seed}"
    meta = ac.cached_run(cmd, save, "weights/best.pt", opt.fresh)
    return {"weights": save / "weights" / "best.pt", "wall_s": meta["wall_s"], "source": "bench"}


def main(argv: Sequence[str] | None = None) -> int:
    opt = parse_args(argv)
    ac.setup_main()
    run = ac.find_run(opt.run)
    smoke = ac.is_smoke(run, opt.quick)
    ft = ac.require(run.finetune, "finetune", run)
    pipe = ac.checkpoint_opt(ft)
    distill_opt = ac.checkpoint_opt(run.distill) if run.distill else {}
    pruned = ac.project_path(pipe["weights"]) if pipe.get("weights") else None
    pruned = pruned if pruned is not None and pruned.is_file() else ac.require(run.pruned, "pruned", run)
    teacher = ac.project_path(distill_opt.get("t_weights") or run.base)
    settings = ac.override(pipe, opt.epochs, opt.quick)
    data, img = settings.get("data"), int(settings["img"])
    split = ac.held_out_split(data)

    per_seed: dict[str, list[dict]] = {m: [] for m in MODES}
    for seed in opt.seeds:
        for mode in MODES:
            r = train_seed(run, opt, settings, pipe, mode, seed, pruned, teacher, distill_opt)
            per_seed[mode].append({"seed": seed, **{k: (str(v) if isinstance(v, Path) else v) for k, v in r.items()},
                                   **ac.evaluate_weights(r["weights"], data, img, task=split)})
    summary = summarise(per_seed)
    prune_entry = ac.last_history(pruned, "prune")
    flops_ratio = (prune_entry.get("figures") or {}).get("flops", {}).get("ratio")
    refs = {"baseline (pretraining only)": run.base, "teacher": teacher, "pruned, before finetuning": pruned}
    refs.update({name: w for name in CONTROLS if (w := run.root / name / "weights" / "best.pt").is_file()})
    refs = {name: ac.evaluate_weights(w, data, img, task=split) for name, w in refs.items()}
    comps = comparisons(summary, refs)

    table = format_table(per_seed, summary, refs)
    print(f"\nFinetuning {pruned} ({'-' if flops_ratio is None else f'{flops_ratio:.3f}'} of the FLOPs) "
          f"for {settings['epochs']} epochs, img {img}, batch {settings.get('batch_size')}, "
          f"nbs {settings.get('nbs')}, {settings.get('optimizer')}"
          f"{', cosine lr' if settings.get('cos_lr') else ''}; distilled from {teacher}; "
          f"seeds {opt.seeds}; mAP of best.pt on the {split} split\n")
    print(table)
    note = "  (smoke run: far too short for the verdicts to mean anything)" if smoke else ""
    print(f"\nComparisons (mean over seeds; {split} split):{note}")
    for c in comps:
        print(f"  {'met' if c['met'] else 'MISSED'}: {c['text']}")
    report = {"benchmark": "distill", "quick": smoke, "date": ac.now(), "machine": ac.machine_info(),
              "run": str(run.root), "split": split, "pruned": str(pruned), "teacher": str(teacher),
              "pruned_flops_ratio": flops_ratio, "seeds": opt.seeds,
              "settings": {k: settings.get(k) for k in SETTING_KEYS if k in settings},
              "distill_settings": {k: distill_opt.get(k) for k in [*ac.DISTILL_FLAGS, *ac.DISTILL_SWITCHES]
                                   if k in distill_opt},
              "references": refs, "controls": {k: v for k, v in CONTROLS.items() if k in refs},
              "per_seed": per_seed, "summary": summary, "comparisons": comps, "table_markdown": table}
    ac.write_report(ac.results_path("distill", smoke, opt.json), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
