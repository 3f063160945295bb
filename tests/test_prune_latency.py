"""Latency-aware pruning: per-channel costs, ranking weights, --round-to, --cost-aware and --latency-aware
(CPU, tiny)."""
import json
import math
import shutil

import pytest
import torch

import prune_yolov5s
import shortcut_prune_yolov5s
import slim_prune_yolov5s
import slim_prune_yolov5s_8x
from models import build_model, load_cfg_file, load_model, save_checkpoint
from utils.prune import (PruneOptions, Target, analyse, estimate_cost, plan, prune, search_ratio,
                         sparsity_layers)
from utils.prune.absorb import bn_key
from utils.prune.cli import build_parser, resolve_latency_aware
from utils.prune.cost import channel_costs, latency_weights, layer_flops, profile_layers, prune_units
from utils.prune.fake import fake_sparsity_
from utils.prune.masks import weighted_gammas


@pytest.fixture(scope="module")
def nano():
    """Fake-sparse yolov5n and its graph."""
    model = fake_sparsity_(build_model("models/yolov5n.yaml", nc=2), img_size=64).eval()
    return model, analyse(model.to_cfg())


def _drop_one(graph, unit):
    """Masks removing channel 0 from every member of ``unit``."""
    mask = torch.ones(graph.cfg.channels[unit[0]], dtype=torch.bool)
    mask[0] = False
    return {m: mask for m in unit}


@pytest.mark.parametrize("cfg", ["models/yolov5n.yaml", "models/yolov5n6.yaml"])
def test_channel_cost_of_flops_is_what_removing_a_channel_saves(cfg):
    graph = analyse(load_cfg_file(cfg, nc=3))
    size = 128
    full = estimate_cost(graph, {}, size)[1]
    costs = channel_costs(graph, layer_flops(graph.cfg, size))
    units = prune_units(graph)
    assert sorted(m for u in units for m in u) == graph.convs  # every conv in exactly one unit
    for unit in units:
        saved = full - estimate_cost(graph, _drop_one(graph, unit), size)[1]
        assert costs[unit[0]] == pytest.approx(saved, rel=1e-9), unit
        assert all(costs[m] == costs[unit[0]] for m in unit)


def test_latency_weights_are_one_when_time_follows_flops(nano):
    _, graph = nano
    flops = layer_flops(graph.cfg, 128)
    weights = latency_weights(graph, {i: 3e-12 * f for i, f in flops.items()}, 128)
    assert set(weights) == set(graph.convs)
    assert all(w == pytest.approx(1.0) for w in weights.values())


def test_a_slow_layer_gets_a_larger_weight(nano):
    _, graph = nano
    flops = layer_flops(graph.cfg, 128)
    slow = graph.prunable("3")[0]
    times = {i: 3e-12 * f * (5.0 if i == slow else 1.0) for i, f in flops.items()}
    weights = latency_weights(graph, times, 128)
    assert weights[slow] > 1.5
    assert weights[slow] == max(weights.values())


def test_unit_weights_leave_masks_unchanged(nano):
    model, graph = nano
    state = model.state_dict()
    for s in ("1", "2", "3", "8x"):
        plain = plan(graph, state, PruneOptions(s, 0.5, 0.01))
        ones = plan(graph, state, PruneOptions(s, 0.5, 0.01, weights={i: 1.0 for i in graph.convs}))
        assert plain.masks.keys() == ones.masks.keys()
        assert all(torch.equal(plain.masks[i], ones.masks[i]) for i in plain.masks)
        assert plain.weights is None and set(ones.weights) == set(ones.prunable)


