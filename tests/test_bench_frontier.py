"""The frontier benchmark's planning, resumable runner, Torch-Pruning wiring and report, on synthetic
stage outputs (the full chain runs with ``benchmarks/bench_frontier.py --quick``)."""
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))

import accuracy_common as ac  # noqa: E402
import bench_frontier as bf  # noqa: E402
import frontier_stages as fs  # noqa: E402
import frontier_tp  # noqa: E402
import update_readme_results as urr  # noqa: E402
from models import build_model, load_model, save_checkpoint  # noqa: E402
from utils.prune.fake import fake_sparsity_  # noqa: E402
from utils.torch_utils import count_flops  # noqa: E402

BUDGET = fs.Budget(base=4, sparse=2, finetune=3)


def _settings(**kw) -> fs.Settings:
    return fs.Settings(budget=BUDGET, **{"flops": (0.7, 0.3), **kw})


def _plan(tmp_path, **kw) -> list:
    s = _settings(**kw)
    widths = {f: f"cfgs/yolov5n_w{f}.yaml" for f in s.flops}
    return fs.build_plan(s, tmp_path, widths, {})


# ------------------------------------------------------------------------------------ settings
def test_pipeline_defaults_come_from_run_pipeline_sh():
    d = fs.pipeline_defaults()
    assert d["optimizer"] == "AdamW" and d["img"] == "160" and d["scale"] == "0.03"
    assert d["ft_hyp"].endswith("hyp.finetune.yaml") and d["layer_keep"] == "0.01"
    assert d["cfg"] == "models/yolov5n.yaml"
    assert d["sp_optimizer"] == d["optimizer"] and d["sp_hyp"] == d["ft_hyp"]  # ${SP_HYP:-$FT_HYP} resolved
    assert fs.pipeline_budget() == fs.Budget(base=30, sparse=15, finetune=10)  # the full run, not QUICK's 2/1/1
    text = 'if q; then\n  IMG=${IMG:-128}; EPOCHS=${EPOCHS:-2}\nelse\n  IMG=${IMG:-160}\nfi\nNBS=${NBS-8}\n'
    assert fs.pipeline_defaults(text) == {"img": "160", "nbs": "8", "base": "2"}  # the full run's branch wins
    s = fs.settings_from_pipeline(BUDGET, optimizer="SGD", img=None)
    assert s.optimizer == "SGD" and s.img == 160 and s.nbs == int(d["nbs"]) and s.budget.total == 9
    assert s.cfg == "models/yolov5n.yaml" and s.sp_optimizer == "AdamW"
    assert fs.settings_from_pipeline().budget == fs.pipeline_budget()


def test_pipeline_variable_references_resolve():
    text = ("OPT=${OPT:-AdamW}\nSP_OPTIMIZER=${SP_OPTIMIZER:-$OPT}\nFT_HYP=${FT_HYP:-ft.yaml}\n"
            "SP_HYP=${SP_HYP:-${FT_HYP}}\nA=${A:-$B}\nB=${B:-$A}\nHYP=${HYP:-$UNSET}\n")
    v = fs.pipeline_variables(text)
    assert v["SP_OPTIMIZER"] == "AdamW" and v["SP_HYP"] == "ft.yaml"
    assert v["A"] in ("$A", "$B") and v["HYP"] == "$UNSET"  # a cycle or an unknown name stays unresolved
    d = fs.pipeline_defaults(text)
    assert d == {"sp_optimizer": "AdamW", "sp_hyp": "ft.yaml", "ft_hyp": "ft.yaml"}  # no unresolved HYP
    with pytest.raises(ValueError, match="sparse"):
        fs.pipeline_budget("EPOCHS=${EPOCHS:-3}\nFT_EPOCHS=${FT_EPOCHS:-1}\n")


def test_width_scaling_lives_in_models_scaling():
    assert not hasattr(fs, "width_yaml") and not hasattr(fs, "width_for_flops")  # one implementation


# ------------------------------------------------------------------------------------ the plan
def test_plan_gives_every_model_the_same_total_epochs(tmp_path):
    stages = _plan(tmp_path, seeds=(0, 1))
    by = {st.name: st for st in stages}
    fs.check_plan(stages)
    for st in stages:
        if not st.row or st.name == "base":
            continue
        if st.kind == "train":
            assert st.epochs == BUDGET.total, st.name
        else:  # pruned: the baseline, the sparsity training and this finetuning
            sparse = next(by[n] for n in by[st.needs[0]].needs)
            assert by["base"].epochs + sparse.epochs + st.epochs == BUDGET.total, st.name
        assert st.row["epochs"] == BUDGET.total
        assert f"eval_{st.name}" in by and "--task" in by[f"eval_{st.name}"].cmd
        assert by[f"eval_{st.name}"].cmd[by[f"eval_{st.name}"].cmd.index("--task") + 1] == "test"
    methods = {st.row["method"] for st in stages if st.row}
    assert {"trained from scratch", "ours 8x default", "ours 3 latency + distill", "Torch-Pruning BNScalePruner"} <= methods
    refs = [st for st in stages if st.row.get("reference")]  # the source model from scratch, per seed
    assert [st.name for st in refs] == ["scratch_src_s0", "scratch_src_s1"]
    # every seed distils from the same teacher candidates: the first seed's source model, not its own
    later = by["ft_3_default_f0.7_distill_s1"]
    assert "scratch_src_s0" in later.needs and "scratch_src_s1" not in later.needs
    assert fs.teacher_stages(_settings(seeds=(0, 1))) == ("base", "scratch_src_s0")
    assert fs.source_stages(_settings(seeds=(0, 1))) == ("base", "scratch_src_s0", "scratch_src_s1")
    assert all(st.cmd[st.cmd.index("--cfg") + 1] == "models/yolov5n.yaml" for st in refs)


def test_plan_option_sets_reach_sparsity_and_prune_commands(tmp_path):
    by = {st.name: st for st in _plan(tmp_path)}
    assert "--include-upsample" in by["sparse_latency"].cmd and "--include-sppf" in by["sparse_latency"].cmd
    assert "--include-upsample" not in by["sparse_default"].cmd and "-sr" in by["sparse_default"].cmd
    shared = by["sparse_latency"].cmd[by["sparse_latency"].cmd.index("--prune") + 2:][:2]
    assert shared == ("--include-upsample", "--include-sppf")  # the command (and its fingerprint) of earlier runs
    prune = by["prune_8x_latency_f0.3"].cmd
    for flag in fs.OPTION_SETS["latency"]:
        assert flag in prune
    assert fs.OPTION_SETS["latency"] == ("--latency-aware",) and "--cost-aware" not in prune
    assert prune[prune.index("--target-flops") + 1] == "0.3" and "slim_prune_yolov5s_8x.py" in prune
    distill = by["ft_3_default_f0.7_distill_s0"]
    assert "{teacher}" in distill.cmd and {"base", "scratch_src_s0"} <= set(distill.needs)
    assert "--distill" not in by["ft_3_default_f0.7_plain_s0"].cmd
    assert "{pruned:prune_3_default_f0.7}" in distill.cmd


