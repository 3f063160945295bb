"""Mask functions: thresholds, floors, rounding, groups (no model involved)."""
import math

import pytest
import torch

from utils.prune import OptionError, PruneOptions
from utils.prune.masks import (channel_mask, compute_masks, global_threshold, group_mask, group_score, min_keep,
                               ranked_gammas, ranking_layers, round_up, safe_ratio, threshold_mask, top_up,
                               union, validate_ratio)
from utils.prune.report import gamma_quantiles
from utils.prune.strategy import get_strategy


def _gammas(widths, seed=0, fraction=0.6):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, c in enumerate(widths):
        v = torch.rand(c, generator=g) + 0.5
        v[torch.randperm(c, generator=g)[: int(fraction * c)]] *= 0.01
        out[i] = v * torch.where(torch.rand(c, generator=g) < 0.5, -1.0, 1.0)  # signs must not matter
    return out


@pytest.mark.parametrize("inclusive", [True, False])
def test_ratio_zero_keeps_everything_and_k_smallest_go(inclusive):
    values = torch.tensor([0.3, 0.1, 0.5, 0.2, 0.4, 0.05])
    ranked = ranked_gammas([values])
    thr = global_threshold(ranked, 0.0, inclusive)
    assert bool(threshold_mask(values, thr, inclusive).all())
    thr = global_threshold(ranked, 0.5, inclusive)  # k = 3: 0.05, 0.1, 0.2 go
    assert threshold_mask(values, thr, inclusive).tolist() == [True, False, True, False, True, False]


def test_threshold_boundary_at_ties_is_documented_rule():
    values = torch.tensor([0.1, 0.2, 0.2, 0.2, 0.9])
    ranked = ranked_gammas([values])
    # k = floor(5 * 0.4) = 2; v[1] = v[2] = 0.2 tie: '>=' keeps the ties, '>' removes them
    assert threshold_mask(values, global_threshold(ranked, 0.4, True), True).sum() == 4
    assert threshold_mask(values, global_threshold(ranked, 0.4, False), False).sum() == 1


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, float("nan")])
def test_bad_ratio_is_rejected_naming_the_flag(bad):
    with pytest.raises(ValueError, match="--global_percent"):
        validate_ratio(bad, "--global_percent")
    with pytest.raises(OptionError, match="--global_percent"):  # a UserError: one sentence in the CLI
        PruneOptions("3", bad)


def test_options_are_normalised_and_validated():
    o = PruneOptions.make("8x", 0.5, include_sppf=True, layer_keep=0.01)
    assert o.strategy is get_strategy("8x") and o.round_to == 8 and o.extra == frozenset({"sppf"})
    assert o.include_sppf and not o.include_upsample and not o.cost_aware
    assert o.with_ratio(0.25).ratio == 0.25 and o.with_ratio(0.25).round_to == 8
    assert PruneOptions(1).round_to == 1 and PruneOptions(1, round_to=16).round_to == 16
    for kw, flag in (({"round_to": 0}, "--round-to"), ({"layer_keep": 1.5}, "--layer_keep"),
                     ({"extra": frozenset({"detect"})}, "upsample")):
        with pytest.raises(OptionError, match=flag):
            PruneOptions("3", 0.5, **kw)
    with pytest.raises(AttributeError):
        o.ratio = 0.1  # frozen
    weights = {3: 2.0}
    w = PruneOptions("3", 0.5, weights=weights)
    weights[3] = 5.0  # a later change of the caller's dict does not reach the options
    assert w.weights[3] == 2.0 and w.cost_aware
    with pytest.raises(TypeError):
        w.weights[3] = 1.0


def test_floor_rounding_and_top_up():
    assert min_keep(64, 0.01) == 1 and min_keep(200, 0.01) == 2 and min_keep(3, 0.0) == 1
    assert [round_up(c, 24, 8) for c in (0, 1, 8, 9, 17, 23, 24)] == [0, 8, 8, 16, 24, 24, 24]
    assert round_up(5, 20, 1) == 5 and round_up(19, 20, 8) == 20
    score = torch.tensor([0.9, 0.1, 0.8, 0.2, 0.7])
    mask = torch.tensor([False, True, False, False, False])  # a low-score channel already kept stays
    out = top_up(score, mask, 3)
    assert out.tolist() == [True, True, True, False, False]
    assert torch.equal(top_up(score, out, 2), out)  # never removes


