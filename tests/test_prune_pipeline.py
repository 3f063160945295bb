"""The pruning pipeline on real YOLOv5 graphs (n, s, P6 n6) with artificially sparse random weights."""
import pytest
import torch

from models import build_model
from utils.prune import (PruneError, PruneOptions, Target, VerificationError, analyse, estimate_cost,
                         model_from_state, prune, search_ratio)
from utils.errors import UserError
from utils.prune import OptionError, layer_flops
from utils.prune.absorb import absorb
from utils.prune.fake import fake_sparsity_
from utils.prune.masks import min_keep
from utils.prune.surgery import compact_state, input_keep, verify
from utils.torch_utils import count_flops, count_params

STRATEGIES = ["1", "2", "3", "8x"]


@pytest.fixture(scope="module")
def models():
    return {name: fake_sparsity_(build_model(f"models/yolov5{name}.yaml", nc=2), seed=k).eval()
            for k, name in enumerate(("n", "s", "n6"))}


def _keep(strategy):
    return 0.1 if strategy in ("3", "8x") else 0.0


def _opts(strategy, ratio, keep=None, **kw):
    return PruneOptions.make(strategy, ratio, layer_keep=_keep(strategy) if keep is None else keep, **kw)


@torch.no_grad()
def _raw(model, x):
    return model.eval()(x)[1]


