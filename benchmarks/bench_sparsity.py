"""Does sparsity training sparsify, and at what cost? The pipeline's ``-sr`` run against its matched control.

    python benchmarks/bench_sparsity.py                       # uses runs/pipeline/default
    python benchmarks/bench_sparsity.py --run runs/pipeline/quick --quick   # smoke test
    python benchmarks/bench_sparsity.py --grid runs/train/adamw_s0.01:runs/train/adamw_ctrl ...

Rows: the run's baseline (``base/weights/best.pt``, a reference only), its sparse model (``-sr``,
the pipeline's own checkpoint, reused while the settings are unchanged; ``--epochs`` or ``--quick``
retrain it under ``runs/bench``) and the matched control: the same ``train_sparsity.py`` training
from the same baseline with exactly the settings the sparse run recorded (epochs, image size,
batch, nominal batch, optimizer, seed, hyp, data) but without ``-sr``, so only the L1 penalty
differs. The control is, in this order, ``--control W``; the run's own ``control_sparse`` stage
(``<run>/control_sparse/weights/last.pt``) when its recorded settings match; else trained here.
``--grid SPARSE:CONTROL ...`` appends hand-trained pairs (other scales or optimizers) as extra rows.

Measured on the saved (EMA) weights the prune scripts read, over the prunable layers the sparse
run regularised: the |gamma| statistics, :func:`utils.prune.sparsity.bimodality` (a pile near zero
and a separated group of important channels), :func:`utils.prune.sparsity.slide_fit` of each -sr
model against its control channel by channel (did the penalty slide every gamma down by the same
amount, keeping the control's ranking, or split them), and mAP@.5 / mAP@.5:.95 on the held-out ``test``
split (``val`` when the data has none, stated in the output and the JSON ``split``). Targets: with
``-sr`` |gamma| bimodal and mAP@.5:.95 within 0.02 of the matched control; the control not bimodal
(so the split comes from the penalty). Writes ``benchmarks/results/sparsity.json`` and
``sparsity_hist.png`` beside it (``--quick``: ``runs/bench/quick/results``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

BENCH = Path(__file__).resolve().parent
for _p in (str(BENCH.parent), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402

import accuracy_common as ac  # noqa: E402
from models import load_model  # noqa: E402
from utils.plots import plot_gamma_split  # noqa: E402
from utils.prune.graph import sparsity_layers  # noqa: E402
from utils.prune.sparsity import BIMODAL_LOW, BIMODAL_VALLEY, bimodality, bn_gammas, gamma_stats, slide_fit  # noqa: E402

MAP_GAP = 0.02          # -sr may cost at most this much mAP@.5:.95 against the matched control
SETTING_KEYS = [*ac.TRAIN_FLAGS, *ac.TRAIN_SWITCHES, *ac.SPARSITY_FLAGS, *ac.SPARSITY_SWITCHES]
CONTROL_KEYS = [*ac.TRAIN_FLAGS, *ac.TRAIN_SWITCHES, "weights"]  # what a matched control shares
PATH_KEYS = ("data", "hyp", "weights")                           # compared as resolved paths
SPARSE, CONTROL = "sparsity (-sr)", "matched control (no -sr)"
SPARSE_FT, CONTROL_FT = "-sr, pruned + finetuned (the pipeline's)", "control, pruned + finetuned the same way"


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
    p.add_argument("--control", default=None, metavar="W",
                   help="an already trained matched control (checkpoint or run folder) instead of "
                        "<run>/control_sparse or training one")
    p.add_argument("--grid", nargs="+", default=[], metavar="SPARSE:CONTROL",
                   help="extra rows: hand-trained -sr checkpoints (or run folders), each with its matched control")
    p.add_argument("--downstream", action="store_true",
                   help="also prune the matched control exactly as the pipeline pruned its -sr model and finetune "
                        "it like the pipeline's finetune step: is -sr worth it once both are pruned and finetuned?")
    p.add_argument("--json", default=None, help="where to write the results (default benchmarks/results/sparsity.json)")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------ pure parts
def targets(sr: dict, control: dict, epochs: int | str) -> dict[str, bool]:
    """The three claims, each True/False; ``control`` is the matched control's row."""
    return {
        "-sr: |gamma| bimodal (a pile near zero and a separated group)": bool(sr["bimodality"]["bimodal"]),
        f"-sr: mAP@.5:.95 within {MAP_GAP} of the matched control (same {_epochs(epochs)}, no -sr)":
            sr["mAP50-95"] >= control["mAP50-95"] - MAP_GAP,
        "no -sr: |gamma| not bimodal (the matched control: the split comes from the penalty)":
            not control["bimodality"]["bimodal"],
    }


