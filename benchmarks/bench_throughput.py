"""Training and evaluation images/second on the CPU, next to upstream YOLOv5 v7.0, measured side by side.

    python benchmarks/bench_throughput.py                      # 5 interleaved rounds, about 18 minutes
    python benchmarks/bench_throughput.py --rounds 2 --tasks train --json runs/bench/throughput.json
    python benchmarks/bench_throughput.py --no-upstream        # our figures only

Upstream is the PyPI package ``yolov5==7.0.14`` (YOLOv5 v7.0: the same detection model, loss and
augmentation as v6.2). It lives in its own virtual environment, ``.venv-upstream``, which
``benchmarks/upstream_env.sh`` creates on first use (``--no-setup`` forbids that); the toolkit never
imports it. That environment shares the toolkit environment's torch, torchvision, numpy and OpenCV, so
both sides run the same kernels. When upstream cannot be installed or run, the report says why and
still gives our figures.

What runs, each in a fresh subprocess with ``OMP_NUM_THREADS=1`` and the same number of loader workers,
interleaved (ours, then for training ours with ``--channels-last``, then upstream, round after
round) because the machine is shared:

* **train**: from-scratch yolov5n (``models/yolov5n.yaml`` / upstream's ``yolov5n.yaml``), the same
  images (the first ``--train-images`` of the built-in dataset's training split, a copy per side so the
  two label caches never meet), same ``--img``, ``--batch``, ``--epochs``, ``--workers``, seed 0,
  default hyperparameters (hyp.scratch-low), validation after every epoch on 16 images (upstream
  7.0.14 fails after a non-final epoch with ``--noval``) and no plots. The training loader of each
  side is wrapped so that the moment each batch reaches the training loop is recorded. Throughput =
  images of batches ``--skip`` .. end of each epoch divided by the time from handing over batch
  ``--skip`` to the end of the epoch's loop: forward, loss, backward, optimizer/EMA steps and any wait
  for data, in steady state (no start-up, autoanchor, validation or checkpointing). A side's figure
  is the median over rounds of its images/s over all measured epochs of a round; the ratio ours /
  upstream is the median of the per-round paired ratios (``train_round_ratios``). Ours trains in the
  default layout (what ``train.py`` does unless told otherwise, and what the met/NOT met verdict is
  about) and, in the same round, once more with the opt-in ``--channels-last`` (side ``ours-nhwc``;
  ``--no-channels-last`` skips it), paired with upstream and with the default layout. The CPU time of the
  training thread over the same span is recorded too: with one intra-op thread it holds all model
  work, and its ratio checks that another process competing for the two cores did not make the
  wall-clock ratio.
* **val**: ``../shared/refdata/yolov5n_shapes_v62.pt`` on ``../shared/refdata/shapes_val`` (128 images,
  a copy per side), ``--img 320 --batch-size 16``, conf 0.001, IoU 0.6, fp32, no plots: our
  ``load_model`` + ``evaluate_dataset`` against upstream's ``val.run``. Each subprocess runs the whole
  evaluation (model load, dataset, loop, NMS, metrics) ``--val-calls`` times and the last call is timed,
  so imports, first-call warm-up and the label cache build are left out. Upstream's NMS gives up after
  ``0.3 + 0.03 * batch`` seconds and drops the rest of the batch; on a slow CPU that shortens its time
  and lowers its mAP. Its mAP is reported as it printed it, with the number of batches it cut short.
  The CPU time of the evaluating process (not its loader worker) is recorded as for training.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from machine import cpu_name, write_report  # benchmarks/ is on sys.path when these run

ROOT = Path(__file__).resolve().parents[1]
REFDATA = ROOT.parent / "shared" / "refdata"
UPSTREAM_ENV_SCRIPT = ROOT / "benchmarks" / "upstream_env.sh"
REFERENCE_MAP = {"mAP50": 0.2114, "mAP50-95": 0.1100}  # upstream v6.2 val.py, no NMS time limit
TRAIN_TARGET, VAL_TARGET = 1.1, 1.5  # required ratios ours / upstream


# =============================================================================================
# measurement helpers shared by both sides (no toolkit imports: the upstream side runs them too)
# =============================================================================================
class TimedLoader:
    """Wraps a DataLoader; records when each batch is handed to the training loop and when the loop ends.

    ``log`` gets one dict per epoch: ``{"batches": [(wall, cpu, n_images), ...], "end": (wall, cpu)}``,
    where ``cpu`` is the CPU time of the training thread (with one intra-op thread, all model work).
    Every other attribute is the wrapped loader's, so the training code sees no difference.
    """

    def __init__(self, loader, log: list):
        self._loader = loader
        self._log = log

    def __len__(self) -> int:
        return len(self._loader)

    def __getattr__(self, name: str):
        return getattr(self._loader, name)

    def __iter__(self):
        epoch: dict[str, Any] = {"batches": [], "end": None}
        self._log.append(epoch)
        for batch in self._loader:
            epoch["batches"].append((time.perf_counter(), time.thread_time(), int(batch[0].shape[0])))
            yield batch
        epoch["end"] = (time.perf_counter(), time.thread_time())


def steady_rate(epochs: list[dict], skip: int) -> dict:
    """Images/s over batches ``skip``.. of every finished epoch (time from handing out batch ``skip``
    to the end of the epoch's loop), per epoch and over all of them; also images per CPU-second of
    the training thread, which a busy machine disturbs much less than the wall clock."""
    per_epoch, images, seconds, cpu = [], 0, 0.0, 0.0
    for ep in epochs:
        b = ep["batches"]
        if ep["end"] is None or len(b) <= skip:
            continue
        n = sum(k for _, _, k in b[skip:])
        dt = ep["end"][0] - b[skip][0]
        per_epoch.append(n / dt)
        images, seconds, cpu = images + n, seconds + dt, cpu + ep["end"][1] - b[skip][1]
    if not per_epoch:
        raise RuntimeError(f"no epoch had more than {skip} batches: use more --train-images")
    return {"images_per_s": images / seconds, "images_per_cpu_s": images / max(cpu, 1e-9),
            "per_epoch": per_epoch, "images": images, "seconds": seconds, "cpu_seconds": cpu}


def _threads() -> int:
    import torch
    return torch.get_num_threads()


# =============================================================================================
# the measured roles (run in subprocesses)
# =============================================================================================
def timed_loader_factory(original, log: list):
    """Wrap a create_dataloader function so that its augmenting (training) loader is timed."""
    def create(*args, **kw):
        loader, dataset = original(*args, **kw)
        return (TimedLoader(loader, log) if kw.get("augment") else loader), dataset
    return create


def role_ours_train(opt: argparse.Namespace, channels_last: bool = False) -> dict:
    """train.py main() with its training loader timed (the engine's create_dataloader wrapped); the
    default layout unless ``channels_last`` (the opt-in ``--channels-last`` of train.py)."""
    sys.path.insert(0, str(ROOT))
    import utils.engine as engine
    import train as train_cli

    log: list = []
    engine.create_dataloader = timed_loader_factory(engine.create_dataloader, log)
    train_cli.main(["--img", str(opt.img), "--batch", str(opt.batch), "--epochs", str(opt.epochs),
                    "--data", opt.data, "--cfg", str(ROOT / "models" / "yolov5n.yaml"), "--weights", "",
                    "--workers", str(opt.workers), "--device", "cpu", "--seed", "0",
                    "--project", opt.project, "--name", opt.name, "--exist-ok",
                    *(["--channels-last"] if channels_last else [])])
    return {"threads": _threads(), "channels_last": channels_last, **steady_rate(log, opt.skip)}


def role_ours_nhwc_train(opt: argparse.Namespace) -> dict:
    return role_ours_train(opt, channels_last=True)


def _prepare_upstream() -> None:
    """Make upstream 7.0 run offline on today's packages, without changing what it computes.

    Checks that reach the network (font download, pip auto-update) become no-ops, and numpy 2's
    ``trapezoid`` answers to its old name ``trapz``, which upstream's AP integration calls.
    """
    import numpy as np
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid
    import yolov5.train as up_train
    import yolov5.utils.general as up_general
    import yolov5.utils.plots as up_plots

    def nothing(*_a, **_k):
        return None

    up_general.check_font = nothing
    up_plots.check_font = nothing
    up_train.check_requirements = nothing
    up_general.check_requirements = nothing


def role_upstream_train(opt: argparse.Namespace) -> dict:
    """Upstream train.main() with the same settings and its training loader timed."""
    import yolov5.train as up_train
    from yolov5.utils.callbacks import Callbacks

    _prepare_upstream()
    log: list = []
    up_train.create_dataloader = timed_loader_factory(up_train.create_dataloader, log)
    sys.argv = sys.argv[:1]  # upstream's parse_opt reads sys.argv
    up_opt = up_train.parse_opt(True)
    for k, v in dict(data=opt.data, cfg="yolov5n.yaml", weights="", imgsz=opt.img, batch_size=opt.batch,
                     epochs=opt.epochs, workers=opt.workers, device="cpu", noplots=True,
                     seed=0, project=opt.project, name=opt.name, exist_ok=True).items():
        setattr(up_opt, k, v)
    up_train.main(up_opt, callbacks=Callbacks())
    return {"threads": _threads(), **steady_rate(log, opt.skip)}


def role_ours_val(opt: argparse.Namespace) -> dict:
    """load_model + evaluate_dataset, ``--val-calls`` times; the last call is the measurement."""
    sys.path.insert(0, str(ROOT))
    import torch
    from models import load_model
    from utils.evaluate import evaluate_dataset
    from utils.general import set_cpu_threads

    set_cpu_threads(opt.workers)
    calls = []
    for _ in range(opt.val_calls):
        t0, c0 = time.perf_counter(), time.process_time()
        model = load_model(opt.weights, torch.device("cpu"))
        res = evaluate_dataset(model, opt.data, img_size=opt.img, batch_size=opt.batch, workers=opt.workers,
                               plots=False, progress=False)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        calls.append({"seconds": dt, "cpu_seconds": cpu, "images": int(res.images), "mAP50": float(res.mAP50),
                      "mAP50-95": float(res.mAP50_95), "speed_ms": dict(res.speed)})
    last = calls[-1]
    return {"threads": _threads(), "images_per_s": last["images"] / last["seconds"],
            "images_per_cpu_s": last["images"] / max(last["cpu_seconds"], 1e-9), "calls": calls,
            "mAP50": last["mAP50"], "mAP50-95": last["mAP50-95"]}


def role_upstream_val(opt: argparse.Namespace) -> dict:
    """Upstream val.run, ``--val-calls`` times; the last call is the measurement."""
    import yolov5.val as up_val

    _prepare_upstream()
    n_images = sum(1 for p in (Path(opt.data).parent / "images" / "val").iterdir() if p.is_file())
    calls = []
    for _ in range(opt.val_calls):
        t0, c0 = time.perf_counter(), time.process_time()
        out = up_val.run(
            data=opt.data, weights=opt.weights, batch_size=opt.batch, imgsz=opt.img, conf_thres=0.001,
            iou_thres=0.6, workers=opt.workers, device="cpu", half=False, plots=False,
            project=opt.project, name=opt.name, exist_ok=True)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        (_p, _r, map50, map5095, *_), t = out[0], out[-1]  # (metrics, maps, [map50s,] speeds)
        calls.append({"seconds": dt, "cpu_seconds": cpu, "images": n_images, "mAP50": float(map50),
                      "mAP50-95": float(map5095),
                      "speed_ms": dict(zip(("pre", "inference", "nms"), map(float, t)))})
    last = calls[-1]
    return {"threads": _threads(), "images_per_s": last["images"] / last["seconds"],
            "images_per_cpu_s": last["images"] / max(last["cpu_seconds"], 1e-9), "calls": calls,
            "mAP50": last["mAP50"], "mAP50-95": last["mAP50-95"]}


ROLES = {"ours-train": role_ours_train, "ours-nhwc-train": role_ours_nhwc_train,
         "upstream-train": role_upstream_train,
         "ours-val": role_ours_val, "upstream-val": role_upstream_val}


# =============================================================================================
# orchestration
# =============================================================================================
def _copy_split(src_img_dir: Path, files: list[Path], dst_root: Path, split: str) -> None:
    """Copy images and their YOLO labels into dst_root/images/<split> and dst_root/labels/<split>."""
    src_lab_dir = Path(str(src_img_dir).replace(os.sep + "images" + os.sep, os.sep + "labels" + os.sep))
    (dst_root / "images" / split).mkdir(parents=True, exist_ok=True)
    (dst_root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(f, dst_root / "images" / split / f.name)
        lab = src_lab_dir / (f.stem + ".txt")
        if lab.exists():
            shutil.copy2(lab, dst_root / "labels" / split / lab.name)


def _write_yaml(path: Path, nc: int, names: list[str], train: str, val: str) -> None:
    import yaml
    path.write_text(yaml.safe_dump({"path": str(path.parent.resolve()), "train": train, "val": val, "nc": nc,
                                    "names": list(names)}, sort_keys=False))


def prepare_data(work: Path, train_images: int, val_images: int) -> dict[str, dict[str, str]]:
    """One private copy per side of the training subset and of the reference validation set."""
    sys.path.insert(0, str(ROOT))
    from utils.dataconfig import list_image_files, load_data_config

    builtin = load_data_config(None)  # generates the built-in dataset on first use
    train_files = [Path(f) for f in list_image_files(builtin.train)][:train_images]
    val_files = [Path(f) for f in list_image_files(builtin.val)][:val_images]
    if len(train_files) < train_images:
        raise ValueError(f"--train-images {train_images}: the built-in training split has {len(train_files)}")
    shapes_yaml = REFDATA / "shapes_val" / "shapes.yaml"
    shapes = load_data_config(shapes_yaml)
    shapes_files = [Path(f) for f in list_image_files(shapes.val)]
    out: dict[str, dict[str, str]] = {}
    for side in ("ours", "upstream"):
        d = work / "data" / side
        if d.exists():
            shutil.rmtree(d)
        _copy_split(train_files[0].parent, train_files, d / "builtin", "train")
        _copy_split(val_files[0].parent, val_files, d / "builtin", "val")
        _write_yaml(d / "builtin" / "data.yaml", builtin.nc, builtin.names, "images/train", "images/val")
        _copy_split(shapes_files[0].parent, shapes_files, d / "shapes", "val")
        _write_yaml(d / "shapes" / "data.yaml", shapes.nc, shapes.names, "images/val", "images/val")
        out[side] = {"train": str(d / "builtin" / "data.yaml"), "val": str(d / "shapes" / "data.yaml")}
    return out


def ensure_upstream(venv: Path, setup: bool) -> tuple[Path | None, str]:
    """(python of the upstream environment, note); None and the reason when it is not usable."""
    py = venv / "bin" / "python"
    probe = [str(py), "-c", "import yolov5; print(yolov5.__version__)"]
    if py.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py, "ready"
    if not setup:
        return None, f"no upstream environment at {venv} (run benchmarks/upstream_env.sh, or drop --no-setup)"
    print(f"Creating the upstream environment {venv} (benchmarks/upstream_env.sh) ...", flush=True)
    env = dict(os.environ, UPSTREAM_VENV=str(venv), BASE_VENV=str(Path(sys.prefix)))
    r = subprocess.run(["bash", str(UPSTREAM_ENV_SCRIPT)], env=env, capture_output=True, text=True)
    if r.returncode != 0 or subprocess.run(probe, capture_output=True).returncode != 0:
        tail = (r.stdout + r.stderr).strip().splitlines()[-3:]
        return None, "upstream_env.sh failed: " + " | ".join(tail)
    return py, "installed"


def _child_env(upstream: bool) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    if upstream:
        # yolov5 7.0 calls torch.load without weights_only; its checkpoints are trusted pickles here.
        env.update(TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", YOLO_OFFLINE="1", HF_HUB_OFFLINE="1",
                   YOLO_VERBOSE="False")
    else:
        env["PYTHONPATH"] = str(ROOT)
    return env


def run_role(role: str, python: Path, args: list[str], work: Path, tag: str, timeout: float) -> dict:
    """Run one measured role in a subprocess; its log goes to work/logs/<tag>.log."""
    upstream = role.startswith("upstream")
    out = work / "results" / f"{tag}.json"
    log = work / "logs" / f"{tag}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(python), str(Path(__file__).resolve()), "--role", role, "--out", str(out), *args]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        try:
            r = subprocess.run(cmd, env=_child_env(upstream), cwd=str(work if upstream else ROOT),
                               stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
            rc = r.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.perf_counter() - t0
    text = log.read_text(errors="replace")
    if rc != 0 or not out.exists():
        tail = [ln for ln in text.splitlines() if ln.strip()][-4:]
        return {"error": f"{role} exited {rc} after {wall:.0f}s: " + " | ".join(tail)[-600:],
                "log": str(log), "wall_s": wall}
    res = json.loads(out.read_text())
    res.update(wall_s=wall, log=str(log))
    if upstream:
        res["nms_time_limit_hits"] = len(re.findall(r"NMS time limit", text))
    return res


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None




def paired_rounds(ours: list[dict], upstream: list[dict]) -> list[tuple[dict, dict]]:
    """The rounds both sides finished, paired in the order they ran (ours then upstream each round):
    a load change on the shared machine hits both members of a pair alike."""
    return [(a, b) for a, b in zip(ours, upstream) if "error" not in a and "error" not in b]


def paired_ratios(name: str, ours: list[dict], other: list[dict]) -> dict[str, Any]:
    """``<name>_round_ratios`` and ``<name>_ratio`` (their median), by wall clock and (``_cpu``) by
    CPU time, of the rounds both lists finished."""
    pairs = paired_rounds(ours, other)
    out: dict[str, Any] = {}
    for metric, suffix in (("images_per_s", ""), ("images_per_cpu_s", "_cpu")):
        ratios = [a[metric] / b[metric] for a, b in pairs if a.get(metric) and b.get(metric)]
        out[f"{name}_round_ratios{suffix}"] = [round(r, 4) for r in ratios]
        out[f"{name}_ratio{suffix}"] = _median(ratios)
    return out


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Medians per side and task (wall-clock and CPU-time images/s) and the ratios ours / upstream:
    the median over rounds of the per-round paired ratio."""
    s: dict[str, Any] = {}
    for key, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        s[key] = {"median_images_per_s": _median([r["images_per_s"] for r in ok]),
                  "median_images_per_cpu_s": _median([r["images_per_cpu_s"] for r in ok]),
                  "runs": [round(r["images_per_s"], 3) for r in ok],
                  "errors": [r["error"] for r in rs if "error" in r]}
        if key.endswith("val") and ok:
            s[key].update({"mAP50": ok[-1]["mAP50"], "mAP50-95": ok[-1]["mAP50-95"]})
            if key.startswith("upstream"):
                s[key]["nms_time_limit_hits"] = [r.get("nms_time_limit_hits", 0) for r in ok]
    for task, target in (("train", TRAIN_TARGET), ("val", VAL_TARGET)):
        ours, up = s.get(f"ours-{task}", {}), s.get(f"upstream-{task}", {})
        s.update(paired_ratios(task, runs.get(f"ours-{task}", []), runs.get(f"upstream-{task}", [])))
        if task == "train" and runs.get("ours-nhwc-train"):
            # the opt-in layout, paired with upstream and with the default layout of the same round
            s.update(paired_ratios("train_nhwc", runs["ours-nhwc-train"], runs.get("upstream-train", [])))
            s.update(paired_ratios("train_nhwc_vs_default", runs["ours-nhwc-train"], runs.get("ours-train", [])))
        ratio = s[f"{task}_ratio"]
        s[f"{task}_target"] = target
        s[f"{task}_pass"] = None if ratio is None else ratio >= target
    return s


def format_table(s: dict, opt: argparse.Namespace) -> str:
    """Markdown: images/s per side, the ratio against its target, the CPU-time check, the mAPs."""
    def f(v, fmt="{:.2f}"):
        return "n/a" if v is None else fmt.format(v)

    def fx(v):
        return f(v, "{:.2f}x")

    size = f"img {opt.img}, batch {opt.batch}"
    rows = [(f"train: yolov5n from scratch, {opt.train_images} built-in images, {size}",
             "train", TRAIN_TARGET),
            (f"val: yolov5n_shapes_v62.pt, 128 shapes_val images, {size}", "val",
             VAL_TARGET)]
    lines = ["| images/s (median of runs) | ours | upstream v7.0 | ours / upstream | target "
             "| runs: ours; upstream | ratio by CPU time |",
             "| --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    def row(title, ours_key, task, prefix, target):
        o, u = s.get(ours_key, {}), s.get(f"upstream-{task}", {})
        ratio = s.get(f"{prefix}_ratio")
        verdict = "" if ratio is None or target is None else (" met" if ratio >= target else " NOT met")
        runs = "; ".join(", ".join(f"{v:.2f}" for v in side.get("runs", [])) for side in (o, u))
        return (f"| {title} | {f(o.get('median_images_per_s'))} | {f(u.get('median_images_per_s'))} | "
                f"{fx(ratio)}{verdict} | {'-' if target is None else f'{target:.1f}x'} | {runs} | "
                f"{fx(s.get(f'{prefix}_ratio_cpu'))} |")

    for title, task, target in rows:
        lines.append(row(title, f"ours-{task}", task, task, target))
        if task == "train" and s.get("ours-nhwc-train", {}).get("runs"):
            lines.append(row("train as above, ours with the opt-in `--channels-last`", "ours-nhwc-train",
                             "train", "train_nhwc", None))
    if s.get("train_nhwc_vs_default_ratio") is not None:
        lines += ["", f"Training with `--channels-last` / the default layout, paired per round: "
                      f"{fx(s['train_nhwc_vs_default_ratio'])} by wall clock "
                      f"({', '.join(f'{v:.2f}' for v in s['train_nhwc_vs_default_round_ratios'])}), "
                      f"{fx(s.get('train_nhwc_vs_default_ratio_cpu'))} by CPU time."]
    o, u = s.get("ours-val", {}), s.get("upstream-val", {})
    hits = u.get("nms_time_limit_hits")
    note = f", NMS time limit hit {'/'.join(map(str, hits))} times per run" if hits is not None else ""
    lines += ["", "| val mAP | mAP@.5 | mAP@.5:.95 |", "| --- | ---: | ---: |",
              f"| ours | {f(o.get('mAP50'), '{:.4f}')} | {f(o.get('mAP50-95'), '{:.4f}')} |",
              f"| upstream v7.0 as printed{note} | {f(u.get('mAP50'), '{:.4f}')} | "
              f"{f(u.get('mAP50-95'), '{:.4f}')} |",
              f"| upstream v6.2 reference (no NMS time limit) | {REFERENCE_MAP['mAP50']:.4f} | "
              f"{REFERENCE_MAP['mAP50-95']:.4f} |"]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (ours, upstream) per task")
    p.add_argument("--tasks", nargs="+", choices=["train", "val"], default=["train", "val"])
    p.add_argument("--img", type=int, default=320)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2, help="training epochs per run (all measured)")
    p.add_argument("--train-images", type=int, default=256, help="training images (built-in dataset)")
    p.add_argument("--skip", type=int, default=2, help="first batches of each epoch left out of the timing")
    p.add_argument("--workers", type=int, default=1, help="dataloader workers, both sides")
    p.add_argument("--val-calls", type=int, default=2, help="evaluations per val run; the last is timed")
    p.add_argument("--weights", default=str(REFDATA / "yolov5n_shapes_v62.pt"), help="val checkpoint")
    p.add_argument("--upstream-venv", default=str(ROOT / ".venv-upstream"))
    p.add_argument("--no-setup", action="store_true", help="do not create the upstream environment")
    p.add_argument("--no-upstream", action="store_true", help="measure ours only")
    p.add_argument("--no-channels-last", action="store_true",
                   help="train ours in the default layout only (by default each round also trains with "
                        "train.py --channels-last)")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench" / "throughput"), help="scratch folder")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "throughput.json"))
    p.add_argument("--timeout", type=float, default=420, help="seconds allowed per measured subprocess")
    # a measured role (internal: the orchestrator runs itself in subprocesses)
    p.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--project", help=argparse.SUPPRESS)
    p.add_argument("--name", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _role_main(opt: argparse.Namespace) -> int:
    res = ROLES[opt.role](opt)
    Path(opt.out).write_text(json.dumps(res, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    opt = parse_args(argv)
    if opt.role:
        return _role_main(opt)
    if opt.rounds < 1 or opt.epochs < 1:
        raise SystemExit("--rounds and --epochs must be at least 1")
    work = Path(opt.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    data = prepare_data(work, opt.train_images, 16)
    up_py, up_note = (None, "--no-upstream") if opt.no_upstream else \
        ensure_upstream(Path(opt.upstream_venv), not opt.no_setup)
    if up_py is None:
        print(f"Upstream not measured: {up_note}", flush=True)
    ours_py = Path(sys.executable)
    sides = {task: [("ours", ours_py)]
             + ([("ours-nhwc", ours_py)] if task == "train" and not opt.no_channels_last else [])
             + ([("upstream", up_py)] if up_py else []) for task in opt.tasks}
    common = ["--img", str(opt.img), "--batch", str(opt.batch), "--workers", str(opt.workers)]
    runs: dict[str, list[dict]] = {f"{side}-{task}": [] for task in opt.tasks for side, _ in sides[task]}
    loads = [_load()]
    for r in range(opt.rounds):
        for task in opt.tasks:
            for side, py in sides[task]:
                tag = f"{side}-{task}-{r}"
                folder = "upstream" if side == "upstream" else "ours"
                if task == "train":
                    args = common + ["--epochs", str(opt.epochs), "--skip", str(opt.skip),
                                     "--data", data[folder]["train"], "--project", str(work / "runs"),
                                     "--name", tag]
                else:
                    args = common + ["--val-calls", str(opt.val_calls), "--weights", opt.weights,
                                     "--data", data[folder]["val"], "--project", str(work / "runs"),
                                     "--name", tag]
                res = run_role(f"{side}-{task}", py, args, work, tag, opt.timeout)
                runs[f"{side}-{task}"].append(res)
                loads.append(_load())
                msg = res.get("error") or f"{res['images_per_s']:.2f} images/s"
                print(f"round {r + 1}/{opt.rounds} {side:9s} {task:5s}: {msg} ({res['wall_s']:.0f}s)",
                      flush=True)
    for task in ("train", "val"):  # keep the summary's shape when a task was not run
        for side in ("ours", "upstream"):
            runs.setdefault(f"{side}-{task}", [])
    runs.setdefault("ours-nhwc-train", [])
    s = summarise(runs)
    table = format_table(s, opt)
    print("\n" + table)
    import torch
    report = {
        "what": "images/s on the CPU, ours vs upstream YOLOv5 v7.0 (pip yolov5==7.0.14), side by side",
        "method": {
            "train": f"from-scratch yolov5n, {opt.train_images} built-in images, img {opt.img}, "
                     f"batch {opt.batch}, {opt.epochs} epochs, {opt.workers} loader worker(s), "
                     f"OMP_NUM_THREADS=1; images/s over batches {opt.skip}.. of every epoch, timed "
                     f"from the hand-over of batch {opt.skip} to the end of the epoch's loop (no start-up, "
                     f"validation or checkpoints); median over rounds; CPU time of the training thread "
                     f"over the same span alongside",
            "val": f"refdata yolov5n_shapes_v62.pt on refdata shapes_val (128 images), img {opt.img}, batch "
                   f"{opt.batch}, conf 0.001, IoU 0.6, fp32, no plots, {opt.workers} loader worker(s), "
                   f"OMP_NUM_THREADS=1; wall time of the last of {opt.val_calls} full evaluations (model "
                   f"load + dataset + loop + NMS + metrics) in one process; median over rounds; CPU time "
                   f"of the evaluating process (not its loader worker) alongside",
            "train_layouts": "ours in the default layout (the default, exact float32 BatchNorm) and, "
                             "as 'ours-nhwc', with train.py --channels-last (opt-in)",
            "order": "interleaved per task, per round: ours, ours --channels-last (train), upstream",
        },
        "settings": {k: getattr(opt, k) for k in ("rounds", "img", "batch", "epochs", "train_images", "skip",
                                                  "workers", "val_calls", "no_channels_last")},
        "upstream": {"available": up_py is not None, "note": up_note, "package": "yolov5==7.0.14"},
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version(), "load_average_1min": loads},
        "summary": s,
        "runs": runs,
        "table_markdown": table,
        "total_seconds": time.perf_counter() - t_start,
    }
    print(f"\n{report['total_seconds'] / 60:.1f} minutes")
    write_report(opt.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
