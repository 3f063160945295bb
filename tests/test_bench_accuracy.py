"""The accuracy benchmarks' pure parts and the README results generator (no training here: the
benchmarks themselves are exercised end to end by their --quick mode)."""
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))

import accuracy_common as ac  # noqa: E402
import bench_distill  # noqa: E402
import bench_penalties  # noqa: E402
import bench_sparsity  # noqa: E402
import update_readme_results as urr  # noqa: E402


# ------------------------------------------------------------------------------------ settings
def test_flags_from_opt_replays_values_and_switches(tmp_path):
    hyp = tmp_path / "hyp.yaml"
    hyp.write_text("lr0: 0.01\n")
    opt = {"img": 160, "batch_size": 16, "optimizer": "AdamW", "data": None, "hyp": str(hyp),
           "max_train_images": 0, "cos_lr": True, "rect": False, "unrelated": 5}
    args = ac.flags_from_opt(opt, ac.TRAIN_FLAGS, ac.TRAIN_SWITCHES)
    assert args == ["--img", "160", "--batch", "16", "--optimizer", "AdamW", "--hyp", str(hyp), "--cos-lr"]
    gone = ac.flags_from_opt({"hyp": str(tmp_path / "missing.yaml")}, ac.TRAIN_FLAGS, {})
    assert gone == []  # a stored hyp path from another checkout is not replayed


def test_override_quick_caps_epochs_and_images():
    opt = {"epochs": 15, "max_train_images": 0}
    assert ac.override(opt, None, False) == opt
    assert ac.override(opt, 3, False)["epochs"] == 3
    q = ac.override({"epochs": 15, "max_train_images": 600}, None, True)
    assert q["epochs"] == ac.QUICK_EPOCHS and q["max_train_images"] == ac.QUICK_TRAIN_IMAGES
    assert ac.override({"epochs": 1, "max_train_images": 8}, None, True)["max_train_images"] == 8
    assert opt == {"epochs": 15, "max_train_images": 0}  # input untouched
    with pytest.raises(ValueError, match="--epochs"):
        ac.override(opt, 0, False)


def test_same_settings_treats_empty_values_alike():
    assert ac.same_settings({"a": 0, "b": None}, {"b": ""}, ["a", "b"])
    assert not ac.same_settings({"epochs": 10}, {"epochs": 11}, ["epochs"])


def test_quick_results_never_land_in_benchmarks_results():
    assert ac.results_path("sparsity", False) == ac.RESULTS / "sparsity.json"
    quick = ac.results_path("sparsity", True)
    assert not quick.resolve().is_relative_to(ac.RESULTS.resolve())
    with pytest.raises(ValueError, match="--quick"):
        ac.results_path("sparsity", True, str(ac.RESULTS / "sparsity.json"))


def test_read_timings(tmp_path):
    f = tmp_path / "timings.txt"
    f.write_text("train 10\nsparsity 20\n\n")
    assert ac.read_timings(f) == {"train": 10, "sparsity": 20}
    assert ac.read_timings(tmp_path / "none.txt") == {}
    f.write_text("train 10 extra\n")
    with pytest.raises(ValueError, match="timings.txt:1"):
        ac.read_timings(f)


def test_cached_run_only_touches_runs_bench(tmp_path):
    with pytest.raises(ValueError, match="runs/bench"):
        ac.cached_run(["true"], tmp_path / "out", "x", fresh=False)


