"""Shared pieces of the accuracy benchmarks (sparsity, distillation, compression, pipeline).

They all start from a finished ``scripts/run_pipeline.sh`` run instead of retraining everything:
this module finds that run's checkpoints, replays the training settings stored in a checkpoint's
``opt`` as command-line flags, runs the project's CLIs in subprocesses (one at a time, one torch
thread), evaluates checkpoints, and writes results together with the machine and date they were
measured on. Smoke runs (``--quick``) write under ``runs/bench`` and never into
``benchmarks/results``, so measured results are only ever produced by full runs.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from machine import cpu_name, write_report  # noqa: F401 (re-exported); benchmarks/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BENCH_RUNS = ROOT / "runs" / "bench"
DEFAULT_RUN = "runs/pipeline/default"

QUICK_EPOCHS = 1          # --quick: every training runs this many epochs ...
QUICK_TRAIN_IMAGES = 32   # ... on at most this many training images

# checkpoint ``opt`` key -> flag of the training scripts (generated from utils/engine.TrainConfig), values
TRAIN_FLAGS = {"img": "--img", "batch_size": "--batch", "nbs": "--nbs", "optimizer": "--optimizer",
               "epochs": "--epochs", "seed": "--seed", "data": "--data", "hyp": "--hyp",
               "max_train_images": "--max-train-images", "label_smoothing": "--label-smoothing",
               "patience": "--patience", "freeze": "--freeze"}
TRAIN_SWITCHES = {"cos_lr": "--cos-lr", "rect": "--rect", "noautoanchor": "--noautoanchor",
                  "deterministic": "--deterministic"}
# train_sparsity.py's own flags (``-sr`` itself is chosen by the benchmark)
SPARSITY_FLAGS = {"scale": "--scale", "prune": "--prune", "sr_schedule": "--sr-schedule",
                  "sr_decay_epoch_frac": "--sr-decay-epoch-frac", "sr_decay_factor": "--sr-decay-factor",
                  "sr_local_keep": "--sr-local-keep", "sr_penalty": "--sr-penalty", "sr_polar_t": "--sr-polar-t",
                  "sr_polar_mean": "--sr-polar-mean", "sr_polar_quantile": "--sr-polar-quantile"}
SPARSITY_SWITCHES = {"sr_per_image": "--sr-per-image", "include_upsample": "--include-upsample",
                     "include_sppf": "--include-sppf"}
# prune_finetune.py's distillation flags (``--distill`` and the teacher are chosen by the benchmark)
DISTILL_FLAGS = {"distill_mode": "--distill-mode", "temperature": "--temperature",
                 "distill_soft_weight": "--distill-soft-weight", "distill_box_weight": "--distill-box-weight",
                 "distill_kd1_weight": "--distill-kd1-weight", "distill_margin": "--distill-margin"}
DISTILL_SWITCHES = {"distill_compat": "--distill-compat"}


# ------------------------------------------------------------------------------------ the run
@dataclass(frozen=True)
class PipelineRun:
    """The checkpoints of a finished pipeline run (``runs/pipeline/<name>``)."""

    root: Path
    base: Path
    sparse: Path
    pruned: Path | None
    finetune: Path | None
    distill: Path | None
    timings: dict[str, int] = field(default_factory=dict)
    smoke: bool = False  # the pipeline ran with QUICK=1: nothing measured on it is a result

    @property
    def name(self) -> str:
        return self.root.name


def read_timings(path: Path) -> dict[str, int]:
    """``timings.txt`` of a pipeline run (``step seconds`` per line) as a dict; {} when absent."""
    out: dict[str, int] = {}
    if not path.is_file():
        return out
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ValueError(f"{path}:{n}: expected 'step seconds', got {line!r}")
        out[parts[0]] = int(parts[1])
    return out


def project_path(path: str | Path) -> Path:
    """A path stored in a checkpoint or given on the command line: as it is when it exists from
    the current folder, else relative to the repository root (where the pipeline ran)."""
    path = Path(path)
    return path if path.is_absolute() or path.exists() else ROOT / path


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


def find_run(run: str | Path) -> PipelineRun:
    """Locate a pipeline run's checkpoints; a missing baseline or sparse model is an error."""
    root = project_path(run).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"--run {run}: no such folder; create it with "
                                f"NAME={Path(run).name} bash scripts/run_pipeline.sh")
    need = {"base": root / "base" / "weights" / "best.pt", "sparse": root / "sparse" / "weights" / "last.pt"}
    for what, path in need.items():
        if not path.is_file():
            raise FileNotFoundError(f"--run {run}: the {what} checkpoint {path} is missing "
                                    f"(is the pipeline run finished?)")
    pruned = sorted((root / "pruned").glob("prune_*.pt"), key=os.path.getmtime)
    report = root / "report.json"
    smoke = bool(json.loads(report.read_text()).get("quick")) if report.is_file() else False
    return PipelineRun(root=root, base=need["base"], sparse=need["sparse"],
                       pruned=pruned[-1] if pruned else None,
                       finetune=_existing(root / "finetune" / "weights" / "best.pt"),
                       distill=_existing(root / "finetune_distill" / "weights" / "best.pt"),
                       timings=read_timings(root / "timings.txt"), smoke=smoke)


