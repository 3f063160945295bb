"""The pipeline report's comparisons: each stage against its matched control, on a named split."""
import sys
from types import SimpleNamespace

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import pipeline_report as pr  # noqa: E402


def _row(map5095: float, epochs: int, params: int = 100, flops: int = 1000, map50: float | None = None) -> dict:
    return {"weights": "w.pt", "epochs": epochs, "mAP50": map5095 + 0.3 if map50 is None else map50,
            "mAP50-95": map5095, "params": params, "flops": flops, "size_mb": 1.0, "cpu_ms": 10.0, "gpu_ms": None}


def _stages(**maps) -> dict:
    """A full set of rows; ``maps`` overrides mAP@.5:.95 per row (names with '+' as '_plus_')."""
    m = {"baseline": 0.50, "sparse": 0.55, "control_sparse": 0.56, "pruned": 0.20, "finetuned": 0.58,
         "finetuned+distill": 0.57, "control_final": 0.60, "scratch_small": 0.59}
    m.update({k.replace("_plus_", "+"): v for k, v in maps.items()})
    ep = {"baseline": 30, "sparse": 45, "control_sparse": 45, "pruned": 45, "finetuned": 55,
          "finetuned+distill": 55, "control_final": 55, "scratch_small": 55}
    small = {"pruned", "finetuned", "finetuned+distill", "scratch_small"}
    return {k: _row(v, ep[k], params=40 if k in small else 100, flops=450 if k in small else 1000)
            for k, v in m.items()}


def _by_pair(checks: list[dict]) -> dict:
    return {(c["stage"], c["control"]): c for c in checks if "diff" in c}


def test_a_loss_is_called_a_loss_and_met_only_within_the_stated_target():
    checks = _by_pair(pr.comparisons(_stages(), "test"))
    final = checks[("finetuned", "control_final")]
    assert final["diff"] == pytest.approx(-0.02) and final["matched"]
    assert "a loss of 0.0200" in final["text"] and "-0.0200" in final["text"]
    assert "at least equal to control_final" in final["text"]
    assert final["met"] is False  # the final model has no tolerance: a loss is a miss
    tie = _by_pair(pr.comparisons(_stages(finetuned=0.60), "test"))[("finetuned", "control_final")]
    assert tie["met"] is True
    sparse = _by_pair(pr.comparisons(_stages(sparse=0.54), "test"))[("sparse", "control_sparse")]
    assert sparse["met"] is True and "at most 0.02 below control_sparse" in sparse["text"]  # exactly at it
    worse = _by_pair(pr.comparisons(_stages(finetuned=0.57), "test"))[("finetuned", "control_final")]
    assert worse["met"] is False and "a loss of 0.0300" in worse["text"]
    better = _by_pair(pr.comparisons(_stages(finetuned=0.63), "test"))[("finetuned", "control_final")]
    assert better["met"] is True and "a gain of 0.0300" in better["text"]


def test_final_must_match_scratch_small_and_distillation_must_beat_plain_finetuning():
    checks = _by_pair(pr.comparisons(_stages(), "test"))
    scratch = checks[("finetuned", "scratch_small")]
    assert scratch["diff"] == pytest.approx(-0.01) and scratch["met"] is False  # a small loss is still a loss
    assert "a loss of 0.0100" in scratch["text"] and "same FLOPs" in scratch["text"]
    assert "FLOPs" not in scratch["text"].split("same FLOPs")[1] and scratch["flops_ratio"] == 1
    assert "FLOPs 0.450x the control's" in checks[("finetuned", "control_final")]["text"]
    tie = _by_pair(pr.comparisons(_stages(scratch_small=0.58), "test"))[("finetuned", "scratch_small")]
    assert tie["met"] is True and "no difference" in tie["text"]
    distill = checks[("finetuned+distill", "finetuned")]
    assert distill["met"] is False and "a loss of 0.0100" in distill["text"]
    equal = _by_pair(pr.comparisons(_stages(finetuned_plus_distill=0.58), "test"))[("finetuned+distill", "finetuned")]
    assert equal["met"] is False  # distillation must be better, not as good
    sparse = checks[("sparse", "control_sparse")]
    assert sparse["met"] is True and "a loss of 0.0100" in sparse["text"] and "no -sr" in sparse["text"]


def test_final_is_compared_with_the_more_accurate_scratch_schedule():
    st = _stages()
    st["scratch_small_cos"] = {**st["scratch_small"], "mAP50-95": 0.62}
    by = _by_pair(pr.comparisons(st, "test"))
    assert ("finetuned", "scratch_small") not in by  # one comparison, with the stronger of the two
    c = by[("finetuned", "scratch_small_cos")]
    assert c["diff"] == pytest.approx(-0.04) and c["met"] is False and c["alternatives"] == ["scratch_small",
                                                                                              "scratch_small_cos"]
    assert "cosine lr), the more accurate of scratch_small and scratch_small_cos," in c["text"]
    st["scratch_small_cos"]["mAP50-95"] = 0.50  # the linear schedule was better: it is the control
    c = _by_pair(pr.comparisons(st, "test"))[("finetuned", "scratch_small")]
    assert c["diff"] == pytest.approx(-0.01) and "the more accurate of" in c["text"]
    del st["scratch_small"]  # only one schedule run: compared with it, no choice to mention
    c = _by_pair(pr.comparisons(st, "test"))[("finetuned", "scratch_small_cos")]
    assert c["diff"] == pytest.approx(0.08) and c["met"] is True and "the more accurate" not in c["text"]


