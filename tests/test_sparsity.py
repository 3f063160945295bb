"""The sparsity penalty hook and gamma statistics."""
import pytest
import torch

from models import build_model
from utils.prune.masks import safe_ratio
from utils.prune.sparsity import SparsityHook, bn_gammas, gamma_stats, quantile_table


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
