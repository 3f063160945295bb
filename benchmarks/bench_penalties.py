"""Which sparsity penalty gives the best pruned model? Each penalty, from the pipeline's baseline,
through the pipeline's own prune and finetune steps, over several seeds.

    python benchmarks/bench_penalties.py                       # runs/pipeline/default, the default penalties
    python benchmarks/bench_penalties.py --penalties l1 polarization,mean=layer --seeds 0 1 2 --jobs 2
    python benchmarks/bench_penalties.py --run runs/pipeline/quick --quick     # smoke test

A penalty is ``NAME[,key=value...]``: ``l1``, ``hoyer`` or ``polarization`` with optional ``scale=``
(``--scale``; default: the run's), ``t=`` (``--sr-polar-t``), ``mean=`` (``--sr-polar-mean``) and
``q=`` (``--sr-polar-quantile``).
For each penalty and seed, three steps, each with the settings the pipeline run recorded so that
only the penalty and the seed differ:

1. ``train_sparsity.py -sr`` from the run's baseline with its sparse stage's options (epochs, hyp,
   optimizer, image size, batch, scale, regularised layers) and the given penalty and seed;
2. the prune step the run's pruned checkpoint records (strategy, FLOPs target or ratio, options);
3. ``prune_finetune.py`` with the run's finetune settings (and the chain's seed).

Every model therefore has the same data, image size and total epochs (baseline + sparsity +
finetuning). Measured on the held-out ``test`` split (``val`` when the data has none; val chose
each finetune's ``best.pt``): the sparse model (mAP and the |gamma| split, see
:func:`utils.prune.sparsity.bimodality`), the pruned model before finetuning, and the finetuned
model, with the mean and spread over seeds per penalty. ``--jobs 2`` runs two chains at a time
(one torch thread each). Runs are cached under ``runs/bench/<run>/penalties`` (an interrupted
benchmark resumes). Writes ``benchmarks/results/penalties.json``.
"""
from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