def test_plan_without_torch_pruning_and_stage_selection(tmp_path):
    stages = _plan(tmp_path, torch_pruning=False, option_sets=("default",), strategies=("8x",))
    assert not any(st.name.startswith("tp_") or "latency" in st.name for st in stages)
    picked = fs.select(stages, ["eval_ft_8x_default_f0.3_plain_s0"])
    assert [st.name for st in picked] == ["base", "sparse_default", "prune_8x_default_f0.3",
                                          "ft_8x_default_f0.3_plain_s0", "eval_ft_8x_default_f0.3_plain_s0"]
    with pytest.raises(ValueError, match="needs"):
        fs.check_plan(list(reversed(picked)))


def test_estimate_counts_epochs_by_cost():
    st = [fs.Stage("a", "train", (), epochs=10, cost=0.5), fs.Stage("b", "prune", ())]
    assert fs.estimate_seconds(st, 40.0, {"prune": 7.0}) == 10 * 0.5 * 40 + 7


# ------------------------------------------------------------------------------------ the runner
def _py(code: str) -> tuple:
    return (sys.executable, "-c", code)


def test_runner_resumes_and_resolves_placeholders(tmp_path):
    write = "import pathlib,sys; pathlib.Path(sys.argv[1]).write_text(' '.join(sys.argv[2:]))"
    stages = [fs.Stage("prune", "prune", _py(write) + (str(tmp_path / "prune" / "prune_0.4_x.pt"), "w")),
              fs.Stage("ft", "finetune", _py(write) + (str(tmp_path / "ft" / "args.txt"), "{pruned:prune}", "{teacher}"),
                       needs=("prune",)),
              fs.Stage("other", "train", _py(write) + (str(tmp_path / "other" / "x.txt"), "x"))]
    walls = fs.run_stages(stages, tmp_path, lambda: "T.pt", parallel=2, poll_s=0.05).walls
    assert set(walls) == {"prune", "ft", "other"}
    assert (tmp_path / "ft" / "args.txt").read_text() == f"{tmp_path / 'prune' / 'prune_0.4_x.pt'} T.pt"
    meta = json.loads((tmp_path / "ft" / fs.DONE).read_text())
    assert meta["cmd"][-1] == "T.pt" and meta["wall_s"] >= 0
    assert fs.run_stages(stages, tmp_path, lambda: "T.pt", poll_s=0.05) == fs.RunResult()  # all done: nothing reruns
    assert fs.stage_walls(stages, tmp_path) == pytest.approx(walls, abs=0.1)
    (tmp_path / "other" / fs.DONE).unlink()
    assert set(fs.run_stages(stages, tmp_path, lambda: "T.pt", poll_s=0.05).walls) == {"other"}


def test_an_interrupted_training_stage_resumes_from_its_last_pt(tmp_path, monkeypatch):
    model = build_model(ROOT / "models" / "yolov5n.yaml", nc=2)
    st = fs.Stage("scratch", "train", (sys.executable, "train.py", "--epochs", "5"))
    folder, log = tmp_path / "scratch", tmp_path / "scratch.log"
    calls = []

    class Popen:
        def __init__(self, cmd, **kw):
            calls.append(list(cmd))

    monkeypatch.setattr(fs.subprocess, "Popen", Popen)
    fs.start(st, list(st.cmd), tmp_path, "fp1")  # a fresh start records its fingerprint
    assert calls[-1] == list(st.cmd) and json.loads((folder / fs.STARTED).read_text())["fingerprint"] == "fp1"
    assert fs.resume_point(st, folder, "fp1") is None  # no last.pt yet
    last = folder / "weights" / "last.pt"
    save_checkpoint(last, model, epoch=2, optimizer={"state": {}})
    assert fs.resume_point(st, folder, "fp1") == last
    assert fs.resume_point(st, folder, "fp2") is None  # started with other settings
    assert fs.resume_point(fs.Stage("p", "prune", (sys.executable, "slim_prune_yolov5s.py")), folder, "fp1") is None
    log.write_text("epochs 0-2\n")
    fs.start(st, list(st.cmd), tmp_path, "fp1")
    assert calls[-1] == [sys.executable, "train.py", "--resume", str(last)]
    assert last.is_file() and log.read_text().startswith("epochs 0-2")  # nothing deleted, the log continues
    save_checkpoint(last, model, epoch=-1, optimizer=None)  # finished (stripped): nothing to resume
    assert fs.resume_point(st, folder, "fp1") is None
    fs.start(st, list(st.cmd), tmp_path, "fp2")
    assert calls[-1] == list(st.cmd) and not last.exists()  # a fresh folder


def test_runner_failure_skips_what_needs_it_and_keeps_going(tmp_path):
    stages = [fs.Stage("bad", "train", _py("import sys; print('boom'); sys.exit(3)")),
              fs.Stage("after", "train", _py("pass"), needs=("bad",)),
              fs.Stage("later", "eval", _py("pass"), needs=("after",)),
              fs.Stage("no_pruned", "finetune", _py("pass") + ("{pruned:bad}",)),
              fs.Stage("fine", "train", _py("pass"))]
    run = fs.run_stages(stages, tmp_path, lambda: "", poll_s=0.05)
    assert set(run.failed) == {"bad", "no_pruned"} and "boom" in run.failed["bad"]
    assert "no pruned checkpoint" in run.failed["no_pruned"]
    assert run.skipped == ["after", "later"] and set(run.walls) == {"fine"}
    assert not (tmp_path / "bad" / fs.DONE).exists() and not (tmp_path / "after").exists()
    (tmp_path / "bad" / "stale.txt").write_text("half-written")
    stages[0] = fs.Stage("bad", "train", _py("import pathlib; pathlib.Path('{}').write_text('p')".format(
        tmp_path / "bad" / "pruned.pt")))
    finished = []
    run = fs.run_stages(stages, tmp_path, lambda: "", poll_s=0.05, on_done=lambda st: finished.append(st.name))
    assert not run.failed and set(run.walls) == {"bad", "after", "later", "no_pruned"}  # the stale folder is replaced
    assert sorted(finished) == sorted(run.walls)
    assert not (tmp_path / "bad" / "stale.txt").exists() and (tmp_path / "later" / fs.DONE).is_file()
    with pytest.raises(RuntimeError, match="not planned"):
        fs.run_stages([fs.Stage("orphan", "train", _py("pass"), needs=("ghost",))], tmp_path, lambda: "")


