"""The stages of the accuracy-latency frontier benchmark: the plan (pure data) and its resumable runner.

A stage is one command of the project's CLIs (``train.py``, ``train_sparsity.py``, the prune scripts,
``prune_finetune.py``, ``val.py``, ``benchmarks/frontier_tp.py``) that writes ``<root>/<stage>/``;
when it exits 0 the runner writes ``<root>/<stage>/frontier_done.json`` (command, wall time, date
and a fingerprint of the command and of everything upstream of it). A stage whose marker has the
planned fingerprint is skipped; any other stage folder (a crash, or a run with other settings)
is deleted and rerun, so re-running the benchmark continues where it stopped; a training stage
(``train.py``, ``train_sparsity.py``, ``prune_finetune.py``) cut short after its first epoch resumes
from its ``last.pt`` with the engine's exact ``--resume`` when it was started with the planned
fingerprint (``frontier_started.json``). Commands may hold placeholders resolved
when the stage starts: ``{teacher}`` (the unpruned source-model checkpoint with the best val mAP),
``{pruned:<stage>}`` (the checkpoint a prune stage wrote) and ``{layer_target:<stage>:<point>}`` (the
``--target-flops`` of a channel step after ``--layers N`` that lands the whole at ``point`` of the
original's FLOPs, from the FLOPs that layer-pruning stage kept).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Callable, Iterable, Sequence

from models import load_cfg_file
from utils.prune import EXTRA_LAYERS, find_blocks, layer_flops, max_removable
from utils.prune.cli import build_parser, resolve_latency_aware

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_SCRIPT = ROOT / "scripts" / "run_pipeline.sh"
DONE = "frontier_done.json"
STARTED = "frontier_started.json"
# the scripts whose runs the engine can resume exactly from their last.pt (--resume)
RESUMABLE = ("train.py", "train_sparsity.py", "prune_finetune.py")

# The option sets of "ours": name -> extra prune flags. One place: add a set here and every strategy,
# FLOPs point and finetuning mode gets its rows.
OPTION_SETS: dict[str, tuple[str, ...]] = {
    "default": (),
    "latency": ("--latency-aware",),
}
# prune switches that widen the set of prunable convs (train_sparsity.py takes the same ones): the
# sparsity training must regularise them too (see sparsity_switches)
SPARSITY_SHARED = tuple(EXTRA_LAYERS.values())
# the option set of the layer-pruning rows (the combination the pipeline defaults to) and their strategy
LAYER_OPTION_SET = "latency"
LAYER_STRATEGY = "8x"
LAYER_METHOD = f"ours layers+{LAYER_STRATEGY} {LAYER_OPTION_SET}"
LAYER_CHANNELS_METHOD = f"ours {LAYER_STRATEGY} {LAYER_OPTION_SET}"  # the same channel pruning without the blocks
# the strategies of the frontier (those with --layer_keep and sparsity of every prunable layer)
PRUNE_SCRIPTS = {"3": "slim_prune_yolov5s.py", "8x": "slim_prune_yolov5s_8x.py"}
# Torch-Pruning's regulariser strength: BNScalePruner's own default. It adds reg * sign(gamma) to the
# gradient; under Adam(W), which normalises the gradient, our --scale (0.03) there drove every gamma
# down and the model to mAP@.5:.95 0.001 within 5 of the 15 sparsity epochs (frontier run of
# 2026-12-01), so the peer runs at the setting its authors ship.
TP_REG = 1e-5
# pipeline variable -> Settings field (scripts/run_pipeline.sh holds the defaults users get); the
# epochs go to the Budget (BUDGET_VARS)
PIPELINE_VARS = {"BATCH": "batch", "NBS": "nbs", "OPTIMIZER": "optimizer", "SCALE": "scale",
                 "LAYER_KEEP": "layer_keep", "HYP": "hyp", "FT_HYP": "ft_hyp", "IMG": "img", "DATA": "data",
                 "CFG": "cfg", "SP_OPTIMIZER": "sp_optimizer", "SP_HYP": "sp_hyp", "FT_COS_LR": "ft_cos_lr",
                 "EPOCHS": "base", "SP_EPOCHS": "sparse", "FT_EPOCHS": "finetune"}
BUDGET_VARS = ("base", "sparse", "finetune")


@dataclass(frozen=True)
class Budget:
    """Epochs of each phase; every frontier model gets ``total`` epochs of training in all."""

    base: int       # the source model from scratch: the baseline that pruning starts from
    sparse: int     # sparsity training (ours and Torch-Pruning's regulariser)
    finetune: int   # finetuning of the pruned models

    @property
    def total(self) -> int:
        return self.base + self.sparse + self.finetune


@dataclass(frozen=True)
class Settings:
    """Everything the plan depends on (recorded in the report)."""

    budget: Budget
    img: int = 160
    batch: int = 16
    nbs: int = 16
    optimizer: str = "AdamW"
    sp_optimizer: str = "AdamW"     # optimizer of the sparsity trainings (the pipeline's SP_OPTIMIZER)
    scale: float = 0.03
    layer_keep: float = 0.01
    hyp: str = "data/hyps/hyp.scratch-low.yaml"
    ft_hyp: str = "data/hyps/hyp.finetune.yaml"
    sp_hyp: str = "data/hyps/hyp.finetune.yaml"  # hyperparameters of the sparsity trainings (SP_HYP)
    ft_cos_lr: bool = False         # finetunings (ours and Torch-Pruning's) with --cos-lr (FT_COS_LR)
    scratch_cos_lr: bool = True     # the width-scaled models also trained with --cos-lr (each schedule a row)
    data: str = "data/builtin.yaml"
    cfg: str = "models/yolov5n.yaml"             # the source model: baseline, pruned, width-scaled
    reference_cfgs: tuple[str, ...] = ()         # extra models trained from scratch (rows by cfg stem)
    flops: tuple[float, ...] = (0.7, 0.5, 0.3)
    strategies: tuple[str, ...] = ("3", "8x")
    option_sets: tuple[str, ...] = tuple(OPTION_SETS)
    seeds: tuple[int, ...] = (0,)
    torch_pruning: bool = True
    layer_rows: bool = True
    max_train_images: int = 0
    workers: int = 1


@dataclass(frozen=True)
class Stage:
    """One command of the plan; ``row`` is set on the stages whose model is a frontier point."""

    name: str
    kind: str                       # train | sparsity | prune | finetune | eval
    cmd: tuple[str, ...]
    needs: tuple[str, ...] = ()
    epochs: int = 0
    cost: float = 0.0               # per-epoch cost relative to a source-model epoch (time estimates)
    weights: str = ""               # the model the stage produces, relative to the stage folder
    row: dict = field(default_factory=dict)
    exclusive: bool = False         # runs alone even with --parallel (it measures latency)


# ------------------------------------------------------------------------------------ settings
def pipeline_variables(text: str) -> dict[str, str]:
    """Every ``VAR=${VAR:-value}`` default of a shell script (the last assignment wins, which is the
    non-QUICK branch), a value that is a reference to another variable (``$VAR`` or ``${VAR}``)
    resolved to that variable's default."""
    found: dict[str, str] = {}
    for name, value in re.findall(r"\b([A-Z_]+)=\$\{\1:?-([^}]*)\}", text):
        found[name] = value
    for name in found:
        seen = {name}
        while (ref := re.fullmatch(r"\$\{?([A-Z_]+)\}?", found[name])) and ref[1] in found and ref[1] not in seen:
            seen.add(ref[1])
            found[name] = found[ref[1]]
    return found


