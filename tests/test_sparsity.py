"""The sparsity penalty hook and gamma statistics."""
import numpy as np
import pytest
import torch

from models import build_model
from utils.prune.masks import safe_ratio
from utils.prune.sparsity import (SparsityHook, bimodality, bn_gammas, gamma_stats, pull_direction, quantile_table,
                                  sarle_coefficient, slide_fit)


def _model_with_grads(seed=0):
    torch.manual_seed(seed)
    model = build_model("models/yolov5n.yaml", nc=2)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    return model


def _layers(model):
    return [i for i, seq in model.conv_layers() if "BatchNorm2d" in seq._modules][:10]


def test_hook_adds_exactly_s_sign_gamma_and_nothing_else():
    model = _model_with_grads()
    layers = _layers(model)
    # make some gammas negative and one exactly zero: sign(0) = 0
    bn0 = model.module_list[layers[0]].BatchNorm2d
    with torch.no_grad():
        bn0.weight[:3] = torch.tensor([-0.5, 0.0, 0.7])
    before = {k: p.grad.clone() for k, p in model.named_parameters()}
    s = 0.01
    SparsityHook(layers, scale=s).apply(model, n_micro=1)
    regularised = {f"module_list.{i}.BatchNorm2d.weight" for i in layers}
    for k, p in model.named_parameters():
        if k in regularised:
            assert torch.equal(p.grad, before[k] + s * torch.sign(p.detach())), k
        else:
            assert torch.equal(p.grad, before[k]), k
    g = model.module_list[layers[0]].BatchNorm2d.weight.grad
    b = before[f"module_list.{layers[0]}.BatchNorm2d.weight"]
    assert g[1] == b[1]  # zero gamma: no push


def test_hook_with_gradscaler_after_unscale():
    """With a GradScaler the hook runs on unscaled grads: the final grad is data grad + s*sign."""
    model = build_model("models/yolov5n.yaml", nc=2)
    layers = _layers(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=True)
    x = torch.rand(1, 3, 64, 64)
    out = model(x)
    loss = sum(o.float().mean() for o in out)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    data_grads = {i: model.module_list[i].BatchNorm2d.weight.grad.clone() for i in layers}
    SparsityHook(layers, scale=0.001).apply(model)
    for i in layers:
        w = model.module_list[i].BatchNorm2d.weight
        assert torch.allclose(w.grad, data_grads[i] + 0.001 * torch.sign(w.detach()))


def test_per_image_and_micro_batches():
    model = _model_with_grads()
    layers = _layers(model)
    w = model.module_list[layers[0]].BatchNorm2d.weight
    g0 = w.grad.clone()
    SparsityHook(layers, scale=0.01).apply(model, n_micro=4, n_images=64)
    assert torch.allclose(w.grad, g0 + 4 * 0.01 * torch.sign(w.detach()))
    g1 = w.grad.clone()
    SparsityHook(layers, scale=0.01, per_image=True).apply(model, n_micro=4, n_images=32)
    assert torch.allclose(w.grad, g1 + 2 * 0.01 * torch.sign(w.detach()))


def test_frozen_gammas_are_skipped():
    model = _model_with_grads()
    layers = _layers(model)
    w = model.module_list[layers[0]].BatchNorm2d.weight
    w.requires_grad_(False)
    g0 = w.grad.clone()
    SparsityHook(layers, scale=0.01).apply(model)
    assert torch.equal(w.grad, g0)


def test_schedules_switch_at_the_right_epoch():
    h = SparsityHook([0], scale=0.01, schedule="global", decay_frac=0.5, decay_factor=0.01, epochs=10)
    assert [h.strength(e) for e in (0, 4)] == [0.01, 0.01]
    assert h.strength(5) == pytest.approx(1e-4)
    assert not SparsityHook([0], schedule="constant", epochs=10).decayed(9)
    local = SparsityHook([0], schedule="local", decay_frac=0.3, epochs=10)
    assert not local.decayed(2) and local.decayed(3)