def grid_targets(rows: dict[str, dict]) -> dict[str, bool]:
    """The two -sr claims for each ``--grid`` row against its own matched control, named by its row."""
    out = {}
    for name, row in rows.items():
        if row.get("source") == "--grid" and row.get("control"):
            claims = targets(row, rows[row["control"]], row.get("epochs", "-"))
            out.update({f"{name.removesuffix(' (-sr)')}: {k}": v for k, v in claims.items() if k.startswith("-sr")})
    return out


def _epochs(n: int | str) -> str:
    return f"{n} epoch" + ("" if str(n) == "1" else "s")


def _path_value(v) -> str | None:
    return None if v in (None, "") else str(ac.project_path(v).resolve())


def _same_path(a, b) -> bool:
    """Two recorded paths name the same file: equal once resolved, or one is relative (recorded from
    a working directory this process does not know) and the other, absolute, ends with it."""
    if a in (None, "") or b in (None, ""):
        return a in (None, "") and b in (None, "")
    if _path_value(a) == _path_value(b):
        return True
    pa, pb = Path(str(a)), Path(str(b))
    for rel, other in ((pa, pb), (pb, pa)):
        if not rel.is_absolute() and other.is_absolute() and other.parts[-len(rel.parts):] == rel.parts:
            return True
    return False


def control_mismatch(sparse_opt: dict, control_opt: dict) -> list[str]:
    """Why ``control_opt`` is not the matched control of ``sparse_opt`` ([] when it is): it must
    have been trained without -sr, from the same weights, with the same training settings."""
    out = ["sr: the control was trained with -sr"] if control_opt.get("sr") else []
    for key in CONTROL_KEYS:
        a, b = sparse_opt.get(key), control_opt.get(key)
        if key in PATH_KEYS:
            if _same_path(a, b):
                continue
            a, b = _path_value(a), _path_value(b)
        if not ac.same_settings({key: a}, {key: b}, [key]):
            out.append(f"{key} {b!r} (sparse run: {a!r})")
    return out


def checkpoint_of(given: str | Path, flag: str) -> Path:
    """A checkpoint given on the command line: the file itself, or a training run folder's weights/last.pt."""
    path = ac.project_path(given)
    if path.is_dir():
        path = path / "weights" / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {given}: no checkpoint {path} (give a .pt file or a training run folder)")
    return path


def parse_grid(values: Sequence[str]) -> list[tuple[Path, Path]]:
    """``SPARSE:CONTROL`` pairs of --grid as checkpoint paths."""
    pairs = []
    for v in values:
        parts = v.split(":")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"--grid {v}: give SPARSE:CONTROL, a -sr checkpoint and its matched control")
        pairs.append((checkpoint_of(parts[0], "--grid"), checkpoint_of(parts[1], "--grid")))
    return pairs


def format_table(rows: dict[str, dict]) -> str:
    header = ["model", "optimizer", "-sr scale", "epochs", "mean abs gamma", "< 0.01", "pile", "valley", "group",
              "valley ratio", "Sarle BC", "bimodal", "vs control: slope, intercept, rank corr", "safe ratio",
              "mAP@.5", "mAP@.5:.95", "vs control", "train s"]
    out = []
    for name, r in rows.items():
        b = r["bimodality"]
        ctrl = rows.get(r.get("control") or "")
        gap = f"{r['mAP50-95'] - ctrl['mAP50-95']:+.4f}" if ctrl else "-"
        out.append([name, r.get("optimizer") or "-", f"{r['scale']:g}" if r.get("scale") else "off",
                    r.get("epochs", "-"), f"{r['gamma_mean']:.4f}", f"{r['gamma_lt_0.01']:.1%}",
                    f"{b['low_share']:.1%}", f"{b['valley_share']:.1%}", f"{b['high_share']:.1%}",
                    _num(b["valley_ratio"], ".2f"), _num(b["sarle_bc"], ".3f"), "yes" if b["bimodal"] else "no",
                    _fit(r.get("vs_control")), f"{r['safe_ratio']:.3f}", f"{r['mAP50']:.4f}", f"{r['mAP50-95']:.4f}", gap,
                    _num(r.get("wall_s"), ".0f")])
    return ac.md_table(header, out)