def test_exclusive_stages_run_alone_with_parallel(tmp_path):
    log = tmp_path / "times.txt"
    code = ("import sys, time; t = time.time(); time.sleep(0.4); "
            f"open(r'{log}', 'a').write(f'{{sys.argv[1]}} {{t}} {{time.time()}}\\n')")
    stages = [fs.Stage("a", "train", _py(code) + ("a",)), fs.Stage("x", "prune", _py(code) + ("x",), exclusive=True),
              fs.Stage("b", "train", _py(code) + ("b",)), fs.Stage("c", "train", _py(code) + ("c",))]
    assert not fs.run_stages(stages, tmp_path, lambda: "", parallel=2, poll_s=0.02).failed
    spans = {n: (float(t0), float(t1)) for n, t0, t1 in (line.split() for line in log.read_text().splitlines())}
    x0, x1 = spans.pop("x")
    assert all(t1 <= x0 or t0 >= x1 for t0, t1 in spans.values())  # nothing overlaps the exclusive stage
    (b0, b1), (c0, c1) = spans["b"], spans["c"]
    assert b0 < c1 and c0 < b1  # the others do run two at a time
    assert fs.Stage("p", "prune", (), exclusive=True).exclusive
    by = {st.name: st for st in _plan(tmp_path / "plan")}
    assert by["prune_3_latency_f0.3"].exclusive and not by["prune_3_default_f0.3"].exclusive


# ------------------------------------------------------------------------------------ Torch-Pruning
def test_torch_pruning_regulariser_adds_reg_sign_gamma_only():
    tp = pytest.importorskip("torch_pruning")
    model = build_model(ROOT / "models" / "yolov5n.yaml", nc=5).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.weight.data.uniform_(-1, 1)
    stats = [m.running_mean.clone() for m in bns]
    pruner = frontier_tp.regulariser(tp, model, 0.01)
    assert model.training and all(torch.equal(a, m.running_mean) for a, m in zip(stats, bns))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    pruner.regularize(model)
    for m in bns:
        assert torch.allclose(m.weight.grad, 0.01 * torch.sign(m.weight.data))
        assert not m.bias.grad.any()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert not any(c.weight.grad.any() for c in convs)


# ------------------------------------------------------------------------------------ the report
def _rows() -> list[dict]:
    rows = []
    for label, method, point, ref, maps, ms in [
            ("yolov5s", "trained from scratch", None, True, [0.60], 40.0),
            ("yolov5s width 0.3", "trained from scratch", 0.3, False, [0.45], 18.0),
            ("ours 8x default, plain", "ours 8x default", 0.3, False, [0.52, 0.50], 20.0),
            ("ours 8x default, plain", "ours 8x default", 0.7, False, [0.58], 30.0)]:
        per = [{"seed": i, "mAP50": m + 0.3, "mAP50-95": m} for i, m in enumerate(maps)]
        r = {"label": label, "method": method, "point": point, "reference": ref, "per_seed": per,
             "flops_ratio": point or 1.0, "params": 7e6 * (point or 1.0), "cpu_ms": ms, "cpu_ratio": ms / 40,
             "onnx_ms": ms / 2, "onnx_ratio": ms / 40}
        for key in ("mAP50", "mAP50-95"):
            r[key], r[f"{key}_std"] = bf.mean_std([p[key] for p in per])
        rows.append(r)
    return rows


def test_collect_rows_groups_seeds(tmp_path):
    stages = [fs.Stage(f"ft_s{seed}", "finetune", ("py", str(seed)), weights="weights/best.pt",
                       row={"method": "m", "label": "L", "seed": seed, "point": 0.5}) for seed in (0, 1, 2)]
    stages += [fs.Stage(f"eval_ft_s{seed}", "eval", ("py", "val", str(seed)), needs=(f"ft_s{seed}",)) for seed in (0, 1, 2)]
    fps = fs.fingerprints(stages)
    for seed, m in ((0, 0.4), (1, 0.5), (2, 0.9)):
        (tmp_path / f"eval_ft_s{seed}").mkdir()
        (tmp_path / f"eval_ft_s{seed}" / "metrics.json").write_text(json.dumps({"mAP50": m + 0.3, "mAP50-95": m}))
        # seed 2's evaluation ran with other settings (its fingerprint differs): its row is left out
        fp = fps[f"eval_ft_s{seed}"] if seed < 2 else "stale"
        (tmp_path / f"eval_ft_s{seed}" / fs.DONE).write_text(json.dumps({"fingerprint": fp, "wall_s": 1.0}))
    (row,) = bf.collect_rows(stages, tmp_path)
    assert row["mAP50-95"] == pytest.approx(0.45) and row["mAP50-95_std"] == pytest.approx(0.0707, abs=1e-4)
    assert [p["seed"] for p in row["per_seed"]] == [0, 1] and row["weights"].endswith("ft_s0/weights/best.pt")


def test_changed_settings_rerun_the_stage_and_everything_downstream(tmp_path):
    def plan(base_epochs: str) -> list:
        return [fs.Stage("base", "train", _py("pass") + (base_epochs,)),
                fs.Stage("sparse", "sparsity", _py("pass"), needs=("base",)),
                fs.Stage("prune", "prune", _py("pass"), needs=("sparse",)),
                fs.Stage("scratch", "train", _py("pass") + ("34",))]
    assert set(fs.run_stages(plan("24"), tmp_path, lambda: "", poll_s=0.02).walls) == {"base", "sparse", "prune", "scratch"}
    assert fs.done_stages(plan("24"), tmp_path) == {"base", "sparse", "prune", "scratch"}
    assert fs.done_stages(plan("30"), tmp_path) == {"scratch"}
    assert set(fs.run_stages(plan("30"), tmp_path, lambda: "", poll_s=0.02).walls) == {"base", "sparse", "prune"}
    assert fs.fingerprints(plan("30"))["scratch"] == fs.fingerprints(plan("24"))["scratch"]
    (tmp_path / "prune" / fs.DONE).write_text("{not json")  # a marker cut short counts as unfinished
    assert fs.done_stages(plan("30"), tmp_path) == {"base", "sparse", "scratch"}