def test_local_schedule_decays_only_the_largest_gammas():
    model = _model_with_grads()
    layers = _layers(model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    hook = SparsityHook(layers, scale=0.01, schedule="local", decay_frac=0.0, local_keep=0.85,
                        decay_factor=0.01, epochs=2)
    hook.apply(model)
    allg = torch.cat([model.module_list[i].BatchNorm2d.weight.detach().abs() for i in layers])
    theta = allg.sort().values[int(len(allg) * 0.85)]
    for i in layers:
        w = model.module_list[i].BatchNorm2d.weight
        expect = torch.where(w.detach().abs() >= theta, 1e-4, 0.01) * torch.sign(w.detach())
        assert torch.allclose(w.grad, expect)


def test_bad_flags():
    with pytest.raises(ValueError, match="--scale"):
        SparsityHook([0], scale=-1)
    with pytest.raises(ValueError, match="--sr-schedule"):
        SparsityHook([0], schedule="cubic")


def test_gamma_stats_and_safe_ratio():
    g = [torch.tensor([0.0005, 0.005, 0.5]), torch.tensor([0.002, 0.2])]
    st = gamma_stats(g)
    assert st["gamma_lt_0.01"] == pytest.approx(3 / 5)
    assert st["gamma_lt_0.001"] == pytest.approx(1 / 5)
    # smallest per-layer max is 0.2: 3 of 5 gammas lie below it (the one safe-ratio implementation)
    assert st["safe_ratio"] == pytest.approx(3 / 5)
    assert st["safe_ratio"] == safe_ratio({0: g[0], 1: g[1]}, [0, 1])
    model = build_model("models/yolov5n.yaml", nc=2)
    assert len(bn_gammas(model, _layers(model))) == 10


def test_quantile_table_shows_min_median_max():
    g = [torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.4, 0.5])]
    table = quantile_table(g, " t ")
    assert "0%" in table and "50%" in table and "100%" in table
    assert "0.1 " in table and "0.3 " in table and "0.5 " in table  # min, median, max


def test_decoupled_form_soft_thresholds_and_leaves_grads():
    """Decoupled form: gamma <- sign * max(|gamma| - lr * k * s / (1 - beta1), 0), gradients untouched."""
    model = _model_with_grads()
    layers = _layers(model)
    w = model.module_list[layers[0]].BatchNorm2d.weight
    with torch.no_grad():
        w[:4] = torch.tensor([0.005, -0.005, 0.5, -0.5])
    opt = torch.optim.SGD([{"params": [w], "lr": 0.1}])
    g0, w0 = w.grad.clone(), w.detach().clone()
    hook = SparsityHook(layers[:1], scale=0.05, form="decoupled")
    hook.apply_decoupled(model, opt, n_micro=2, n_images=16)  # threshold 0.1 * 2 * 0.05 = 0.01 (no betas)
    assert torch.equal(w.grad, g0)
    expect = torch.sign(w0) * (w0.abs() - 0.01).clamp(min=0)
    assert torch.allclose(w.detach(), expect)
    v = w.detach()[:4].tolist()
    assert v[0] == 0 and v[1] == 0 and v[2] == pytest.approx(0.49) and v[3] == pytest.approx(-0.49)
    adam = torch.optim.Adam([w], lr=0.1, betas=(0.9, 0.999))  # beta1 0.9: ten times the pull
    with torch.no_grad():
        w[:2] = torch.tensor([0.09, 0.11])
    hook.apply_decoupled(model, adam, n_micro=2, n_images=16)  # threshold 0.01 / (1 - 0.9) = 0.1
    assert w.detach()[0] == 0 and w.detach()[1].item() == pytest.approx(0.01)
    with pytest.raises(ValueError, match="form"):
        SparsityHook([0], form="adam")