def _fit(f: dict | None) -> str:
    """A slide_fit as 'slope, intercept, rank correlation'."""
    if not f or f.get("slope") is None:
        return "-"
    return f"{f['slope']:.2f}, {f['intercept']:+.2f}, {_num(f.get('rank_corr'), '.2f')}"


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


# ------------------------------------------------------------------------------------ measuring
def gammas_of(weights: Path, layers: list[int]) -> list[torch.Tensor]:
    """|gamma| of the BatchNorms of ``layers`` in a checkpoint's model."""
    return bn_gammas(load_model(weights, device="cpu", verbose=False), layers)


def measure(weights: Path, layers: list[int], data: str | None, img: int, split: str) -> tuple[dict, list]:
    """(row, gammas): gamma statistics and bimodality over ``layers``, and mAP on ``split``."""
    g = gammas_of(weights, layers)
    row = {"weights": str(weights), **gamma_stats(g), "bimodality": bimodality(g),
           **ac.evaluate_weights(weights, data, img, task=split)}
    return row, g


def sparse_layers(weights: Path) -> list[int]:
    """The layers a sparsity run regularised (its history), else the prunable layers of its model."""
    layers = ac.last_history(weights, "sparsity").get("layers")
    if layers:
        return list(layers)
    opt = ac.checkpoint_opt(weights)
    return sparsity_layers(load_model(weights, verbose=False).cfg, int(opt.get("prune", 1)))


def recorded(opt: dict) -> dict:
    """Row fields from a checkpoint's options: optimizer, epochs, -sr scale (0 without -sr) and
    penalty (runs before --sr-penalty used l1; polarization with its t and any quantile split, e.g.
    ``polarization t=1`` or ``polarization t=1 q=0.2``)."""
    penalty = (opt.get("sr_penalty") or "l1") if opt.get("sr") else None
    if penalty == "polarization":
        penalty += f" t={float(opt.get('sr_polar_t') or 1.0):g}"
        if opt.get("sr_polar_quantile"):
            penalty += f" q={float(opt['sr_polar_quantile']):g}"
    return {"optimizer": opt.get("optimizer"), "epochs": opt.get("epochs"),
            "scale": float(opt.get("scale") or 0.0) if opt.get("sr") else 0.0, "penalty": penalty}


# ------------------------------------------------------------------------------------ training
def train_command(run: ac.PipelineRun, settings: dict, out: Path) -> list[str]:
    return [sys.executable, "train_sparsity.py",
            *ac.flags_from_opt(settings, ac.TRAIN_FLAGS, ac.TRAIN_SWITCHES),
            *ac.flags_from_opt(settings, ac.SPARSITY_FLAGS, ac.SPARSITY_SWITCHES),
            "--weights", str(run.base), "--project", str(out), "--exist-ok"]


def sparse_run(run: ac.PipelineRun, opt: argparse.Namespace, settings: dict, reuse: bool) -> dict:
    """The -sr checkpoint: the pipeline's, or trained here with ``settings``."""
    if reuse:
        return {"weights": run.sparse, "wall_s": run.timings.get("sparsity"), "source": "pipeline sparse"}
    out = ac.bench_dir(run, "sparsity", opt.quick)
    meta = ac.cached_run(train_command(run, settings, out) + ["--name", "sr", "-sr"], out / "sr",
                         "weights/last.pt", opt.fresh)
    return {"weights": out / "sr" / "weights" / "last.pt", "wall_s": meta["wall_s"], "source": "bench"}