def test_channel_mask_floor_and_multiple_of_8():
    g = torch.linspace(0.01, 1.0, 40)
    m = channel_mask(g, 2.0, True, floor=3)  # threshold above everything: the floor keeps the top 3
    assert m.sum() == 3 and m[-3:].all()
    m = channel_mask(g, 0.5, False, floor=1, round_to=8)
    kept = int((g > 0.5).sum())
    assert m.sum() == math.ceil(kept / 8) * 8 and m[g > 0.5].all()
    top = g.topk(int(m.sum())).indices
    assert m[top].all()  # rounding adds the largest gammas not yet kept


def test_group_mask_rounds_the_union_itself():
    # union of members that disagree; 8x rounding must add channels outside the union (a bug of the original yolov5_prune)
    a = torch.zeros(32, dtype=torch.bool); a[:7] = True
    b = torch.zeros(32, dtype=torch.bool); b[20:33] = True
    u = union([a, b])
    gammas = [torch.rand(32), torch.rand(32)]
    m = group_mask(gammas, u, floor=1, round_to=8)
    assert m.sum() % 8 == 0 and m.sum() >= u.sum() and m[u].all()


def test_safe_ratio_accepts_a_sequence_and_quantiles_are_exact():
    gammas = _gammas([16, 32, 64])
    assert safe_ratio(list(gammas.values())) == safe_ratio(gammas) == safe_ratio(gammas, [0, 1, 2])
    assert safe_ratio([]) == 0.0
    values = [torch.tensor([-0.1, 0.2]), torch.tensor([0.3, -0.4, 0.5])]  # |gamma|: 0.1 ... 0.5
    q = gamma_quantiles(values, (0.0, 0.25, 0.5, 1.0))
    assert q == pytest.approx({"q0": 0.1, "q25": 0.2, "q50": 0.3, "q100": 0.5})
    assert gamma_quantiles([], (0.5,)) == {"q50": 0.0}


def test_safe_ratio_is_largest_ratio_without_empty_layers():
    gammas = _gammas([16, 32, 64])
    layers = [0, 1, 2]
    safe = safe_ratio(gammas, layers)
    ranked = ranked_gammas([gammas[i] for i in layers])
    for inclusive in (True, False):
        for ratio, ok in ((safe, True), (min(safe + 2 / ranked.numel(), 0.999), False)):
            thr = global_threshold(ranked, ratio, inclusive)
            emptied = any(threshold_mask(gammas[i], thr, inclusive).sum() == 0 for i in layers)
            assert emptied is not ok, (inclusive, ratio)


WIDTHS = [16, 32, 32, 32, 64, 24, 48]
GROUPS = [(1, 2, 3)]


