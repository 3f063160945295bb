"""Pruning to a latency target on a runtime: flags, the cached profile, the search, infeasible
targets, --sweep, the report, and real ONNX Runtime / OpenVINO runs (CPU, tiny models at 64 px).

Most tests replace :func:`utils.prune.latency.make_runner` with a deterministic timer whose
"milliseconds" are a known function of the conv FLOPs of the module it runs, so they test the
search and its bookkeeping, never the machine's load.
"""
import json
import math
import os
import shutil
import sys

import pytest
import torch
from torch import nn

import prune_yolov5s
import slim_prune_yolov5s
import slim_prune_yolov5s_8x
import utils.prune.latency as latency
from models import Darknet, build_model, load_model, save_checkpoint
from utils.prune import PruneError, PruneOptions, analyse, prune, sparsity_layers
from utils.prune.fake import fake_sparsity_
from utils.prune.latency import (Bench, Comparison, LatencyProfile, LatencyUnreachable, RuntimeUnavailable,
                                 check_runtime, compare, default_profile_path, load_or_measure_profile,
                                 make_runner, measure_profile, meet_latency, spread)
from utils.prune.options import LatencyTarget, OptionError
from utils.prune.surgery import channel_counts
from utils.synthetic import make_shapes_dataset

FAST = ["--no-eval", "--img_size", "64", "--device", "cpu", "--latency-runs", "3"]
MS_PER_FLOP = 1e-6


def conv_flops(module: nn.Module, shape) -> int:
    """FLOPs (2 per multiply-add) of every Conv2d ``module`` runs on an input of ``shape``."""
    total = [0]

    def hook(conv, args, out):
        total[0] += 2 * conv.weight.numel() * out.shape[-2] * out.shape[-1]

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        module.eval()(torch.zeros(*shape))
    for h in handles:
        h.remove()
    return total[0]


class FakeTimer:
    """Stands in for make_runner: a module's "milliseconds" are MS_PER_FLOP * its conv FLOPs, times
    ``pruned_penalty`` for a whole model smaller than the first whole model it saw."""

    def __init__(self, pruned_penalty: float = 1.0):
        self.penalty = pruned_penalty
        self.full = None
        self.layer_runners = 0
        self.model_runners = 0
        self.order: list[int] = []

    def __call__(self, module, shape, bench):
        flops = conv_flops(module, shape)
        if isinstance(module, Darknet):
            self.model_runners += 1
            self.full = self.full or flops
            ms = MS_PER_FLOP * flops * (self.penalty if flops < self.full else 1.0)
        else:
            self.layer_runners += 1
            ms = MS_PER_FLOP * flops
        tag = id(module)

        def run():
            self.order.append(tag)
            return ms
        return run


@pytest.fixture(scope="module")
def nano():
    model = fake_sparsity_(build_model("models/yolov5n.yaml", nc=2), img_size=64).eval()
    model.names = ["a", "b"]
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, nano):
    path = tmp_path_factory.mktemp("lt") / "last.pt"
    save_checkpoint(path, nano, history=[{"step": "sparsity", "prune": 1, "layers": sparsity_layers(nano.cfg, 1)}])
    return path


@pytest.fixture
def fake(monkeypatch):
    timer = FakeTimer()
    monkeypatch.setattr(latency, "make_runner", timer)
    return timer


def _weights(checkpoint, folder):
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(checkpoint, folder / "last.pt")
    return folder / "last.pt"


def _error(capsys, script):
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), lines
    return lines[0]


def _fake_ratio(original: Darknet, compact: Darknet, size: int = 64) -> float:
    shape = (1, 3, size, size)
    return conv_flops(compact.fused_copy(), shape) / conv_flops(original.fused_copy(), shape)