def test_cached_run_reruns_a_step_whose_input_changed_after_it_finished(tmp_path, monkeypatch):
    monkeypatch.setattr(ac, "BENCH_RUNS", tmp_path)
    src, out = tmp_path / "sparse.pt", tmp_path / "pruned"
    src.write_text("first")
    copy = ("import pathlib, sys; o = pathlib.Path(sys.argv[1]); o.mkdir(exist_ok=True); "
            "(o / 'out.txt').write_text(pathlib.Path(sys.argv[2]).read_text())")
    cmd = [sys.executable, "-c", copy, str(out), str(src)]
    assert not ac.cached_run(cmd, out, "out.txt", fresh=False)["reused"]
    assert ac.cached_run(cmd, out, "out.txt", fresh=False)["reused"]  # same command, inputs untouched
    meta = out / "bench_meta.json"
    finished = meta.stat().st_mtime - 10
    os.utime(meta, (finished, finished))  # the step finished a while ago ...
    src.write_text("second")  # ... and an earlier step rewrote its output since: same command, other inputs
    assert ac.newer_inputs(cmd, finished) == [str(src)]  # the scripts (and the interpreter) are not inputs
    assert not ac.cached_run(cmd, out, "out.txt", fresh=False)["reused"]
    assert (out / "out.txt").read_text() == "second"
    assert ac.cached_run(cmd, out, "out.txt", fresh=False)["reused"]


def test_find_run_names_the_missing_checkpoint_and_spots_smoke_runs(tmp_path):
    (tmp_path / "base" / "weights").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="base checkpoint"):
        ac.find_run(tmp_path)
    for stage, name in (("base", "best.pt"), ("sparse", "last.pt")):
        (tmp_path / stage / "weights").mkdir(parents=True, exist_ok=True)
        (tmp_path / stage / "weights" / name).write_bytes(b"")
    (tmp_path / "timings.txt").write_text("train 5\n")
    run = ac.find_run(tmp_path)
    assert run.timings == {"train": 5} and run.finetune is None and not run.smoke
    assert not ac.is_smoke(run, False) and ac.is_smoke(run, True)
    (tmp_path / "report.json").write_text(json.dumps({"quick": True}))
    assert ac.is_smoke(ac.find_run(tmp_path), False)  # a QUICK=1 run never yields results


# ------------------------------------------------------------------------------------ verdicts
def _sp(bimodal, m):
    return {"bimodality": {"bimodal": bimodal}, "mAP50-95": m}


def test_sparsity_targets():
    ok = bench_sparsity.targets(_sp(True, 0.50), _sp(False, 0.515), 15)
    assert list(ok.values()) == [True, True, True]
    assert any("matched control" in k and "15 epochs" in k for k in ok)
    bad = bench_sparsity.targets(_sp(False, 0.45), _sp(True, 0.48), 15)
    assert list(bad.values()) == [False, False, False]  # 0.45 < 0.48 - 0.02
    edge = bench_sparsity.targets(_sp(True, 0.479), _sp(False, 0.50), 15)
    assert list(edge.values()) == [True, False, True]  # just over the 0.02 budget
    better = bench_sparsity.targets(_sp(True, 0.60), _sp(False, 0.50), 15)
    assert all(better.values())  # beating the control is within the budget


def test_sparsity_grid_rows_are_judged_against_their_own_control():
    rows = {"sparsity (-sr)": _sp(False, 0.40), "matched control (no -sr)": _sp(False, 0.50),
            "grid 1: q=0.2 (-sr)": {**_sp(True, 0.47), "source": "--grid", "control": "grid 1: q=0.2 (control)",
                                    "epochs": 15},
            "grid 1: q=0.2 (control)": {**_sp(False, 0.50), "source": "--grid"},
            "grid 2: q=0.1 (-sr)": {**_sp(False, 0.60), "source": "--grid", "control": "grid 2: q=0.1 (control)",
                                    "epochs": 10},
            "grid 2: q=0.1 (control)": {**_sp(False, 0.59), "source": "--grid"}}
    checks = bench_sparsity.grid_targets(rows)
    assert len(checks) == 4 and all(k.startswith("grid ") for k in checks)  # the -sr claims only, per grid row
    assert checks["grid 1: q=0.2: -sr: |gamma| bimodal (a pile near zero and a separated group)"]
    assert not checks["grid 1: q=0.2: -sr: mAP@.5:.95 within 0.02 of the matched control (same 15 epochs, no -sr)"]
    assert not checks["grid 2: q=0.1: -sr: |gamma| bimodal (a pile near zero and a separated group)"]
    assert checks["grid 2: q=0.1: -sr: mAP@.5:.95 within 0.02 of the matched control (same 10 epochs, no -sr)"]


