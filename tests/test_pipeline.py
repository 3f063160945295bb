"""The main job end to end at smoke scale: QUICK=1 scripts/run_pipeline.sh and its report."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

STAGES = ["baseline", "sparse", "pruned", "finetuned", "finetuned+distill"]
FIELDS = ["weights", "mAP50", "mAP50-95", "params", "flops", "size_mb", "cpu_ms", "gpu_ms", "ratio"]


@pytest.mark.skipif(sys.platform != "linux", reason="bash pipeline")
def test_quick_pipeline_runs_every_step_and_reports(tmp_path):
    name = f"pytest_{os.getpid()}"
    env = dict(os.environ, QUICK="1", NAME=name, PYTHON=sys.executable, OMP_NUM_THREADS="1",
               NTRAIN="32", WORKERS="0")
    r = subprocess.run(["bash", "scripts/run_pipeline.sh"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
    run = ROOT / "runs" / "pipeline" / name
    try:
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
        for step in ("==> [train]", "==> [sparsity]", "==> [prune]", "==> [finetune]",
                     "==> [finetune_distill]", "==> [detect]", "==> [report]"):
            assert step in r.stdout, step
        report = json.loads((run / "report.json").read_text())
        assert list(report["stages"]) == STAGES
        for stage in STAGES:
            for field in FIELDS:
                assert field in report["stages"][stage], (stage, field)
        assert report["quick"] is True and report["targets"] is None
        base, pruned = report["stages"]["baseline"], report["stages"]["pruned"]
        assert pruned["params"] < base["params"] and pruned["flops"] < base["flops"]
        assert (run / "report.md").exists()
        assert any((run / "detect").glob("*.jpg"))
    finally:
        import shutil
        shutil.rmtree(run, ignore_errors=True)


def test_pipeline_stops_at_the_failing_step(tmp_path):
    env = dict(os.environ, QUICK="1", NAME=f"pytest_fail_{os.getpid()}", PYTHON=sys.executable,
               DATA=str(tmp_path / "missing.yaml"))
    r = subprocess.run(["bash", "scripts/run_pipeline.sh"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    import shutil
    shutil.rmtree(ROOT / "runs" / "pipeline" / env["NAME"], ignore_errors=True)
    assert r.returncode != 0
    assert "step 'train' failed" in r.stderr