def test_paired_ratios_cancel_load_changes():
    ref = [1.0, 2.0, 1.0]
    out = bf.paired([ref, [0.5, 1.0, 0.5]], 0)
    assert out[1]["ratio"] == pytest.approx(0.5) and out[0]["ratio"] == 1.0
    assert out[1]["ms"] == pytest.approx(500.0)


def test_curve_detects_a_plateau(tmp_path, capsys):
    f = tmp_path / "results.csv"
    head = "epoch,metrics/mAP_0.5,metrics/mAP_0.5:0.95\n"
    f.write_text(head + "".join(f"{i},{0.5},{v}\n" for i, v in enumerate([0.1, 0.3, 0.4, 0.45, 0.452, 0.451, 0.45, 0.453])))
    c = bf.curve(f)
    assert c["plateau"] and c["best_epoch"] == 7 and c["last_quarter_gain"] < bf.PLATEAU_GAIN
    f.write_text(head + "".join(f"{i},{0.5},{0.1 * i}\n" for i in range(8)))
    assert not bf.curve(f)["plateau"]
    assert bf.curve(tmp_path / "none.csv") == {}
    (tmp_path / "base").mkdir()
    f.rename(tmp_path / "base" / "results.csv")
    bf.plateau_note(tmp_path)(fs.Stage("base", "train", ()))
    bf.plateau_note(tmp_path)(fs.Stage("ft_x", "finetune", ()))  # not a yolov5s training: no note
    assert capsys.readouterr().out.count("NOT at a plateau") == 1


def test_table_plot_and_readme_section(tmp_path):
    rows = _rows()
    table = bf.format_table(rows)
    assert table.count("\n") == len(rows) + 1 and "0.510 ± 0.014" in table
    png = bf.plot(rows, tmp_path / "frontier.png", "synthetic")
    if png is not None:
        assert png.stat().st_size > 1000
    s = _settings()
    report = {"benchmark": "frontier", "quick": False, "date": "2026-11-30T23:00:00", "rows": rows,
              "machine": {"cpu": "Test CPU", "cpu_count": 2, "torch_threads": 1},
              "settings": {**bf.asdict(s), "total_epochs": s.budget.total}, "plot": str(png or ""),
              "curves": {"base": bf.curve(tmp_path / "none.csv")}, "table_markdown": table}
    (tmp_path / "frontier.json").write_text(json.dumps(report))
    found = urr.load_results(tmp_path)
    assert list(found) == ["frontier"]
    body = urr.render_section(found)
    assert "### Accuracy against latency" in body and "ours 8x default, plain" in body and "0.510 ± 0.014" in body
    assert "9 epochs in all" in body and "Test CPU" in body
    assert "ratios to yolov5n trained from scratch" in body and "`models/yolov5n.yaml`" in body
    assert "sparsity training:" not in body  # the same optimizer as the other trainings: not repeated
    sgd = {**report, "settings": {**report["settings"], "sp_optimizer": "SGD"}}
    assert "with AdamW (sparsity training: SGD)" in "\n".join(urr.render_frontier(sgd))
    assert "finetuned with the linear learning-rate schedule" in body  # the plan's Settings record it
    cos = {**report, "settings": {**report["settings"], "ft_cos_lr": True}}
    assert "finetuned with the cosine learning-rate schedule" in "\n".join(urr.render_frontier(cos))
    old = {**report, "settings": {k: v for k, v in report["settings"].items() if k != "ft_cos_lr"}}
    assert "schedule" not in "\n".join(urr.render_frontier(old))  # results from before it was recorded
    assert png is None or f"]({png})" in body
    (tmp_path / "frontier.json").write_text(json.dumps({**report, "quick": True}))
    assert urr.load_results(tmp_path) == {}  # smoke runs never reach the README


def test_comparisons_name_their_control_and_render(tmp_path):
    rows = _rows()  # the pipeline's default "ours 8x default" at 0.7 and 0.3 (0.51), scratch width 0.3 (0.45)
    for label, method, point, m, ratio in [("Torch-Pruning BNScalePruner, plain", "Torch-Pruning BNScalePruner", 0.3,
                                            0.53, 0.55),
                                           ("ours 8x latency, plain", fs.LAYER_CHANNELS_METHOD, 0.3, 0.48, 0.42),
                                           ("ours layers+8x latency, plain", fs.LAYER_METHOD, 0.3, 0.44, 0.35)]:
        rows.append({"label": label, "method": method, "point": point, "mAP50-95": m, "mAP50": m + 0.3,
                     "flops_ratio": point, "cpu_ratio": ratio, "onnx_ratio": ratio})
    comps = bf.comparisons(rows, (0.7, 0.5, 0.3), "ours 8x default")
    assert [c["point"] for c in comps] == [0.7, 0.3]  # no pipeline-default row at 0.5
    assert comps[0]["versus"] == [] and "layers" not in comps[0]  # nothing else ran at 0.7
    c = comps[1]
    by = {v["control"]: v for v in c["versus"]}
    assert by["smaller model trained from scratch"]["delta_mAP50-95"] == pytest.approx(0.51 - 0.45)
    assert by["smaller model trained from scratch"]["verdict"] == "met"
    assert by["Torch-Pruning"]["delta_mAP50-95"] == pytest.approx(-0.02) and by["Torch-Pruning"]["verdict"] == "MISSED"
    # blocks + channels against the same channel pruning alone, not against the pipeline's default
    assert c["layers"]["delta_mAP50-95"] == pytest.approx(0.44 - 0.48) and c["layers"]["layers_cpu_ratio"] == 0.35
    assert c["layers"]["label"] == "ours 8x latency, plain" and c["layers"]["cpu_ratio"] == 0.42
    lines = bf.format_comparisons(comps)
    assert len(lines) == 3 and "-0.020 mAP@.5:.95 (MISSED)" in lines[1] and "CPU ratio 0.350 vs 0.420" in lines[2]
    assert fs.pipeline_method() == "ours 8x default"  # scripts/run_pipeline.sh: STRATEGY=8x, LATENCY_AWARE=0
    assert fs.pipeline_method("STRATEGY=${STRATEGY:-3}\nLATENCY_AWARE=${LATENCY_AWARE:-1}\n") == "ours 3 latency"
    s = _settings()
    report = {"benchmark": "frontier", "quick": False, "date": "2026-11-30T23:00:00", "rows": rows[:4],
              "settings": {**bf.asdict(s), "total_epochs": s.budget.total}, "comparisons": comps,
              "pipeline_method": "ours 8x default", "missing_rows": ["tp_ft_f0.7_plain_s0"]}
    for r in report["rows"]:
        r.update(params=1e6, cpu_ms=1.0, onnx_ms=1.0)
    body = "\n".join(urr.render_frontier(report))
    assert "| 0.3 | Torch-Pruning BNScalePruner, plain | -0.020 |" in body and "| MISSED |" in body
    assert "| 0.3 | -0.040 |" in body and "0.350 vs 0.420" in body and "(`ours 8x latency, plain`)" in body
    assert "Not run yet" in body and "`tp_ft_f0.7_plain_s0`" in body