def test_comparisons_name_the_split_and_say_when_epochs_differ():
    st = _stages()
    st["control_final"]["epochs"] = 30
    checks = pr.comparisons(st, "val")
    final = _by_pair(checks)[("finetuned", "control_final")]
    assert final["matched"] is False and "NOT matched: 55 vs 30 epochs" in final["text"]
    assert all(c["split"] == "val" and "val split" in c["text"] for c in _by_pair(checks).values())
    assert "both 45 epochs" in _by_pair(checks)[("sparse", "control_sparse")]["text"]


def test_size_checks_and_targets():
    st = _stages()
    checks = pr.comparisons(st, "test")
    size = {c["metric"]: c for c in checks if "diff" not in c}
    assert size["params"]["met"] and size["params"]["ratio"] == pytest.approx(0.4)
    assert size["flops"]["met"] and size["flops"]["ratio"] == pytest.approx(0.45)
    assert size["cpu_ms"]["met"] is None  # latency is reported, not judged
    assert size["mAP50"]["met"] is True and "test split" in size["mAP50"]["text"]
    t = pr.targets(checks)
    assert size["cpu_ms"]["text"] not in t and all(isinstance(v, bool) for v in t.values())
    assert t[_by_pair(checks)[("finetuned", "scratch_small")]["text"]] is False


def test_missing_controls_are_listed_not_compared():
    st = {k: v for k, v in _stages().items() if k not in ("control_sparse", "control_final", "scratch_small")}
    checks = pr.comparisons(st, "test")
    assert set(_by_pair(checks)) == {("finetuned+distill", "finetuned")}
    missing = pr.missing_controls(st)
    assert len(missing) == 3 and all("not compared" in m for m in missing)


def test_split_is_test_when_the_data_has_one_else_val():
    assert pr.choose_split(SimpleNamespace(test=["images/test"]), "auto") == "test"
    assert pr.choose_split(SimpleNamespace(test=None), "auto") == "val"
    assert pr.choose_split(SimpleNamespace(test=["images/test"]), "val") == "val"
    assert "held-out test" in pr.split_note("test") and "no test split" in pr.split_note("val")


def test_markdown_names_the_split_in_the_table_header_and_every_comparison(tmp_path):
    st = _stages()
    pr.ratios(st)
    checks = pr.comparisons(st, "val")
    report = {"machine": "m", "img": 64, "data": "d.yaml", "split": "val", "quick": False, "stages": st,
              "timings": {"train": 3}, "comparisons": checks, "not_compared": [], "targets": pr.targets(checks),
              "figures": {}}
    md = pr.markdown(report, tmp_path)
    assert "| stage | epochs | mAP@.5 (val) | mAP@.5:.95 (val) |" in md
    assert "no test split" in md and "## Comparisons (val split" in md
    lines = [x for x in md.splitlines() if x.startswith("- ")]
    assert any(x.startswith("- MISSED") and "scratch_small" in x for x in lines)
    assert any(x.startswith("- reported") and "CPU latency" in x for x in lines)
    assert "| control_final | 55 |" in md


def test_trained_epochs_add_up_the_training_steps():
    history = [{"step": "train", "epochs": 30, "epoch": 27}, {"step": "sparsity", "epochs": 15},
               {"step": "prune", "ratio": 0.5}, {"step": "finetune", "epochs": 10}]
    assert pr.trained_epochs(history) == 55
    assert pr.trained_epochs([]) == 0


def test_control_flags_are_optional_and_split_is_checked():
    need = ["--run", "r", "--base", "b", "--sparse", "s", "--pruned", "p", "--finetune", "f", "--distill", "d"]
    opt = pr.parse_args(need)
    assert opt.control_sparse is None and opt.scratch_small is None and opt.split == "auto"
    opt = pr.parse_args(need + ["--control-final", "cf", "--split", "test"])
    assert opt.control_final == "cf" and opt.split == "test"
    with pytest.raises(SystemExit):
        pr.parse_args(need + ["--split", "train"])


def test_bench_pipeline_collects_the_controls_and_names_the_split(tmp_path, capsys):
    import json

    import yaml
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_pipeline as bp

    st = _stages()
    pr.ratios(st)
    checks = pr.comparisons(st, "test")
    report = {"machine": "m", "img": 64, "data": "d.yaml", "split": "test", "quick": False, "stages": st,
              "timings": {"total": 9}, "comparisons": checks, "not_compared": ["x vs y: not compared"],
              "targets": pr.targets(checks), "figures": {}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    for stage, epochs in (("sparse", 15), ("control_sparse", 15), ("control_final", 10), ("scratch_small", 55)):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "opt.yaml").write_text(yaml.safe_dump({"epochs": epochs, "sr": stage == "sparse"}))
    out = bp.collect(tmp_path, wall=None, started=None)
    assert out["settings"]["control_sparse"] == {"epochs": 15, "sr": False}
    assert out["settings"]["scratch_small"]["epochs"] == 55
    assert "| stage | epochs | mAP@.5 (test) | mAP@.5:.95 (test) |" in out["table_markdown"]
    assert "| control_final | 55 |" in out["table_markdown"]
    bp.print_comparisons(out, quick=False)
    text = capsys.readouterr().out
    assert "on the test split" in text and "MISSED" in text and "not compared" in text
    assert sum(line.strip().startswith(("met", "MISSED", "reported")) for line in text.splitlines()) == len(checks)
