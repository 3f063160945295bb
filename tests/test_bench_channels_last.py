"""The channels-last benchmark: its error and ratio helpers, and a --quick run end to end."""
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_channels_last as bcl  # noqa: E402


def test_grad_errors_are_max_abs_and_relative_to_the_reference_peak():
    ref = torch.tensor([1.0, -4.0, 2.0], dtype=torch.float64)
    test = torch.tensor([1.5, -4.0, 1.0])
    e = bcl.grad_errors(test, ref)
    assert e == {"max_abs": 1.0, "rel": 0.25}
    assert bcl.grad_errors(ref, ref) == {"max_abs": 0.0, "rel": 0.0}
    assert bcl.grad_errors(torch.ones(2), torch.zeros(2))["rel"] == float("inf")


def test_ratio_summary_pairs_rounds():
    # the load changed between rounds; each round's pair ran under the same load
    test = [1.0, 4.0, 3.6, 0.9, 2.0]
    base = [2.0, 5.0, 4.0, 1.0, 2.0]
    s = bcl.ratio_summary(test, base)
    assert s["ratios"] == pytest.approx([0.5, 0.8, 0.9, 0.9, 1.0])
    assert s["median"] == pytest.approx(0.9)
    assert s["p10"] == pytest.approx(0.62)  # interpolated between 0.5 and 0.8
    assert s["p90"] == pytest.approx(0.96)
    # the ratio of the medians would pair different rounds
    assert sorted(test)[2] / sorted(base)[2] == 1.0
    with pytest.raises(ValueError):
        bcl.ratio_summary([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        bcl.ratio_summary([], [])


def test_percentile_ends_and_middle():
    v = [3.0, 1.0, 2.0]
    assert bcl.percentile(v, 0) == 1.0
    assert bcl.percentile(v, 50) == 2.0
    assert bcl.percentile(v, 100) == 3.0
    assert bcl.percentile(v, 25) == 1.5


def test_gradients_run_in_the_requested_layout():
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.SiLU())
    x = torch.rand(2, 3, 16, 16)
    r = torch.randn(2, 8, 16, 16)
    seen = []
    block[1].register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)))
    g_default = bcl.gradients(block, x, r, False)
    g_last = bcl.gradients(block, x, r, True)
    assert seen == [False, True]
    assert g_default["input"].shape == x.shape and g_default["bn_weight"].shape == (8,)
    assert torch.allclose(g_default["input"], g_last["input"], atol=1e-5)
    assert block[1].weight.grad is None  # the block itself is untouched


def test_precision_row_compares_float32_against_a_float64_reference():
    torch.manual_seed(0)
    model = bcl.build_model(bcl.CFG)
    row = bcl.precision_row(bcl.stem(model), 2, 32)
    assert row["size"] == 32
    for layout in bcl.LAYOUTS:
        for grad in ("input", "bn_weight"):
            e = row[layout][grad]
            assert 0 < e["rel"] < 1e-4  # float32 rounding against float64: never exact, never large
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_quick_run_writes_its_report(tmp_path):
    threads = torch.get_num_threads()
    out = tmp_path / "cl.json"
    try:
        assert bcl.main(["--quick", "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    rep = json.loads(out.read_text())
    assert rep["machine"]["torch_threads"] == 1
    assert rep["settings"]["quick"] is True and rep["settings"]["rounds"] == 2
    assert [r["size"] for r in rep["precision"]] == rep["settings"]["precision_sizes"]
    assert [r["size"] for r in rep["speed"]] == rep["settings"]["speed_sizes"]
    for row in rep["speed"]:
        assert len(row["ratio_wall"]["ratios"]) == 2 and len(row["ratio_cpu"]["ratios"]) == 2
        assert row["ratio_wall"]["p10"] <= row["ratio_wall"]["median"] <= row["ratio_wall"]["p90"]
        assert all(t > 0 for t in row["median_step_s"].values())


def test_quick_defaults_to_runs_bench_and_never_writes_results():
    assert Path(bcl.parse_args(["--quick"]).json) == bcl.QUICK_JSON
    assert Path(bcl.parse_args([]).json) == bcl.RESULTS
    with pytest.raises(SystemExit):
        bcl.parse_args(["--quick", "--json", str(bcl.RESULTS)])


def test_flags_override_quick_speed_sizes_round_up_and_bad_flags_exit_2(tmp_path, capsys):
    threads = torch.get_num_threads()
    out = tmp_path / "cl.json"
    try:
        assert bcl.main(["--quick", "--speed-sizes", "70", "--precision-sizes", "16", "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    rep = json.loads(out.read_text())
    assert [r["size"] for r in rep["speed"]] == [96]  # 70 rounded up to yolov5n's stride 32
    assert [r["size"] for r in rep["precision"]] == [16]
    assert rep["settings"]["batch"] == bcl.QUICK["batch"]
    with pytest.raises(SystemExit) as e:
        bcl.main(["--rounds", "0"])
    assert e.value.code == 2 and "--rounds" in capsys.readouterr().err
