"""The throughput benchmark's ratio is the median of per-round paired ratios (no training here)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_throughput as bt  # noqa: E402


def run(ips: float, cpu: float) -> dict:
    return {"images_per_s": ips, "images_per_cpu_s": cpu}


def test_ratio_is_the_median_of_paired_rounds():
    # the load changed from round to round; each pair ran under the same load
    ours = [run(10, 10), run(2, 10), run(4, 12)]
    upstream = [run(8, 8), run(4, 8), run(2, 12)]
    s = bt.summarise({"ours-train": ours, "upstream-train": upstream})
    assert s["train_round_ratios"] == [1.25, 0.5, 2.0]
    assert s["train_ratio"] == 1.25
    # a ratio of the per-side medians would pair round 1 of one side with round 3 of the other
    assert s["train_ratio"] != s["ours-train"]["median_images_per_s"] / s["upstream-train"]["median_images_per_s"]
    assert s["train_pass"] is True


def test_a_failed_round_drops_its_pair_only():
    ours = [run(10, 10), {"error": "killed"}, run(9, 9)]
    upstream = [run(10, 10), run(1, 1), run(10, 10)]
    pairs = bt.paired_rounds(ours, upstream)
    assert len(pairs) == 2
    s = bt.summarise({"ours-train": ours, "upstream-train": upstream})
    assert s["train_round_ratios"] == [1.0, 0.9]
    assert s["train_pass"] is False


def test_channels_last_rounds_pair_with_upstream_and_with_the_default_layout():
    ours = [run(10, 10), run(5, 5)]
    nhwc = [run(12, 12), run(5.5, 5.5)]
    upstream = [run(8, 8), run(5, 5)]
    s = bt.summarise({"ours-train": ours, "ours-nhwc-train": nhwc, "upstream-train": upstream})
    assert s["train_round_ratios"] == [1.25, 1.0]
    assert s["train_nhwc_round_ratios"] == [1.5, 1.1]
    assert s["train_nhwc_vs_default_round_ratios"] == [1.2, 1.1]
    # the met/NOT met verdict is the default layout's
    assert s["train_pass"] is True and s["train_ratio"] == 1.125