def _top_set(score: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` highest-score channels (scores are distinct here)."""
    out = torch.zeros(score.numel(), dtype=torch.bool)
    out[score.topk(count).indices] = True
    return out


def _expected_count(above: int, width: int, keep: float, round_to: int) -> int:
    """kept = max(#above threshold, min_keep), rounded up to the smallest multiple >= it (or the width)."""
    return round_up(max(above, min_keep(width, keep)), width, round_to)


@pytest.mark.parametrize("strategy", ["1", "2", "3", "8x"])
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.7, 0.99])
def test_compute_masks_invariants(strategy, ratio):
    """Exact kept counts and exact kept sets, not only lower bounds: an implementation that keeps
    every channel (or the wrong ones) fails."""
    s = get_strategy(strategy)
    gammas = _gammas(WIDTHS, seed=3)
    prunable = [0, 4, 5, 6] if strategy == "1" else list(range(len(WIDTHS)))
    keep = 0.1
    masks = compute_masks(gammas, prunable, GROUPS, PruneOptions(s, ratio, layer_keep=keep))
    assert set(masks) == set(prunable)
    groups = GROUPS if s.prunes_groups else []
    grouped = {m for g in groups for m in g}
    ranked = ranked_gammas([gammas[i] for i in ranking_layers(prunable, groups, s)])
    thr = global_threshold(ranked, ratio, s.inclusive)
    removed = 0
    for i in (i for i in prunable if i not in grouped):  # single layers: the top-|gamma| set
        m, a = masks[i], gammas[i].abs()
        assert m.dtype == torch.bool and m.numel() == WIDTHS[i]
        above = int(threshold_mask(a, thr, s.inclusive).sum())
        count = _expected_count(above, WIDTHS[i], keep, s.round_to)
        assert int(m.sum()) == count, (i, int(m.sum()), count)
        assert torch.equal(m, _top_set(a, count))
        removed += WIDTHS[i] - count
    for g in groups:  # one shared mask per group, by the strategy's rule
        assert all(masks[m] is masks[g[0]] or torch.equal(masks[m], masks[g[0]]) for m in g)
        floor = min_keep(WIDTHS[g[0]], keep)
        if s.group_rule == "leader":
            base = threshold_mask(gammas[g[0]], thr, True)
        else:
            base = union([channel_mask(gammas[m], thr, False, floor) for m in g])
        count = _expected_count(int(base.sum()), WIDTHS[g[0]], keep, s.round_to)
        shared = masks[g[0]]
        assert int(shared.sum()) == count and bool(shared[base].all())
        extra = shared & ~base  # channels added beyond the rule's base: the best by group score
        score = group_score([gammas[m] for m in g])
        if bool(extra.any()) and bool((~shared).any()):
            assert float(score[extra].min()) >= float(score[~shared].max())
        removed += WIDTHS[g[0]] * len(g) - count * len(g)
    if ratio == 0.0:
        assert removed == 0
    elif ratio >= 0.7:
        assert removed > 0  # the threshold really removes channels


@pytest.mark.parametrize("round_to", [1, 8, 16])
def test_rounding_picks_the_smallest_multiple(round_to):
    g = torch.linspace(0.01, 1.0, 50)
    for thr in (0.0, 0.33, 0.5, 0.9, 2.0):
        m = channel_mask(g, thr, False, floor=3, round_to=round_to)
        above = int((g > thr).sum())
        want = min(-(-max(above, 3) // round_to) * round_to, 50)
        assert int(m.sum()) == want, (thr, int(m.sum()), want)
        assert torch.equal(m, _top_set(g, want))


def test_strategy_2_floor_is_per_group():
    # the leader is entirely below the threshold, members are not: all share one floored mask
    gammas = {0: torch.full((8,), 1e-4), 1: torch.linspace(0.5, 1, 8), 2: torch.linspace(0.1, 1, 8)}
    gammas[0][3] = 2e-4
    masks = compute_masks(gammas, [0, 1, 2], [(0, 1)], PruneOptions("2", 0.5))
    assert torch.equal(masks[0], masks[1]) and masks[0].sum() == 1
    assert masks[0][7]  # chosen by the group score (max over members), not the leader's own argmax


def test_strategies_answer_their_own_questions():
    s1, s2, s3, s8 = (get_strategy(k) for k in ("1", "2", "3", "8x"))
    assert [s.ratio_flag for s in (s1, s2, s3, s8)] == ["--percent", "--percent", "--global_percent",
                                                        "--global_percent"]
    assert [s.uses_layer_keep for s in (s1, s2, s3, s8)] == [False, False, True, True]
    assert [s.prunes_groups for s in (s1, s2, s3, s8)] == [False, True, True, True]
    assert s1.file_prefix(0.8, 0.5) == "prune_0.8_" and s2.file_prefix(0.3) == "prune_0.3_"
    assert s3.file_prefix(0.5, 0.01) == "prune_0.5_keep_0.01_"
    assert s8.file_prefix(0.5, 0.01) == "prune_0.5_keep_0.01_8x_" and s8.round_to == 8
    assert (s1.default_weights, s1.default_ratio) == ("weights/last_v6s_0.pt", 0.5)
    assert (s8.default_weights, s8.default_ratio) == ("weights/last_v6s.pt", 0.6)


def test_unknown_strategy():
    with pytest.raises(ValueError, match="8x"):
        get_strategy("4")
    assert get_strategy(1).name == "1" and get_strategy("slim8x").round_to == 8