def test_quick_results_stay_out_of_benchmarks_results():
    opt = bf.parse_args(["--quick"])
    json_path, png_path = bf.output_paths(opt)
    assert not json_path.resolve().is_relative_to((ROOT / "benchmarks" / "results").resolve())
    assert png_path.suffix == ".png"
    full, _ = bf.output_paths(bf.parse_args([]))
    assert full == ROOT / "benchmarks" / "results" / "frontier.json"
    with pytest.raises(SystemExit):
        bf.parse_args(["--seeds", "1", "1"])
    with pytest.raises(SystemExit):
        bf.parse_args(["--quick", "--json", str(ROOT / "benchmarks" / "results" / "frontier.json")])
    with pytest.raises(SystemExit):
        bf.parse_args(["--strategies", "1"])  # strategies 3 and 8x only


def test_models_that_miss_their_flops_point_are_flagged():
    rows = _rows()
    rows[1]["flops_ratio"] = 0.36  # width model at the 0.3 point: 0.06 too many FLOPs
    warnings = bf.flops_warnings(rows)
    assert len(warnings) == 1 and "yolov5s width 0.3" in warnings[0] and "0.360" in warnings[0]
    assert [r["flops_off_target"] for r in rows] == [False, True, False, False]
    assert bf.format_table(rows).count("(off target)") == 1
    assert "(off target)" in "\n".join(urr.render_frontier({"rows": rows, "settings": {}, "warnings": warnings}))


def test_torch_pruning_prunes_a_checkpoint_to_the_flops_point(tmp_path):
    pytest.importorskip("torch_pruning")
    model = fake_sparsity_(build_model(ROOT / "models" / "yolov5n.yaml", nc=5)).eval()
    save_checkpoint(tmp_path / "sparse.pt", model, history=[{"step": "sparsity"}])
    entry = frontier_tp.prune_to_flops(tmp_path / "sparse.pt", 0.5, 64, tmp_path / "pruned.pt")
    pruned = load_model(tmp_path / "pruned.pt", verbose=False)
    kept = count_flops(pruned, 64) / count_flops(model, 64)
    assert 0.4 < kept <= 0.5 + 1e-3 and entry["figures"]["flops"]["ratio"] == pytest.approx(kept, abs=0.02)
    assert pruned(torch.zeros(1, 3, 64, 64))[0].shape[-1] == 10  # a working detector with the same head


def test_width_scaled_models_hit_their_flops_point(tmp_path, monkeypatch):
    s = fs.Settings(budget=BUDGET, img=64, flops=(0.5,))
    widths, costs = bf.prepare_widths(s, tmp_path)
    full = count_flops(build_model(ROOT / s.cfg, nc=5).eval(), 64)
    got = count_flops(build_model(widths[0.5], nc=5).eval(), 64) / full
    assert abs(got - 0.5) < bf.FLOPS_TOLERANCE and Path(widths[0.5]).parent == tmp_path / "cfgs"
    assert 0.15 < costs["w0.5"] < costs["src"] == 1.0
    assert Path(widths[0.5]).name.startswith("yolov5n_w") and "width_multiple" in Path(widths[0.5]).read_text()
    monkeypatch.setattr(bf, "matched_width", lambda *a, **k: pytest.fail("the cached width was searched again"))
    assert bf.prepare_widths(s, tmp_path)[0] == widths
    ref = fs.Settings(budget=BUDGET, img=64, flops=(0.5,), reference_cfgs=("models/yolov5s.yaml",))
    cost_s = bf.prepare_widths(ref, tmp_path)[1]["yolov5s"]
    assert 2.5 < cost_s < 4.0  # yolov5s: about 3.7 x the FLOPs of yolov5n


# ------------------------------------------------------------------------------------ option sets, layer rows
def test_sparsity_switches_follow_what_the_prune_flags_make_prunable():
    assert fs.sparsity_switches(()) == []
    assert fs.sparsity_switches(("--latency-aware",)) == ["--include-upsample", "--include-sppf"]
    assert fs.sparsity_switches(("--latency-aware", "--no-include-sppf")) == ["--include-upsample"]
    assert fs.sparsity_switches(("--include-sppf", "--round-to", "16")) == ["--include-sppf"]
    assert fs.prune_args(("--latency-aware",)).cost_aware and not fs.prune_args(("--round-to", "16")).cost_aware


def test_layer_plan_counts_the_blocks_each_c3_can_give():
    n, kept = fs.layer_plan("models/yolov5s.yaml", 160)
    assert n == 3 and 0.8 < kept < 0.95  # yolov5s: C3 modules of 1, 2, 3, 1 blocks
    assert fs.layer_plan("models/yolov5n.yaml", 160)[0] == 3  # the pipeline's model: the same C3 layout
    assert fs.layer_plan(ROOT / "models" / "yolov5m.yaml", 160)[0] == 10  # 2, 4, 6, 2 blocks