def test_hoyer_direction_keeps_the_norm_pulls_small_and_pushes_large_gammas():
    g = torch.tensor([0.0, 0.1, -0.2, 0.5, 1.0, -1.5], dtype=torch.float64)
    d = pull_direction(g, "hoyer")
    assert torch.dot(d, g).abs() < 1e-12  # orthogonal to gamma: the layer's L2 norm is kept to first order
    # ||gamma||_2 times the autograd gradient of the Hoyer measure ||gamma||_1 / ||gamma||_2
    x = g.clone().requires_grad_(True)
    (x.abs().sum() / x.norm()).backward()
    assert torch.allclose(d, x.grad * g.norm())
    star = g.square().mean() / g.abs().mean()  # channels below |gamma| = star are pulled toward zero, above pushed out
    assert all((d[i] * g[i] > 0) == (g[i].abs() < star) for i in range(1, len(g)))
    assert d[0] == 0 and torch.equal(pull_direction(g, "l1"), torch.sign(g))
    assert torch.equal(pull_direction(torch.zeros(3), "hoyer"), torch.zeros(3))
    assert torch.allclose(pull_direction(3 * g, "hoyer"), d)  # scale-invariant
    with pytest.raises(ValueError, match="penalty"):
        pull_direction(g, "l2")
    with pytest.raises(ValueError, match="--sr-penalty"):
        SparsityHook([0], penalty="l2")


def test_hoyer_penalty_in_both_forms():
    model = _model_with_grads()
    layers = _layers(model)
    w = model.module_list[layers[0]].BatchNorm2d.weight
    g0, w0 = w.grad.clone(), w.detach().clone()
    SparsityHook(layers[:1], scale=0.01, penalty="hoyer").apply(model, n_micro=2)
    assert torch.allclose(w.grad, g0 + 2 * 0.01 * pull_direction(w0, "hoyer"))
    with torch.no_grad():
        w[:3] = torch.tensor([0.004, 0.0, 3.0])
    w0 = w.detach().clone()
    opt = torch.optim.SGD([{"params": [w], "lr": 0.1}])
    SparsityHook(layers[:1], scale=0.05, form="decoupled", penalty="hoyer").apply_decoupled(model, opt)
    t = 0.1 * 0.05
    expect = torch.sign(w0) * (w0.abs() - t).clamp(min=0) + t * w0 * w0.abs().mean() / w0.square().mean()
    assert torch.allclose(w.detach(), expect)
    v = w.detach()
    assert v[1] == 0 and 0 < v[0] < 0.004 and v[2] > 3.0  # zero stays zero, the small shrink, the large grow


def test_polarization_direction_is_the_gradient_of_its_penalty():
    g = torch.tensor([0.0, 0.1, -0.2, 0.5, 1.0, -1.5], dtype=torch.float64)
    m = g.abs().mean()
    d = pull_direction(g, "polarization", m, polar_t=1.2)
    # t * sum|gamma| - sum| |gamma| - m |, differentiated with the mean held fixed (it is one shared level)
    x = g.clone().requires_grad_(True)
    (1.2 * x.abs().sum() - (x.abs() - m).abs().sum()).backward()
    assert torch.allclose(d, x.grad)
    below, above = g.abs() < m, g.abs() > m
    assert torch.allclose(d[below & (g != 0)].abs(), torch.tensor(2.2, dtype=torch.float64))  # t + 1
    assert torch.allclose(d[above].abs(), torch.tensor(0.2, dtype=torch.float64))  # t - 1
    assert d[0] == 0 and (d * g >= 0).all()  # always toward zero, a zero stays zero
    assert torch.equal(pull_direction(g, "polarization", polar_t=1.2), d)  # default mean: the layer's own
    with pytest.raises(ValueError, match="--sr-polar-t"):
        SparsityHook([0], penalty="polarization", polar_t=0.8)