def pipeline_defaults(text: str | None = None) -> dict[str, str]:
    """The full-run defaults of ``scripts/run_pipeline.sh`` for the variables in PIPELINE_VARS, by
    Settings / Budget field (empty or unresolved values left out)."""
    found = pipeline_variables(PIPELINE_SCRIPT.read_text() if text is None else text)
    return {PIPELINE_VARS[k]: v for k, v in found.items() if k in PIPELINE_VARS and v and not v.startswith("$")}


def pipeline_method(text: str | None = None) -> str:
    """The frontier method that is the pipeline's default result: its STRATEGY with the option set
    LATENCY_AWARE picks (its final model is the plain finetune: see scripts/run_pipeline.sh)."""
    found = pipeline_variables(PIPELINE_SCRIPT.read_text() if text is None else text)
    return f"ours {found.get('STRATEGY', '8x')} {'latency' if found.get('LATENCY_AWARE', '0') == '1' else 'default'}"


def pipeline_budget(text: str | None = None) -> Budget:
    """The pipeline's full-run epochs (EPOCHS / SP_EPOCHS / FT_EPOCHS) as a Budget."""
    d = pipeline_defaults(text)
    missing = [k for k in BUDGET_VARS if k not in d]
    if missing:
        raise ValueError(f"{PIPELINE_SCRIPT}: no default for {missing}: the frontier's epoch budget follows it")
    return Budget(**{k: int(d[k]) for k in BUDGET_VARS})


