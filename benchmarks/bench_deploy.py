"""Deployment benchmark: a baseline and a pruned detector on every installed runtime, FP32 and INT8.

    python benchmarks/bench_deploy.py                      # the pipeline's runs/pipeline/default models
    python benchmarks/bench_deploy.py --baseline B.pt --pruned P.pt --data data/builtin.yaml --img 160
    python benchmarks/bench_deploy.py --quick              # smoke test on a tiny random model (runs/bench)

For each checkpoint: PyTorch (BN fused), ONNX Runtime FP32 and INT8 (QDQ, calibrated on ``--calib``
train images, detection head FP32), OpenVINO FP32 and INT8 (the same INT8 graph) when openvino is
installed. Each variant's mAP@.5 and mAP@.5:.95 on the held-out test split (``task="test"``; val
when the dataset has no test split, said in the report) and its batch-1 latency with one thread and
with all threads; within each thread setting every variant of both models is timed round-robin in
this process (median, p10, p90 ms), so load drifting on a shared machine hits all alike. JSON to
``benchmarks/results/deploy.json`` (``--quick``: ``runs/bench/deploy_quick.json``).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from machine import cpu_name, write_report  # benchmarks/ is on sys.path when these run

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "runs" / "pipeline" / "default"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", default=str(PIPELINE / "base" / "weights" / "best.pt"))
    p.add_argument("--pruned", default=str(PIPELINE / "finetune" / "weights" / "best.pt"),
                   help="the pruned model (default: the pipeline's final, plainly finetuned model)")
    p.add_argument("--data", default=str(ROOT / "data" / "builtin.yaml"))
    p.add_argument("--img", type=int, default=160, help="input size (the pipeline's default)")
    p.add_argument("--calib", type=int, default=300, help="INT8 calibration images (train split)")
    p.add_argument("--runs", type=int, default=50, help="timed rounds per thread setting")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "deploy.json"))
    p.add_argument("--quick", action="store_true", help="tiny random model and dataset, few runs (smoke test)")
    return p.parse_args(argv)


def _quick_setup(opt: argparse.Namespace, root: Path) -> None:
    """Two random yolov5n checkpoints ('baseline', 'pruned') and a tiny dataset under ``root``."""
    import torch

    from models import build_model, save_checkpoint
    from utils.synthetic import CLASS_NAMES, make_shapes_dataset
    data = make_shapes_dataset(root / "data", n_train=8, n_val=4, n_test=4, img_size=64, workers=0)
    for seed, name in enumerate(("baseline", "pruned")):
        torch.manual_seed(seed)
        model = build_model("models/yolov5n.yaml", nc=len(CLASS_NAMES))
        model.names = list(CLASS_NAMES)
        save_checkpoint(root / f"{name}.pt", model)
        setattr(opt, name, str(root / f"{name}.pt"))
    opt.data, opt.img, opt.calib, opt.runs = str(data), 64, 4, 3
    if opt.json == parse_args([]).json:
        opt.json = str(ROOT / "runs" / "bench" / "deploy_quick.json")


def _variants(weights: Path, opt: argparse.Namespace, data: Any, tmp: Path) -> dict[str, Callable]:
    """{variant: factory(threads) -> model} for one checkpoint; exports and quantizes into ``tmp``."""
    import torch

    from models import load_model
    from utils.backends import OpenVinoModel, load_backend
    from utils.export import ExportSpec, export_checked
    from utils.quantize import CalibrationImages, openvino_from_onnx, quantize_onnx
    model = load_model(weights, torch.device("cpu"), verbose=False)
    fp32 = tmp / f"{weights.stem}_{len(list(tmp.iterdir()))}.onnx"
    export_checked(model, fp32, (opt.img, opt.img), spec=ExportSpec((opt.img, opt.img)))
    int8 = quantize_onnx(fp32, fp32.with_name(fp32.stem + "_int8.onnx"), CalibrationImages(data.train, opt.img,
                                                                                            opt.calib))
    out = {"PyTorch FP32": lambda t: model.fused_copy().eval(),
           "ONNX Runtime FP32": lambda t: load_backend(fp32, threads=t),
           "ONNX Runtime INT8": lambda t: load_backend(int8, threads=t)}
    if importlib.util.find_spec("openvino") is not None:
        ov32 = openvino_from_onnx(fp32, tmp / f"{fp32.stem}_openvino_model", fp32.stem)
        ov8 = openvino_from_onnx(int8, tmp / f"{int8.stem}_openvino_model", int8.stem)
        out["OpenVINO FP32"] = lambda t: OpenVinoModel(ov32, threads=t)
        out["OpenVINO INT8"] = lambda t: OpenVinoModel(ov8, threads=t)
    return out


def _accuracy(factory: Callable, data: Any, opt: argparse.Namespace, task: str) -> dict:
    from utils.evaluate import evaluate_dataset
    model = factory(None)
    exported = hasattr(model, "fixed_shape")
    r = evaluate_dataset(model, data, img_size=opt.img, batch_size=8, task=task, progress=False,
                         fuse=not exported, channels_last=False if exported else None)
    return {"mAP50": r.mAP50, "mAP50-95": r.mAP50_95}


def _latency(factories: dict[str, Callable], opt: argparse.Namespace, threads: int) -> dict[str, dict]:
    """Round-robin batch-1 latency of every variant with ``threads`` threads."""
    import torch

    from utils.quantize import round_robin_latency
    torch.set_num_threads(threads)
    models = {k: f(threads) for k, f in factories.items()}

    def runner(m):
        def run(x):
            with torch.no_grad():
                return m(torch.from_numpy(x))
        return run
    return round_robin_latency({k: runner(m) for k, m in models.items()}, (1, 3, opt.img, opt.img), runs=opt.runs)


def run(opt: argparse.Namespace) -> dict:
    import torch

    from utils.dataconfig import load_data_config
    data = load_data_config(opt.data)
    task = "test" if data.test else "val"
    results: dict[str, dict] = {}
    factories: dict[str, Callable] = {}
    with tempfile.TemporaryDirectory(prefix="bench_deploy_") as tmp_name:
        for label in ("baseline", "pruned"):
            weights = Path(getattr(opt, label))
            if not weights.is_file():
                raise SystemExit(f"--{label} {weights}: not found; run the pipeline first or pass the checkpoint")
            for variant, factory in _variants(weights, opt, data, Path(tmp_name)).items():
                key = f"{label} / {variant}"
                factories[key] = factory
                results[key] = {"weights": str(weights), **_accuracy(factory, data, opt, task)}
        all_threads = os.cpu_count() or 1
        for threads, name in ((1, "1 thread"), (all_threads, f"{all_threads} threads")):
            for key, t in _latency(factories, opt, threads).items():
                results[key][name] = t
    return {"machine": cpu_name(), "torch": torch.__version__, "img": opt.img, "task": task,
            "data": str(opt.data), "calib": opt.calib, "runs": opt.runs, "quick": opt.quick, "results": results}


def main(argv=None) -> int:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    opt = parse_args(argv)
    os.chdir(ROOT)
    if opt.quick:
        root = ROOT / "runs" / "bench" / "deploy_quick"
        _quick_setup(opt, root)
    report = run(opt)
    for key, r in report["results"].items():
        print(f"{key:32s} mAP50-95 {r['mAP50-95']:.4f}  "
              + "  ".join(f"{k}: {v['median_ms']:.2f} ms" for k, v in r.items() if isinstance(v, dict)))
    write_report(opt.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