def test_weights_move_the_cuts_to_the_slow_layer(nano):
    """At the same FLOPs, weighting one layer as slow cuts more of it, and only the channel order
    inside a layer is kept (weights never reorder a layer's own channels)."""
    model, graph = nano
    state = model.state_dict()
    slow = graph.prunable("3")[0]
    weights = {i: (3.0 if i == slow else 1.0) for i in graph.convs}
    target = Target("flops", 0.6)
    r0, f0 = search_ratio(graph, state, PruneOptions("3", layer_keep=0.01, target=target), 128)
    r1, f1 = search_ratio(graph, state, PruneOptions("3", layer_keep=0.01, target=target, weights=weights), 128)
    assert f0 <= 0.6 and f1 <= 0.6
    plain = plan(graph, state, PruneOptions("3", r0, 0.01))
    costed = plan(graph, state, PruneOptions("3", r1, 0.01, weights=weights))
    assert int(costed.masks[slow].sum()) < int(plain.masks[slow].sum())
    gamma = state[bn_key(slow, "weight")].abs()
    kept, cut = gamma[costed.masks[slow]], gamma[~costed.masks[slow]]
    assert cut.numel() == 0 or float(cut.max()) <= float(kept.min())


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_invalid_weights_are_errors(bad):
    g = {3: torch.ones(4), 5: torch.ones(4)}
    with pytest.raises(ValueError, match="layer 5"):
        weighted_gammas(g, {3: 1.0, 5: bad})
    with pytest.raises(ValueError, match="no ranking weight for layer 5"):
        weighted_gammas(g, {3: 1.0})


@pytest.mark.parametrize("round_to", [16, 32])
def test_round_to_applies_to_every_strategy(nano, round_to):
    model, graph = nano
    state = model.state_dict()
    for s in ("1", "2", "3", "8x"):
        p = plan(graph, state, PruneOptions(s, 0.5, 0.01, round_to=round_to))
        assert p.round_to == round_to
        for i, m in p.masks.items():
            kept, width = int(m.sum()), m.numel()
            assert kept % round_to == 0 or kept == width, (s, i, kept, width)
    with pytest.raises(ValueError, match="--round-to"):
        plan(graph, state, PruneOptions("3", 0.5, 0.01, round_to=0))


def test_profile_covers_every_layer_and_grows_with_width(nano):
    """Every layer that runs a module gets a finite, positive time; a conv cut to a small fraction of
    its FLOPs takes clearly less time (FLOPs shrink >= 64x, the test asks for < 0.5x the time, and
    each time is the fastest of several runs, so machine load cannot turn it around)."""
    model, graph = nano
    size = 256
    full = profile_layers(model.fused_copy(), size, runs=3)
    timed = {i for i, layer in enumerate(model.cfg.layers) if layer.type not in ("route", "shortcut")}
    assert set(full) == timed
    assert all(math.isfinite(t) and t > 0.0 for t in full.values())
    options = PruneOptions.make("3", 0.95, layer_keep=0.01, include_upsample=True, include_sppf=True)
    thin_model = prune(model, options).model
    thin = profile_layers(thin_model.fused_copy(), size, runs=3)
    f_full, f_thin = layer_flops(graph.cfg, size), layer_flops(thin_model.to_cfg(), size)
    cut = [i for i in graph.convs if f_thin[i] * 64 <= f_full[i]]
    heaviest = max(cut, key=f_full.get)
    assert thin[heaviest] < 0.5 * full[heaviest], (heaviest, thin[heaviest], full[heaviest])
    assert sum(thin[i] for i in graph.convs) < 0.5 * sum(full[i] for i in graph.convs)
    assert model.training is False
    with pytest.raises(ValueError, match="runs"):
        profile_layers(model, 64, runs=0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, nano):
    folder = tmp_path_factory.mktemp("lat")
    model, _ = nano
    path = folder / "last.pt"
    save_checkpoint(path, model, history=[{"step": "sparsity", "prune": 1, "layers": sparsity_layers(model.cfg, 1)}])
    return path