def control_run(run: ac.PipelineRun, opt: argparse.Namespace, settings: dict, sparse_w: Path) -> dict:
    """The matched control: --control, the run's control_sparse stage when it matches, or trained here."""
    sparse_opt = ac.checkpoint_opt(sparse_w)
    if opt.control:
        weights = checkpoint_of(opt.control, "--control")
        bad = control_mismatch(sparse_opt, ac.checkpoint_opt(weights))
        if bad:
            raise ValueError(f"--control {opt.control}: not the matched control of {sparse_w}: differs in "
                             f"{'; '.join(bad)}; train it with the sparse run's settings without -sr, "
                             f"or leave out --control to have the benchmark train one")
        return {"weights": weights, "wall_s": None, "source": "--control"}
    stage = run.root / "control_sparse" / "weights" / "last.pt"
    if stage.is_file() and not opt.fresh:
        bad = control_mismatch(sparse_opt, ac.checkpoint_opt(stage))
        if not bad:
            return {"weights": stage, "wall_s": run.timings.get("control_sparse"), "source": "pipeline control_sparse"}
        print(f"NOTE: {stage} is not the matched control here (differs in {'; '.join(bad)}); training one")
    out = ac.bench_dir(run, "sparsity", opt.quick)
    meta = ac.cached_run(train_command(run, settings, out) + ["--name", "no_sr"], out / "no_sr",
                         "weights/last.pt", opt.fresh)
    return {"weights": out / "no_sr" / "weights" / "last.pt", "wall_s": meta["wall_s"], "source": "bench"}


def check_grid(pairs: list[tuple[Path, Path]]) -> None:
    """Every --grid control must be its sparse model's matched control."""
    for sparse_w, control_w in pairs:
        sparse_opt = ac.checkpoint_opt(sparse_w)
        bad = control_mismatch(sparse_opt, ac.checkpoint_opt(control_w))
        if bad:
            raise ValueError(f"--grid {sparse_w}:{control_w}: the control differs in {'; '.join(bad)}; "
                             f"give each -sr checkpoint the same training without -sr")
        if not sparse_opt.get("sr"):
            print(f"WARNING: --grid {sparse_w} was trained without -sr")


def grid_rows(pairs: list[tuple[Path, Path]], data: str | None, img: int,
              split: str) -> tuple[dict[str, dict], dict[str, list]]:
    """Two rows per --grid pair (checked by :func:`check_grid`): its -sr model and its control; and
    the -sr models' gammas (for the histogram)."""
    rows: dict[str, dict] = {}
    gammas: dict[str, list] = {}
    for k, (sparse_w, control_w) in enumerate(pairs, 1):
        sparse_opt = ac.checkpoint_opt(sparse_w)
        layers = sparse_layers(sparse_w)
        rec = recorded(sparse_opt)
        name = f"grid {k}: {sparse_opt.get('optimizer')} s={rec['scale']:g}" + (
            f" {rec['penalty']}" if rec["penalty"] not in (None, "l1") else "")
        row, g = measure(sparse_w, layers, data, img, split)
        ctrl, g_ctrl = measure(control_w, layers, data, img, split)
        rows[name + " (-sr)"] = {**row, **recorded(sparse_opt), "wall_s": None, "source": "--grid",
                                 "control": name + " (control)", "vs_control": slide_fit(g, g_ctrl)}
        rows[name + " (control)"] = {**ctrl, **recorded(ac.checkpoint_opt(control_w)), "wall_s": None, "source": "--grid"}
        gammas[name + " (-sr)"] = g
    return rows, gammas


# ------------------------------------------------------------------------------------ downstream
STRATEGY_SCRIPTS = {"1": ("prune_yolov5s.py", "--percent"), "2": ("shortcut_prune_yolov5s.py", "--percent"),
                    "3": ("slim_prune_yolov5s.py", "--global_percent"), "8x": ("slim_prune_yolov5s_8x.py", "--global_percent")}


def prune_command(step: dict, weights: Path, data: str | None, img: int, out_dir: Path) -> list[str]:
    """The prune step a checkpoint's history records (strategy, its target or ratio, its options),
    applied to ``weights``."""
    strategy = str(step.get("strategy"))
    if strategy not in STRATEGY_SCRIPTS:
        raise ValueError(f"prune step with strategy {strategy!r}: cannot repeat it (use 1, 2, 3 or 8x)")
    script, ratio_flag = STRATEGY_SCRIPTS[strategy]
    st = step.get("settings") or {}
    cmd = [sys.executable, script, "--weights", str(weights), "--img_size", str(img), "--no-eval",
           "--out-dir", str(out_dir)] + (["--data", str(data)] if data else [])
    if strategy in ("3", "8x") and st.get("layer_keep") is not None:
        cmd += ["--layer_keep", f"{float(st['layer_keep']):g}"]
    target = st.get("target") or {}
    if target.get("metric") in ("flops", "params"):
        cmd += [f"--target-{target['metric']}", f"{float(target['target']):g}"]
    elif target:
        raise ValueError(f"prune step with a {target.get('metric')} target: repeat it by hand (the benchmark "
                         f"repeats FLOPs, parameter and ratio prunes)")
    else:
        cmd += [ratio_flag, f"{float(step['ratio']):g}"]
    if st.get("latency_aware"):
        cmd.append("--latency-aware")
    else:
        cmd += ["--cost-aware"] if st.get("cost_aware") else []
        cmd += ["--round-to", str(st["round_to"])] if int(st.get("round_to") or 1) > 1 else []
        cmd += [flag for key, flag in (("include_upsample", "--include-upsample"), ("include_sppf", "--include-sppf"))
                if st.get(key)]
    return cmd