def test_sparsity_downstream_repeats_the_recorded_prune_step(tmp_path):
    step = {"step": "prune", "strategy": "8x", "ratio": 0.7856,
            "settings": {"layer_keep": 0.01, "round_to": 16, "include_upsample": True, "include_sppf": True,
                         "target": {"metric": "flops", "target": 0.45, "achieved": 0.4456}, "cost_aware": True,
                         "latency_aware": True}}
    cmd = bench_sparsity.prune_command(step, tmp_path / "c.pt", "data/builtin.yaml", 160, tmp_path / "out")
    assert cmd[1] == "slim_prune_yolov5s_8x.py" and cmd[cmd.index("--weights") + 1] == str(tmp_path / "c.pt")
    assert cmd[cmd.index("--target-flops") + 1] == "0.45" and cmd[cmd.index("--layer_keep") + 1] == "0.01"
    assert "--latency-aware" in cmd and "--round-to" not in cmd and "--global_percent" not in cmd
    plain = {"step": "prune", "strategy": "3", "ratio": 0.6,
             "settings": {"layer_keep": 0.01, "round_to": 8, "include_upsample": True, "cost_aware": False}}
    cmd = bench_sparsity.prune_command(plain, tmp_path / "c.pt", None, 160, tmp_path / "out")
    assert cmd[1] == "slim_prune_yolov5s.py" and cmd[cmd.index("--global_percent") + 1] == "0.6"
    assert cmd[cmd.index("--round-to") + 1] == "8" and "--include-upsample" in cmd and "--include-sppf" not in cmd
    assert "--data" not in cmd and "--cost-aware" not in cmd
    one = bench_sparsity.prune_command({"strategy": 1, "ratio": 0.5}, tmp_path / "c.pt", None, 64, tmp_path)
    assert one[1] == "prune_yolov5s.py" and one[one.index("--percent") + 1] == "0.5" and "--layer_keep" not in one
    with pytest.raises(ValueError, match="latency target"):
        bench_sparsity.prune_command({"strategy": "8x", "settings": {"target": {"metric": "latency", "target": 0.5}}},
                                     tmp_path, None, 160, tmp_path)
    ft = bench_sparsity.finetune_command({"epochs": 10, "optimizer": "AdamW", "img": 160, "hyp": None},
                                         tmp_path / "p.pt", tmp_path, "ft")
    assert ft[1] == "prune_finetune.py" and ft[ft.index("--epochs") + 1] == "10" and "--hyp" not in ft


def test_sparsity_control_mismatch_names_each_difference(tmp_path):
    hyp = tmp_path / "hyp.yaml"
    hyp.write_text("lr0: 0.01\n")
    sparse = {"epochs": 15, "img": 160, "batch_size": 16, "nbs": 16, "optimizer": "AdamW", "seed": 0,
              "hyp": str(hyp), "data": None, "weights": str(tmp_path / "base.pt"), "sr": True, "scale": 0.03,
              "cos_lr": False}
    control = {**sparse, "sr": False, "scale": 0.03, "cos_lr": None}
    assert bench_sparsity.control_mismatch(sparse, control) == []  # -sr, scale, empty switches: ignored
    rel, absolute = "data/hyps/hyp.finetune.yaml", str(ac.ROOT / "data/hyps/hyp.finetune.yaml")
    assert bench_sparsity.control_mismatch({**sparse, "hyp": rel}, {**control, "hyp": absolute}) == []
    assert bench_sparsity.control_mismatch({**sparse, "hyp": rel}, {**control, "hyp": str(hyp)}) != []
    # a relative path recorded in another working directory matches an absolute path that ends with it
    other = {**control, "weights": "runs/p/base/weights/best.pt"}
    assert bench_sparsity.control_mismatch({**sparse, "weights": "/elsewhere/runs/p/base/weights/best.pt"}, other) == []
    assert bench_sparsity.control_mismatch({**sparse, "weights": "/elsewhere/runs/q/base/weights/best.pt"}, other) != []
    bad = bench_sparsity.control_mismatch(sparse, {**control, "sr": True, "epochs": 10, "seed": 1, "weights": "x.pt"})
    assert [b.split()[0] for b in bad] == ["sr:", "epochs", "seed", "weights"]
    assert "10" in bad[1] and "15" in bad[1]