def is_smoke(run: PipelineRun, quick: bool) -> bool:
    """Whether results go to ``runs/bench`` only: a ``--quick`` benchmark or a QUICK=1 pipeline run."""
    if run.smoke and not quick:
        print(f"NOTE: {run.root} is a QUICK=1 pipeline run; results go under {BENCH_RUNS}, "
              f"not into {RESULTS}")
    return quick or run.smoke


def require(path: Path | None, what: str, run: PipelineRun) -> Path:
    """``path`` or a clear error that the run lacks ``what``."""
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(f"--run {run.root}: no {what} checkpoint (is the pipeline run finished?)")
    return Path(path)


def load_ckpt(weights: str | Path) -> dict:
    from models import load_checkpoint
    return load_checkpoint(weights, verbose=False)


def checkpoint_opt(weights: str | Path) -> dict:
    """The training options stored in a checkpoint (what its run was started with)."""
    opt = load_ckpt(weights).get("opt") or {}
    if not opt:
        raise ValueError(f"{weights}: the checkpoint stores no training options ('opt')")
    return dict(opt)


def last_history(weights: str | Path, step: str) -> dict:
    """The newest history entry of ``step`` ('train', 'sparsity', 'prune', 'finetune') or {}."""
    for entry in reversed(load_ckpt(weights).get("history") or []):
        if entry.get("step") == step:
            return dict(entry)
    return {}


# ------------------------------------------------------------------------------------ settings
def flags_from_opt(opt: dict, values: dict[str, str], switches: dict[str, str]) -> list[str]:
    """Command-line flags that reproduce the stored options named in ``values``/``switches``.

    Empty or absent values are left out (the script's default applies); a ``hyp`` file that no
    longer exists is left out too (the stored path may come from another checkout).
    """
    args: list[str] = []
    for key, flag in values.items():
        v = opt.get(key)
        if v is None or v == "" or (key == "max_train_images" and not v):
            continue
        if key == "hyp" and not Path(str(v)).is_file():
            continue
        args += [flag, str(v)]
    for key, flag in switches.items():
        if opt.get(key):
            args.append(flag)
    return args


def override(opt: dict, epochs: int | None, quick: bool) -> dict:
    """A copy of ``opt`` with ``--epochs`` applied; ``--quick`` caps epochs and training images."""
    out = dict(opt)
    if epochs is not None:
        if epochs < 1:
            raise ValueError(f"--epochs {epochs}: must be at least 1")
        out["epochs"] = epochs
    if quick:
        if epochs is None:
            out["epochs"] = QUICK_EPOCHS
        n = int(out.get("max_train_images") or 0)
        out["max_train_images"] = min(n, QUICK_TRAIN_IMAGES) if n else QUICK_TRAIN_IMAGES
    return out


def same_settings(a: dict, b: dict, keys: Iterable[str]) -> bool:
    """Whether two option dicts agree on ``keys`` (absent, None, '' and 0 count as equal)."""
    norm = lambda v: None if v in (None, "", 0, False) else v  # noqa: E731
    return all(norm(a.get(k)) == norm(b.get(k)) for k in keys)


# ------------------------------------------------------------------------------------ subprocesses
def bench_dir(run: PipelineRun, bench: str, quick: bool) -> Path:
    """Where a benchmark trains: ``runs/bench/<run>/<bench>``, smoke runs ``runs/bench/quick/<run>/<bench>``."""
    return (BENCH_RUNS / "quick" if quick else BENCH_RUNS) / run.name / bench


def results_path(name: str, quick: bool, given: str | None = None) -> Path:
    """``benchmarks/results/<name>.json``; smoke runs go to ``runs/bench/quick/results``."""
    if given:
        path = Path(given)
        if quick and path.resolve().is_relative_to(RESULTS.resolve()):
            raise ValueError(f"--json {given}: --quick runs never write into {RESULTS}")
        return path
    return (BENCH_RUNS / "quick" / "results" if quick else RESULTS) / f"{name}.json"