def settings_from_pipeline(budget: Budget | None = None, **overrides) -> Settings:
    """Settings with the pipeline's defaults (its epochs when ``budget`` is None), then ``overrides``
    (None values ignored)."""
    types = {"batch": int, "nbs": int, "img": int, "scale": float, "layer_keep": float, "ft_cos_lr": _switch}
    base = {k: types.get(k, str)(v) for k, v in pipeline_defaults().items() if k not in BUDGET_VARS}
    base.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(budget=budget or pipeline_budget(), **base)


def _switch(value: str) -> bool:
    """A pipeline 0/1 setting as a bool."""
    if value not in ("0", "1"):
        raise ValueError(f"{PIPELINE_SCRIPT}: a 0/1 setting has the default {value!r}")
    return value == "1"


# ------------------------------------------------------------------------------------ the plan
def _finetune_flags(s: Settings, seed: int) -> list[str]:
    """The training flags of every finetuning (the pipeline's step 4)."""
    return _train_flags(s, s.budget.finetune, s.ft_hyp, seed) + (["--cos-lr"] if s.ft_cos_lr else [])


def _train_flags(s: Settings, epochs: int, hyp: str, seed: int, optimizer: str | None = None) -> list[str]:
    flags = ["--img", str(s.img), "--batch", str(s.batch), "--nbs", str(s.nbs), "--optimizer", optimizer or s.optimizer,
             "--data", s.data, "--epochs", str(epochs), "--hyp", hyp, "--seed", str(seed),
             "--workers", str(s.workers)]
    return flags + (["--max-train-images", str(s.max_train_images)] if s.max_train_images else [])


def _out(root: Path, name: str) -> list[str]:
    return ["--project", str(root), "--name", name, "--exist-ok"]


def _fmt(f: float) -> str:
    return f"{f:g}"


def model_name(cfg: str | Path) -> str:
    """The name rows and labels give a model yaml: its file stem (``models/yolov5n.yaml``: yolov5n)."""
    return Path(cfg).stem


# the stage key of the source model trained from scratch (the unpruned matched control, the latency reference)
SOURCE_KEY = "src"


def source_stages(s: Settings) -> tuple[str, ...]:
    """Every unpruned training of the source model: the pretrained baseline and each seed from scratch."""
    return ("base", *[f"scratch_{SOURCE_KEY}_s{seed}" for seed in s.seeds])


def teacher_stages(s: Settings) -> tuple[str, ...]:
    """The unpruned source-model trainings a distilled finetuning may take its teacher from: the
    baseline and the first seed's source model, so that every seed distils from the same teacher
    (the seeds' spread is the student's alone) and adding seeds leaves finished distillations valid."""
    return source_stages(s)[:2]


def scratch_models(s: Settings, widths: dict[float, str]) -> list[tuple[str, str, str, float | None]]:
    """(stage key, cfg, label, FLOPs point) of every model trained from scratch: the source model,
    the reference cfgs, the width-scaled source models."""
    src = model_name(s.cfg)
    models = [(SOURCE_KEY, s.cfg, src, None)]
    models += [(model_name(cfg), cfg, model_name(cfg), None) for cfg in s.reference_cfgs]
    models += [(f"w{_fmt(f)}", cfg, f"{src} width {Path(cfg).stem.split('_w')[-1]}", f) for f, cfg in widths.items()]
    return models


