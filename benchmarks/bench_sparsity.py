"""Does sparsity training sparsify? The pipeline's ``-sr`` run against the same training without ``-sr``.

    python benchmarks/bench_sparsity.py                       # uses runs/pipeline/default
    python benchmarks/bench_sparsity.py --run runs/pipeline/quick --quick   # smoke test

From the run's baseline checkpoint (``base/weights/best.pt``) it trains ``train_sparsity.py`` with
exactly the settings the pipeline's sparse stage recorded in its checkpoint (epochs, image size,
batch, nominal batch, optimizer, seed, data, layer set) but without ``-sr``, so the gamma
statistics are still logged and only the L1 penalty differs. The pipeline's own ``-sr`` checkpoint
is reused when the settings are unchanged (``--epochs`` or ``--quick`` change them: then the
``-sr`` run is retrained too, under ``runs/bench``).

Measured on the final checkpoints (the EMA weights the prune scripts read), over the prunable
layers the sparse run regularised: share of |gamma| below 0.01 and 0.001, mean |gamma|, the safe
prune ratio, mAP@0.5 and mAP@0.5:.95 against the baseline's. Targets: with ``-sr`` at least half
of the gammas below 0.01 and mAP@0.5 within 0.05 of the baseline; without ``-sr`` not.
Writes ``benchmarks/results/sparsity.json`` (``--quick``: ``runs/bench/quick/results``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy_common as ac  # noqa: E402

SPARSE_FRACTION = 0.5   # at least this share of prunable |gamma| below GAMMA_SMALL with -sr
GAMMA_SMALL = 0.01
MAP_DROP = 0.05         # -sr may cost at most this much mAP@0.5
SETTING_KEYS = [*ac.TRAIN_FLAGS, *ac.TRAIN_SWITCHES, *ac.SPARSITY_FLAGS, *ac.SPARSITY_SWITCHES]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", default=ac.DEFAULT_RUN, help="a finished scripts/run_pipeline.sh run")
    p.add_argument("--epochs", type=int, default=None,
                   help="sparsity epochs (default: the pipeline's; others retrain the -sr run too)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: {ac.QUICK_EPOCHS} epoch on {ac.QUICK_TRAIN_IMAGES} images, "
                        f"results under runs/bench only")
    p.add_argument("--fresh", action="store_true", help="retrain even where an identical finished run exists")
    p.add_argument("--json", default=None, help="where to write the results (default benchmarks/results/sparsity.json)")
    return p.parse_args(argv)


def targets(base: dict, sr: dict, plain: dict) -> dict[str, bool]:
    """The three claims, each True/False."""
    return {
        f"-sr: >= {SPARSE_FRACTION:.0%} of prunable gammas below {GAMMA_SMALL}":
            sr["gamma_lt_0.01"] >= SPARSE_FRACTION,
        f"-sr: mAP@0.5 within {MAP_DROP} of the baseline": sr["mAP50"] >= base["mAP50"] - MAP_DROP,
        f"no -sr: fewer than {SPARSE_FRACTION:.0%} of prunable gammas below {GAMMA_SMALL}":
            plain["gamma_lt_0.01"] < SPARSE_FRACTION,
    }


def measure(weights: Path, layers: list[int], data: str | None, img: int) -> dict:
    """Gamma statistics over ``layers`` and mAP of one checkpoint."""
    from models import load_model
    from utils.prune.sparsity import bn_gammas, gamma_stats

    model = load_model(weights, device="cpu", verbose=False)
    return {"weights": str(weights), **gamma_stats(bn_gammas(model, layers)),
            **ac.evaluate_weights(weights, data, img)}


def format_table(rows: dict[str, dict], base_map: float) -> str:
    header = ["model", "-sr scale", "epochs", "mean abs gamma", "< 0.01", "< 0.001", "safe ratio",
              "mAP@.5", "vs baseline", "mAP@.5:.95", "train s"]
    out = []
    for name, r in rows.items():
        wall = "-" if r.get("wall_s") is None else f"{r['wall_s']:.0f}"
        out.append([name, f"{r['scale']:g}" if r.get("scale") else "off", r.get("epochs", "-"),
                    f"{r['gamma_mean']:.4f}", f"{r['gamma_lt_0.01']:.1%}", f"{r['gamma_lt_0.001']:.1%}",
                    f"{r['safe_ratio']:.3f}", f"{r['mAP50']:.4f}", f"{r['mAP50'] - base_map:+.4f}",
                    f"{r['mAP50-95']:.4f}", wall])
    return ac.md_table(header, out)


def train_runs(run: ac.PipelineRun, opt: argparse.Namespace, settings: dict, reuse_sr: bool) -> dict:
    """Train what is needed; returns {'sr': meta, 'plain': meta} with weights and wall time."""
    out = ac.bench_dir(run, "sparsity", opt.quick)
    common = [sys.executable, "train_sparsity.py",
              *ac.flags_from_opt(settings, ac.TRAIN_FLAGS, ac.TRAIN_SWITCHES),
              *ac.flags_from_opt(settings, ac.SPARSITY_FLAGS, ac.SPARSITY_SWITCHES),
              "--weights", str(run.base), "--project", str(out), "--exist-ok"]
    result = {}
    if reuse_sr:
        result["sr"] = {"weights": run.sparse, "wall_s": run.timings.get("sparsity"), "source": "pipeline"}
    else:
        meta = ac.cached_run(common + ["--name", "sr", "-sr"], out / "sr", "weights/last.pt", opt.fresh)
        result["sr"] = {"weights": out / "sr" / "weights" / "last.pt", "wall_s": meta["wall_s"], "source": "bench"}
    meta = ac.cached_run(common + ["--name", "no_sr"], out / "no_sr", "weights/last.pt", opt.fresh)
    result["plain"] = {"weights": out / "no_sr" / "weights" / "last.pt", "wall_s": meta["wall_s"], "source": "bench"}
    return result


def main(argv: Sequence[str] | None = None) -> int:
    opt = parse_args(argv)
    ac.setup_main()
    from models import load_model
    from utils.prune.graph import sparsity_layers

    run = ac.find_run(opt.run)
    smoke = ac.is_smoke(run, opt.quick)
    pipe = ac.checkpoint_opt(run.sparse)
    if not pipe.get("sr"):
        print(f"WARNING: {run.sparse} was trained without -sr; comparing two plain runs")
    settings = ac.override(pipe, opt.epochs, opt.quick)
    reuse_sr = ac.same_settings(settings, pipe, SETTING_KEYS) and not opt.fresh
    trained = train_runs(run, opt, settings, reuse_sr)

    hist = ac.last_history(run.sparse, "sparsity")
    layers = hist.get("layers") or sparsity_layers(load_model(run.sparse, verbose=False).cfg,
                                                   int(pipe.get("prune", 1)))
    data, img = settings.get("data"), int(settings["img"])
    rows = {"baseline": {**measure(run.base, layers, data, img), "scale": 0.0, "epochs": "-",
                         "wall_s": run.timings.get("train")}}
    for key, label in (("sr", "sparsity (-sr)"), ("plain", "same without -sr")):
        t = trained[key]
        rows[label] = {**measure(Path(t["weights"]), layers, data, img), "wall_s": t["wall_s"],
                       "source": t["source"], "epochs": settings["epochs"],
                       "scale": float(settings.get("scale") or 0.0) if key == "sr" and pipe.get("sr") else 0.0}
    checks = targets(rows["baseline"], rows["sparsity (-sr)"], rows["same without -sr"])

    table = format_table(rows, rows["baseline"]["mAP50"])
    print(f"\nSparsity training with and without -sr from {run.base} ({len(layers)} prunable layers, "
          f"{settings['epochs']} epochs, img {img}, batch {settings.get('batch_size')}, nbs {settings.get('nbs')}, "
          f"{settings.get('optimizer')}, seed {settings.get('seed')}); gammas of the saved (EMA) weights\n")
    print(table)
    ac.print_targets(checks, smoke)
    report = {"benchmark": "sparsity", "quick": smoke, "date": ac.now(), "machine": ac.machine_info(),
              "run": str(run.root), "settings": {k: settings.get(k) for k in SETTING_KEYS if k in settings},
              "sr_source": trained["sr"]["source"], "layers": layers, "rows": rows,
              "targets": checks, "table_markdown": table}
    ac.write_report(ac.results_path("sparsity", smoke, opt.json), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