def test_plan_has_the_layer_pruning_rows(tmp_path):
    stages = _plan(tmp_path)
    by = {st.name: st for st in stages}
    layers = by["prune_layers_n3"]
    assert layers.cmd[1] == "layer_prune_yolov5s.py" and layers.needs == ("sparse_latency",)
    assert layers.cmd[layers.cmd.index("--shortcuts") + 1] == "3"
    assert str(tmp_path / "sparse_latency" / "weights" / "last.pt") in layers.cmd
    ft = by["ft_layers_n3_plain_s0"]
    assert "{pruned:prune_layers_n3}" in ft.cmd and "--distill" not in ft.cmd
    assert ft.row["point"] is None and ft.row["point_from_flops"] and ft.row["method"] == "ours layers"
    for point in (0.7, 0.3):
        prune = by[f"prune_layers8x_latency_f{point:g}"]
        assert prune.cmd[1] == "slim_prune_yolov5s_8x.py" and "--latency-aware" in prune.cmd
        assert prune.cmd[prune.cmd.index("--layers") + 1] == "3"
        assert prune.cmd[prune.cmd.index("--target-flops") + 1] == f"{{layer_target:prune_layers_n3:{point:g}}}"
        assert prune.needs == ("sparse_latency", "prune_layers_n3") and prune.exclusive
        ft = by[f"ft_layers8x_latency_f{point:g}_plain_s0"]
        assert ft.row["point"] == point and ft.cost == pytest.approx(point + 0.15)
        assert not any(n.startswith("ft_layers") and "distill" in n for n in by)  # plain finetunes only
    labels = [st.row["label"] for st in stages if st.row]
    assert "ours layers (3 residual blocks), plain" in labels and "ours layers+8x latency, plain" in labels
    assert "ours 8x latency, plain" in labels
    assert {f"eval_{n}" for n in ("ft_layers_n3_plain_s0", "ft_layers8x_latency_f0.7_plain_s0")} <= set(by)
    without = {st.name for st in _plan(tmp_path, layer_rows=False)}
    assert without == {n for n in by if "layers" not in n}  # the other stages keep their names
    assert not any("layers" in st.name for st in _plan(tmp_path, option_sets=("default",)))
    assert bf.parse_args(["--no-layer-rows"]).no_layer_rows


def test_layer_rows_cost_under_a_quarter_more_time(tmp_path):
    widths = {f: f"cfgs/yolov5n_w{f}.yaml" for f in (0.7, 0.5, 0.3)}
    costs = {"w0.7": 0.74, "w0.5": 0.57, "w0.3": 0.43}
    s = fs.Settings(budget=fs.pipeline_budget())
    with_rows = fs.estimate_seconds(fs.build_plan(s, tmp_path, widths, costs), 40.0, bf.OTHER_SECONDS)
    without = fs.estimate_seconds(fs.build_plan(replace(s, layer_rows=False), tmp_path, widths, costs), 40.0,
                                  bf.OTHER_SECONDS)
    assert without < with_rows < 1.25 * without


def test_layer_target_lands_the_whole_model_at_the_point(tmp_path):
    folder = tmp_path / "prune_layers_n3"
    folder.mkdir()
    with pytest.raises(RuntimeError, match="no layer-pruning report"):
        fs.layer_target(folder, 0.5)
    (folder / "layer_3_last.json").write_text(json.dumps({"figures": {"flops": {"ratio": 0.8}}}))
    (folder / "layer_3_last.pt").write_text("x")
    assert fs.layer_target(folder, 0.5) == "0.625" and fs.layer_target(folder, 0.9) == "1"
    cmd = ("py", "--target-flops", "{layer_target:prune_layers_n3:0.3}", "--weights", "{pruned:prune_layers_n3}")
    assert fs.resolve(cmd, tmp_path, lambda: "") == ["py", "--target-flops", "0.375", "--weights",
                                                     str(folder / "layer_3_last.pt")]


def test_layer_stages_run_on_a_tiny_model(tmp_path):
    """The two layer-pruning prune commands of the plan, run on a fake-sparse yolov5n at 64 px: the
    channel step after the blocks lands the whole model at the FLOPs point."""
    s = fs.Settings(budget=BUDGET, img=64, flops=(0.5,), cfg="models/yolov5n.yaml", strategies=("8x",))
    stages = fs.build_plan(s, tmp_path, {0.5: "unused.yaml"}, {})
    model = fake_sparsity_(build_model(ROOT / "models" / "yolov5n.yaml", nc=5), img_size=64).eval()
    save_checkpoint(tmp_path / "sparse_latency" / "weights" / "last.pt", model, history=[{"step": "sparsity"}])
    picked = [replace(st, needs=tuple(n for n in st.needs if n != "sparse_latency"))
              for st in fs.select(stages, ["prune_layers8x_latency_f0.5"]) if st.kind == "prune"]
    assert [st.name for st in picked] == ["prune_layers_n3", "prune_layers8x_latency_f0.5"]
    run = fs.run_stages(picked, tmp_path, lambda: "", poll_s=0.1)
    assert not run.failed, run.failed
    layered = load_model(fs.find_pruned(tmp_path / "prune_layers_n3"), verbose=False)
    both = load_model(fs.find_pruned(tmp_path / "prune_layers8x_latency_f0.5"), verbose=False)
    full = count_flops(model, 64)
    assert len(layered.cfg.layers) < len(model.cfg.layers) and len(both.cfg.layers) == len(layered.cfg.layers)
    assert 0.4 < count_flops(both, 64) / full <= 0.5 + 1e-3
    entry = torch.load(fs.find_pruned(tmp_path / "prune_layers8x_latency_f0.5"), weights_only=True)["history"][-1]
    assert entry["settings"]["latency_aware"] is True and entry["settings"]["layers"] == 3


def test_layer_rows_take_their_measured_flops_as_point_and_render_distinctly(tmp_path):
    rows = _rows()
    extra = {**rows[2], "label": "ours layers (3 residual blocks), plain", "method": "ours layers", "point": None,
             "point_from_flops": True, "flops_ratio": 0.9043}
    rows += [extra, {**rows[2], "label": "ours layers+8x latency, plain", "method": "ours layers+8x latency"}]
    bf.measured_points(rows)
    assert extra["point"] == 0.904 and rows[2]["point"] == 0.3
    assert bf.flops_warnings(rows) == []
    table = bf.format_table(rows)
    assert "| ours layers (3 residual blocks), plain | 0.904 |" in table and "ours layers+8x latency, plain" in table
    body = "\n".join(urr.render_frontier({"rows": rows, "settings": {}}))
    assert "ours layers (3 residual blocks), plain" in body and "ours layers+8x latency, plain" in body


# ------------------------------------------------------------------------------------ following the pipeline
def _flag(st: fs.Stage, flag: str) -> str:
    return st.cmd[st.cmd.index(flag) + 1]