def scratch_stages(s: Settings, root: Path, widths: dict[float, str], costs: dict[str, float]) -> list[Stage]:
    """The pretraining baseline (the source model) and every model trained from scratch for the whole
    budget; ``costs``: per-epoch cost by stage key (see scratch_models), relative to the source model."""
    py, src = sys.executable, model_name(s.cfg)
    base = Stage("base", "train", (py, "train.py", "--cfg", s.cfg, "--weights", "",
                                   *_train_flags(s, s.budget.base, s.hyp, 0), *_out(root, "base")),
                 epochs=s.budget.base, cost=1.0, weights="weights/best.pt",
                 row={"method": "pretrained baseline", "label": f"{src}, pretraining only ({s.budget.base} epochs)",
                      "epochs": s.budget.base, "reference": False})
    out = [base]
    for key, cfg, label, point in scratch_models(s, widths):
        schedules = [("", (), "")] + ([("_cos", ("--cos-lr",), ", cosine lr")] if s.scratch_cos_lr and point else [])
        for suffix, extra, note in schedules:
            for seed in s.seeds:
                name = f"scratch_{key}{suffix}_s{seed}"
                out.append(Stage(name, "train", (py, "train.py", "--cfg", cfg, "--weights", "",
                                                 *_train_flags(s, s.budget.total, s.hyp, seed), *extra,
                                                 *_out(root, name)),
                                 epochs=s.budget.total, cost=costs.get(key, 1.0), weights="weights/best.pt",
                                 row={"method": "trained from scratch", "label": label + note, "seed": seed,
                                      "series": "trained from scratch" + note,
                                      "point": point, "epochs": s.budget.total, "reference": key == SOURCE_KEY}))
    return out


def ours_stages(s: Settings, root: Path) -> list[Stage]:
    """Sparsity training per option set, then per strategy and FLOPs point: prune, finetune
    (plain and distilled from the best unpruned model), every seed."""
    py = sys.executable
    base_w = str(root / "base" / "weights" / "best.pt")
    teachers = teacher_stages(s)
    out: list[Stage] = []
    for opt_name in s.option_sets:
        opts = OPTION_SETS[opt_name]
        sparse = f"sparse_{opt_name}"
        shared = sparsity_switches(opts)
        out.append(Stage(sparse, "sparsity", (py, "train_sparsity.py", "--weights", base_w,
                                              *_train_flags(s, s.budget.sparse, s.sp_hyp, 0, s.sp_optimizer), "-sr",
                                              "--scale", str(s.scale), "--prune", "1", *shared, *_out(root, sparse)),
                         needs=("base",), epochs=s.budget.sparse, cost=1.0, weights="weights/last.pt"))
        for strategy in s.strategies:
            for point in s.flops:
                prune = f"prune_{strategy}_{opt_name}_f{_fmt(point)}"
                out.append(Stage(prune, "prune", (
                    py, PRUNE_SCRIPTS[strategy], "--weights", str(root / sparse / "weights" / "last.pt"),
                    "--data", s.data, "--img_size", str(s.img), "--layer_keep", str(s.layer_keep),
                    "--target-flops", _fmt(point), *opts, "--no-eval", "--workers", "0",
                    "--out-dir", str(root / prune)), needs=(sparse,), exclusive=prune_args(opts).cost_aware))
                method = f"ours {strategy} {opt_name}"
                for mode in ("plain", "distill"):
                    for seed in s.seeds:
                        name = f"ft_{strategy}_{opt_name}_f{_fmt(point)}_{mode}_s{seed}"
                        extra = ("--distill", "--t_weights", "{teacher}") if mode == "distill" else ()
                        out.append(Stage(name, "finetune", (
                            py, "prune_finetune.py", "--weights", f"{{pruned:{prune}}}",
                            *_finetune_flags(s, seed), *extra, *_out(root, name)),
                            needs=(prune, *(teachers if mode == "distill" else ())), epochs=s.budget.finetune,
                            cost=point * (1.6 if mode == "distill" else 1.0) + 0.15, weights="weights/best.pt",
                            row={"method": method + (" + distill" if mode == "distill" else ""),
                                 "label": f"{method}, {'distilled' if mode == 'distill' else 'plain'}",
                                 "seed": seed, "point": point, "epochs": s.budget.total}))
    return out


def prune_args(opts: Sequence[str], strategy: str = LAYER_STRATEGY) -> argparse.Namespace:
    """The prune script's settings that the flags ``opts`` give (``--latency-aware`` expanded as the
    script expands it)."""
    args = build_parser(strategy).parse_args(list(opts))
    resolve_latency_aware(args)
    return args


def sparsity_switches(opts: Sequence[str]) -> list[str]:
    """The ``train_sparsity.py`` switches (:data:`SPARSITY_SHARED`) that regularise every conv the
    prune flags ``opts`` make prunable."""
    args = prune_args(opts)
    return [flag for name, flag in EXTRA_LAYERS.items() if getattr(args, f"include_{name}")]