def test_cli_cost_aware_and_round_to(checkpoint, nano, tmp_path, capsys):
    weights = tmp_path / "last.pt"
    shutil.copy(checkpoint, weights)
    argv = ["--weights", str(weights), "--no-eval", "--img_size", "64", "--device", "cpu", "--latency-runs", "1",
            "--cost-aware", "--round-to", "16", "--target-flops", "0.6", "--include-upsample", "--include-sppf"]
    assert slim_prune_yolov5s.main(argv) == 0
    assert "--cost-aware: time per FLOP" in capsys.readouterr().out
    out = next(p for p in tmp_path.glob("prune_*last.pt"))
    ckpt = torch.load(out, weights_only=True)
    settings = ckpt["history"][-1]["settings"]
    assert settings["cost_aware"] is True and settings["round_to"] == 16
    assert sorted(map(int, settings["ranking_weights"])) == nano[1].prunable("3", {"upsample", "sppf"})
    assert all(w > 0 for w in settings["ranking_weights"].values())
    for layer, mask in ckpt["history"][-1]["masks"].items():
        assert sum(mask) % 16 == 0 or sum(mask) == len(mask)
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["settings"]["target"]["achieved"] <= 0.6
    load_model(out)(torch.rand(1, 3, 64, 64))


def test_cli_rejects_bad_round_to(checkpoint, tmp_path):
    with pytest.raises(SystemExit) as e:
        slim_prune_yolov5s.main(["--weights", str(checkpoint), "--no-eval", "--round-to", "0",
                                 "--out-dir", str(tmp_path)])
    assert e.value.code == 2


# ------------------------------------------------------------------------------------ --latency-aware
def test_latency_aware_expands_to_its_parts_and_explicit_values_win():
    on = PruneOptions.latency_settings(True)
    assert on == {"cost_aware": True, "round_to": 16, "include_upsample": True, "include_sppf": True}
    assert PruneOptions.latency_settings(False) == {"cost_aware": False, "round_to": None, "include_upsample": False,
                                                    "include_sppf": False}
    mixed = PruneOptions.latency_settings(True, round_to=8, include_sppf=False, cost_aware=None)
    assert mixed == {"cost_aware": True, "round_to": 8, "include_upsample": True, "include_sppf": False}
    assert PruneOptions.latency_settings(False, round_to=32)["round_to"] == 32
    assert PruneOptions.latency_flags() == ["--cost-aware", "--round-to", "16", "--include-upsample", "--include-sppf"]
    with pytest.raises(ValueError, match="no part"):
        PruneOptions.latency_settings(True, layer_keep=0.1)


@pytest.mark.parametrize("strategy", ["1", "2", "3", "8x"])
def test_latency_aware_options_for_every_strategy(strategy):
    o = PruneOptions.make(strategy, 0.3, latency_aware=True)
    assert o.latency_aware and o.round_to == 16 and o.extra == {"upsample", "sppf"}
    plain = PruneOptions.make(strategy, 0.3)
    assert not plain.latency_aware and plain.round_to == plain.strategy.round_to and plain.extra == frozenset()
    o8 = PruneOptions.make(strategy, 0.3, latency_aware=True, round_to=8, include_upsample=False)
    assert o8.round_to == 8 and o8.extra == {"sppf"}
    assert o.with_ratio(0.5).latency_aware and o.with_ratio(0.5) != plain.with_ratio(0.5)


@pytest.mark.parametrize("script", [prune_yolov5s, shortcut_prune_yolov5s, slim_prune_yolov5s, slim_prune_yolov5s_8x])
def test_latency_aware_flag_on_every_prune_script(script):
    strategy = {prune_yolov5s: "1", shortcut_prune_yolov5s: "2", slim_prune_yolov5s: "3",
                slim_prune_yolov5s_8x: "8x"}[script]
    parser = build_parser(strategy)
    args = parser.parse_args(["--latency-aware"])
    implied = resolve_latency_aware(args)
    assert (args.cost_aware, args.round_to, args.include_upsample, args.include_sppf) == (True, 16, True, True)
    assert implied == dict(PruneOptions.LATENCY_AWARE)
    args = parser.parse_args(["--latency-aware", "--round-to", "8", "--no-cost-aware", "--no-include-sppf"])
    assert resolve_latency_aware(args) == {"include_upsample": True}
    assert (args.cost_aware, args.round_to, args.include_upsample, args.include_sppf) == (False, 8, True, False)
    args = parser.parse_args([])  # without the flag: the original yolov5_prune's behaviour
    assert resolve_latency_aware(args) == {}
    assert (args.cost_aware, args.round_to, args.include_upsample, args.include_sppf) == (False, None, False, False)
    assert "--latency-aware" in parser.format_help()