def test_sparsity_rows_name_the_penalty():
    rec = bench_sparsity.recorded
    assert rec({"sr": False, "scale": 0.03, "sr_penalty": "hoyer"})["penalty"] is None  # a control
    assert rec({"sr": True, "scale": 0.03})["penalty"] == "l1"  # runs from before --sr-penalty
    assert rec({"sr": True, "scale": 0.03, "sr_penalty": "hoyer"})["penalty"] == "hoyer"
    pol = rec({"sr": True, "scale": 0.03, "sr_penalty": "polarization", "sr_polar_t": 1.2, "optimizer": "AdamW"})
    assert pol == {"optimizer": "AdamW", "epochs": None, "scale": 0.03, "penalty": "polarization t=1.2"}


def test_sparsity_grid_and_checkpoint_arguments(tmp_path):
    run = tmp_path / "s1"
    (run / "weights").mkdir(parents=True)
    (run / "weights" / "last.pt").write_bytes(b"")
    ctrl = tmp_path / "c.pt"
    ctrl.write_bytes(b"")
    assert bench_sparsity.parse_grid([f"{run}:{ctrl}"]) == [(run / "weights" / "last.pt", ctrl)]
    for bad in (str(run), f"{run}:", f"{run}:{ctrl}:{ctrl}"):
        with pytest.raises(ValueError, match="--grid"):
            bench_sparsity.parse_grid([bad])
    with pytest.raises(FileNotFoundError, match="--grid .*missing"):
        bench_sparsity.parse_grid([f"{run}:{tmp_path / 'missing'}"])
    with pytest.raises(FileNotFoundError, match="--control"):
        bench_sparsity.checkpoint_of(tmp_path, "--control")  # a folder without weights/last.pt


def _bimodality(bimodal):
    return {"low_share": 0.5 if bimodal else 0.0, "valley_share": 0.0, "high_share": 0.5 if bimodal else 1.0,
            "valley_ratio": 0.0 if bimodal else None, "sarle_bc": 0.8 if bimodal else None, "bimodal": bimodal}


def test_sparsity_table_pairs_each_model_with_its_control():
    row = {"gamma_mean": 0.1, "gamma_lt_0.01": 0.5, "safe_ratio": 0.6, "mAP50": 0.8, "mAP50-95": 0.5}
    rows = {"baseline": {**row, "bimodality": _bimodality(False), "scale": 0.0, "epochs": "-"},
            "sr": {**row, "bimodality": _bimodality(True), "scale": 0.03, "optimizer": "AdamW", "epochs": 15,
                   "control": "ctrl", "mAP50-95": 0.49},
            "ctrl": {**row, "bimodality": _bimodality(False), "scale": 0.0, "optimizer": "AdamW", "epochs": 15,
                     "wall_s": 99.6}}
    lines = bench_sparsity.format_table(rows).splitlines()
    assert len(lines) == 5 and "vs control" in lines[0]
    assert lines[3].startswith("| sr | AdamW | 0.03 | 15 |") and "| yes |" in lines[3] and "| -0.0100 |" in lines[3]
    assert "| off |" in lines[4] and "| no |" in lines[4] and lines[4].endswith("| - | 100 |")