def layer_plan(cfg: str | Path, img: int) -> tuple[int, float]:
    """(N, FLOPs kept): how many residual blocks layer pruning can remove from ``cfg`` while every C3
    keeps one (yolov5n and yolov5s: 3), and the fraction of the conv FLOPs at ``img`` px left after
    that (each C3 keeping its largest block: exact for YOLOv5, whose blocks in one C3 are alike)."""
    c = load_cfg_file(Path(cfg) if Path(cfg).is_absolute() else ROOT / cfg)
    blocks, flops = find_blocks(c), layer_flops(c, img)
    stages: dict[int, list[float]] = {}
    for b in blocks:
        stages.setdefault(b.stage, []).append(sum(flops[i] for i in b.convs))
    removed = sum(sum(v) - max(v) for v in stages.values())
    return max_removable(blocks), 1.0 - removed / sum(flops.values())


def _plain_finetunes(s: Settings, root: Path, prune: str, key: str, cost: float, row: dict) -> list[Stage]:
    """Plain finetunings (one per seed) of the model that the stage ``prune`` wrote."""
    out = []
    for seed in s.seeds:
        name = f"ft_{key}_plain_s{seed}"
        out.append(Stage(name, "finetune", (sys.executable, "prune_finetune.py", "--weights", f"{{pruned:{prune}}}",
                                            *_finetune_flags(s, seed), *_out(root, name)),
                         needs=(prune,), epochs=s.budget.finetune, cost=cost, weights="weights/best.pt",
                         row={**row, "seed": seed, "epochs": s.budget.total}))
    return out


def layer_stages(s: Settings, root: Path) -> list[Stage]:
    """Layer pruning of the sparse model of :data:`LAYER_OPTION_SET`: every removable residual block
    alone (one FLOPs point: whatever that gives; the row's point is its measured FLOPs), and then
    strategy 8x with that option set at each FLOPs point (the whole model at the point: the channel
    step's target is resolved from the FLOPs the blocks left); each finetuned plain. None without
    ``layer_rows`` or when the option set is not planned (its sparse model is what they prune)."""
    if not s.layer_rows or LAYER_OPTION_SET not in s.option_sets:
        return []
    py, sparse, opts = sys.executable, f"sparse_{LAYER_OPTION_SET}", OPTION_SETS[LAYER_OPTION_SET]
    n, kept = layer_plan(s.cfg, s.img)
    weights = str(root / sparse / "weights" / "last.pt")
    layers = f"prune_layers_n{n}"
    common = ("--data", s.data, "--img_size", str(s.img), "--no-eval", "--workers", "0")
    out = [Stage(layers, "prune", (py, "layer_prune_yolov5s.py", "--weights", weights, "--shortcuts", str(n), *common,
                                   "--out-dir", str(root / layers)), needs=(sparse,))]
    out += _plain_finetunes(s, root, layers, f"layers_n{n}", kept + 0.15,
                            {"method": "ours layers", "label": f"ours layers ({n} residual blocks), plain",
                             "point": None, "point_from_flops": True})
    method = LAYER_METHOD
    for point in s.flops:
        key = f"layers{LAYER_STRATEGY}_{LAYER_OPTION_SET}_f{_fmt(point)}"
        out.append(Stage(f"prune_{key}", "prune", (
            py, PRUNE_SCRIPTS[LAYER_STRATEGY], "--weights", weights, "--layers", str(n), *common,
            "--layer_keep", str(s.layer_keep), "--target-flops", f"{{layer_target:{layers}:{_fmt(point)}}}", *opts,
            "--out-dir", str(root / f"prune_{key}")), needs=(sparse, layers), exclusive=prune_args(opts).cost_aware))
        out += _plain_finetunes(s, root, f"prune_{key}", key, point + 0.15,
                                {"method": method, "label": f"{method}, plain", "point": point})
    return out


