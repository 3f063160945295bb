"""Does ``--target-latency`` deliver? Prune to a latency on a runtime, then check it in a fresh process.

    python benchmarks/bench_latency_target.py --weights runs/train/s_sparse/weights/last.pt --img 320
    python benchmarks/bench_latency_target.py --weights W.pt --runtimes torch --targets 0.5 0.7 --img 320 640

For every runtime and target: ``slim_prune_yolov5s_8x.py --target-latency R --runtime RT --img_size N``
(its own profile, search and round-robin check, as a user runs it), then a NEW process loads the
original and the written compact checkpoint and times both on that runtime, one thread, batch 1,
BN fused, round-robin for ``--rounds`` rounds (alternating which goes first); the ratio is the
median of the per-round ratios compact / original. A target is met when that fresh ratio is at most
the target plus ``--tolerance`` (default 0.05: one run's timing spread on a shared machine). Last,
an infeasible ``--target-ms`` must stop with one sentence (exit 2) and write nothing.

Writes ``benchmarks/results/latency_target.json``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _p in (str(ROOT), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from machine import cpu_name, write_report  # noqa: E402

VERIFY = """
import json, sys
import torch
torch.set_num_threads(1)
from models import load_model
from utils.prune.latency import Bench, compare
a, b = (load_model(p, device="cpu", verbose=False) for p in sys.argv[1:3])
c = compare(a, b, Bench(runtime=sys.argv[3], threads=1, img_size=int(sys.argv[4])), rounds=int(sys.argv[5]), warmup=3)
rs = sorted(c.ratios)
print(json.dumps({"original_ms": c.original_median, "compact_ms": c.compact_median, "ratio": c.ratio,
                  "ratio_p10": rs[len(rs) // 10], "ratio_p90": rs[(9 * len(rs)) // 10 - 1]}))
"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", required=True, help="a sparsity-trained checkpoint")
    p.add_argument("--img", type=int, nargs="+", default=[320], help="image sizes")
    p.add_argument("--runtimes", nargs="+", default=["onnxruntime", "torch"], choices=["torch", "onnxruntime", "openvino"])
    p.add_argument("--targets", type=float, nargs="+", default=[0.5], help="latency fractions")
    p.add_argument("--infeasible-ms", type=float, default=0.01, help="a --target-ms no model can reach")
    p.add_argument("--rounds", type=int, default=40, help="fresh-process round-robin rounds")
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "latency_target.json"))
    return p.parse_args(argv)


def env() -> dict:
    import os
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def prune(weights: str, runtime: str, target: float, img: int, out: Path) -> dict:
    """Run the prune script; its printed tail and the report it wrote."""
    cmd = [sys.executable, "slim_prune_yolov5s_8x.py", "--weights", weights, "--target-latency", str(target),
           "--runtime", runtime, "--img_size", str(img), "--no-eval", "--out-dir", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True)
    reports = sorted(out.glob("*.json"))
    return {"command": " ".join(cmd[1:]), "exit": r.returncode, "tail": (r.stdout + r.stderr)[-1500:],
            "report": json.loads(reports[-1].read_text()) if reports else None,
            "weights": str(next(iter(sorted(out.glob("prune_*.pt"))), ""))}


def verify(original: str, compact: str, runtime: str, img: int, rounds: int) -> dict:
    r = subprocess.run([sys.executable, "-c", VERIFY, original, compact, runtime, str(img), str(rounds)],
                       cwd=ROOT, env=env(), capture_output=True, text=True)
    if r.returncode:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def infeasible(weights: str, ms: float, img: int, out: Path) -> dict:
    cmd = [sys.executable, "slim_prune_yolov5s_8x.py", "--weights", weights, "--target-ms", str(ms),
           "--img_size", str(img), "--no-eval", "--out-dir", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True)
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
    written = sorted(p.name for p in out.iterdir()) if out.exists() else []
    return {"command": " ".join(cmd[1:]), "exit": r.returncode, "error_lines": errors,
            "traceback": "Traceback" in r.stderr, "written": written,
            "ok": r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr and not written}


def main(argv: Sequence[str] | None = None) -> int:
    opt = parse_args(argv)
    import torch
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for img in opt.img:
            for runtime in opt.runtimes:
                for target in opt.targets:
                    out = Path(tmp) / f"{runtime}_{img}_{target}"
                    res = prune(opt.weights, runtime, target, img, out)
                    row = {"img": img, "runtime": runtime, "target": target, **res}
                    if res["exit"] == 0 and res["weights"]:
                        row["fresh"] = verify(opt.weights, res["weights"], runtime, img, opt.rounds)
                        ratio = row["fresh"].get("ratio")
                        row["met"] = ratio is not None and ratio <= target + opt.tolerance
                    print(f"{runtime:12s} {img:4d} px target {target:.2f}: exit {res['exit']}, "
                          f"fresh ratio {row.get('fresh', {}).get('ratio')}, met {row.get('met')}", flush=True)
                    rows.append(row)
        bad = infeasible(opt.weights, opt.infeasible_ms, opt.img[0], Path(tmp) / "infeasible")
    print(f"infeasible --target-ms {opt.infeasible_ms}: exit {bad['exit']}, {bad['error_lines']}, "
          f"written {bad['written']} -> {'ok' if bad['ok'] else 'NOT ok'}")
    report = {"benchmark": "latency_target", "weights": opt.weights, "tolerance": opt.tolerance,
              "rounds": opt.rounds, "machine": {"cpu": cpu_name(), "torch": torch.__version__, "threads": 1},
              "rows": rows, "infeasible": bad}
    write_report(opt.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