def test_polarization_penalty_in_both_forms_uses_the_mean_over_all_layers():
    model = _model_with_grads()
    layers = _layers(model)[:2]
    ws = [model.module_list[i].BatchNorm2d.weight for i in layers]
    with torch.no_grad():
        ws[0].fill_(0.5)
        ws[1].fill_(2.0)  # the shared mean lies between the layers: the first is below it, the second above
    m = torch.cat([w.detach().flatten() for w in ws]).mean()
    g0 = [w.grad.clone() for w in ws]
    SparsityHook(layers, scale=0.01, penalty="polarization", polar_t=1.0).apply(model, n_micro=2)
    assert torch.allclose(ws[0].grad, g0[0] + 2 * 0.01 * 2.0)  # below the mean: (t + 1) s per micro-batch
    assert torch.allclose(ws[1].grad, g0[1])  # above the mean with t = 1: no pull
    assert 0.5 < m < 2.0
    g1 = [w.grad.clone() for w in ws]
    SparsityHook(layers, scale=0.01, penalty="polarization", polar_t=1.5, polar_mean="layer").apply(model)
    for w, g in zip(ws, g1):  # each layer split around its own mean: every channel sits at it, pull t * s
        assert torch.allclose(w.grad, g + 1.5 * 0.01)
    with pytest.raises(ValueError, match="--sr-polar-mean"):
        SparsityHook(layers, penalty="polarization", polar_mean="net")
    opt = torch.optim.SGD([{"params": ws, "lr": 0.1}])
    SparsityHook(layers, scale=3.0, form="decoupled", penalty="polarization", polar_t=1.5).apply_decoupled(model, opt)
    assert torch.allclose(ws[0].detach(), torch.zeros_like(ws[0]))  # 0.5 - 0.1 * 3 * 2.5 < 0: clipped at zero
    assert torch.allclose(ws[1].detach(), torch.full_like(ws[1], 2.0 - 0.1 * 3.0 * 0.5))  # (t - 1) s


def test_polarization_quantile_split_pulls_only_the_channels_below_the_quantile():
    model = _model_with_grads()
    layers = _layers(model)[:2]
    ws = [model.module_list[i].BatchNorm2d.weight for i in layers]
    with torch.no_grad():
        for w in ws:
            w.copy_(torch.linspace(0.1, 1.0, w.numel()))
    flat = torch.cat([w.detach().flatten() for w in ws])
    q = torch.quantile(flat, 0.2)
    assert flat.mean() > q  # the mean would pull more channels than the quantile does
    opt = torch.optim.SGD([{"params": ws, "lr": 0.01}])
    before = [w.detach().clone() for w in ws]
    SparsityHook(layers, scale=1.0, form="decoupled", penalty="polarization",
                 polar_quantile=0.2).apply_decoupled(model, opt)
    for w, b in zip(ws, before):
        below = b < q
        assert torch.allclose(w.detach()[below], (b[below] - 0.02).clamp(min=0))  # (t + 1) s * lr
        assert torch.equal(w.detach()[~below], b[~below])  # at or above the quantile with t = 1: untouched
    moved = sum(int((w.detach() != b).sum()) for w, b in zip(ws, before))
    assert 0.15 * flat.numel() <= moved <= 0.25 * flat.numel()
    with pytest.raises(ValueError, match="--sr-polar-quantile"):
        SparsityHook(layers, penalty="polarization", polar_quantile=1.0)


def test_slide_fit_tells_a_slide_from_a_reordering():
    rng = np.random.default_rng(0)
    ref = [np.abs(rng.normal(1.0, 0.3, 200)), np.abs(rng.normal(1.2, 0.2, 100))]  # two layers
    slid = [np.clip(g - 0.6, 0, None) for g in ref]  # every gamma 0.6 lower, the small ones at zero
    f = slide_fit(slid, ref)
    assert f["n"] == 300 and f["slope"] == pytest.approx(1.0) and f["intercept"] == pytest.approx(-0.6)
    assert 0 < f["kept"] < 1 and f["rank_corr"] > 0.95
    shuffled = [rng.permutation(g) for g in ref]  # the same values on other channels
    g = slide_fit(shuffled, ref)
    assert abs(g["rank_corr"]) < 0.2 and abs(g["slope"]) < 0.3
    assert slide_fit([torch.tensor([1.0, 2.0, 3.0, 4.0])], [torch.tensor([2.0, 4.0, 6.0, 8.0])])["slope"] == pytest.approx(0.5)
    assert slide_fit(np.ones(2), np.ones(2))["slope"] is None  # too few channels
    with pytest.raises(ValueError, match="same channels"):
        slide_fit(np.ones(3), np.ones(4))


# ------------------------------------------------------------------------------------ bimodality
N = 3000


def _mixture(rng, pile=0.5, centre=0.6, spread=0.1):
    """A pile of near-zero gammas (what -sr leaves) and a group of important channels."""
    k = int(N * pile)
    return np.concatenate([np.abs(rng.normal(0, 0.003, k)), np.abs(rng.normal(centre, spread, N - k))])