def tp_stages(s: Settings, root: Path) -> list[Stage]:
    """Torch-Pruning: its regulariser at its own default strength (:data:`TP_REG`) for the sparsity
    epochs (our engine, with the sparsity step's optimizer and hyperparameters), pruned to each
    point, finetuned plain."""
    # relative to the repository root (the stages' working directory), like the other scripts: the
    # stages' fingerprints do not depend on where the checkout lies
    py, tp = sys.executable, "benchmarks/frontier_tp.py"
    out = [Stage("tp_sparse", "sparsity", (py, tp, "sparsity", "--weights", str(root / "base" / "weights" / "best.pt"),
                                           *_train_flags(s, s.budget.sparse, s.sp_hyp, 0, s.sp_optimizer),
                                           "--reg", f"{TP_REG:g}",
                                           *_out(root, "tp_sparse")),
                 needs=("base",), epochs=s.budget.sparse, cost=1.0, weights="weights/last.pt")]
    for point in s.flops:
        prune = f"tp_prune_f{_fmt(point)}"
        out.append(Stage(prune, "prune", (py, tp, "prune", "--weights", str(root / "tp_sparse" / "weights" / "last.pt"),
                                          "--target-flops", _fmt(point), "--img", str(s.img),
                                          "--out", str(root / prune / "pruned.pt")), needs=("tp_sparse",)))
        for seed in s.seeds:
            name = f"tp_ft_f{_fmt(point)}_plain_s{seed}"
            out.append(Stage(name, "finetune", (py, "prune_finetune.py", "--weights", f"{{pruned:{prune}}}",
                                                *_finetune_flags(s, seed),
                                                *_out(root, name)),
                             needs=(prune,), epochs=s.budget.finetune, cost=point + 0.15, weights="weights/best.pt",
                             row={"method": "Torch-Pruning BNScalePruner", "label": "Torch-Pruning BNScalePruner, plain",
                                  "seed": seed, "point": point, "epochs": s.budget.total}))
    return out


def eval_stages(s: Settings, root: Path, stages: Sequence[Stage]) -> list[Stage]:
    """``val.py --task test`` for every frontier model."""
    out = []
    for st in stages:
        if not st.row:
            continue
        name = f"eval_{st.name}"
        out.append(Stage(name, "eval", (sys.executable, "val.py", "--weights", str(root / st.name / st.weights),
                                        "--data", s.data, "--img", str(s.img), "--task", "test", "--batch-size", "32",
                                        "--no-plots", *_out(root, name)), needs=(st.name,), weights="metrics.json"))
    return out


def build_plan(s: Settings, root: Path, widths: dict[float, str], costs: dict[str, float]) -> list[Stage]:
    """Every stage in a valid order (each after the stages it needs)."""
    stages = scratch_stages(s, root, widths, costs) + ours_stages(s, root) + layer_stages(s, root)
    if s.torch_pruning:
        stages += tp_stages(s, root)
    stages += eval_stages(s, root, stages)
    check_plan(stages)
    return stages


def check_plan(stages: Sequence[Stage]) -> None:
    """Names unique, every need an earlier stage (the order is a valid schedule)."""
    seen: set[str] = set()
    for st in stages:
        if st.name in seen:
            raise ValueError(f"stage {st.name} planned twice")
        missing = [n for n in st.needs if n not in seen]
        if missing:
            raise ValueError(f"stage {st.name} needs {missing}, which are not planned before it")
        seen.add(st.name)


def select(stages: Sequence[Stage], patterns: Iterable[str]) -> list[Stage]:
    """The stages matching any glob in ``patterns`` and everything they need (plan order)."""
    by_name = {st.name: st for st in stages}
    want: set[str] = set()
    todo = [st.name for st in stages if any(fnmatch(st.name, p) for p in patterns)]
    while todo:
        name = todo.pop()
        if name not in want:
            want.add(name)
            todo.extend(by_name[name].needs)
    return [st for st in stages if st.name in want]


def estimate_seconds(stages: Sequence[Stage], epoch_s: float, other_s: dict[str, float]) -> float:
    """Predicted serial wall time: training epochs x cost x ``epoch_s`` (one source-model epoch,
    validation included), plus a fixed time per other stage kind."""
    return sum(st.epochs * st.cost * epoch_s if st.epochs else other_s.get(st.kind, 0.0) for st in stages)


# ------------------------------------------------------------------------------------ running
def fingerprints(stages: Sequence[Stage]) -> dict[str, str]:
    """Per stage a hash of its command (without the interpreter) and of the fingerprints of the
    stages it needs: a changed setting changes the stage and everything downstream of it."""
    out: dict[str, str] = {}
    for st in stages:  # plan order: every need comes first
        text = json.dumps([list(st.cmd[1:]), [out.get(n, n) for n in st.needs]])
        out[st.name] = hashlib.sha1(text.encode()).hexdigest()[:16]
    return out