def subprocess_env() -> dict[str, str]:
    """The environment of every measured subprocess: one torch thread, the project importable."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_logged(cmd: Sequence[str], log: Path) -> float:
    """Run ``cmd`` in the repository root with its output in ``log``; wall seconds, or an error
    that quotes the end of the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("==> " + " ".join(map(str, cmd)) + f"   (log: {_rel(log)})", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(list(map(str, cmd)), cwd=ROOT, env=subprocess_env(), stdout=f,
                            stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"exit {rc} after {wall:.0f}s: {' '.join(map(str, cmd))}\n--- end of {log} ---\n{tail}")
    return wall


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def newer_inputs(cmd: Sequence[str], since: float) -> list[str]:
    """The files named in ``cmd`` (checkpoints, cfgs, data and hyp files; not the scripts) modified
    after ``since`` (a timestamp): a cached output made from them before is stale."""
    out = []
    for arg in cmd:
        path = Path(arg)
        if path.suffix != ".py" and path.is_file() and path.stat().st_mtime > since:
            out.append(str(arg))
    return out


def cached_run(cmd: Sequence[str], out_dir: Path, done: str, fresh: bool) -> dict:
    """Run ``cmd`` (which writes ``out_dir``) unless an earlier identical command finished there
    from the same inputs.

    ``done`` is a glob under ``out_dir`` that a finished run matches (``weights/best.pt``).
    ``out_dir/bench_meta.json`` records the command and its wall time, so a benchmark interrupted
    half-way resumes where it stopped. A run whose input files (``newer_inputs``: e.g. the
    checkpoint an earlier step rewrote) changed after it finished is stale, like one with another
    command. A stale folder is deleted first (the training engine appends to an existing
    results.csv); only folders under ``runs/bench`` are touched. Returns the meta data plus
    ``outputs`` (the files matching ``done``) and ``reused``.
    """
    out_dir = Path(out_dir)
    if not out_dir.resolve().is_relative_to(BENCH_RUNS.resolve()):
        raise ValueError(f"{out_dir}: benchmark outputs must lie under {BENCH_RUNS}")
    meta_path = out_dir / "bench_meta.json"
    cmd = [str(c) for c in cmd]
    outputs = sorted(out_dir.glob(done))
    if not fresh and meta_path.is_file() and outputs:
        meta = json.loads(meta_path.read_text())
        if meta.get("cmd") == cmd:
            changed = newer_inputs(cmd, meta_path.stat().st_mtime)
            if not changed:
                print(f"==> reusing {_rel(out_dir)} (same command, finished {meta.get('date')}, "
                      f"{meta['wall_s']:.0f}s)", flush=True)
                return {**meta, "outputs": outputs, "reused": True}
            print(f"==> {_rel(out_dir)} is stale: {', '.join(changed)} changed after it finished", flush=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    wall = run_logged(cmd, out_dir.parent / f"{out_dir.name}.log")
    outputs = sorted(out_dir.glob(done))
    if not outputs:
        raise RuntimeError(f"{' '.join(cmd)} finished but wrote nothing matching {out_dir / done}")
    meta = {"cmd": cmd, "wall_s": wall, "date": now()}
    meta_path.write_text(json.dumps(meta, indent=2))
    return {**meta, "outputs": outputs, "reused": False}


# ------------------------------------------------------------------------------------ measuring
def evaluate_weights(weights: str | Path, data: str | None, img: int, batch_size: int = 32,
                     task: str = "val") -> dict:
    """mAP@.5 and mAP@.5:.95 of a checkpoint on the validation split, or the ``task`` split (the
    pipeline report's way: the project's evaluator, rectangular batches, conf 0.001, IoU 0.6)."""
    from models import load_model
    from utils.dataconfig import load_data_config
    from utils.evaluate import evaluate_dataset

    model = load_model(weights, device="cpu", verbose=False)
    data_cfg = load_data_config(project_path(data) if data else None)
    with contextlib.redirect_stdout(io.StringIO()):  # the evaluator's own tables; ours follows
        res = evaluate_dataset(model, data_cfg, img_size=img, batch_size=batch_size, workers=0, progress=False,
                               task=task)
    print(f"    {_rel(Path(weights))}: mAP@.5 {res.mAP50:.4f}, mAP@.5:.95 {res.mAP50_95:.4f}", flush=True)
    return {"mAP50": float(res.mAP50), "mAP50-95": float(res.mAP50_95)}


def held_out_split(data: str | None) -> str:
    """``test`` when the dataset declares a held-out test split, else ``val`` (which training also
    used to pick ``best.pt``, so a comparison on it is less independent)."""
    from utils.dataconfig import load_data_config

    return "test" if load_data_config(project_path(data) if data else None).test else "val"


def size_figures(weights: str | Path, img: int) -> dict:
    """Parameters and FLOPs (at ``img``) of a checkpoint's model."""
    from models import load_model
    from utils.torch_utils import count_flops, count_params

    model = load_model(weights, device="cpu", verbose=False)
    return {"params": count_params(model), "flops": count_flops(model, img)}




def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value) of repeated runs' figures."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def machine_info() -> dict[str, Any]:
    """What a figure was measured on; stored in every result file."""
    import torch

    return {"cpu": cpu_name(), "processor": platform.processor(), "machine": platform.machine(),
            "system": platform.system(), "cpu_count": os.cpu_count(),
            "torch_threads": int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())),
            "torch": torch.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_targets(targets: dict[str, bool], quick: bool) -> None:
    """PASS/FAIL per target; a smoke run says that its verdicts mean nothing."""
    note = "  (smoke run: far too short for the verdicts to mean anything)" if quick else ""
    print("Targets:" + note)
    for name, ok in targets.items():
        print(f"  {verdict(ok)}  {name}")


def setup_main() -> None:
    """Per-process set-up of a benchmark's ``main``: the project importable, one torch thread."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