def _replicate_padding(model):
    """Convs pad by repeating the border: a constant channel then pads with its own constant."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.padding_mode = "replicate"
    return model


def _border_distance(h, w):
    ii, jj = torch.arange(h), torch.arange(w)
    return torch.minimum(torch.minimum(ii, h - 1 - ii)[:, None], torch.minimum(jj, w - 1 - jj)[None, :])


@pytest.mark.parametrize("name", ["n", "s", "n6"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_compact_equals_absorbed_and_absorbed_equals_masked(models, name, strategy):
    """compact == absorbed everywhere; absorbed == masked wherever zero padding plays no part.

    With zero padding a kernel window at the border sees fewer copies of a pruned channel's
    constant than its absorbed correction assumes; in a network that carries the signal (calibrated
    BN) that border error spreads inward by the receptive field, which spans a 256 px input. Giving
    every conv replicate padding removes exactly that effect (a constant pads with itself), so the
    absorption algebra must then hold on every cell of every level.
    """
    model = models[name]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    extra = dict(include_upsample=True, include_sppf=True) if strategy == "3" else {}
    r = prune(model, _opts(strategy, 0.5, **extra))
    for k, v in model.state_dict().items():  # the source model is never modified
        assert torch.equal(v, before[k]), k

    cfg = model.to_cfg()
    absorbed = model_from_state(cfg, r.absorbed_state)
    masked = model_from_state(cfg, r.masked_state(model.state_dict()))
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    ra, rc, rm = _raw(absorbed, x), _raw(r.model, x), _raw(masked, x)
    assert len(ra) == len(model.yolo_layers)
    for a, c, m in zip(ra, rc, rm):
        scale = float(a.abs().max())
        assert float((a - c).abs().max()) <= 1e-4 * scale  # compact == absorbed everywhere
        assert float((a - m).abs().max()) > 1e-4 * scale  # zero padding: not exact ...
        dist = _border_distance(*a.shape[2:4])
        diff = (a - m).abs().amax((0, 1, 4))  # (H, W)
        if bool((dist >= 2).any()):  # ... mostly at the border
            assert float(diff[dist >= 2].max()) < float(diff[dist == 0].max())
    for a, m in zip(_raw(_replicate_padding(absorbed), x), _raw(_replicate_padding(masked), x)):
        assert float((a - m).abs().max()) <= 1e-5 * float(a.abs().max())

    # the pruned model really is smaller, every kept count respects the floor, groups share a mask
    graph = r.plan.graph
    assert count_params(r.model) < count_params(model)
    for i, mask in r.masks.items():
        assert mask.sum() >= min_keep(mask.numel(), _keep(strategy))
        assert r.model.module_list[i].Conv2d.out_channels == int(mask.sum())
        if strategy == "8x":
            assert mask.sum() % 8 == 0 or mask.sum() == mask.numel()
    for group in r.plan.groups:
        assert all(torch.equal(r.masks[group[0]], r.masks[m]) for m in group)
    if strategy == "1":
        assert not set(r.masks) & {m for g in graph.groups for m in g}
    else:
        assert len(r.plan.groups) == len(graph.groups)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ratio_zero_changes_nothing(models, strategy):
    model = models["n"]
    r = prune(model, _opts(strategy, 0.0))
    assert all(bool(m.all()) for m in r.masks.values())
    assert r.cfg.channels == model.to_cfg().channels
    x = torch.rand(1, 3, 128, 128)
    for a, b in zip(_raw(model, x), _raw(r.model, x)):
        assert torch.allclose(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ratio_near_maximum_still_runs(models, strategy):
    model = models["n6"]
    r = prune(model, _opts(strategy, 0.999))
    assert r.plan.ratio > r.plan.safe_ratio
    out = _raw(r.model, torch.rand(1, 3, 128, 128))
    assert len(out) == 4 and all(torch.isfinite(o).all() for o in out)
    assert min(int(m.sum()) for m in r.masks.values()) >= 1


def test_cost_estimate_matches_counters_and_search_meets_target(models):
    model = models["s"]
    graph = analyse(model.to_cfg())
    assert estimate_cost(graph, {}, 128) == (count_params(model), count_flops(model, 128))
    assert sum(layer_flops(graph.cfg, 128).values()) == estimate_cost(graph, {}, 128)[1]  # one count per conv
    state = model.state_dict()
    ratio, got = search_ratio(graph, state, _opts("8x", 0.0, 0.01, target=Target("flops", 0.5)), 128)
    r = prune(model, _opts("8x", ratio, 0.01))
    real = count_flops(r.model, 128) / count_flops(model, 128)
    assert abs(real - got) < 1e-9 and got <= 0.5
    assert estimate_cost(graph, r.masks, 128) == (count_params(r.model), count_flops(r.model, 128))
    smaller = prune(model, _opts("8x", max(ratio - 1e-4, 0.0), 0.01))
    assert count_flops(smaller.model, 128) / count_flops(model, 128) > 0.5  # the smallest such ratio
    ratio_p, got_p = search_ratio(graph, state, _opts("2", 0.0, target=Target("params", 0.6)), 128)
    assert got_p <= 0.6
    assert count_params(prune(model, _opts("2", ratio_p)).model) / count_params(model) == pytest.approx(got_p)
    with pytest.raises(PruneError, match="--target-flops 0.0001 cannot be reached") as e:
        search_ratio(graph, state, _opts("1", 0.0, target=Target("flops", 1e-4)), 128)
    reachable = float(str(e.value).split("ask for --target-flops ")[1].split()[0])
    best = estimate_cost(graph, prune(model, _opts("1", 0.9999)).masks, 128)[1] / count_flops(model, 128)
    assert best <= reachable < best + 1e-4  # the message names the smallest reachable fraction
    got_r = search_ratio(graph, state, _opts("1", 0.0, target=Target("flops", reachable)), 128)[1]
    assert got_r <= reachable


def test_verification_rejects_a_wrong_compact_model(models):
    model = models["n"]
    r = prune(model, _opts("3", 0.5, 0.01))
    broken = {k: v.clone() for k, v in r.state.items()}
    key = next(k for k in broken if k.endswith("BatchNorm2d.running_mean"))
    broken[key] += 1.0
    wrong = model_from_state(r.cfg, broken)
    with pytest.raises(VerificationError, match="does not reproduce"):
        verify(model, wrong, 128, reference_state=r.absorbed_state)


def test_inconsistent_group_masks_are_refused(models):
    model = models["n"]
    r = prune(model, _opts("3", 0.5, 0.01))
    graph = r.plan.graph
    group = graph.groups[0]
    masks = dict(r.masks)
    masks[group[1]] = ~masks[group[0]] | masks[group[0]]  # member keeps all, leader does not
    consumer = next(c for c in graph.consumers[group[1]] if c not in group)
    with pytest.raises(PruneError, match="masks differ"):
        input_keep(graph, consumer, masks)
    with pytest.raises(PruneError):
        compact_state(graph, absorb(graph, model.state_dict(), masks), masks)


def test_errors_are_user_errors_and_search_needs_a_target(models):
    """The prune scripts report these as one sentence (utils.errors.cli_main)."""
    assert issubclass(PruneError, UserError) and issubclass(VerificationError, PruneError)
    assert issubclass(OptionError, UserError) and issubclass(OptionError, ValueError)
    model = models["n"]
    with pytest.raises(OptionError, match="target"):
        search_ratio(analyse(model.to_cfg()), model.state_dict(), _opts("3", 0.0), 128)