def _marker(root: Path, name: str) -> dict | None:
    return _read_json(root / name / DONE)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None  # a marker cut short: the stage counts as unfinished


def done_stages(stages: Sequence[Stage], root: Path) -> set[str]:
    """The stages finished with the planned command and inputs (their marker's fingerprint
    matches); a stage run with other settings, or after its inputs changed, is not done."""
    fps = fingerprints(stages)
    return {st.name for st in stages if (_marker(root, st.name) or {}).get("fingerprint") == fps[st.name]}


def is_done(root: Path, stage: Stage, stages: Sequence[Stage] | None = None) -> bool:
    """Whether ``stage`` (within the plan ``stages``, default: itself alone) is done."""
    return stage.name in done_stages(list(stages) if stages is not None else [stage], root)


def stage_walls(stages: Sequence[Stage], root: Path) -> dict[str, float]:
    """Wall seconds of every finished stage, from the done-markers (earlier invocations included)."""
    return {name: float(_marker(root, name)["wall_s"]) for name in sorted(done_stages(stages, root))}


def find_pruned(folder: Path) -> Path:
    """The pruned checkpoint a prune stage wrote (``pruned.pt``, the prune scripts' ``prune_*.pt`` or
    layer_prune_yolov5s.py's ``layer_*.pt``)."""
    if (folder / "pruned.pt").is_file():
        return folder / "pruned.pt"
    found = sorted([*folder.glob("prune_*.pt"), *folder.glob("layer_*.pt")], key=os.path.getmtime)
    if not found:
        raise FileNotFoundError(f"{folder}: no pruned checkpoint (prune_*.pt, layer_*.pt); rerun its stage")
    return found[-1]


def layer_target(folder: Path, point: float) -> str:
    """``--target-flops`` of a channel step after the layer pruning that ``folder``'s stage did, so that
    the whole keeps at most ``point`` of the original's FLOPs: point / the fraction the blocks left
    (from the stage's JSON report; rounded down, at most 1)."""
    reports = sorted(folder.glob("layer_*.json"), key=os.path.getmtime)
    try:
        kept = float(json.loads(reports[-1].read_text())["figures"]["flops"]["ratio"])
    except (IndexError, OSError, KeyError, TypeError, ValueError) as e:
        raise RuntimeError(f"{folder}: no layer-pruning report with the FLOPs kept ({e!r}); rerun its stage") from e
    return f"{min(1.0, math.floor(point / kept * 1e4 + 1e-6) / 1e4):g}"  # + 1e-6: 0.3 / 0.8 is 0.37499...


def resolve(cmd: Sequence[str], root: Path, teacher: Callable[[], str]) -> list[str]:
    """The command with its placeholders filled in."""
    out = []
    for arg in cmd:
        if arg == "{teacher}":
            arg = teacher()
        elif arg.startswith("{pruned:") and arg.endswith("}"):
            arg = str(find_pruned(root / arg[len("{pruned:"):-1]))
        elif arg.startswith("{layer_target:") and arg.endswith("}"):
            stage, point = arg[len("{layer_target:"):-1].rsplit(":", 1)
            arg = layer_target(root / stage, float(point))
        out.append(arg)
    return out


def subprocess_env() -> dict[str, str]:
    """One torch thread per stage, the project importable."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def resume_point(stage: Stage, folder: Path, fingerprint: str) -> Path | None:
    """The ``last.pt`` to resume ``stage`` from: a training stage started with ``fingerprint`` (its
    started-marker says so) whose last epoch's checkpoint is unfinished; None: start afresh."""
    last = folder / "weights" / "last.pt"
    started = _read_json(folder / STARTED) or {}
    if (len(stage.cmd) < 2 or stage.cmd[1] not in RESUMABLE or started.get("fingerprint") != fingerprint
            or not last.is_file()):
        return None
    from models import load_checkpoint

    try:
        ckpt = load_checkpoint(last, verbose=False)
    except Exception:  # noqa: BLE001 - a checkpoint cut short or unreadable: start afresh
        return None
    return last if ckpt.get("optimizer") is not None and ckpt.get("epoch", -1) >= 0 else None


