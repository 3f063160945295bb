"""Accuracy against measured latency for every way of making the pipeline's model smaller, on one protocol.

    nohup .venv/bin/python benchmarks/bench_frontier.py > runs/frontier/log.txt 2>&1 &   # full run, hours
    .venv/bin/python benchmarks/bench_frontier.py --plan        # the stages and the predicted time only
    .venv/bin/python benchmarks/bench_frontier.py --quick       # the whole chain at toy scale (smoke test)

The source model, the image size, the optimizers, hyperparameters and the epoch budget are those of
``scripts/run_pipeline.sh`` (CFG, default yolov5n; EPOCHS + SP_EPOCHS + FT_EPOCHS, default
30 + 15 + 10), so "ours" is what the pipeline gives; ``--cfg`` and the ``--epochs-*`` flags override
them. Rows (see ``frontier_stages``): the source model, width-scaled copies of it at each FLOPs point
(``models.scaling``) and the ``--reference-cfgs`` trained from scratch for the whole epoch budget;
ours (strategies 3 and 8x, each option set of ``frontier_stages.OPTION_SETS``) sparsity-trained from
the source-model baseline (the pipeline's SP_OPTIMIZER and SP_HYP), pruned to each FLOPs point and
finetuned, plain and distilled from the best unpruned model; ours with layer pruning (every residual
block a C3 can give, alone and then with strategy 8x and ``--latency-aware`` at each FLOPs point),
finetuned plain; Torch-Pruning's BNScalePruner with its own regulariser, pruned to the same points
and finetuned. Every model gets the same total epochs, the same data and image size; accuracy is
measured on the held-out test split (``val.py --task test``), latency on the CPU at batch 1 with BN
fused and one thread, all models timed round-robin in this process (ratios to the source model
trained from scratch, paired per round), in PyTorch and in ONNX Runtime. Stages are resumable:
rerunning continues after the last finished one.

Writes ``benchmarks/results/frontier.json`` and ``frontier.png`` (``--quick``: under
``runs/bench/frontier_quick`` only).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _p in (str(ROOT), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import accuracy_common as ac  # noqa: E402
from accuracy_common import mean_std  # noqa: E402
import frontier_stages as fs  # noqa: E402
from bench_prune_latency import TP_VERSION, round_robin  # noqa: E402
from models import build_model, load_checkpoint, load_model  # noqa: E402
from models.scaling import matched_width, width_yaml  # noqa: E402
from utils.dataconfig import load_data_config  # noqa: E402
from utils.errors import UserError, cli_main, nonneg_int, open_fraction, positive_float, positive_int  # noqa: E402
from utils.general import check_img_size  # noqa: E402
from utils.onnx_backend import require_onnxruntime  # noqa: E402
from utils.torch_utils import count_flops, count_params  # noqa: E402

try:
    from utils.export import export_onnx  # noqa: E402
except ImportError:
    from export import export_onnx  # noqa: E402

FULL_ROOT = ROOT / "runs" / "frontier"
QUICK_ROOT = ac.BENCH_RUNS / "frontier_quick"
# the full-run budget is the pipeline's (fs.pipeline_budget); benchmarks/README.md has the arithmetic
QUICK_BUDGET = fs.Budget(base=1, sparse=1, finetune=1)
# one epoch of the source model at 160 px on the built-in data, 1 thread, validation included: yolov5n
# ~16 s (yolov5s ~40 s; other models are estimated by their FLOPs ratio to the source model)
EPOCH_SECONDS = 16.0
SCRATCH_OVERHEAD = 0.15   # per-epoch cost of a model that does not scale with its FLOPs (data loading)
OTHER_SECONDS = {"prune": 15.0, "eval": 8.0}
FLOPS_TOLERANCE = 0.05   # a pruned or width-scaled model this far from its FLOPs point is flagged
PLATEAU_GAIN = 0.01       # val mAP@.5:.95 gained in the last quarter of epochs below this: a plateau


# ------------------------------------------------------------------------------------ set-up
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="toy scale (1 epoch per phase, 16 images, 64 px, "
                   "FLOPs point 0.5) under runs/bench/frontier_quick; never writes benchmarks/results")
    p.add_argument("--root", default=None, help="stage folder (default runs/frontier, --quick runs/bench/frontier_quick)")
    p.add_argument("--cfg", default=None, help="the source model yaml: baseline, pruned and width-scaled "
                   "(default: the pipeline's CFG)")
    p.add_argument("--reference-cfgs", nargs="+", default=[], metavar="CFG",
                   help="extra models trained from scratch for the whole budget, e.g. models/yolov5s.yaml "
                   "(rows labelled by file stem)")
    p.add_argument("--epochs-base", type=positive_int, default=None,
                   help="baseline epochs (default: the pipeline's EPOCHS)")
    p.add_argument("--epochs-sparse", type=positive_int, default=None,
                   help="sparsity epochs (default: the pipeline's SP_EPOCHS)")
    p.add_argument("--epochs-finetune", type=positive_int, default=None,
                   help="finetune epochs (default: the pipeline's FT_EPOCHS)")
    p.add_argument("--img", type=positive_int, default=None, help="image size (default: the pipeline's IMG)")
    p.add_argument("--optimizer", choices=["SGD", "Adam", "AdamW"], default=None,
                   help="optimizer of every training (default: the pipeline's OPTIMIZER; the sparsity "
                   "trainings: its SP_OPTIMIZER, or this flag when given)")
    p.add_argument("--ft-cos-lr", type=int, choices=[0, 1], default=None,
                   help="1: every finetuning (ours and Torch-Pruning's) with the cosine learning-rate schedule "
                        "(default: the pipeline's FT_COS_LR)")
    p.add_argument("--no-scratch-cos-lr", action="store_true",
                   help="train the width-scaled models with the linear schedule only (by default also with the "
                        "cosine one, each a row; the comparisons take the better)")
    p.add_argument("--flops", type=open_fraction, nargs="+", default=None,
                   help="FLOPs points (fractions of the source model) (default 0.7 0.5 0.3)")
    p.add_argument("--strategies", nargs="+", choices=sorted(fs.PRUNE_SCRIPTS), default=["3", "8x"])
    p.add_argument("--option-sets", nargs="+", choices=list(fs.OPTION_SETS), default=list(fs.OPTION_SETS),
                   help="prune option sets of ours (frontier_stages.OPTION_SETS)")
    p.add_argument("--seeds", type=nonneg_int, nargs="+", default=[0],
                   help="seeds of the final trainings (scratch models and finetunings)")
    p.add_argument("--no-torch-pruning", action="store_true", help="leave out the Torch-Pruning rows")
    p.add_argument("--no-layer-rows", action="store_true",
                   help=f"leave out the layer-pruning rows (planned only with the option set "
                   f"{fs.LAYER_OPTION_SET!r}, whose sparse model they prune)")
    p.add_argument("--parallel", type=positive_int, default=1, help="stages run at once (2 on an idle 2-core machine)")
    p.add_argument("--stages", nargs="+", default=None, metavar="GLOB",
                   help="run only the stages matching these globs (and what they need); no report")
    p.add_argument("--plan", action="store_true", help="print the stages and the predicted time, run nothing")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: time and report the rows whose test evaluation has finished (the planned "
                        "rows without one are listed as missing in the result)")
    p.add_argument("--epoch-seconds", type=positive_float, default=EPOCH_SECONDS,
                   help="seconds of one source-model epoch, for the predicted time (the default is yolov5n's)")
    p.add_argument("--rounds", type=positive_int, default=30, help="round-robin latency rounds")
    p.add_argument("--warmup", type=nonneg_int, default=3, help="untimed forwards per model before the rounds")
    p.add_argument("--json", default=None, help="result file (default benchmarks/results/frontier.json)")
    opt = p.parse_args(argv)
    if len(set(opt.seeds)) != len(opt.seeds):
        p.error(f"--seeds {opt.seeds}: give distinct seeds")
    if opt.quick and opt.json and Path(opt.json).resolve().is_relative_to(ac.RESULTS.resolve()):
        p.error(f"--json {opt.json}: --quick runs never write into {ac.RESULTS}")
    if len({fs.model_name(c) for c in opt.reference_cfgs}) != len(opt.reference_cfgs):
        p.error(f"--reference-cfgs {opt.reference_cfgs}: give files with distinct names (rows are named by stem)")
    return opt


def make_settings(opt: argparse.Namespace) -> fs.Settings:
    """The pipeline's defaults (source model, budget, recipe) and the command line's choices."""
    default = QUICK_BUDGET if opt.quick else fs.pipeline_budget()
    budget = fs.Budget(base=opt.epochs_base or default.base, sparse=opt.epochs_sparse or default.sparse,
                       finetune=opt.epochs_finetune or default.finetune)
    flops = tuple(opt.flops) if opt.flops else ((0.5,) if opt.quick else (0.7, 0.5, 0.3))
    s = fs.settings_from_pipeline(
        budget, img=check_img_size(opt.img, 32)[0] if opt.img else (64 if opt.quick else None),
        optimizer=opt.optimizer, sp_optimizer=opt.optimizer, cfg=opt.cfg, flops=flops,
        ft_cos_lr=None if opt.ft_cos_lr is None else bool(opt.ft_cos_lr), scratch_cos_lr=not opt.no_scratch_cos_lr,
        reference_cfgs=tuple(opt.reference_cfgs), strategies=tuple(opt.strategies),
        option_sets=tuple(opt.option_sets), seeds=tuple(opt.seeds),
        torch_pruning=not opt.no_torch_pruning and torch_pruning_available(), layer_rows=not opt.no_layer_rows,
        max_train_images=ac.QUICK_TRAIN_IMAGES // 2 if opt.quick else None)
    check_cfgs(s)
    return s


def check_cfgs(s: fs.Settings) -> None:
    """The source model and every reference cfg exist; no reference repeats the source model."""
    for flag, cfg in [("--cfg", s.cfg), *[("--reference-cfgs", c) for c in s.reference_cfgs]]:
        if not ac.project_path(cfg).is_file():
            raise UserError(f"{flag} {cfg}: no such model yaml; give e.g. models/yolov5s.yaml")
    src = ac.project_path(s.cfg).resolve()
    if any(ac.project_path(c).resolve() == src for c in s.reference_cfgs):
        raise UserError(f"--reference-cfgs: {s.cfg} is the source model (--cfg), already trained from scratch; "
                        f"leave it out")


def torch_pruning_available() -> bool:
    """Whether torch-pruning imports; says clearly why its rows are left out when it does not."""
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        print(f"NOTE: torch-pruning is not installed: the Torch-Pruning rows are skipped (install it for "
              f"this benchmark only: .venv/bin/pip install torch-pruning=={TP_VERSION})", flush=True)
        return False
    return True


def scratch_cost(fraction: float) -> float:
    """Per-epoch cost, relative to the source model, of a model with ``fraction`` of its FLOPs."""
    return SCRATCH_OVERHEAD + (1.0 - SCRATCH_OVERHEAD) * fraction


def prepare_widths(s: fs.Settings, root: Path) -> tuple[dict[float, str], dict[str, float]]:
    """Width-scaled copies of the source model (``models.scaling``; one yaml per FLOPs point, in
    ``<root>/cfgs``; the widths found are cached in ``cfgs/widths.json``) and each scratch model's
    per-epoch cost relative to the source model (from its FLOPs ratio: for the time estimate only)."""
    nc = len(load_data_names(s.data))
    cfg = ac.project_path(s.cfg)

    def count(model: torch.nn.Module) -> float:
        return count_flops(model.eval(), s.img)

    full = count(build_model(cfg, nc=nc))
    folder = root / "cfgs"
    folder.mkdir(parents=True, exist_ok=True)
    cache_path = folder / "widths.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    widths: dict[float, str] = {}
    costs = {fs.SOURCE_KEY: 1.0}
    costs.update({fs.model_name(c): scratch_cost(count(build_model(ac.project_path(c), nc=nc)) / full)
                  for c in s.reference_cfgs})
    for point in s.flops:
        key = f"{s.cfg}@{s.img}@{point:g}"
        w = cache.get(key) or matched_width(cfg, point * full, count, nc=nc)[0]
        cache[key] = w
        path = folder / f"{fs.model_name(s.cfg)}_w{w:.4g}.yaml"
        path.write_text(width_yaml(cfg, w, note="frontier benchmark"))
        widths[point] = str(path)
        costs[f"w{point:g}"] = scratch_cost(count(build_model(path, nc=nc)) / full)
    cache_path.write_text(json.dumps(cache, indent=2))
    return widths, costs


def load_data_names(data: str) -> list[str]:
    return list(load_data_config(ac.project_path(data)).names)


# ------------------------------------------------------------------------------------ results
def val_fitness(weights: Path) -> float:
    """The validation fitness a training recorded in its checkpoint (0.1 mAP@.5 + 0.9 mAP@.5:.95)."""
    hist = load_checkpoint(weights, verbose=False).get("history") or []
    m = (hist[-1].get("metrics") if hist else None) or {}
    return 0.1 * float(m.get("mAP50", 0.0)) + 0.9 * float(m.get("mAP50-95", 0.0))


def teacher_picker(root: Path, s: fs.Settings, plan: Sequence[fs.Stage]):
    """``{teacher}``: the unpruned source model (pretrained baseline or scratch) with the best val fitness."""
    def pick() -> str:
        names = set(fs.teacher_stages(s))
        cands = [root / n / "weights" / "best.pt" for n in sorted(names & fs.done_stages(plan, root))]
        if not cands:
            raise RuntimeError(f"no finished unpruned {fs.model_name(s.cfg)} to distil from")
        return str(max(cands, key=val_fitness))
    return pick


def curve(results_csv: Path) -> dict:
    """Val mAP per epoch of a training and whether it reached a plateau (the best of the last
    quarter of epochs improves on the best before it by less than PLATEAU_GAIN)."""
    if not results_csv.is_file():
        return {}
    with open(results_csv) as f:
        rows = list(csv.DictReader(f))
    m95 = [float(r["metrics/mAP_0.5:0.95"]) for r in rows]
    m50 = [float(r["metrics/mAP_0.5"]) for r in rows]
    cut = max(len(m95) - max(len(m95) // 4, 1), 1)
    gain = max(m95[cut:], default=0.0) - max(m95[:cut], default=0.0)
    return {"mAP50-95": m95, "mAP50": m50, "best_epoch": int(max(range(len(m95)), key=m95.__getitem__)) if m95 else None,
            "last_quarter_gain": gain, "plateau": len(m95) >= 4 and gain < PLATEAU_GAIN}


def plateau_note(root: Path):
    """``on_done`` for the runner: as soon as a source-model training (the baseline or from scratch)
    finishes, say whether its val mAP reached a plateau (so a too short budget shows hours before
    the report)."""
    def note(stage: fs.Stage) -> None:
        if stage.name == "base" or stage.name.startswith(f"scratch_{fs.SOURCE_KEY}_"):
            c = curve(root / stage.name / "results.csv")
            if c and not c["plateau"]:
                why = (f"only {len(c['mAP50-95'])} epochs" if len(c["mAP50-95"]) < 4 else
                       f"gain in the last quarter of the epochs {c['last_quarter_gain']:+.4f} >= {PLATEAU_GAIN}")
                print(f"WARNING: {stage.name}: val mAP@.5:.95 is NOT at a plateau ({why}): raise --epochs-base",
                      flush=True)
    return note


def reference_finished(stages: Sequence[fs.Stage], done: set[str]) -> bool:
    """Whether a seed of the source model trained from scratch has its test evaluation: one is enough,
    it is the model the latency ratios divide by (other seeds may still be running)."""
    return any(f"eval_{st.name}" in done for st in stages if st.row.get("reference"))


def test_metrics(root: Path, stage: fs.Stage) -> dict:
    d = json.loads((root / f"eval_{stage.name}" / "metrics.json").read_text())
    return {"mAP50": float(d["mAP50"]), "mAP50-95": float(d["mAP50-95"])}


def collect_rows(stages: Sequence[fs.Stage], root: Path) -> list[dict]:
    """One row per model (label and FLOPs point) with a finished test evaluation: its seeds' test
    mAPs, mean and spread."""
    groups: dict[tuple, list[fs.Stage]] = {}
    done = fs.done_stages(stages, root)
    for st in stages:
        if st.row and f"eval_{st.name}" in done:
            groups.setdefault((st.row["label"], st.row.get("point")), []).append(st)
    rows = []
    for (label, point), sts in groups.items():
        per_seed = [{"seed": st.row.get("seed", 0), "stage": st.name, **test_metrics(root, st)} for st in sts]
        row = {k: v for k, v in sts[0].row.items() if k != "seed"}
        row.update(weights=str(root / sts[0].name / sts[0].weights), per_seed=per_seed)
        for key in ("mAP50", "mAP50-95"):
            row[key], row[f"{key}_std"] = mean_std([r[key] for r in per_seed])
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------ latency
def paired(times: list[list[float]], ref: int) -> list[dict]:
    """Median ms and the median over rounds of time / reference time in the same round."""
    base = times[ref]
    return [{"ms": statistics.median(t) * 1e3, "ratio": statistics.median(a / b for a, b in zip(t, base))}
            for t in times]


def onnx_round_robin(paths: Sequence[Path], img: int, rounds: int, warmup: int) -> list[list[float]]:
    """Seconds per ONNX Runtime run (1 intra-op thread, sequential), round-robin like ``round_robin``."""
    ort = require_onnxruntime()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sessions = [ort.InferenceSession(str(p), sess_options=opts, providers=["CPUExecutionProvider"]) for p in paths]
    feed = [{s.get_inputs()[0].name: np.random.rand(1, 3, img, img).astype(np.float32)} for s in sessions]
    for s, x in zip(sessions, feed):
        for _ in range(warmup):
            s.run(None, x)
    times: list[list[float]] = [[] for _ in sessions]
    for r in range(rounds):
        for k in range(len(sessions)):
            j = (k + r) % len(sessions)
            t = time.perf_counter()
            sessions[j].run(None, feed[j])
            times[j].append(time.perf_counter() - t)
    return times


def measured_points(rows: Sequence[dict]) -> None:
    """Rows whose FLOPs point is whatever their pruning gave (layer pruning alone) take their measured
    FLOPs ratio as their point (so the table groups them where they belong)."""
    for r in rows:
        if r.get("point_from_flops"):
            r["point"] = round(r["flops_ratio"], 3)


def flops_warnings(rows: Sequence[dict], tolerance: float = FLOPS_TOLERANCE) -> list[str]:
    """Rows whose measured FLOPs ratio misses their FLOPs point by more than ``tolerance`` (marked
    ``flops_off_target`` so a reader does not compare them at that point)."""
    out = []
    for r in rows:
        r["flops_off_target"] = r.get("point") is not None and abs(r["flops_ratio"] - r["point"]) > tolerance
        if r["flops_off_target"]:
            out.append(f"WARNING: {r['label']} at the FLOPs point {r['point']:g} has {r['flops_ratio']:.3f} of "
                       f"the FLOPs (see its prune stage's log)")
    return out


def measure_latency(rows: list[dict], root: Path, img: int, rounds: int, warmup: int) -> None:
    """Parameters, FLOPs, and PyTorch / ONNX Runtime CPU latency (1 thread, batch 1, BN fused) of
    every row, ratios paired per round to the source model trained from scratch (added to ``rows``)."""
    ref = next(i for i, r in enumerate(rows) if r.get("reference"))
    models = [load_model(r["weights"], device="cpu", verbose=False) for r in rows]
    f0 = count_flops(models[ref], img)
    for r, m in zip(rows, models):
        r.update(params=count_params(m), flops=count_flops(m, img))
        r["flops_ratio"] = r["flops"] / f0
    print(f"timing {len(models)} models round-robin: PyTorch, {rounds} rounds", flush=True)
    for r, t in zip(rows, paired(round_robin([m.fused_copy() for m in models], img, rounds, warmup), ref)):
        r.update(cpu_ms=t["ms"], cpu_ratio=t["ratio"])
    folder = root / "onnx"
    paths = [export_onnx(m, folder / f"row{i}.onnx", (img, img)) for i, m in enumerate(models)]
    print(f"timing {len(models)} models round-robin: ONNX Runtime, {rounds} rounds", flush=True)
    for r, t in zip(rows, paired(onnx_round_robin(paths, img, rounds, warmup), ref)):
        r.update(onnx_ms=t["ms"], onnx_ratio=t["ratio"])


# ------------------------------------------------------------------------------------ comparisons
def _at(rows: Sequence[dict], method: str, point: float) -> dict | None:
    """The row of ``method`` at ``point``; of several (e.g. scratch training with either learning-rate
    schedule) the most accurate: every rival is compared at its best."""
    found = [r for r in rows if r.get("method") == method and r.get("point") is not None
             and abs(r["point"] - point) < 1e-9]
    return max(found, key=lambda r: r["mAP50-95"], default=None)


def delta_se(a: dict, b: dict, key: str = "mAP50-95") -> float | None:
    """Standard error of the difference of two rows' seed means, sqrt(sa^2/na + sb^2/nb); None unless
    both rows ran two or more seeds (a single run says nothing about its spread)."""
    parts = []
    for r in (a, b):
        n, std = len(r.get("per_seed") or []), r.get(f"{key}_std")
        if n < 2 or std is None:
            return None
        parts.append(std ** 2 / n)
    return math.sqrt(sum(parts))


def _versus(ours: dict, other: dict, control: str) -> dict:
    """Signed differences ``ours - other`` (mAP), their standard error over seeds (``delta_se``) and
    both latency ratios."""
    out = {"control": control, "label": other["label"]}
    for key in ("mAP50-95", "mAP50"):
        out[f"delta_{key}"] = ours[key] - other[key]
    out["delta_mAP50-95_se"] = delta_se(ours, other)
    out["seeds"] = [len(r.get("per_seed") or []) for r in (ours, other)]
    for key in ("flops_ratio", "cpu_ratio", "onnx_ratio"):
        out[key] = other.get(key)
    out["verdict"] = "met" if out["delta_mAP50-95"] >= 0 else "MISSED"
    return out


def comparisons(rows: Sequence[dict], points: Sequence[float], ours_method: str,
                layers_method: str = fs.LAYER_METHOD, channels_method: str = fs.LAYER_CHANNELS_METHOD) -> list[dict]:
    """Per FLOPs point: the pipeline's default result (``ours_method``) against the smaller model
    trained from scratch and against Torch-Pruning (met: test mAP@.5:.95 at least theirs), and
    block + channel pruning (``layers_method``) against the same channel pruning alone
    (``channels_method``). Rivals that did not run are left out."""
    out = []
    for point in points:
        ours = _at(rows, ours_method, point)
        if ours is None:
            continue
        entry = {"point": point, "ours": ours["label"], "mAP50-95": ours["mAP50-95"], "mAP50": ours["mAP50"],
                 "flops_ratio": ours.get("flops_ratio"), "cpu_ratio": ours.get("cpu_ratio"),
                 "onnx_ratio": ours.get("onnx_ratio"), "versus": []}
        for control, method in (("smaller model trained from scratch", "trained from scratch"),
                                ("Torch-Pruning", "Torch-Pruning BNScalePruner")):
            other = _at(rows, method, point)
            if other is not None:
                entry["versus"].append(_versus(ours, other, control))
        layers, channels = _at(rows, layers_method, point), _at(rows, channels_method, point)
        if layers is not None and channels is not None:
            entry["layers"] = {**_versus(layers, channels, "channel pruning alone"), "layers_label": layers["label"],
                               "layers_cpu_ratio": layers.get("cpu_ratio"), "layers_onnx_ratio": layers.get("onnx_ratio"),
                               "layers_flops_ratio": layers.get("flops_ratio")}
        out.append(entry)
    return out


def format_comparisons(comps: Sequence[dict]) -> list[str]:
    """One line per rival and FLOPs point (signed, with its control)."""
    lines = []
    for c in comps:
        for v in c["versus"]:
            se = v.get("delta_mAP50-95_se")
            lines.append(f"{c['point']:g} FLOPs: {c['ours']} {c['mAP50-95']:.3f} vs {v['label']} "
                         f"{c['mAP50-95'] - v['delta_mAP50-95']:.3f}: {v['delta_mAP50-95']:+.3f}"
                         f"{'' if se is None else f' ± {se:.3f} (s.e. over seeds)'} mAP@.5:.95 "
                         f"({v['verdict']}); CPU ratio {c['cpu_ratio']:.3f} vs {v['cpu_ratio']:.3f}, "
                         f"ONNX {c['onnx_ratio']:.3f} vs {v['onnx_ratio']:.3f}")
        if "layers" in c:
            v = c["layers"]
            lines.append(f"{c['point']:g} FLOPs: {v['layers_label']} vs {v['label']}: {v['delta_mAP50-95']:+.3f} "
                         f"mAP@.5:.95; CPU ratio {v['layers_cpu_ratio']:.3f} vs {v['cpu_ratio']:.3f}, "
                         f"ONNX {v['layers_onnx_ratio']:.3f} vs {v['onnx_ratio']:.3f}")
    return lines


# ------------------------------------------------------------------------------------ output
def _pm(mean: float, std: float | None) -> str:
    return f"{mean:.3f}" + ("" if std is None else f" ± {std:.3f}")


def format_table(rows: Sequence[dict]) -> str:
    """The frontier as a markdown table, grouped by FLOPs point, fastest first within a group."""
    order = sorted(rows, key=lambda r: (-(r.get("point") or 1.0), r.get("cpu_ratio", 0.0)))
    body = [[r["label"], "-" if r.get("point") is None else f"{r['point']:g}",
             f"{r['flops_ratio']:.3f}" + (" (off target)" if r.get("flops_off_target") else ""),
             f"{r['params'] / 1e6:.2f} M", _pm(r["mAP50-95"], r.get("mAP50-95_std")), _pm(r["mAP50"], r.get("mAP50_std")),
             f"{r['cpu_ms']:.1f}", f"{r['cpu_ratio']:.3f}", f"{r['onnx_ms']:.1f}", f"{r['onnx_ratio']:.3f}",
             str(len(r["per_seed"]))] for r in order]
    return ac.md_table(["model", "FLOPs point", "FLOPs ratio", "params", "test mAP@.5:.95", "test mAP@.5",
                        "CPU ms", "CPU ratio", "ONNX ms", "ONNX ratio", "seeds"], body)


def plot(rows: Sequence[dict], path: Path, title: str) -> Path | None:
    """mAP@.5:.95 against the CPU latency ratio to the reference model (paired per round, so steadier
    than milliseconds on a shared machine), one marker and line per series (a method, the models from
    scratch one per learning-rate schedule); None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("NOTE: matplotlib is not installed: no plot")
        return None
    markers = "osD^v<>pP*Xhd"
    def series_of(r: dict) -> str:
        return r.get("series", r["method"])

    series = list(dict.fromkeys(map(series_of, rows)))
    reference = next((r["label"] for r in rows if r.get("reference")), "the reference model")
    colours = plt.get_cmap("tab20").colors
    fig, ax = plt.subplots(figsize=(10, 5.5))
    for k, name in enumerate(series):
        pts = sorted((r for r in rows if series_of(r) == name), key=lambda r: r["cpu_ratio"])
        ax.errorbar([r["cpu_ratio"] for r in pts], [r["mAP50-95"] for r in pts],
                    yerr=[r.get("mAP50-95_std") or 0.0 for r in pts], marker=markers[k % len(markers)],
                    color=colours[(2 * k) % 20 + (k // 10) % 2], linestyle="-" if len(pts) > 1 else "none",
                    capsize=3, label=name)
    ax.set_xlabel(f"CPU latency / latency of {reference} (batch 1, BN fused, 1 thread, paired per round)")
    ax.set_ylabel("test mAP@.5:.95")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"saved {path}")
    return path


def print_plan(stages: Sequence[fs.Stage], root: Path, epoch_s: float, model: str) -> None:
    done = fs.done_stages(stages, root)
    for st in stages:
        state = "done" if st.name in done else "todo"
        epochs = f"{st.epochs} ep x {st.cost:.2f}" if st.epochs else ""
        print(f"  {state}  {st.kind:9s} {st.name:40s} {epochs}")
    units = sum(st.epochs * st.cost for st in stages)
    total = fs.estimate_seconds(stages, epoch_s, OTHER_SECONDS)
    print(f"{len(stages)} stages, {units:.0f} {model}-epoch equivalents; predicted {total / 3600:.2f} h "
          f"serially at {epoch_s:g} s per {model} epoch (--epoch-seconds)")


def output_paths(opt: argparse.Namespace) -> tuple[Path, Path]:
    """The JSON and PNG to write: benchmarks/results for full runs, the quick folder for smoke runs."""
    json_path = Path(ac.results_path("frontier", opt.quick, opt.json))
    if opt.quick and not opt.json:
        json_path = QUICK_ROOT / "frontier.json"
    return json_path, json_path.with_suffix(".png")


def report(opt: argparse.Namespace, s: fs.Settings, stages: Sequence[fs.Stage], root: Path) -> dict:
    """Test mAPs, sizes and latencies of every row, the val curves, the stage times."""
    rows = collect_rows(stages, root)
    done = fs.done_stages(stages, root)
    missing = [st.name for st in stages if st.row and f"eval_{st.name}" not in done]
    walls = fs.stage_walls(stages, root)
    measure_latency(rows, root, s.img, opt.rounds, opt.warmup)
    measured_points(rows)
    warnings = flops_warnings(rows)
    for line in warnings:
        print(line)
    table = format_table(rows)
    comps = comparisons(rows, s.flops, fs.pipeline_method())
    curves = {name: curve(root / name / "results.csv") for name in fs.source_stages(s)}
    return {"benchmark": "frontier", "quick": bool(opt.quick), "date": ac.now(), "machine": ac.machine_info(),
            "settings": {**asdict(s), "total_epochs": s.budget.total}, "root": str(root),
            "teacher": teacher_picker(root, s, stages)() if any("distill" in r["method"] for r in rows) else None,
            "torch_pruning": TP_VERSION if s.torch_pruning else None, "curves": curves, "rows": rows,
            "stage_wall_s": walls, "table_markdown": table, "warnings": warnings, "missing_rows": missing,
            "pipeline_method": fs.pipeline_method(), "comparisons": comps,
            "baseline_epoch_s": walls["base"] / s.budget.base if "base" in walls else None}


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    opt = parse_args(argv)
    ac.setup_main()
    torch.set_num_threads(1)
    root = Path(opt.root) if opt.root else (QUICK_ROOT if opt.quick else FULL_ROOT)
    s = make_settings(opt)
    widths, costs = prepare_widths(s, root)
    stages = fs.build_plan(s, root, widths, costs)
    if opt.stages:
        stages = fs.select(stages, opt.stages)
    print(f"Frontier of {s.cfg}: {s.budget.total} epochs per model ({s.budget.base} baseline + "
          f"{s.budget.sparse} sparsity + {s.budget.finetune} finetune), {s.img} px, {s.optimizer} "
          f"(sparsity {s.sp_optimizer}), finetuning with the {'cosine' if s.ft_cos_lr else 'linear'} schedule, "
          f"FLOPs points {list(s.flops)}, "
          f"seeds {list(s.seeds)}; stages under {root}", flush=True)
    print_plan(stages, root, opt.epoch_seconds, fs.model_name(s.cfg))
    if opt.plan:
        return 0
    t0 = time.perf_counter()
    if opt.report_only:
        run = fs.RunResult()
    else:
        run = fs.run_stages(stages, root, teacher_picker(root, s, stages), opt.parallel, on_done=plateau_note(root))
    for name, err in run.failed.items():
        print(f"FAILED {name}: {err.splitlines()[0]}")
    if run.skipped:
        print(f"left out because a stage they need failed: {', '.join(run.skipped)}")
    if opt.stages and not opt.report_only:
        return 1 if run.failed else 0
    if not reference_finished(stages, fs.done_stages(stages, root)):
        raise UserError(f"the {fs.model_name(s.cfg)} trained from scratch (the latency reference) did not finish: "
                        "see its stage log under " + str(root))
    result = report(opt, s, stages, root)
    result.update(wall_s=time.perf_counter() - t0, failed_stages=run.failed, skipped_stages=run.skipped)
    json_path, png_path = output_paths(opt)
    print("\n" + result["table_markdown"] + "\n")
    for line in format_comparisons(result["comparisons"]):
        print(line)
    if result["missing_rows"]:
        print(f"rows not run yet (no test evaluation): {', '.join(result['missing_rows'])}")
    for name, c in result["curves"].items():
        if c:
            print(f"{name}: val mAP@.5:.95 best at epoch {c['best_epoch']} of {len(c['mAP50-95'])}, last-quarter "
                  f"gain {c['last_quarter_gain']:+.4f}: {'plateau' if c['plateau'] else 'NOT at a plateau'}")
    saved = plot(result["rows"], png_path, f"{s.budget.total} epochs per model, {s.img} px, test split"
                 + (" (--quick: not a measurement)" if opt.quick else ""))
    result["plot"] = str(saved) if saved else None
    ac.write_report(json_path, result)
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