def test_sparsity_stages_use_the_pipelines_sparsity_recipe(tmp_path):
    by = {st.name: st for st in _plan(tmp_path, optimizer="AdamW", sp_optimizer="SGD", sp_hyp="sp.yaml",
                                      hyp="scratch.yaml", ft_hyp="ft.yaml")}
    for name in ("sparse_default", "sparse_latency", "tp_sparse"):  # ours and Torch-Pruning's regulariser
        assert (_flag(by[name], "--optimizer"), _flag(by[name], "--hyp")) == ("SGD", "sp.yaml"), name
    for name in ("base", "scratch_src_s0", "scratch_w0.3_s0"):
        assert (_flag(by[name], "--optimizer"), _flag(by[name], "--hyp")) == ("AdamW", "scratch.yaml"), name
    for name in ("ft_8x_latency_f0.3_plain_s0", "ft_layers_n3_plain_s0", "tp_ft_f0.3_plain_s0"):
        assert (_flag(by[name], "--optimizer"), _flag(by[name], "--hyp")) == ("AdamW", "ft.yaml"), name


def test_ft_cos_lr_reaches_every_finetuning_and_nothing_else(tmp_path):
    assert fs.settings_from_pipeline(BUDGET).ft_cos_lr is (fs.pipeline_defaults()["ft_cos_lr"] == "1")
    assert fs.settings_from_pipeline(BUDGET, ft_cos_lr=True).ft_cos_lr is True
    with pytest.raises(ValueError, match="0/1"):
        fs._switch("yes")
    linear = {st.name: st for st in _plan(tmp_path, scratch_cos_lr=False)}
    cosine = {st.name: st for st in _plan(tmp_path, ft_cos_lr=True, scratch_cos_lr=False)}
    assert linear.keys() == cosine.keys()
    finetunes = {n for n, st in linear.items() if st.kind == "finetune"}
    assert {"ft_8x_default_f0.3_distill_s0", "ft_layers_n3_plain_s0", "tp_ft_f0.7_plain_s0"} <= finetunes
    for name in linear:
        assert "--cos-lr" not in linear[name].cmd, name
        assert ("--cos-lr" in cosine[name].cmd) == (name in finetunes), name
    changed = {n for n in linear if fs.fingerprints(list(linear.values()))[n] != fs.fingerprints(list(cosine.values()))[n]}
    assert finetunes <= changed and not changed & {"base", "sparse_default", "tp_sparse", "prune_8x_default_f0.3"}


def test_width_scaled_models_train_with_both_schedules_and_compare_at_their_best(tmp_path):
    by = {st.name: st for st in _plan(tmp_path)}
    for point in ("0.7", "0.3"):
        linear, cosine = by[f"scratch_w{point}_s0"], by[f"scratch_w{point}_cos_s0"]
        assert "--cos-lr" not in linear.cmd and "--cos-lr" in cosine.cmd
        assert [c.replace("_cos_s0", "_s0") for c in cosine.cmd if c != "--cos-lr"] == list(linear.cmd)
        assert cosine.row["label"] == linear.row["label"] + ", cosine lr" and cosine.row["point"] == linear.row["point"]
        # one method (the comparisons pick the stronger schedule), two plot series (a line per schedule)
        assert cosine.row["method"] == linear.row["method"] and cosine.row["series"] != linear.row["series"]
    assert "scratch_src_cos_s0" not in by  # the unpruned source model: one schedule (the teacher, the reference)
    assert not any(n.endswith("_cos_s0") for n in {st.name for st in _plan(tmp_path, scratch_cos_lr=False)})
    rows = [{"method": "ours 8x default", "label": "ours", "point": 0.5, "mAP50-95": 0.70, "mAP50": 0.9},
            {"method": "trained from scratch", "label": "w", "point": 0.5, "mAP50-95": 0.68, "mAP50": 0.9},
            {"method": "trained from scratch", "label": "w, cosine lr", "point": 0.5, "mAP50-95": 0.72, "mAP50": 0.9}]
    comp = bf.comparisons(rows, [0.5], "ours 8x default")[0]["versus"]
    assert [(v["label"], v["verdict"]) for v in comp] == [("w, cosine lr", "MISSED")]  # the stronger scratch row
    rows[2]["mAP50-95"] = 0.60
    assert [(v["label"], v["verdict"]) for v in bf.comparisons(rows, [0.5], "ours 8x default")[0]["versus"]] == \
        [("w", "met")]


def test_rows_follow_the_source_model_and_the_reference_cfgs(tmp_path):
    s = _settings(cfg="models/yolov5s.yaml", reference_cfgs=("models/yolov5m.yaml", "models/yolov5n.yaml"))
    widths = {0.7: str(tmp_path / "yolov5s_w0.4.yaml"), 0.3: str(tmp_path / "yolov5s_w0.19.yaml")}
    stages = fs.build_plan(s, tmp_path, widths, {"yolov5m": 2.5, "yolov5n": 0.4, "w0.3": 0.3})
    by = {st.name: st for st in stages}
    assert by["base"].row["label"] == "yolov5s, pretraining only (4 epochs)"
    assert _flag(by["base"], "--cfg") == "models/yolov5s.yaml" and by["scratch_src_s0"].row["label"] == "yolov5s"
    for stem, cost in (("yolov5m", 2.5), ("yolov5n", 0.4)):
        st = by[f"scratch_{stem}_s0"]
        assert _flag(st, "--cfg") == f"models/{stem}.yaml" and st.row["label"] == stem and st.cost == cost
        assert not st.row["reference"] and st.row["point"] is None and st.epochs == BUDGET.total
        assert f"eval_scratch_{stem}_s0" in by
    assert by["scratch_w0.3_s0"].row["label"] == "yolov5s width 0.19" and by["scratch_w0.3_s0"].cost == 0.3
    assert by["scratch_w0.7_s0"].cost == 1.0  # no cost given: a source-model epoch
    assert [st.name for st in stages if st.row.get("reference")] == ["scratch_src_s0"]
    plain = _plan(tmp_path)
    assert not any(st.name.startswith("scratch_yolov5") for st in plain)  # no reference cfgs by default
    assert "prune_layers_n10" in {st.name for st in fs.build_plan(replace(s, cfg="models/yolov5m.yaml"),
                                                                 tmp_path, widths, {})}  # blocks counted per cfg