# ------------------------------------------------------------------------------------ flags
@pytest.mark.parametrize("argv,says", [
    (["--target-latency", "0"], "(0, 1]"),
    (["--target-latency", "1.5"], "(0, 1]"),
    (["--target-ms", "-2"], "positive"),
    (["--target-ms", "abc"], "not a number"),
    (["--runtime", "tensorrt"], "invalid choice"),
    (["--threads", "0"], "--threads"),
    (["--target-latency", "0.5", "--target-flops", "0.5"], "not both"),
    (["--target-latency", "0.5", "--global_percent", "0.5"], "not both"),
    (["--target-ms", "3", "--target-latency", "0.5"], "not both"),
    (["--target-latency"], "needs a value"),
    (["--sweep", "0.8,0.6"], "--sweep needs the kind"),
    (["--target-latency", "0.5", "--sweep", "0.8,0.6"], "without a value"),
    (["--target-latency", "--sweep", "0.8,1.5"], "(0, 1]"),
    (["--target-ms", "--sweep", "5,x"], "comma-separated"),
    (["--latency-iterations", "0"], "--latency-iterations"),
])
def test_latency_flags_are_checked_at_parse_time(tmp_path, argv, says, capsys):
    with pytest.raises(SystemExit) as e:
        slim_prune_yolov5s.main(["--weights", str(tmp_path / "missing.pt"), *FAST, *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and says in err, err
    assert "Traceback" not in err


def test_latency_target_validates_its_values():
    assert LatencyTarget("ms", 3.0).goal(6.0) == 0.5
    assert LatencyTarget("latency", 0.4).goal(6.0) == 0.4
    assert LatencyTarget("latency", 0.4).flag == "--target-latency"
    for bad in (("latency", 1.5), ("latency", 0.0), ("ms", -1.0), ("ms", math.nan), ("speed", 0.5)):
        with pytest.raises(OptionError):
            LatencyTarget(*bad)
    with pytest.raises(OptionError, match="--runtime"):
        LatencyTarget("latency", 0.5, "tensorrt")
    with pytest.raises(OptionError, match="--threads"):
        LatencyTarget("latency", 0.5, threads=0)


# ------------------------------------------------------------------------------------ profile
def test_profile_interpolates_in_the_flops_fraction():
    profile = LatencyProfile({}, model_ms=12.0, overhead_ms=0.0,
                             layers={0: [[2, 4, 2.0], [4, 8, 8.0]], 1: [[8, 8, 2.0]]})
    assert profile.layer_ms(0, 4, 8) == 8.0
    assert profile.layer_ms(0, 2, 4) == 2.0  # FLOPs fraction 0.25
    assert profile.layer_ms(0, 1, 4) == pytest.approx(1.0)  # halfway to (0, 0)
    assert profile.layer_ms(0, 4, 4) == pytest.approx(2.0 + 6.0 * (0.5 - 0.25) / 0.75)
    # the 2 ms outside the convs are held fixed
    compact, original = profile.predict_ms({0: (4, 2, 8, 4), 1: (8, 4, 8, 8)})
    assert original == 12.0 and compact == pytest.approx(2.0 + 2.0 + 1.0)
    with pytest.raises(PruneError, match="conv 5"):
        profile.layer_ms(5, 1, 1)


def test_profile_is_written_keyed_and_reused(nano, fake, tmp_path):
    bench = Bench("torch", "cpu", 1, 64)
    path = tmp_path / "p" / "profile.json"
    profile, got, reused = load_or_measure_profile(nano, bench, path, runs=2)
    assert got == path and not reused and path.is_file()
    assert fake.layer_runners > 0 and fake.model_runners == 1
    key = json.loads(path.read_text())["key"]
    assert {k: key[k] for k in ("runtime", "device", "threads", "img_size")} == {
        "runtime": "torch", "device": "cpu", "threads": 1, "img_size": 64}
    assert key["architecture"] == latency.architecture_hash(nano.cfg)
    convs = [i for i, l in enumerate(nano.cfg.layers) if l.type == "convolutional"]
    assert sorted(profile.layers) == convs
    counted = (fake.layer_runners, fake.model_runners)
    again, _, reused = load_or_measure_profile(nano, bench, path, runs=2)
    assert reused and (fake.layer_runners, fake.model_runners) == counted  # nothing timed again
    assert again.layers == profile.layers and again.model_ms == profile.model_ms
    with pytest.raises(PruneError, match="threads 1 .this run: 2."):
        load_or_measure_profile(nano, Bench("torch", "cpu", 2, 64), path)
    with pytest.raises(PruneError, match="img_size"):
        load_or_measure_profile(nano, Bench("torch", "cpu", 1, 128), path)
    other = build_model("models/yolov5s.yaml", nc=2)
    with pytest.raises(PruneError, match="architecture"):
        load_or_measure_profile(other, bench, path)
    path.write_text("{not json")
    with pytest.raises(PruneError, match="not a latency profile"):
        load_or_measure_profile(nano, bench, path)


def test_default_profile_path_names_the_key(nano):
    p = default_profile_path(nano.cfg, Bench("onnxruntime", "cuda:0", 4, 320))
    assert p.parent.as_posix() == "runs/profiles"
    assert p.name.endswith("_onnxruntime_cuda0_t4_320.json")
    assert p.name.startswith(latency.architecture_hash(nano.cfg)[:12])
    anchors_moved = nano.to_cfg()
    anchors_moved.layers[-1].options["anchors"] = [v + 1 for v in anchors_moved.layers[-1].options["anchors"]]
    assert latency.architecture_hash(anchors_moved) == latency.architecture_hash(nano.cfg)


def test_profile_with_fake_timer_predicts_the_whole_model(nano, fake):
    """With time proportional to conv FLOPs the per-layer profile predicts every pruned model exactly."""
    bench = Bench("torch", "cpu", 1, 64)
    profile = measure_profile(nano, bench, runs=1)
    result = prune(nano, PruneOptions("3", 0.6, 0.01))
    graph = analyse(nano.to_cfg())
    assert profile.fraction(channel_counts(graph, result.masks)) == pytest.approx(
        _fake_ratio(nano, result.model), rel=1e-3)


# ------------------------------------------------------------------------------------ measuring
def test_compare_runs_round_robin_alternating(nano, fake):
    small = build_model("models/yolov5n.yaml", nc=2).eval()
    cmp = compare(nano, small, Bench("torch", "cpu", 1, 64), rounds=4, warmup=1)
    assert len(cmp.original_ms) == len(cmp.compact_ms) == 4
    a, b = fake.order[0], fake.order[1]  # warm-up: original, compact
    assert fake.order[2:] == [a, b, b, a, a, b, b, a]
    assert cmp.ratio == pytest.approx(1.0)
    record = cmp.record()
    assert record["rounds"] == 4 and set(record["ratio"]) == {"median", "q25", "q75", "min", "max"}


def test_spread():
    s = spread([4.0, 1.0, 3.0, 2.0, 100.0])
    assert s["median"] == 3.0 and s["min"] == 1.0 and s["max"] == 100.0 and s["q25"] == 2.0 and s["q75"] == 4.0
    assert spread([2.0]) == {"median": 2.0, "q25": 2.0, "q75": 2.0, "min": 2.0, "max": 2.0}
    assert Comparison((2.0, 4.0, 2.0), (1.0, 1.0, 1.5)).ratio == 0.5


# ------------------------------------------------------------------------------------ search
@pytest.mark.parametrize("strategy", ["3", "8x"])
def test_search_meets_the_target_in_one_step_when_the_profile_is_exact(nano, fake, strategy):
    bench = Bench("torch", "cpu", 1, 64)
    profile = measure_profile(nano, bench, runs=1)
    target = LatencyTarget("latency", 0.5)
    choice = meet_latency(nano, PruneOptions(strategy, layer_keep=0.01), target, bench, profile, rounds=3)
    assert choice.met and len(choice.iterations) == 1
    assert choice.observed == pytest.approx(_fake_ratio(nano, choice.result.model))
    assert 0.45 < choice.observed <= 0.5  # the smallest ratio that meets it, not a much deeper cut
    looser = meet_latency(nano, PruneOptions(strategy, layer_keep=0.01), LatencyTarget("latency", 0.7), bench,
                          profile, rounds=3)
    assert looser.options.ratio < choice.options.ratio and 0.6 < looser.observed <= 0.7


def test_search_tightens_after_a_miss(nano, monkeypatch):
    """Pruned models run 30% slower than the profile predicts: the first search misses and the
    next, tightened by the observed miss, meets the target."""
    timer = FakeTimer(pruned_penalty=1.3)
    monkeypatch.setattr(latency, "make_runner", timer)
    bench = Bench("torch", "cpu", 1, 64)
    profile = measure_profile(nano, bench, runs=1)
    lines = []
    choice = meet_latency(nano, PruneOptions("3", layer_keep=0.01), LatencyTarget("latency", 0.6), bench,
                          profile, rounds=3, log=lines.append)
    assert choice.met and choice.observed <= 0.6
    assert len(choice.iterations) >= 2 and len(lines) == len(choice.iterations)
    first = choice.iterations[0]
    assert first["measured_ratio"] > 0.6 and first["predicted"] <= 0.6
    assert choice.iterations[1]["goal"] < first["goal"]


def test_search_loosens_after_pruning_far_more_than_asked(nano, monkeypatch):
    """Pruned models run twice as fast as the profile predicts: the first model lands far under the
    target; the search prunes less and keeps the least-pruned model that still meets it."""
    monkeypatch.setattr(latency, "make_runner", FakeTimer(pruned_penalty=0.5))
    bench = Bench("torch", "cpu", 1, 64)
    profile = measure_profile(nano, bench, runs=1)
    choice = meet_latency(nano, PruneOptions("3", layer_keep=0.01), LatencyTarget("latency", 0.6), bench,
                          profile, rounds=3)
    first = choice.iterations[0]
    assert first["measured_ratio"] < 0.6 * (1 - latency.CLOSE_ENOUGH)
    assert len(choice.iterations) >= 2 and choice.met
    assert first["measured_ratio"] < choice.observed <= 0.6
    assert choice.options.ratio < first["ratio"]
    assert choice.observed == max(it["measured_ratio"] for it in choice.iterations if it["measured_ratio"] <= 0.6)


@pytest.mark.parametrize("target, predicted, measured, goal", [
    (0.5, 0.5, 0.5, 0.5),     # an exact profile keeps the goal
    (0.6, 0.7, 0.1, 1 - 0.4 / 3),  # measured far faster than predicted: aim at a larger predicted fraction
    (0.5, 0.5, 0.6, 0.375),   # measured slower: aim lower
    (0.5, 1.0, 1.0, 0.5),     # nothing was pruned: no line to fit
])
def test_recalibrated_goal(target, predicted, measured, goal):
    assert latency.recalibrated_goal(target, predicted, measured) == pytest.approx(goal)


def test_search_in_milliseconds(nano, fake):
    bench = Bench("torch", "cpu", 1, 64)
    profile = measure_profile(nano, bench, runs=1)
    budget = 0.4 * profile.model_ms
    choice = meet_latency(nano, PruneOptions("3", layer_keep=0.01), LatencyTarget("ms", budget), bench, profile,
                          rounds=3)
    assert choice.met and choice.comparison.compact_median <= budget
    assert choice.observed == choice.comparison.compact_median


def test_unreachable_target_names_the_best_reachable_value(nano, fake):
    bench = Bench("torch", "cpu", 1, 64)
    profile = measure_profile(nano, bench, runs=1)
    with pytest.raises(LatencyUnreachable) as e:
        meet_latency(nano, PruneOptions("3", layer_keep=0.01), LatencyTarget("latency", 0.001), bench, profile,
                     rounds=3)
    best = e.value.best
    assert 0.001 < best < 0.2
    assert f"--target-latency {math.ceil(best * 1000) / 1000}" in str(e.value)
    assert "cannot be reached on torch on cpu, 1 thread" in str(e.value)


# ------------------------------------------------------------------------------------ command line
def test_cli_latency_target_records_the_measurement(checkpoint, fake, tmp_path, capsys):
    weights = _weights(checkpoint, tmp_path / "w")
    profile = tmp_path / "profiles" / "p.json"
    argv = ["--weights", str(weights), *FAST, "--target-latency", "0.5", "--profile", str(profile)]
    assert slim_prune_yolov5s_8x.main(argv) == 0
    out = capsys.readouterr().out
    assert "--target-latency 0.5 met on torch on cpu, 1 thread" in out and f"wrote {profile}" in out
    pruned = next((tmp_path / "w").glob("prune_*last.pt"))
    entry = torch.load(pruned, weights_only=True)["history"][-1]
    report = json.loads(pruned.with_suffix(".json").read_text())
    for record in (entry["latency"], report["latency"]):
        assert record["kind"] == "latency" and record["value"] == 0.5 and record["met"] is True
        assert record["runtime"] == "torch" and record["threads"] == 1 and record["img_size"] == 64
        assert record["rounds"] == 3 and record["profile"] == str(profile)
        for key in ("original_ms", "compact_ms", "ratio"):
            assert set(record[key]) == {"median", "q25", "q75", "min", "max"}
        assert record["ratio"]["median"] <= 0.5 and record["achieved"] == record["ratio"]["median"]
        assert record["compact_ms"]["median"] < record["original_ms"]["median"]
    assert entry["settings"]["target"] == {"metric": "latency", "target": 0.5, "achieved": entry["latency"]["achieved"],
                                           "met": True}
    assert report["figures"]["latency_ms"]["ratio"] == entry["latency"]["ratio"]["median"]
    assert _fake_ratio(load_model(checkpoint), load_model(pruned)) <= 0.5
    # the same prune again reuses the profile: no layer is timed
    shutil.rmtree(tmp_path / "w")
    weights = _weights(checkpoint, tmp_path / "w")
    layers_before = fake.layer_runners
    assert slim_prune_yolov5s_8x.main(argv) == 0
    assert fake.layer_runners == layers_before
    assert f"latency profile: reused {profile}" in capsys.readouterr().out
    again = torch.load(next((tmp_path / "w").glob("prune_*last.pt")), weights_only=True)["history"][-1]
    assert again["ratio"] == entry["ratio"] and again["masks"] == entry["masks"]


def test_cli_infeasible_target_writes_nothing(checkpoint, fake, tmp_path, capsys):
    weights = _weights(checkpoint, tmp_path / "w")
    argv = ["--weights", str(weights), *FAST, "--target-latency", "0.001", "--profile", str(tmp_path / "p.json")]
    assert slim_prune_yolov5s.main(argv) == 2
    line = _error(capsys, "slim_prune_yolov5s.py")
    assert "--target-latency 0.001 cannot be reached" in line and "ask for --target-latency 0." in line
    assert sorted(os.listdir(tmp_path / "w")) == ["last.pt"]


def test_cli_sweep_prints_one_row_per_target_and_writes_nothing(checkpoint, fake, tmp_path, capsys):
    weights = _weights(checkpoint, tmp_path / "w")
    argv = ["--weights", str(weights), *FAST, "--target-latency", "--sweep", "0.8,0.5,0.001",
            "--profile", str(tmp_path / "p.json")]
    assert prune_yolov5s.main(["--weights", str(weights), *FAST, "--target-flops", "--sweep", "0.9,0.7"]) == 0
    out = capsys.readouterr().out
    rows = [l for l in out.splitlines() if l.startswith("| 0.")]
    assert [r.split("|")[1].strip() for r in rows] == ["0.9", "0.7"]
    assert "no model, cfg or report was written" in out
    assert slim_prune_yolov5s.main(argv) == 0
    out = capsys.readouterr().out
    rows = [l for l in out.splitlines() if l.startswith("| 0.")]
    assert [r.split("|")[1].strip() for r in rows] == ["0.8", "0.5", "0.001"]
    assert "unreachable" in rows[2] and "unreachable" not in rows[0] + rows[1]
    assert "no model, cfg or report was written (a sweep is for choosing" in out
    assert sorted(os.listdir(tmp_path / "w")) == ["last.pt"]


def test_cli_runtime_without_target_measures_on_it(checkpoint, fake, tmp_path):
    weights = _weights(checkpoint, tmp_path / "w")
    assert slim_prune_yolov5s.main(["--weights", str(weights), *FAST, "--runtime", "torch", "--threads", "2"]) == 0
    entry = torch.load(next((tmp_path / "w").glob("prune_*last.pt")), weights_only=True)["history"][-1]
    assert entry["latency"]["runtime"] == "torch" and entry["latency"]["threads"] == 2
    assert entry["figures"]["latency_ms"]["after"] == entry["latency"]["compact_ms"]["median"]


# ------------------------------------------------------------------------------------ runtimes
def test_missing_runtime_is_one_sentence(checkpoint, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now fails
    with pytest.raises(RuntimeUnavailable, match="pip install openvino"):
        check_runtime(Bench("openvino"))
    weights = _weights(checkpoint, tmp_path / "w")
    assert slim_prune_yolov5s.main(["--weights", str(weights), *FAST, "--target-latency", "0.5",
                                    "--runtime", "openvino"]) == 2
    assert "needs the openvino package" in _error(capsys, "slim_prune_yolov5s.py")
    assert sorted(os.listdir(tmp_path / "w")) == ["last.pt"]


def test_onnxruntime_smoke(checkpoint, tmp_path):
    """A real run on ONNX Runtime (1 thread): profile, search, round-robin proof, report."""
    pytest.importorskip("onnxruntime")
    weights = _weights(checkpoint, tmp_path / "w")
    profile = tmp_path / "ort.json"
    assert slim_prune_yolov5s.main(["--weights", str(weights), *FAST, "--target-latency", "0.9",
                                    "--runtime", "onnxruntime", "--profile", str(profile)]) == 0
    pruned = next((tmp_path / "w").glob("prune_*last.pt"))
    record = torch.load(pruned, weights_only=True)["history"][-1]["latency"]
    assert record["runtime"] == "onnxruntime" and record["threads"] == 1
    assert record["original_ms"]["median"] > 0 and record["compact_ms"]["median"] > 0
    assert isinstance(record["met"], bool)
    assert json.loads(profile.read_text())["key"]["runtime"] == "onnxruntime"
    load_model(pruned)(torch.rand(1, 3, 64, 64))


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_runtime_runner_times_a_layer(runtime):
    pytest.importorskip(runtime)
    bench = Bench(runtime, "cpu", 1, 16)
    check_runtime(bench)
    run = make_runner(nn.Sequential(nn.Conv2d(4, 8, 3, 1, 1), nn.SiLU()), (1, 4, 16, 16), bench)
    times = [run() for _ in range(3)]
    assert all(math.isfinite(t) and t > 0 for t in times)


def test_cli_cost_aware_ranks_with_the_runtime_profile(checkpoint, fake, tmp_path, capsys):
    """--cost-aware with a latency target takes its ranking weights from the runtime's profile
    (the fake timer makes time proportional to FLOPs, so every weight is 1)."""
    weights = _weights(checkpoint, tmp_path / "w")
    argv = ["--weights", str(weights), *FAST, "--target-latency", "0.6", "--cost-aware",
            "--profile", str(tmp_path / "p.json")]
    assert slim_prune_yolov5s.main(argv) == 0
    assert "--cost-aware: time per FLOP of a channel relative to the model's average, from the torch latency " \
           "profile" in capsys.readouterr().out
    entry = torch.load(next((tmp_path / "w").glob("prune_*last.pt")), weights_only=True)["history"][-1]
    assert entry["settings"]["cost_aware"] is True and entry["latency"]["met"] is True
    assert all(w == pytest.approx(1.0, rel=1e-3) for w in entry["settings"]["ranking_weights"].values())
    assert fake.model_runners >= 3  # the profile's, then the original and compact of each search


def test_cli_unwritable_folder_fails_before_any_timing(checkpoint, fake, tmp_path, capsys):
    weights = _weights(checkpoint, tmp_path / "w")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    argv = ["--weights", str(weights), *FAST, "--target-latency", "0.5", "--out-dir", str(blocker / "out"),
            "--profile", str(tmp_path / "p.json")]
    assert slim_prune_yolov5s.main(argv) == 2
    assert "is a file" in _error(capsys, "slim_prune_yolov5s.py")
    assert fake.layer_runners == fake.model_runners == 0 and not (tmp_path / "p.json").exists()


def test_cli_sweep_evaluates_the_masked_models(fake, tmp_path, capsys):
    """Without --no-eval every sweep row carries the masked model's mAP on the val split."""
    root = make_shapes_dataset(tmp_path / "shapes", n_train=2, n_val=2, img_size=64, seed=1, workers=1)
    model = fake_sparsity_(build_model("models/yolov5n.yaml", nc=5), img_size=64).eval()
    weights = save_checkpoint(tmp_path / "w" / "five.pt", model, history=[{"step": "sparsity", "prune": 1}])
    assert slim_prune_yolov5s.main(["--weights", str(weights), "--data", str(root / "dataset.yaml"),
                                    "--img_size", "64", "--device", "cpu", "--latency-runs", "1", "--workers",
                                    "0", "--batch-size", "2", "--target-ms", "--sweep", "1e9,1e-9",
                                    "--profile", str(tmp_path / "p.json")]) == 0
    rows = [l.split("|")[1:-1] for l in capsys.readouterr().out.splitlines() if l.startswith("| 1e")]
    assert [r[0].strip() for r in rows] == ["1e+09", "1e-09"]
    assert all(0.0 <= float(v) <= 1.0 for v in (rows[0][7], rows[0][8]))  # mAP@.5, mAP@.5:.95 of the masked
    assert rows[0][1].strip() == "0.0" and "unreachable" in rows[1][1]
    assert sorted(os.listdir(tmp_path / "w")) == ["five.pt"]


def test_timing_runs_on_the_bench_threads(nano, monkeypatch):
    """Every timed call runs with PyTorch pinned to --threads; the setting is restored afterwards."""
    seen = []

    def runner(module, shape, bench):
        def run():
            seen.append(torch.get_num_threads())
            return 1.0
        return run

    monkeypatch.setattr(latency, "make_runner", runner)
    before = torch.get_num_threads()
    threads = 1 if before != 1 else 2
    bench = Bench("torch", "cpu", threads, 64)
    measure_profile(nano, bench, runs=1)
    compare(nano, nano, bench, rounds=2)
    assert seen and set(seen) == {threads}
    assert torch.get_num_threads() == before


def test_runtime_device_checks():
    pytest.importorskip("openvino")
    with pytest.raises(RuntimeUnavailable, match="--device cpu"):
        check_runtime(Bench("openvino", "cuda:0"))
    with pytest.raises(RuntimeUnavailable, match="not known"):
        check_runtime(Bench("tensorrt"))
    check_runtime(Bench("torch", "cpu"))


def test_cli_layers_then_latency_target(checkpoint, fake, tmp_path):
    """--layers N removes blocks first; the latency target then refers to the layer-pruned model."""
    weights = _weights(checkpoint, tmp_path / "w")
    assert slim_prune_yolov5s.main(["--weights", str(weights), *FAST, "--layers", "1", "--target-latency", "0.6",
                                    "--profile", str(tmp_path / "p.json")]) == 0
    pruned = [p for p in (tmp_path / "w").glob("*.pt") if p.name != "last.pt"]
    assert len(pruned) == 1
    history = torch.load(pruned[0], weights_only=True)["history"]
    assert history[-1]["step"] == "prune" and history[-1]["latency"]["met"] is True
    assert history[-1]["settings"]["layers"] == 1 and len(history) == 3
    key = json.loads((tmp_path / "p.json").read_text())["key"]
    assert key["architecture"] != latency.architecture_hash(load_model(checkpoint).cfg)  # the layer-pruned one