def _latency_aware_run(script, checkpoint, tmp_path, *flags) -> dict:
    weights = tmp_path / "last.pt"
    shutil.copy(checkpoint, weights)
    argv = ["--weights", str(weights), "--no-eval", "--img_size", "64", "--device", "cpu", "--latency-runs", "1",
            *flags]
    assert script.main(argv) == 0
    out = next(p for p in tmp_path.glob("prune_*last.pt"))
    return torch.load(out, weights_only=True), json.loads(out.with_suffix(".json").read_text()), out


def test_strategy_1_latency_aware_run_records_it(checkpoint, nano, tmp_path, capsys):
    ckpt, report, out = _latency_aware_run(prune_yolov5s, checkpoint, tmp_path, "--latency-aware", "--percent", "0.4")
    printed = capsys.readouterr().out
    assert "--latency-aware: --cost-aware --round-to 16 --include-upsample --include-sppf" in printed
    entry = ckpt["history"][-1]
    settings = entry["settings"]
    assert settings["latency_aware"] is True and settings["cost_aware"] is True and settings["round_to"] == 16
    assert settings["include_upsample"] is True and settings["include_sppf"] is True
    assert report["settings"] == settings and ckpt["opt"]["latency_aware"] is True
    assert sorted(map(int, settings["ranking_weights"])) == nano[1].prunable("1", {"upsample", "sppf"})
    optional = set(nano[1].optional)  # the convs feeding an upsample or the SPPF maxpools: prunable now
    assert optional and optional <= set(map(int, entry["masks"]))
    for mask in entry["masks"].values():
        assert sum(mask) % 16 == 0 or sum(mask) == len(mask)
    assert any(sum(m) < len(m) for m in entry["masks"].values())
    load_model(out)(torch.rand(1, 3, 64, 64))


def test_without_latency_aware_the_history_says_so(checkpoint, nano, tmp_path, capsys):
    ckpt, _, _ = _latency_aware_run(prune_yolov5s, checkpoint, tmp_path, "--percent", "0.4")
    settings = ckpt["history"][-1]["settings"]
    assert settings["latency_aware"] is False and settings["cost_aware"] is False and settings["round_to"] == 1
    assert settings["include_upsample"] is False and settings["ranking_weights"] is None
    assert not set(nano[1].optional) & set(map(int, ckpt["history"][-1]["masks"]))
    assert "--latency-aware" not in capsys.readouterr().out


def test_explicit_round_to_wins_over_latency_aware(checkpoint, tmp_path, capsys):
    ckpt, _, _ = _latency_aware_run(slim_prune_yolov5s_8x, checkpoint, tmp_path, "--latency-aware", "--round-to", "8",
                                    "--no-include-sppf", "--target-flops", "0.6")
    assert "(given explicitly: --round-to, --include-sppf)" in capsys.readouterr().out
    settings = ckpt["history"][-1]["settings"]
    assert settings["latency_aware"] is True and settings["round_to"] == 8 and settings["cost_aware"] is True
    assert settings["include_upsample"] is True and settings["include_sppf"] is False
    masks = ckpt["history"][-1]["masks"]
    assert any(sum(m) % 16 for m in masks.values() if sum(m) < len(m))  # multiples of 8, not all of 16