def finetune_command(opt: dict, pruned: Path, out: Path, name: str) -> list[str]:
    """``prune_finetune.py`` with the training settings a finetune run recorded, on ``pruned``."""
    return [sys.executable, "prune_finetune.py", "--weights", str(pruned),
            *ac.flags_from_opt(opt, ac.TRAIN_FLAGS, ac.TRAIN_SWITCHES), "--project", str(out), "--name", name,
            "--exist-ok"]


def downstream_rows(run: ac.PipelineRun, control_w: Path, data: str | None, img: int, split: str,
                    fresh: bool, quick: bool) -> dict[str, dict]:
    """The pipeline's pruned + finetuned -sr model, and its matched control pruned the same way
    (the prune step its history records) and finetuned with the pipeline finetune's settings."""
    if run.pruned is None or run.finetune is None:
        raise ValueError(f"--downstream: {run.root} has no pruned and finetuned model (finish the pipeline run)")
    step = ac.last_history(run.pruned, "prune")
    if any(h.get("step") == "layer_prune" for h in ac.load_ckpt(run.pruned).get("history") or []):
        raise ValueError("--downstream: the run also removed residual blocks; repeat that by hand")
    out = ac.bench_dir(run, "sparsity_downstream", quick)
    prune = ac.cached_run(prune_command(step, control_w, data, img, out / "prune_control"), out / "prune_control",
                          "prune_*.pt", fresh)
    ft_opt = ac.checkpoint_opt(run.finetune)
    ft = ac.cached_run(finetune_command(ft_opt, prune["outputs"][-1], out, "finetune_control"), out / "finetune_control",
                       "weights/best.pt", fresh)
    rows = {}
    for label, weights, wall in ((SPARSE_FT, run.finetune, run.timings.get("finetune")),
                                 (CONTROL_FT, ft["outputs"][-1], prune["wall_s"] + ft["wall_s"])):
        rows[label] = {"weights": str(weights), **ac.evaluate_weights(weights, data, img, task=split),
                       "epochs": ft_opt.get("epochs"), "wall_s": wall}
    rows[SPARSE_FT]["control"] = CONTROL_FT
    rows[SPARSE_FT]["prune"] = {k: step.get(k) for k in ("strategy", "ratio")}
    rows[CONTROL_FT]["prune_command"] = prune["cmd"][1:]
    return rows


# ------------------------------------------------------------------------------------ output
def histogram_path(json_path: Path) -> Path:
    """``<json stem>_hist.png`` beside the JSON (sparsity.json -> sparsity_hist.png)."""
    return json_path.with_name(json_path.stem + "_hist.png")


def write_histogram(gammas: dict[str, list], scale: float, path: Path) -> str | None:
    """|gamma| of the sparse model, its control and the --grid -sr models on one plot; None without
    matplotlib."""
    try:
        import matplotlib  # noqa: F401 (optional dependency)
    except ImportError:
        print("NOTE: matplotlib is not installed; no histogram written")
        return None
    series = {k: torch.cat([x.flatten() for x in g]).numpy() for k, g in gammas.items()}
    marks = [scale * BIMODAL_LOW, scale * BIMODAL_VALLEY] if scale > 0 else []
    plot_gamma_split(series, path, marks=marks,
                     title="|gamma| of the prunable layers (dashed: the -sr model's pile and valley bounds)")
    print(f"saved {path}")
    return str(path)