BENCH = Path(__file__).resolve().parent
for _p in (str(BENCH.parent), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import accuracy_common as ac  # noqa: E402
import bench_sparsity as bs  # noqa: E402
from utils.prune.sparsity import PENALTIES, bimodality  # noqa: E402

DEFAULT_PENALTIES = ["l1", "polarization", "polarization,mean=layer"]
# spec key -> recorded option; every key but scale is polarization's own
OPTION_KEYS = {"scale": "scale", "t": "sr_polar_t", "mean": "sr_polar_mean", "q": "sr_polar_quantile"}


def parse_penalty(spec: str) -> dict:
    """``NAME[,key=value...]`` -> the train_sparsity options it sets (``sr_penalty`` and any of
    ``scale``, ``sr_polar_t``, ``sr_polar_mean``, ``sr_polar_quantile``)."""
    name, *pairs = [p.strip() for p in spec.split(",")]
    if name not in PENALTIES:
        raise ValueError(f"--penalties {spec}: unknown penalty {name!r}; use one of {', '.join(PENALTIES)}")
    out: dict = {"sr_penalty": name}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in OPTION_KEYS:
            raise ValueError(f"--penalties {spec}: {pair!r} is not key=value with key one of {', '.join(OPTION_KEYS)}")
        if key != "scale" and name != "polarization":
            raise ValueError(f"--penalties {spec}: {key}= only applies to polarization")
        if key == "mean":
            if value not in ("global", "layer"):
                raise ValueError(f"--penalties {spec}: mean={value}: use global or layer")
            out[OPTION_KEYS[key]] = value
        else:
            try:
                out[OPTION_KEYS[key]] = float(value)
            except ValueError:
                raise ValueError(f"--penalties {spec}: {key}={value} is not a number") from None
    return out


def slug(spec: str, seed: int) -> str:
    """A folder name for one chain: ``polarization_mean-layer_seed1``."""
    return spec.replace(",", "_").replace("=", "-").replace(".", "p") + f"_seed{seed}"


def spread(values: list[float]) -> dict:
    """Mean, min, max and sample standard deviation (None for one value) of a list of numbers."""
    mean, std = ac.mean_std(values)
    return {"mean": mean, "min": min(values), "max": max(values), "std": std, "n": len(values)}


def summarise(chains: list[dict]) -> dict[str, dict]:
    """Per penalty: the spread over seeds of the sparse, pruned and finetuned mAP@.5:.95, and how
    many seeds gave a bimodal |gamma|."""
    out: dict[str, dict] = {}
    for spec in dict.fromkeys(c["penalty"] for c in chains):
        mine = [c for c in chains if c["penalty"] == spec]
        out[spec] = {stage: spread([c[stage]["mAP50-95"] for c in mine]) for stage in ("sparse", "pruned", "final")}
        out[spec]["bimodal_seeds"] = sum(bool(c["sparse"]["bimodality"]["bimodal"]) for c in mine)
        out[spec]["seeds"] = [c["seed"] for c in mine]
    return out


def format_table(chains: list[dict], summary: dict[str, dict]) -> str:
    rows = []
    for c in chains:
        b = c["sparse"]["bimodality"]
        rows.append([c["penalty"], c["seed"], f"{b['low_share']:.1%} / {b['valley_share']:.1%} / {b['high_share']:.1%}",
                     "yes" if b["bimodal"] else "no", f"{c['sparse']['mAP50-95']:.4f}", f"{c['pruned']['mAP50-95']:.4f}",
                     f"{c['final']['mAP50-95']:.4f}", f"{c['final']['mAP50']:.4f}"])
    for spec, s in summary.items():
        rows.append([f"**{spec}: mean (min-max)**", f"{s['sparse']['n']} seeds", "-",
                     f"{s['bimodal_seeds']}/{s['sparse']['n']}",
                     *[f"{s[k]['mean']:.4f} ({s[k]['min']:.3f}-{s[k]['max']:.3f})" for k in ("sparse", "pruned", "final")],
                     "-"])
    return ac.md_table(["penalty", "seed", "pile / valley / group", "bimodal", "sparse mAP@.5:.95",
                        "pruned, before finetuning", "finetuned mAP@.5:.95", "finetuned mAP@.5"], rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", default=ac.DEFAULT_RUN, help="a finished scripts/run_pipeline.sh run")
    p.add_argument("--penalties", nargs="+", default=DEFAULT_PENALTIES, metavar="SPEC",
                   help="NAME[,scale=S][,t=T][,mean=global|layer]")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--jobs", type=int, default=1, help="chains trained at a time (one torch thread each)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: {ac.QUICK_EPOCHS} epoch on {ac.QUICK_TRAIN_IMAGES} images, results under runs/bench")
    p.add_argument("--fresh", action="store_true", help="retrain even where an identical finished run exists")
    p.add_argument("--json", default=None, help="where to write (default benchmarks/results/penalties.json)")
    opt = p.parse_args(argv)
    if opt.jobs < 1:
        p.error(f"--jobs {opt.jobs}: must be at least 1")
    return opt


def chain(run: ac.PipelineRun, settings: dict, step: dict, ft_settings: dict, spec: str, seed: int,
          opt: argparse.Namespace) -> dict:
    """Sparsity training with ``settings``, the prune ``step`` and finetuning with ``ft_settings``
    for one penalty and seed: the three checkpoints (nothing measured yet)."""
    out = ac.bench_dir(run, "penalties", opt.quick) / slug(spec, seed)
    s = {**settings, **parse_penalty(spec), "seed": seed}
    sparse = ac.cached_run(bs.train_command(run, s, out) + ["--name", "sparse", "-sr"], out / "sparse",
                           "weights/last.pt", opt.fresh)
    prune = ac.cached_run(bs.prune_command(step, sparse["outputs"][-1], s.get("data"), int(s["img"]), out / "pruned"),
                          out / "pruned", "prune_*.pt", opt.fresh)
    ft = ac.cached_run(bs.finetune_command({**ft_settings, "seed": seed}, prune["outputs"][-1], out, "finetune"),
                       out / "finetune", "weights/best.pt", opt.fresh)
    return {"penalty": spec, "seed": seed, "options": {k: s.get(k) for k in ("scale", *OPTION_KEYS.values(), "sr_penalty")},
            "weights": {"sparse": sparse["outputs"][-1], "pruned": prune["outputs"][-1], "final": ft["outputs"][-1]},
            "wall_s": sparse["wall_s"] + prune["wall_s"] + ft["wall_s"]}


def measure(c: dict, data: str | None, img: int, split: str) -> dict:
    """mAP of the chain's three models on ``split``; the sparse model's |gamma| split."""
    w = c["weights"]
    layers = bs.sparse_layers(w["sparse"])
    out = {**c, "weights": {k: str(v) for k, v in w.items()}}
    out["sparse"] = {**ac.evaluate_weights(w["sparse"], data, img, task=split),
                     "bimodality": bimodality(bs.gammas_of(w["sparse"], layers))}
    out["pruned"] = ac.evaluate_weights(w["pruned"], data, img, task=split)
    out["final"] = ac.evaluate_weights(w["final"], data, img, task=split)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    opt = parse_args(argv)
    ac.setup_main()
    for spec in opt.penalties:
        parse_penalty(spec)  # bad specs fail before any training
    run = ac.find_run(opt.run)
    if run.pruned is None or run.finetune is None:
        raise SystemExit(f"--run {opt.run}: no pruned and finetuned model; finish the pipeline run first")
    smoke = ac.is_smoke(run, opt.quick)
    settings = ac.override(ac.checkpoint_opt(run.sparse), None, opt.quick)
    step = ac.last_history(run.pruned, "prune")
    ft_settings = ac.override(ac.checkpoint_opt(run.finetune), None, opt.quick)
    data, img = settings.get("data"), int(settings["img"])
    split = ac.held_out_split(data)
    jobs = [(spec, seed) for spec in opt.penalties for seed in opt.seeds]
    with ThreadPoolExecutor(max_workers=opt.jobs) as pool:
        trained = list(pool.map(lambda j: chain(run, settings, step, ft_settings, j[0], j[1], opt), jobs))
    chains = [measure(c, data, img, split) for c in trained]
    summary = summarise(chains)
    table = format_table(chains, summary)
    print(f"\nPenalties from {run.base}: {settings.get('epochs')} sparsity epochs, the run's prune step and "
          f"finetuning; mAP on the {split} split")
    print(table)
    report = {"benchmark": "penalties", "quick": smoke, "date": ac.now(), "machine": ac.machine_info(),
              "run": str(run.root), "split": split, "seeds": opt.seeds, "penalties": opt.penalties,
              "settings": {k: settings.get(k) for k in bs.SETTING_KEYS if k in settings},
              "prune": {k: step.get(k) for k in ("strategy", "ratio", "settings")},
              "finetune_epochs": ft_settings.get("epochs"), "finetune_cos_lr": ft_settings.get("cos_lr"),
              "chains": chains, "summary": summary, "table_markdown": table}
    ac.write_report(ac.results_path("penalties", smoke, opt.json), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