def test_settings_follow_the_pipeline_unless_overridden(monkeypatch):
    monkeypatch.setattr(bf, "torch_pruning_available", lambda: False)
    s = bf.make_settings(bf.parse_args([]))
    d = fs.pipeline_defaults()
    assert s.cfg == d["cfg"] == "models/yolov5n.yaml" and s.budget == fs.pipeline_budget() and s.reference_cfgs == ()
    assert (s.optimizer, s.sp_optimizer, s.sp_hyp) == (d["optimizer"], d["sp_optimizer"], d["sp_hyp"])
    s = bf.make_settings(bf.parse_args(["--cfg", "models/yolov5s.yaml", "--epochs-sparse", "3", "--optimizer", "SGD",
                                        "--reference-cfgs", "models/yolov5n.yaml"]))
    assert s.cfg == "models/yolov5s.yaml" and s.budget == fs.Budget(base=30, sparse=3, finetune=10)
    assert (s.optimizer, s.sp_optimizer) == ("SGD", "SGD") and s.reference_cfgs == ("models/yolov5n.yaml",)
    assert bf.make_settings(bf.parse_args(["--quick"])).budget == bf.QUICK_BUDGET
    with pytest.raises(bf.UserError, match="source model"):
        bf.make_settings(bf.parse_args(["--reference-cfgs", "models/yolov5s.yaml", "models/yolov5n.yaml"]))
    with pytest.raises(bf.UserError, match="--reference-cfgs models/nothing.yaml"):
        bf.make_settings(bf.parse_args(["--reference-cfgs", "models/nothing.yaml"]))
    with pytest.raises(SystemExit):
        bf.parse_args(["--reference-cfgs", "models/yolov5s.yaml", "other/yolov5s.yaml"])  # rows named by stem


def test_plan_prints_the_time_per_source_model_epoch(tmp_path, capsys):
    stages = [fs.Stage("a", "train", (), epochs=10, cost=0.5), fs.Stage("b", "eval", ())]
    bf.print_plan(stages, tmp_path, 16.0, "yolov5n")
    out = capsys.readouterr().out
    assert "5 yolov5n-epoch equivalents" in out and "16 s per yolov5n epoch" in out
    assert f"{(5 * 16 + bf.OTHER_SECONDS['eval']) / 3600:.2f} h" in out


def test_torch_pruning_sparsity_stage_trains_with_the_engine(tmp_path):
    """The Torch-Pruning sparsity stage's command (frontier_tp.py sparsity) runs on the training engine:
    one epoch on 8 images at 64 px, and its regulariser is recorded in the checkpoint."""
    pytest.importorskip("torch_pruning")
    nc = len(bf.load_data_names("data/builtin.yaml"))
    save_checkpoint(tmp_path / "base.pt", build_model(ROOT / "models" / "yolov5n.yaml", nc=nc), history=[])
    s = fs.Settings(budget=fs.Budget(base=1, sparse=1, finetune=1), img=64, max_train_images=8, sp_optimizer="SGD")
    (stage,) = [st for st in fs.tp_stages(s, tmp_path) if st.name == "tp_sparse"]
    args = list(stage.cmd[2:])
    args[args.index("--weights") + 1] = str(tmp_path / "base.pt")
    assert frontier_tp.main(args) == 0
    hist = torch.load(tmp_path / "tp_sparse" / "weights" / "last.pt", weights_only=False)["history"][-1]
    assert hist["regulariser"].startswith("torch-pruning") and hist["scale"] == fs.TP_REG


def test_comparisons_carry_the_standard_error_of_seeded_differences():
    def row(label, method, maps):
        m, std = ac.mean_std(maps)
        return {"label": label, "method": method, "point": 0.3, "mAP50-95": m, "mAP50-95_std": std, "mAP50": m,
                "per_seed": [{"seed": i, "mAP50-95": x} for i, x in enumerate(maps)], "flops_ratio": 0.3,
                "cpu_ratio": 0.5, "onnx_ratio": 0.5}

    rows = [row("ours", "ours 8x default", [0.70, 0.74]), row("w", "trained from scratch", [0.76, 0.80, 0.78]),
            row("tp", "Torch-Pruning BNScalePruner", [0.60])]
    comps = bf.comparisons(rows, [0.3], "ours 8x default")
    by = {v["control"]: v for v in comps[0]["versus"]}
    scratch, tp = by["smaller model trained from scratch"], by["Torch-Pruning"]
    # sqrt(s_ours^2 / 2 + s_w^2 / 3), sample standard deviations 0.02 * sqrt(2) and 0.02
    assert scratch["delta_mAP50-95_se"] == pytest.approx(math.sqrt(0.0008 / 2 + 0.0004 / 3))
    assert scratch["seeds"] == [2, 3] and scratch["verdict"] == "MISSED"
    assert tp["delta_mAP50-95_se"] is None and tp["seeds"] == [2, 1]  # one Torch-Pruning run: no spread to give
    line = bf.format_comparisons(comps)[0]
    assert f"-0.060 ± {scratch['delta_mAP50-95_se']:.3f} (s.e. over seeds)" in line
    body = "\n".join(urr._frontier_comparisons({"comparisons": comps, "pipeline_method": "ours 8x default"}))
    assert f"| {scratch['delta_mAP50-95_se']:.3f} (2, 3) |" in body and "| - (2, 1) |" in body
    unseeded = [{**r, "per_seed": r["per_seed"][:1], "mAP50-95_std": None} for r in rows]
    body = "\n".join(urr._frontier_comparisons({"comparisons": bf.comparisons(unseeded, [0.3], "ours 8x default")}))
    assert "s.e." not in body  # single-seed results keep the table they had


def test_stage_scripts_are_named_relative_to_the_repository(tmp_path):
    """The stages run in the repository root; naming their scripts relative to it keeps the stages'
    fingerprints the same wherever the checkout lies (a moved clone finds its finished stages)."""
    stages = _plan(tmp_path)
    for st in stages:
        assert not Path(st.cmd[1]).is_absolute() and (ROOT / st.cmd[1]).is_file(), st.name
    tp_scripts = [st.cmd[1] for st in stages if st.name in ("tp_sparse", "tp_prune_f0.3")]
    assert tp_scripts == ["benchmarks/frontier_tp.py"] * 2


def test_the_report_needs_one_finished_seed_of_the_latency_reference(tmp_path):
    stages = _plan(tmp_path, seeds=(0, 1))
    assert {"scratch_src_s0", "scratch_src_s1"} <= {st.name for st in stages}
    assert not bf.reference_finished(stages, {"scratch_src_s0", "scratch_src_s1"})  # trained, not evaluated
    assert bf.reference_finished(stages, {"eval_scratch_src_s0"})  # seed 1 still running: ratios can be taken
    assert not bf.reference_finished(stages, {f"eval_{st.name}" for st in stages if not st.row.get("reference")})
