"""The main job end to end at smoke scale: QUICK=1 scripts/run_pipeline.sh and its report."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

STAGES = ["baseline", "sparse", "control_sparse", "pruned", "finetuned", "finetuned+distill", "control_final",
          "scratch_small", "scratch_small_cos"]
FIELDS = ["weights", "epochs", "mAP50", "mAP50-95", "params", "flops", "size_mb", "cpu_ms", "gpu_ms", "ratio"]
STEPS = ["train", "sparsity", "prune", "finetune", "finetune_distill", "detect", "control_sparse", "control_final",
         "scratch_cfg", "scratch_small", "scratch_small_cos", "report"]


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
        for step in STEPS:
            assert f"==> [{step}]" in r.stdout, step
        timed = [line.split()[0] for line in (run / "timings.txt").read_text().splitlines()]
        assert set(STEPS) - {"report"} <= set(timed)
        report = json.loads((run / "report.json").read_text())
        assert list(report["stages"]) == STAGES
        for stage in STAGES:
            for field in FIELDS:
                assert field in report["stages"][stage], (stage, field)
        assert report["quick"] is True and report["targets"] is None
        _check_controls(report, run)
        _check_control_commands(r.stdout)
        assert any((run / "detect").glob("*.jpg"))
    finally:
        import shutil
        shutil.rmtree(run, ignore_errors=True)


def _check_controls(report: dict, run) -> None:
    """Every control has the epochs of the model it is compared with; accuracy is on test."""
    st = report["stages"]
    assert report["split"] == "test"  # the built-in dataset has a held-out split
    assert st["control_sparse"]["epochs"] == st["sparse"]["epochs"] == 2 + 1
    assert st["control_final"]["epochs"] == st["finetuned"]["epochs"] == st["scratch_small"]["epochs"] == 2 + 1 + 1
    base, pruned, small = st["baseline"], st["pruned"], st["scratch_small"]
    assert pruned["params"] < base["params"] and pruned["flops"] < base["flops"]
    assert st["control_final"]["params"] == base["params"]  # the control is not pruned
    assert abs(small["flops"] / pruned["flops"] - 1) < 0.15  # scratch_small has the pruned model's FLOPs
    pairs = [(c["stage"], c["control"]) for c in report["comparisons"]]
    stronger = max(("scratch_small", "scratch_small_cos"), key=lambda k: st[k]["mAP50-95"])
    for pair in [("sparse", "control_sparse"), ("finetuned", "control_final"), ("finetuned", stronger),
                 ("finetuned+distill", "finetuned")]:
        assert pair in pairs, pair
    assert st["scratch_small_cos"]["epochs"] == st["scratch_small"]["epochs"]
    assert st["scratch_small_cos"]["params"] == st["scratch_small"]["params"]
    for c in report["comparisons"]:
        if "diff" in c:  # an accuracy comparison: signed difference of the two rows on the test split
            assert c["diff"] == pytest.approx(st[c["stage"]]["mAP50-95"] - st[c["control"]]["mAP50-95"])
            assert c["matched"] and "test split" in c["text"] and isinstance(c["met"], bool)
    md = (run / "report.md").read_text()
    assert "mAP@.5:.95 (test)" in md and "## Comparisons (test split" in md
    assert "scratch_small" in md and "control_final" in md


def _command(stdout: str, step: str) -> list[str]:
    line = next(x for x in stdout.splitlines() if x.startswith(f"==> [{step}] "))
    return line.split()[2:]


def _without(args: list[str], *flags: str, valued: tuple[str, ...] = ()) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in valued:
            skip = True
        elif a not in flags:
            out.append(a)
    return out


def _check_control_commands(stdout: str) -> None:
    """A control runs its model's exact command but for the step under test (and its name)."""
    sparse, control = _command(stdout, "sparsity"), _command(stdout, "control_sparse")
    assert "-sr" in sparse and "-sr" not in control
    assert _without(sparse, "-sr", valued=("--name",)) == _without(control, valued=("--name",))
    ft, cf = _command(stdout, "finetune"), _command(stdout, "control_final")
    assert _without(ft, valued=("--name", "--weights")) == _without(cf, valued=("--name", "--weights"))
    assert "--cos-lr" in ft and "--cos-lr" in _command(stdout, "finetune_distill")  # FT_COS_LR=1 by default
    assert cf[cf.index("--weights") + 1].endswith("control_sparse/weights/last.pt")
    scratch = _command(stdout, "scratch_small")
    assert scratch[scratch.index("--epochs") + 1] == "4"  # EPOCHS + SP_EPOCHS + FT_EPOCHS of the quick run
    assert scratch[scratch.index("--cfg") + 1].endswith("scratch_small.yaml")
    assert "--cos-lr" not in scratch and "--cos-lr" not in control  # only the finetuning steps
    cos = _command(stdout, "scratch_small_cos")  # and the scratch model's second schedule (SCRATCH_COS_LR=1)
    assert _without(cos, "--cos-lr", valued=("--name",)) == _without(scratch, valued=("--name",))
    assert "--cos-lr" in cos


@pytest.mark.parametrize("setting", ["CONTROLS", "FT_COS_LR", "SCRATCH_COS_LR"])
def test_pipeline_rejects_an_unknown_switch_value(setting):
    env = dict(os.environ, QUICK="1", NAME=f"pytest_controls_{os.getpid()}", PYTHON=sys.executable, **{setting: "yes"})
    r = subprocess.run(["bash", "scripts/run_pipeline.sh"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    import shutil
    shutil.rmtree(ROOT / "runs" / "pipeline" / env["NAME"], ignore_errors=True)
    assert r.returncode == 2 and f"{setting}=yes" in r.stderr and "==> [train]" not in r.stdout


def test_pipeline_stops_at_the_failing_step(tmp_path):
    env = dict(os.environ, QUICK="1", NAME=f"pytest_fail_{os.getpid()}", PYTHON=sys.executable,
               DATA=str(tmp_path / "missing.yaml"))
    r = subprocess.run(["bash", "scripts/run_pipeline.sh"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    import shutil
    shutil.rmtree(ROOT / "runs" / "pipeline" / env["NAME"], ignore_errors=True)
    assert r.returncode != 0
    assert "step 'train' failed" in r.stderr