@pytest.mark.parametrize("pile", [0.2, 0.5, 0.8])
def test_bimodality_passes_a_pile_and_a_separated_group(pile):
    b = bimodality(_mixture(np.random.default_rng(0), pile))
    assert b["bimodal"] and b["n"] == N
    assert b["low_share"] == pytest.approx(pile, abs=0.01) and b["valley_share"] < 0.01
    assert b["low_share"] + b["valley_share"] + b["high_share"] == pytest.approx(1.0)
    assert b["valley_ratio"] < 0.1 and b["sarle_bc"] > 5 / 9


UNIMODAL = {
    "slid left, narrow": lambda rng: rng.normal(0.3, 0.05, N),
    "uniform smear": lambda rng: rng.uniform(0, 1, N),
    "log-normal smear": lambda rng: rng.lognormal(np.log(0.1), 1.5, N),
    "wide log-normal": lambda rng: rng.lognormal(np.log(0.05), 2.5, N),
    "exponential": lambda rng: rng.exponential(0.2, N),
    "half-normal at zero": lambda rng: np.abs(rng.normal(0, 0.3, N)),
    "all zero": lambda rng: np.zeros(N),
    "all equal": lambda rng: np.full(N, 0.5),
    "few dead channels": lambda rng: np.concatenate([np.zeros(N // 20), rng.normal(0.6, 0.1, N)]),
    "few survivors": lambda rng: np.concatenate([np.zeros(N), rng.normal(0.6, 0.1, N // 12)]),  # 8% of them
}


@pytest.mark.parametrize("name", list(UNIMODAL))
def test_bimodality_rejects_distributions_without_a_split(name):
    b = bimodality(UNIMODAL[name](np.random.default_rng(1)))
    assert not b["bimodal"], (name, b)


def test_bimodality_valley_decides_when_both_modes_are_large():
    rng = np.random.default_rng(2)
    split = _mixture(rng, 0.4)
    bridged = np.concatenate([split, rng.uniform(0.01, 0.15, N)])  # fill the gap between pile and group
    assert bimodality(split)["bimodal"]
    b = bimodality(bridged)
    assert b["low_share"] >= 0.1 and b["high_share"] >= 0.1 and b["valley_ratio"] > 0.5 and not b["bimodal"]


def test_bimodality_ignores_order_layers_sign_and_container():
    rng = np.random.default_rng(3)
    x = _mixture(rng, 0.5)
    ref = bimodality(x)
    layers = [torch.tensor(p, dtype=torch.float64) for p in np.split(rng.permutation(x), [10, 700, 2000])]
    signed = -x * np.where(rng.random(N) < 0.5, 1, -1)
    for other in (bimodality(layers), bimodality(x[::-1].copy()), bimodality(signed), bimodality(list(np.split(x, 3)))):
        assert other["bimodal"] == ref["bimodal"] and other["n"] == ref["n"]
        for k in ("scale", "low_share", "valley_share", "high_share", "valley_ratio", "sarle_bc"):
            assert other[k] == pytest.approx(ref[k], rel=1e-9), k


def test_bimodality_of_model_gammas_and_empty_input():
    model = build_model("models/yolov5n.yaml", nc=2)
    b = bimodality(bn_gammas(model, _layers(model)))
    assert not b["bimodal"]  # freshly initialised: every gamma is 1
    assert bimodality([]) == {"n": 0, "scale": 0.0, "low_share": 0.0, "valley_share": 0.0, "high_share": 0.0,
                              "valley_ratio": None, "sarle_bc": None, "bimodal": False}


def test_sarle_coefficient_reference_values():
    rng = np.random.default_rng(4)
    assert sarle_coefficient(rng.normal(0, 1, 20000)) == pytest.approx(1 / 3, abs=0.02)
    assert sarle_coefficient(rng.uniform(0, 1, 20000)) == pytest.approx(5 / 9, abs=0.02)
    assert sarle_coefficient(np.r_[np.zeros(5000), np.ones(5000)]) == pytest.approx(1.0, abs=0.01)
    assert sarle_coefficient(np.ones(10)) is None and sarle_coefficient(np.arange(3.0)) is None