def describe(run: ac.PipelineRun, settings: dict, layers: list[int], split: str, control: dict) -> str:
    img = settings["img"]
    return (f"\nSparsity training with -sr and its matched control from {run.base} ({len(layers)} prunable "
            f"layers, {_epochs(settings['epochs'])}, img {img}, batch {settings.get('batch_size')}, nbs "
            f"{settings.get('nbs')}, {settings.get('optimizer')}, seed {settings.get('seed')}); gammas of the "
            f"saved (EMA) weights; mAP on the {split} split\nmatched control: {control['weights']} "
            f"({control['source']})\n")


def main(argv: Sequence[str] | None = None) -> int:
    opt = parse_args(argv)
    ac.setup_main()
    grid = parse_grid(opt.grid)  # bad --grid values fail before any training
    check_grid(grid)
    run = ac.find_run(opt.run)
    smoke = ac.is_smoke(run, opt.quick)
    pipe = ac.checkpoint_opt(run.sparse)
    if not pipe.get("sr"):
        print(f"WARNING: {run.sparse} was trained without -sr; comparing two plain runs")
    settings = ac.override(pipe, opt.epochs, opt.quick)
    sparse = sparse_run(run, opt, settings, ac.same_settings(settings, pipe, SETTING_KEYS) and not opt.fresh)
    control = control_run(run, opt, settings, Path(sparse["weights"]))

    layers = sparse_layers(Path(sparse["weights"]))
    data, img = settings.get("data"), int(settings["img"])
    split = ac.held_out_split(data)
    if split != "test":
        print(f"NOTE: {data or 'the built-in dataset'} has no test split: measuring on val, which also chose "
              f"the baseline's best.pt (a less independent comparison)")
    rows, gammas = {}, {}
    rows["baseline"], _ = measure(run.base, layers, data, img, split)
    base_opt = ac.checkpoint_opt(run.base)
    rows["baseline"].update(recorded(base_opt), epochs="-", wall_s=run.timings.get("train"))
    for label, t, extra in ((SPARSE, sparse, {"control": CONTROL}), (CONTROL, control, {})):
        rows[label], gammas[label] = measure(Path(t["weights"]), layers, data, img, split)
        rows[label].update(recorded(ac.checkpoint_opt(t["weights"])), wall_s=t["wall_s"], source=t["source"], **extra)
    rows[SPARSE]["vs_control"] = slide_fit(gammas[SPARSE], gammas[CONTROL])
    more_rows, more_gammas = grid_rows(grid, data, img, split)
    rows.update(more_rows)
    checks = {**targets(rows[SPARSE], rows[CONTROL], settings["epochs"]), **grid_targets(rows)}

    down = downstream_rows(run, Path(control["weights"]), data, img, split, opt.fresh, smoke) if opt.downstream else {}
    if down:
        gap = down[SPARSE_FT]["mAP50-95"] - down[CONTROL_FT]["mAP50-95"]
        checks["-sr: pruned and finetuned, mAP@.5:.95 at least the control pruned and finetuned the same way"] = gap >= 0

    table = format_table(rows)
    print(describe(run, settings, layers, split, control))
    print(table)
    if down:
        print("\n" + ac.md_table(["after pruning and finetuning", "mAP@.5", "mAP@.5:.95", "vs control"],
                                 [[k, f"{r['mAP50']:.4f}", f"{r['mAP50-95']:.4f}",
                                   f"{r['mAP50-95'] - down[r['control']]['mAP50-95']:+.4f}" if r.get("control") else "-"]
                                  for k, r in down.items()]))
    ac.print_targets(checks, smoke)
    json_path = ac.results_path("sparsity", smoke, opt.json)
    hist = write_histogram({**gammas, **more_gammas}, rows[SPARSE]["bimodality"]["scale"], histogram_path(json_path))
    report = {"benchmark": "sparsity", "quick": smoke, "date": ac.now(), "machine": ac.machine_info(),
              "run": str(run.root), "base_epochs": base_opt.get("epochs"),
              "settings": {k: settings.get(k) for k in SETTING_KEYS if k in settings},
              "split": split, "sr_source": sparse["source"], "control_source": control["source"],
              "control": str(control["weights"]), "layers": layers, "rows": rows, "targets": checks,
              "hist_png": hist, "table_markdown": table, "downstream": down or None}
    ac.write_report(json_path, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