def test_sparsity_histogram_sits_beside_the_json(tmp_path):
    assert bench_sparsity.histogram_path(ac.RESULTS / "sparsity.json") == ac.RESULTS / "sparsity_hist.png"
    import torch
    g = {"a": [torch.zeros(8), torch.linspace(0.3, 1, 8)], "b": [torch.linspace(0.2, 1, 16)]}
    path = bench_sparsity.write_histogram(g, 1.0, tmp_path / "h.png")  # exact zeros land in the first bin
    assert path == str(tmp_path / "h.png") and (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_distill_summary_and_comparisons():
    per = {"plain": [{"seed": 0, "mAP50": 0.70, "mAP50-95": 0.4, "wall_s": 10},
                     {"seed": 1, "mAP50": 0.74, "mAP50-95": 0.5, "wall_s": None}],
           "distill": [{"seed": 0, "mAP50": 0.69, "mAP50-95": 0.4, "wall_s": 12},
                       {"seed": 1, "mAP50": 0.73, "mAP50-95": 0.4, "wall_s": 14}]}
    s = bench_distill.summarise(per)
    assert s["plain"]["mAP50"] == pytest.approx(0.72) and s["plain"]["wall_s"] == 10
    assert s["distill"]["wall_s"] == pytest.approx(13) and s["plain"]["wall_s_std"] is None
    refs = {"baseline (pretraining only)": {"mAP50": 0.9, "mAP50-95": 0.1},
            "control_final": {"mAP50": 0.70, "mAP50-95": 0.44}, "scratch_small": {"mAP50": 0.75, "mAP50-95": 0.46}}
    c = bench_distill.comparisons(s, refs)
    assert [(x["model"], x["control"]) for x in c] == [("finetuned, distilled", "finetuned, plain"),
                                                       ("finetuned, plain", "control_final"),
                                                       ("finetuned, plain", "scratch_small")]  # never the baseline
    assert [x["diff"] for x in c] == pytest.approx([-0.05, 0.01, -0.01])
    assert [x["diff_mAP50"] for x in c] == pytest.approx([-0.01, 0.02, -0.03])
    assert [x["met"] for x in c] == [False, True, False]  # a loss, however small, is not met
    assert "-0.0500" in c[0]["text"] and "+0.0100" in c[1]["text"]
    assert [x["control"] for x in bench_distill.comparisons(s, {})] == ["finetuned, plain"]  # controls absent
    refs["scratch_small_cos"] = {"mAP50": 0.70, "mAP50-95": 0.40}  # the weaker schedule: never the control
    assert [x["control"] for x in bench_distill.comparisons(s, refs)][1:] == ["control_final", "scratch_small"]
    refs["scratch_small_cos"] = {"mAP50": 0.80, "mAP50-95": 0.50}  # the stronger one replaces it
    c = bench_distill.comparisons(s, refs)
    assert [x["control"] for x in c][1:] == ["control_final", "scratch_small_cos"] and c[2]["diff"] == pytest.approx(-0.05)


# ------------------------------------------------------------------------------------ README
README = """# title

## Results

old text
```
## not a heading (code)
```

## Troubleshooting

keep me
"""


def test_replace_section_only_touches_results():
    new = urr.replace_section(README, "NEW BODY\n")
    assert "old text" not in new and "NEW BODY" in new
    assert new.startswith("# title\n\n## Results\n\nNEW BODY\n\n## Troubleshooting\n\nkeep me")
    assert urr.replace_section(new, "NEW BODY\n") == new  # idempotent
    fenced = README.replace("# title\n", "# title\n```\n## Results\nin code\n```\n", 1)
    out = urr.replace_section(fenced, "X")
    assert "## Results\nin code\n```" in out and "old text" not in out  # the code block is no heading
    with pytest.raises(ValueError, match="Results"):
        urr.replace_section("# only a title\n", "X")


def _write(folder: Path, name: str, data) -> None:
    (folder / f"{name}.json").write_text(json.dumps(data) if not isinstance(data, str) else data)


def test_results_generator_tolerates_missing_bad_and_quick_files(tmp_path):
    assert "No measured results" in urr.render_section(urr.load_results(tmp_path))
    _write(tmp_path, "deploy", "{not json")
    _write(tmp_path, "sparsity", {"quick": True, "rows": {}})
    _write(tmp_path, "latency_target", {"unexpected": 1})  # renders nothing, is left out
    _write(tmp_path, "onnx_latency", {"cpu": "Test CPU", "threads": 1, "table": "| a |\n|---|\n| 1 |"})
    _write(tmp_path, "penalty_sweep", {"references": {}})  # not a section: not even read
    found = urr.load_results(tmp_path)
    assert sorted(found) == ["latency_target", "onnx_latency"]
    body = urr.render_section(found)
    assert "### ONNX Runtime CPU latency" in body and "Test CPU, 1 thread(s)" in body
    assert "(file time)" in body and "latency target" not in body


def test_results_generator_shows_only_stored_figures(tmp_path):
    rows = {"baseline": {"scale": 0.0, "gamma_mean": 0.9, "gamma_lt_0.01": 0.0, "gamma_lt_0.001": 0.0,
                         "safe_ratio": 0.8, "mAP50": 0.8123, "mAP50-95": 0.5},
            "sparsity (-sr)": {"scale": 0.002, "gamma_mean": 0.05, "gamma_lt_0.01": 0.61, "gamma_lt_0.001": 0.2,
                               "safe_ratio": 0.7, "mAP50": 0.7901, "mAP50-95": 0.48}}
    _write(tmp_path, "sparsity", {"date": "2030-01-02T03:04:05", "rows": rows, "layers": [1, 2],
                                  "machine": {"cpu": "Test CPU", "cpu_count": 2, "torch_threads": 1},
                                  "settings": {"epochs": 15}, "targets": {"-sr sparsifies": True}})
    body = urr.render_section(urr.load_results(tmp_path))
    assert "Test CPU, 2 cores, 1 torch thread, no GPU; 2030-01-02 03:04" in body
    # a file of the layout before bimodality and matched controls: what it stores, "-" for the rest
    assert "| sparsity (-sr) | - | 0.002 | 0.050 | - | - | - | - | - | 0.480 | - |" in body
    assert "- met: -sr sparsifies" in body and "PASS" not in body


def test_update_readme_main_check_and_write(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    results = tmp_path / "results"
    results.mkdir()
    args = ["--readme", str(readme), "--results", str(results)]
    assert urr.main(args + ["--check"]) == 1
    assert urr.main(args) == 0
    assert urr.main(args + ["--check"]) == 0
    assert "keep me" in readme.read_text()


# ------------------------------------------------------------------------------------ end to end
TINY = ["--img", "64", "--batch", "8", "--workers", "0", "--noautoanchor", "--epochs", "1", "--seed", "1"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finished pipeline run in miniature: baseline, -sr model and its control_sparse stage."""
    import train
    import train_sparsity
    from utils.synthetic import make_shapes_dataset

    root = tmp_path_factory.mktemp("bench_sparsity")
    data = make_shapes_dataset(root / "data", n_train=16, n_val=8, n_test=8, img_size=64, seed=3, workers=1)
    run = root / "run"
    common = TINY + ["--data", str(data / "dataset.yaml"), "--project", str(run), "--exist-ok"]
    assert train.main(common + ["--cfg", "models/yolov5n.yaml", "--name", "base"]) == 0
    base = ["--weights", str(run / "base" / "weights" / "best.pt"), "--noval"]
    assert train_sparsity.main(common + base + ["--name", "sparse", "-sr", "--scale", "0.05"]) == 0
    assert train_sparsity.main(common + base + ["--name", "control_sparse"]) == 0
    return run


def test_bench_sparsity_end_to_end_reuses_the_runs_control(tiny_run, tmp_path, capsys):
    out = tmp_path / "sparsity.json"
    sparse = tiny_run / "sparse" / "weights" / "last.pt"
    control = tiny_run / "control_sparse" / "weights" / "last.pt"
    assert bench_sparsity.main(["--run", str(tiny_run), "--json", str(out), "--grid", f"{sparse}:{control}"]) == 0
    text = capsys.readouterr().out
    assert "==>" not in text  # nothing trained: the run's -sr model and control_sparse stage are reused
    assert f"matched control: {control} (pipeline control_sparse)" in text
    r = json.loads(out.read_text())
    for key in ("benchmark", "quick", "date", "machine", "settings", "rows", "targets", "table_markdown",
                "split", "control_source", "hist_png"):
        assert key in r, key
    assert r["split"] == "test" and r["control_source"] == "pipeline control_sparse"
    assert r["sr_source"] == "pipeline sparse" and Path(r["hist_png"]) == tmp_path / "sparsity_hist.png"
    assert Path(r["hist_png"]).is_file()
    names = list(r["rows"])
    assert names[:3] == ["baseline", bench_sparsity.SPARSE, bench_sparsity.CONTROL] and len(names) == 5
    assert r["rows"][bench_sparsity.SPARSE]["scale"] == 0.05 and r["rows"][bench_sparsity.CONTROL]["scale"] == 0.0
    assert r["rows"][bench_sparsity.SPARSE]["control"] == bench_sparsity.CONTROL
    for row in r["rows"].values():
        assert set(row["bimodality"]) >= {"low_share", "valley_share", "high_share", "bimodal", "sarle_bc"}
        assert 0.0 <= row["mAP50-95"] <= row["mAP50"] <= 1.0
    # the three claims, and the grid row's two -sr claims against its own control
    assert len(r["targets"]) == 3 + 2 and all(isinstance(v, bool) for v in r["targets"].values())


def test_bench_sparsity_refuses_an_unmatched_control(tiny_run, tmp_path):
    sparse = tiny_run / "sparse" / "weights" / "last.pt"
    with pytest.raises(ValueError, match="--control .*sr: the control was trained with -sr"):
        bench_sparsity.main(["--run", str(tiny_run), "--json", str(tmp_path / "s.json"), "--control", str(sparse)])
    with pytest.raises(ValueError, match="--grid .*the control differs in weights None"):  # base: from scratch
        bench_sparsity.main(["--run", str(tiny_run), "--json", str(tmp_path / "s.json"),
                             "--grid", f"{sparse}:{tiny_run / 'base' / 'weights' / 'best.pt'}"])
    assert not (tmp_path / "s.json").exists()


def test_bench_sparsity_trains_a_control_when_the_stage_does_not_match(tiny_run, tmp_path, monkeypatch, capsys):
    import shutil
    run = tmp_path / "run"
    for stage, src in (("base/weights/best.pt", "base/weights/best.pt"),
                       ("sparse/weights/last.pt", "sparse/weights/last.pt"),
                       ("control_sparse/weights/last.pt", "sparse/weights/last.pt")):  # a -sr "control"
        (run / stage).parent.mkdir(parents=True)
        shutil.copy(tiny_run / src, run / stage)
    calls = []
    monkeypatch.setattr(ac, "cached_run", lambda cmd, out_dir, done, fresh: calls.append(cmd) or {"wall_s": 7.0})
    settings = {**ac.checkpoint_opt(run / "sparse/weights/last.pt"), "epochs": 3}
    opt = bench_sparsity.parse_args(["--run", str(run)])
    got = bench_sparsity.control_run(ac.find_run(run), opt, settings, run / "sparse/weights/last.pt")
    assert "is not the matched control here (differs in sr" in capsys.readouterr().out
    assert got["source"] == "bench" and got["wall_s"] == 7.0
    assert got["weights"].parts[-3:] == ("no_sr", "weights", "last.pt")
    cmd = calls[0]
    assert "train_sparsity.py" in cmd[1] and "-sr" not in cmd and cmd[cmd.index("--name") + 1] == "no_sr"
    assert cmd[cmd.index("--epochs") + 1] == "3"
    assert Path(cmd[cmd.index("--weights") + 1]) == (run / "base/weights/best.pt").resolve()


def test_held_out_split_falls_back_to_val(tmp_path):
    from utils.synthetic import make_shapes_dataset
    with_test = make_shapes_dataset(tmp_path / "a", n_train=2, n_val=2, n_test=2, img_size=32, workers=1)
    without = make_shapes_dataset(tmp_path / "b", n_train=2, n_val=2, img_size=32, workers=1)
    assert ac.held_out_split(str(with_test / "dataset.yaml")) == "test"
    assert ac.held_out_split(str(without / "dataset.yaml")) == "val"
    assert ac.held_out_split(None) == "test"  # the built-in dataset has a held-out split


def test_results_without_a_date_are_dated_by_their_commit_until_changed(tmp_path):
    import subprocess
    path = tmp_path / "onnx_latency.json"
    path.write_text("{}")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(git + ["add", path.name], cwd=tmp_path, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "r", "--date=2001-02-03T04:05:00"], cwd=tmp_path, check=True,
                   env={**os.environ, "GIT_COMMITTER_DATE": "2001-02-03T04:05:00"})
    assert urr.date_text({}, path) == "2001-02-03 04:05 (commit time)"  # a clone's file times don't matter
    path.write_text('{"a": 1}')
    assert urr.date_text({}, path).endswith("(file time)")
    assert urr.date_text({"date": "2020-01-01T10:00:00"}, path) == "2020-01-01 10:00"


def test_penalty_specs_name_every_option_and_reject_bad_ones():
    parse = bench_penalties.parse_penalty
    assert parse("l1") == {"sr_penalty": "l1"}
    assert parse("polarization,t=1.2,mean=layer,scale=0.02") == {
        "sr_penalty": "polarization", "sr_polar_t": 1.2, "sr_polar_mean": "layer", "scale": 0.02}
    assert parse("polarization,q=0.2") == {"sr_penalty": "polarization", "sr_polar_quantile": 0.2}
    for bad, match in (("l2", "unknown penalty"), ("l1,t=1", "only applies"), ("hoyer,q=0.2", "only applies"),
                       ("polarization,mean=net", "global or layer"),
                       ("hoyer,scale=x", "not a number"), ("hoyer,s=1", "key=value")):
        with pytest.raises(ValueError, match=match):
            parse(bad)
    assert bench_penalties.slug("polarization,mean=layer,t=1.5", 2) == "polarization_mean-layer_t-1p5_seed2"


def test_penalty_summary_spreads_over_seeds_and_counts_bimodal_ones():
    def chain(spec, seed, sparse, pruned, final, bimodal):
        split = {"low_share": 0.5, "valley_share": 0.02, "high_share": 0.48, "bimodal": bimodal}
        return {"penalty": spec, "seed": seed, "sparse": {"mAP50-95": sparse, "mAP50": 0.9, "bimodality": split},
                "pruned": {"mAP50-95": pruned, "mAP50": 0.5}, "final": {"mAP50-95": final, "mAP50": 0.95}}
    chains = [chain("l1", 0, 0.61, 0.05, 0.653, False), chain("l1", 1, 0.53, 0.05, 0.661, False),
              chain("polarization", 0, 0.59, 0.54, 0.648, True)]
    s = bench_penalties.summarise(chains)
    assert list(s) == ["l1", "polarization"]
    assert s["l1"]["final"]["mean"] == pytest.approx(0.657) and s["l1"]["final"]["min"] == 0.653
    assert s["l1"]["final"]["std"] == pytest.approx(0.004 * 2 ** 0.5) and s["l1"]["bimodal_seeds"] == 0
    assert s["polarization"]["final"]["std"] is None and s["polarization"]["bimodal_seeds"] == 1
    table = bench_penalties.format_table(chains, s)
    assert "| l1 | 1 |" in table and "0.6570 (0.653-0.661)" in table and "| 1/1 |" in table