def start(stage: Stage, cmd: list[str], root: Path, fingerprint: str = "") -> tuple[subprocess.Popen, float]:
    """Start a stage: resume its interrupted training (``resume_point``) or start in a fresh folder;
    output in ``<root>/<stage>.log``."""
    folder = root / stage.name
    log = root / f"{stage.name}.log"
    last = resume_point(stage, folder, fingerprint) if folder.exists() else None
    if last is not None:
        run = [cmd[0], stage.cmd[1], "--resume", str(last)]
        print(f"==> [{stage.name}] resuming {last}: {' '.join(run)}   (log: {log})", flush=True)
        mode = "a"
    else:
        if folder.exists():
            shutil.rmtree(folder)  # an unfinished earlier attempt; the engine would append to its files
        folder.mkdir(parents=True)
        (folder / STARTED).write_text(json.dumps({"cmd": cmd, "fingerprint": fingerprint}, indent=2))
        run, mode = cmd, "w"
        print(f"==> [{stage.name}] {' '.join(cmd)}   (log: {log})", flush=True)
    with open(log, mode) as f:
        proc = subprocess.Popen(run, cwd=ROOT, env=subprocess_env(), stdout=f, stderr=subprocess.STDOUT)
    return proc, time.perf_counter()


def finish(stage: Stage, cmd: list[str], root: Path, rc: int, t0: float, fingerprint: str) -> float:
    """Write the done-marker of a stage that exited 0, or raise with the end of its log."""
    wall = time.perf_counter() - t0
    log = root / f"{stage.name}.log"
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"stage {stage.name} failed (exit {rc} after {wall:.0f} s): {' '.join(cmd)}\n"
                           f"--- end of {log} ---\n{tail}")
    meta = {"cmd": cmd, "wall_s": round(wall, 1), "date": _dt.datetime.now().isoformat(timespec="seconds"),
            "fingerprint": fingerprint}
    (root / stage.name / DONE).write_text(json.dumps(meta, indent=2))
    print(f"    [{stage.name}] done in {wall:.0f} s", flush=True)
    return wall


@dataclass
class RunResult:
    """What ``run_stages`` did: wall seconds of the stages run now, the stages that failed (with
    the end of their log) and those left out because a stage they need failed."""

    walls: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def run_stages(stages: Sequence[Stage], root: Path, teacher: Callable[[], str], parallel: int = 1,
               poll_s: float = 0.5, on_done: Callable[[Stage], None] | None = None) -> RunResult:
    """Run the unfinished stages, at most ``parallel`` at a time, each once all it needs is done;
    ``on_done(stage)`` after each that finishes. A failed stage does not stop the others: what
    needs it is skipped, the rest runs on (an unattended run of hours keeps every row it can)."""
    root.mkdir(parents=True, exist_ok=True)
    fps = fingerprints(stages)
    done = done_stages(stages, root)
    todo = [st for st in stages if st.name not in done]
    if done:
        print(f"{len(done)} stage(s) already finished under {root}; {len(todo)} to run", flush=True)
    running: dict[str, tuple[Stage, list[str], subprocess.Popen, float]] = {}
    out = RunResult()
    while todo or running:
        lost = set(out.failed) | set(out.skipped)
        for st in [st for st in todo if lost.intersection(st.needs)]:
            todo.remove(st)
            out.skipped.append(st.name)
        ready = [st for st in todo if all(n in done for n in st.needs)]
        while ready and len(running) < max(parallel, 1) and not any(r[0].exclusive for r in running.values()):
            st = ready.pop(0)
            if st.exclusive and running:
                break  # let the running stages finish, then this one runs alone
            todo.remove(st)
            try:
                cmd = resolve(st.cmd, root, teacher)
            except (OSError, RuntimeError) as e:
                out.failed[st.name] = f"stage {st.name} could not start: {e}"
                print(out.failed[st.name], flush=True)
                continue
            running[st.name] = (st, cmd, *start(st, cmd, root, fps[st.name]))
        if not running:
            if todo and not any(set(out.failed).intersection(st.needs) for st in todo):
                raise RuntimeError(f"stages {[st.name for st in todo]} wait for stages that are not planned")
            continue
        time.sleep(poll_s)
        for name, (st, cmd, proc, t0) in list(running.items()):
            rc = proc.poll()
            if rc is None:
                continue
            del running[name]
            try:
                out.walls[name] = finish(st, cmd, root, rc, t0, fps[name])
                done.add(name)
                if on_done is not None:
                    on_done(st)
            except RuntimeError as e:
                out.failed[name] = str(e)
                print(f"FAILED: {e}", flush=True)
    return out
