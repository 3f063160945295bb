"""scripts/update_readme_results.py: each renderer on a minimal file of its benchmark's layout."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_pipeline  # noqa: E402
import update_readme_results as urr  # noqa: E402


def _stage(mAP50, mAP, params, flops, cpu_ms, epochs=None, **extra):
    s = {"mAP50": mAP50, "mAP50-95": mAP, "params": params, "flops": flops, "cpu_ms": cpu_ms, "gpu_ms": None,
         "size_mb": params * 4e-6, "ratio": {"params": params / 2e6, "flops": flops / 4e8, "cpu_ms": cpu_ms / 10},
         **extra}
    return s if epochs is None else {**s, "epochs": epochs}


def _text(lines):
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ pipeline
def new_pipeline():
    stages = {"baseline": _stage(0.9, 0.6, 2e6, 4e8, 10.0, 30),
              "sparse": _stage(0.88, 0.58, 2e6, 4e8, 10.0, 45),
              "control_sparse": _stage(0.91, 0.61, 2e6, 4e8, 10.0, 45),
              "finetuned": _stage(0.89, 0.59, 5e5, 1.6e8, 5.0, 55),
              "control_final": _stage(0.92, 0.62, 2e6, 4e8, 10.0, 55),
              "scratch_small": _stage(0.85, 0.55, 6e5, 1.6e8, 5.5, 55),
              "INT8 (ONNX Runtime)": _stage(0.87, 0.57, 5e5, 1.6e8, 2.0, 55, runtime="onnxruntime", split="test",
                                            fp32_runtime={"mAP50": 0.89, "mAP50-95": 0.59, "cpu_ms": 4.0})}
    comps = [{"stage": "sparse", "control": "control_sparse", "diff": -0.03, "matched": True, "met": False,
              "text": "sparse (-sr) vs control_sparse, both 45 epochs, test split: mAP@.5:.95 -0.0300"},
             {"stage": "finetuned", "control": "scratch_small", "diff": 0.04, "matched": True, "met": True,
              "text": "final vs scratch_small, both 55 epochs, test split: mAP@.5:.95 +0.0400"},
             {"stage": "finetuned", "control": "baseline", "metric": "cpu_ms", "met": None,
              "text": "final CPU latency: 0.500 of the baseline's (reported, no target)"}]
    return {"img": 160, "data": "data/builtin.yaml", "split": "test",
            "split_note": "accuracy on the held-out test split (val selected each run's best.pt)",
            "stages": stages, "timings": {"train": 300}, "comparisons": comps,
            "not_compared": ["finetuned+distill vs finetuned: not compared (finetuned was not run)"],
            "targets": {c["text"]: c["met"] for c in comps if c["met"] is not None},
            "settings": {"base": {"epochs": 30}, "sparse": {"epochs": 15, "scale": 0.003}}}


def test_pipeline_renders_controls_epochs_split_and_comparisons():
    body = _text(urr.render_pipeline(new_pipeline()))
    assert "| stage | epochs | mAP@.5 (test) | mAP@.5:.95 (test) |" in body
    assert "| control_sparse | 45 | 0.910 | 0.610 |" in body
    assert "| scratch_small | 55 | 0.850 | 0.550 |" in body
    assert "| INT8 (ONNX Runtime) | 55 | 0.870 | 0.570 |" in body
    assert "Accuracy on the held-out test split" in body
    assert "INT8 (ONNX Runtime): latency measured with onnxruntime" in body and "4.0 ms" in body
    assert "Comparisons on the test split, each with its matched control:" in body
    assert "- MISSED: sparse (-sr) vs control_sparse, both 45 epochs" in body
    assert "- met: final vs scratch_small" in body
    assert "- reported: final CPU latency: 0.500" in body
    assert "- finetuned+distill vs finetuned: not compared" in body
    assert "PASS" not in body and "Targets:" not in body  # the comparisons replace the old targets
    assert "schedule" not in body  # reports that did not record it say nothing of it
    d = new_pipeline()
    d["settings"]["finetune"] = {"epochs": 10, "cos_lr": True}
    assert "finetune 10 epochs (cosine learning-rate schedule)" in _text(urr.render_pipeline(d))
    d["settings"]["finetune"]["cos_lr"] = False
    assert "finetune 10 epochs (linear learning-rate schedule)" in _text(urr.render_pipeline(d))


def test_pipeline_verdicts_are_the_benchmarks_own():
    d = new_pipeline()
    body = _text(urr.render_pipeline(d))
    for line in bench_pipeline.comparison_lines(d):  # "met       text", as bench_pipeline prints them
        word, text = line.split(None, 1)
        assert (f"- {word}: {text}" if word != "-" else f"- {text}") in body


def test_readme_paths_and_print_mode(tmp_path, capsys):
    assert urr.readme_path(urr.ROOT / "benchmarks" / "results" / "a.png") == "benchmarks/results/a.png"
    assert urr.readme_path("/other/checkout/benchmarks/results/a.png") == "benchmarks/results/a.png"
    assert urr.readme_path("/other/place/a.png") == "/other/place/a.png"
    assert urr.short_path("/w/other/data/builtin.yaml") == "data/builtin.yaml"  # another checkout's data
    assert urr.short_path("/w/x/runs/study/s/weights/last.pt") == "runs/study/s/weights/last.pt"
    assert urr.short_path("/scratch/a/b/weights/last.pt") == ".../b/weights/last.pt"
    assert urr.short_path("models/yolov5n.yaml") == "models/yolov5n.yaml"
    readme = tmp_path / "README.md"
    readme.write_text("# t\n\n## Results\n\nold\n")
    (tmp_path / "latency_target.json").write_text(json.dumps(latency_target()))
    assert urr.main(["--readme", str(readme), "--results", str(tmp_path), "--print"]) == 0
    assert "### Pruning to a latency target" in capsys.readouterr().out
    assert readme.read_text() == "# t\n\n## Results\n\nold\n"  # --print changes nothing


def test_pipeline_comparison_without_text_and_unmatched_epochs():
    d = new_pipeline()
    d["comparisons"] = [{"stage": "finetuned", "control": "control_final", "metric": "mAP50-95", "diff": -0.0123,
                         "matched": False, "met": False}]
    body = _text(urr.render_pipeline(d))
    assert "- MISSED: finetuned vs control_final: mAP50-95 -0.012 (epochs NOT matched)" in body


def test_old_pipeline_layout_still_renders_its_targets():
    d = new_pipeline()
    for key in ("split", "split_note", "comparisons", "not_compared"):
        del d[key]
    for s in d["stages"].values():
        s.pop("epochs")
    d["targets"] = {"baseline mAP@0.5 >= 0.7": True, "final mAP@0.5 within 0.03 of baseline": False}
    body = _text(urr.render_pipeline(d))
    assert "| stage | epochs | mAP@.5 (val) | mAP@.5:.95 (val) |" in body  # older reports measured on val
    assert "| baseline | - | 0.900 | 0.600 |" in body
    assert "- met: baseline mAP@0.5 >= 0.7" in body and "- MISSED: final mAP@0.5 within 0.03" in body
    assert "PASS" not in body and "Accuracy on the val split" in body


# ------------------------------------------------------------------------------------ sparsity
def _bim(low, valley, high, bimodal):
    return {"low_share": low, "valley_share": valley, "high_share": high, "valley_ratio": 0.1, "sarle_bc": 0.7,
            "bimodal": bimodal}


def new_sparsity():
    rows = {"baseline": {"gamma_mean": 0.99, "mAP50": 0.9, "mAP50-95": 0.6, "scale": 0.0, "optimizer": "AdamW",
                         "bimodality": _bim(0.0, 0.01, 0.99, False)},
            "sparsity (-sr)": {"gamma_mean": 0.08, "mAP50": 0.88, "mAP50-95": 0.5912, "scale": 0.003,
                               "optimizer": "AdamW", "bimodality": _bim(0.62, 0.05, 0.33, True),
                               "control": "matched control (no -sr)",
                               "vs_control": {"slope": 1.013, "intercept": -0.631, "rank_corr": 0.9}},
            "matched control (no -sr)": {"gamma_mean": 0.98, "mAP50": 0.9, "mAP50-95": 0.6012, "scale": 0.0,
                                         "optimizer": "AdamW", "bimodality": _bim(0.0, 0.02, 0.98, False)},
            "grid 1: SGD s=0.01 (-sr)": {"gamma_mean": 0.05, "mAP50": 0.8, "mAP50-95": 0.5, "scale": 0.01,
                                         "penalty": "hoyer", "optimizer": "SGD", "hyp": "/x/data/hyps/hyp.scratch.yaml",
                                         "cos_lr": True, "bimodality": _bim(0.7, 0.04, 0.26, True),
                                         "control": "grid 1: SGD s=0.01 (control)"},
            "grid 1: SGD s=0.01 (control)": {"gamma_mean": 0.9, "mAP50": 0.81, "mAP50-95": 0.52, "scale": 0.0,
                                             "optimizer": "SGD", "bimodality": _bim(0.0, 0.0, 1.0, False)}}
    return {"split": "test", "settings": {"epochs": 15, "img": 160, "batch_size": 16, "nbs": 16,
                                          "optimizer": "AdamW", "seed": 0, "hyp": "data/hyps/hyp.finetune.yaml"},
            "layers": [1, 2, 3], "rows": rows,
            "targets": {"-sr: |gamma| bimodal": True, "-sr: mAP@.5:.95 within 0.02 of the matched control": False},
            "hist_png": "/elsewhere/checkout/benchmarks/results/sparsity_hist.png"}


def test_sparsity_renders_bimodality_matched_control_and_histogram():
    body = _text(urr.render_sparsity(new_sparsity()))
    assert ("| model | optimizer | -sr scale | lr schedule / hyp | mean abs gamma | pile | valley | group | bimodal "
            "| vs control: slope, intercept, rank corr | mAP@.5:.95 (test) | vs matched control |") in body
    assert ("| sparsity (-sr) | AdamW | 0.003 | - | 0.080 | 62.0% | 5.0% | 33.0% | yes | 1.01, -0.63, 0.90 | 0.591 "
            "| -0.010 |") in body
    assert "| matched control (no -sr) | AdamW | off | - | 0.980 | 0.0% | 2.0% | 98.0% | no | - | 0.601 | - |" in body
    assert ("| grid 1: SGD s=0.01 (-sr) | SGD | 0.01 (hoyer) | cosine lr, hyp.scratch.yaml | 0.050 | 70.0% | 4.0% | 26.0% "
            "| yes | - | 0.500 | -0.020 |") in body
    assert "mAP on the test split" in body and "hyp `hyp.finetune.yaml`" in body
    assert "- met: -sr: |gamma| bimodal" in body
    assert "- NOT met: -sr: mAP@.5:.95 within 0.02" in body and "PASS" not in body
    assert "(benchmarks/results/sparsity_hist.png)" in body  # relative to the README, from any checkout
    assert "pruned the same way" not in body
    down = {**new_sparsity(), "downstream": {
        "-sr, pruned + finetuned": {"mAP50": 0.95, "mAP50-95": 0.697, "control": "control, pruned + finetuned"},
        "control, pruned + finetuned": {"mAP50": 0.91, "mAP50-95": 0.601}}}
    body = _text(urr.render_sparsity(down))
    assert "| -sr, pruned + finetuned | 0.950 | 0.697 | +0.096 |" in body and "| control, pruned + finetuned |" in body


def test_sparsity_without_schedules_has_no_schedule_column():
    d = new_sparsity()
    for name in [n for n in d["rows"] if n.startswith("grid")]:
        del d["rows"][name]
    del d["hist_png"]
    body = _text(urr.render_sparsity(d))
    assert "lr schedule" not in body and "![" not in body
    assert "| sparsity (-sr) | AdamW | 0.003 | 0.080 |" in body
    assert "from the pipeline's baseline" in body  # files written before the baseline's epochs were recorded
    assert "from a baseline trained 100 epochs" in _text(urr.render_sparsity({**d, "base_epochs": 100}))


# ------------------------------------------------------------------------------------ prune latency
def _lat_row(table, label, flops, ratio):
    return {"table": table, "label": label, "params_ratio": flops, "flops_ratio": flops, "latency_ms": 100 * ratio,
            "latency_ratio": ratio}


def prune_latency(comparison=True):
    rows = [_lat_row("original", "original", 1.0, 1.0), _lat_row("strategies", "strategy 1, ratio 0.3", 0.6, 0.7),
            _lat_row("target", "Torch-Pruning BNScalePruner", 0.45, 0.52),
            _lat_row("target", "ours: 8x --latency-aware", 0.45, 0.45)]
    size = {"rows": rows}
    if comparison:
        size["comparison"] = {"ours": "ours: 8x --latency-aware", "ours_latency_ratio": 0.45,
                              "ours_flops_ratio": 0.45, "aim": 0.5175, "meets_aim": True,
                              "torch_pruning_latency_ratio": 0.5, "torch_pruning_flops_ratio": 0.45}
    return {"settings": {"cfg": "models/yolov5s.yaml", "weights": "runs/s_sparse/weights/last.pt",
                         "target_flops": 0.45}, "sizes": {"320": size}}


def test_prune_latency_trained_shows_the_target_table_and_the_comparison():
    body = _text(urr.render_prune_latency_trained(prune_latency()))
    assert "`runs/s_sparse/weights/last.pt` pruned to 0.45 of the FLOPs, 320 px" in body
    assert "| ours: 8x --latency-aware | 0.450 | 0.450 | 45.0 | 0.450 |" in body
    assert "| Torch-Pruning BNScalePruner |" in body
    assert "strategy 1, ratio 0.3" not in body and "| original |" not in body
    assert ("- 320 px: `ours: 8x --latency-aware` latency ratio 0.450 (FLOPs 0.450) vs Torch-Pruning BNScalePruner "
            "0.500 (FLOPs 0.450) = 0.90x Torch-Pruning's latency; aim 0.5175: met") in body
    assert "Ours against Torch-Pruning" not in _text(urr.render_prune_latency_trained(prune_latency(False)))
    d = prune_latency()
    d["sizes"]["640"] = {"rows": [_lat_row("original", "original", 1.0, 1.0)]}
    assert "640 px" not in _text(urr.render_prune_latency_trained(d))  # no model at the target: no empty table


def test_prune_latency_artificial_keeps_every_row():
    d = prune_latency()
    d["settings"]["weights"] = None
    body = _text(urr.render_prune_latency(d))
    assert "yolov5s.yaml with artificially sparse gammas, 320 px" in body
    assert "strategy 1, ratio 0.3" in body and "| original |" in body and "Ours against" not in body


# ------------------------------------------------------------------------------------ latency target
def latency_target():
    ok = {"img": 320, "runtime": "onnxruntime", "target": 0.5, "exit": 0, "report": {"latency": {"achieved": 0.4938}},
          "fresh": {"ratio": 0.4944, "ratio_p10": 0.4028, "ratio_p90": 0.5422}, "met": True}
    slow = {"img": 640, "runtime": "torch", "target": 0.4, "exit": 0, "report": {"latency": {"achieved": 0.41}},
            "fresh": {"ratio": 0.47, "ratio_p10": 0.45, "ratio_p90": 0.5}, "met": False}
    failed = {"img": 320, "runtime": "openvino", "target": 0.5, "exit": 1, "report": None}
    bad = {"exit": 2, "error_lines": ["prog: error: --target-ms 0.01 cannot be reached"], "traceback": False,
           "written": [], "ok": True}
    return {"weights": "w.pt", "tolerance": 0.05, "rounds": 40, "rows": [ok, slow, failed], "infeasible": bad}


def test_latency_target_table_and_infeasible_line():
    body = _text(urr.render_latency_target(latency_target()))
    assert "| runtime | px | target | ratio (prune script) | ratio (fresh process) [p10, p90] | met |" in body
    assert "| onnxruntime | 320 | 0.5 | 0.494 | 0.494 [0.403, 0.542] | met |" in body
    assert "| torch | 640 | 0.4 | 0.410 | 0.470 [0.450, 0.500] | NOT met |" in body
    assert "| openvino | 320 | 0.5 | - | - | prune failed (exit 1) |" in body
    assert "at most the target + 0.05" in body
    assert ('An infeasible `--target-ms` (ok): exit 2, 1 error line(s), nothing written: '
            '"prog: error: --target-ms 0.01 cannot be reached"') in body
    d = latency_target()
    d["infeasible"].update(ok=False, written=["x.pt"], traceback=True)
    assert "(NOT ok): exit 2, 1 error line(s), wrote x.pt, traceback shown" in _text(urr.render_latency_target(d))


# ------------------------------------------------------------------------------------ deploy, channels-last
def deploy():
    lat = {"median_ms": 12.34, "p10_ms": 12.0, "p90_ms": 13.0}
    res = {"baseline / PyTorch FP32": {"mAP50": 0.9, "mAP50-95": 0.6, "1 thread": lat,
                                       "16 threads": {**lat, "median_ms": 3.21}},
           "pruned / ONNX Runtime INT8": {"mAP50": 0.85, "mAP50-95": 0.55, "1 thread": lat,
                                          "16 threads": {**lat, "median_ms": 1.0}, "size_mb": 1.234}}
    return {"machine": "Test CPU", "img": 160, "task": "test", "data": "data/builtin.yaml", "calib": 300,
            "runs": 50, "quick": False, "results": res}


def test_deploy_table():
    body = _text(urr.render_deploy(deploy()))
    assert ("| model | runtime | precision | mAP@.5 | mAP@.5:.95 | ms 1 thread | ms 16 threads | size |") in body
    assert "| baseline | PyTorch | FP32 | 0.900 | 0.600 | 12.3 | 3.2 | - |" in body
    assert "| pruned | ONNX Runtime | INT8 | 0.850 | 0.550 | 12.3 | 1.0 | 1.23 MB |" in body
    assert "mAP on the test split" in body and "300 train images" in body


def test_channels_last_tables():
    err = {"input": {"max_abs": 1e-5, "rel": 2e-6}, "bn_weight": {"max_abs": 3e-4, "rel": 4e-6}}
    d = {"settings": {"cfg": "models/yolov5n.yaml", "batch": 16, "rounds": 40},
         "precision": [{"size": 80, "default": err, "channels_last": err}],
         "speed": [{"size": 160, "median_step_s": {"default": 0.325, "channels_last": 0.277},
                    "ratio_wall": {"median": 0.8425, "p10": 0.768, "p90": 0.888, "ratios": [0.8]},
                    "ratio_cpu": {"median": 0.847, "p10": 0.834, "p90": 0.868}}]}
    body = _text(urr.render_channels_last(d))
    assert "| 80 | channels-last | 1.00e-05 | 2.00e-06 | 3.00e-04 | 4.00e-06 |" in body
    assert "| 160 | 325.0 | 277.0 | 0.843 [0.768, 0.888] | 0.847 [0.834, 0.868] |" in body


# ------------------------------------------------------------------------------------ assembling
def test_penalties_intro_names_the_shared_baseline_steps_and_split():
    d = {"run": str(ROOT / "runs" / "pipeline" / "default"), "seeds": [0, 1], "split": "test", "finetune_epochs": 10,
         "settings": {"epochs": 15, "img": 160, "optimizer": "AdamW", "scale": 0.03},
         "prune": {"strategy": "8x", "ratio": 0.55, "settings": {"target": {"metric": "flops", "target": 0.45}}},
         "table_markdown": "| penalty | seed |\n|---|---|\n| l1 | 0 |"}
    body = _text(urr.render_penalties(d))
    assert "(`runs/pipeline/default`): 15 epochs of sparsity training at 160 px with AdamW and scale 0.03" in body
    assert "strategy 8x to 0.45 of the flops), then 10 epochs of finetuning; seeds 0, 1; mAP@.5:.95 on the test" in body
    assert "| l1 | 0 |" in body
    d["finetune_cos_lr"] = True
    assert "then 10 epochs of finetuning with the cosine learning-rate schedule; seeds" in _text(urr.render_penalties(d))
    pipe = new_pipeline()
    pipe["settings"]["sparse"].update(sr_penalty="polarization", sr_polar_t=1.0, sr_polar_mean="layer")
    assert "sparsity scale 0.003 with the polarization penalty (t 1, layer mean)" in _text(urr.render_pipeline(pipe))


def test_sections_order_and_stale_files_gone():
    assert list(urr.SECTIONS) == [
        "pipeline", "distill", "sparsity", "penalties", "pipeline_polarization", "sparsity_polarization",
        "sparsity_converged", "sparsity_quantile", "penalties_quantile",
        "frontier", "frontier_linear_finetune", "frontier_converged", "frontier_converged_ft35",
        "prune_latency_trained", "latency_target", "deploy", "prune_latency", "channels_last", "prune_time",
        "throughput", "onnx_latency"]
    assert urr.SECTIONS["prune_latency_trained"][0] == "CPU latency of pruned models: a sparsity-trained yolov5s"
    assert urr.SECTIONS["prune_latency"][0].endswith("artificially sparse gammas (speed only)")


def test_render_section_in_order_skipping_stale_malformed_and_quick_files(tmp_path, capsys):
    files = {"pipeline": new_pipeline(), "sparsity": new_sparsity(), "latency_target": latency_target(),
             "deploy": {"results": {"x / PyTorch FP32": "not a dict"}},  # malformed: left out with a warning
             "prune_latency_trained": prune_latency(), "channels_last": {"quick": True, "precision": []},
             "distill": {"references": {}}, "compression": {"baseline": {}}}
    for name, d in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(d))
    (tmp_path / "prune_latency.json").write_text("{broken")
    body = urr.render_section(urr.load_results(tmp_path))
    err = capsys.readouterr().err
    assert "deploy.json: unexpected layout" in err and "prune_latency.json: not readable JSON" in err
    assert "channels_last.json comes from a --quick smoke run" in err
    titles = [line[4:] for line in body.split("\n") if line.startswith("### ")]
    assert titles == ["The five-step pipeline", "Sparsity training with and without -sr",
                      "CPU latency of pruned models: a sparsity-trained yolov5s", "Pruning to a latency target"]
    assert "Accuracy vs compression" not in body and "plain vs distilled" not in body  # stale files: no section


# ------------------------------------------------------------------------------------ distillation
def test_distill_renders_its_table_and_signed_comparisons():
    d = {"split": "test", "seeds": [0, 1], "pruned_flops_ratio": 0.449, "teacher": "/x/wt/runs/pipeline/default/base/weights/best.pt",
         "settings": {"epochs": 10, "cos_lr": True}, "table_markdown": "| model | a |\n|---|---|\n| plain | 1 |",
         "comparisons": [{"text": "finetuned, distilled (mean) vs finetuned, plain: mAP@.5:.95 -0.0200", "met": False},
                         {"text": "finetuned, plain (mean) vs control_final: mAP@.5:.95 +0.0010", "met": True}]}
    body = _text(urr.render_distill(d))
    assert "0.449 of the FLOPs" in body and "10 epochs with the cosine learning-rate schedule" in body
    assert "`runs/pipeline/default/base/weights/best.pt`" in body and "seeds 0, 1" in body
    assert "| plain | 1 |" in body and "on the test split" in body
    assert "- MISSED: finetuned, distilled (mean) vs finetuned, plain: mAP@.5:.95 -0.0200" in body
    assert "- met: finetuned, plain (mean) vs control_final" in body and "PASS" not in body
    d["settings"]["cos_lr"] = False
    assert "10 epochs with the linear learning-rate schedule" in _text(urr.render_distill(d))
    del d["settings"]["cos_lr"]
    assert "schedule" not in _text(urr.render_distill(d))  # files that did not record it
