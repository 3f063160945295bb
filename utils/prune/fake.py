"""Make a freshly initialised model look sparsity-trained (tests and benchmarks).

Mirrors how the original yolov5_prune's reference numbers were produced: for a share of every BN layer's
channels gamma is scaled down (as L1 sparsity training drives it toward 0), and beta ~ N(0, beta_std^2)
so that pruned channels carry a non-trivial constant. First the BN running statistics are calibrated
on a random batch, as training would do: with PyTorch's default init and uncalibrated statistics the
signal shrinks layer after layer, the outputs no longer depend on the image, and comparisons of
outputs would prove little.
"""
from __future__ import annotations

import torch

__all__ = ["fake_sparsity_"]


@torch.no_grad()
def calibrate_bn_(model: torch.nn.Module, img_size: int = 128, batch: int = 2, seed: int = 0) -> None:
    """Set every BN's running mean/var to the statistics of one random batch (in place)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    saved = [(m.momentum, m.training) for m in bns]
    p = next(model.parameters())
    x = torch.rand(batch, getattr(getattr(model, "cfg", None), "in_channels", 3), img_size, img_size,
                   generator=torch.Generator().manual_seed(seed)).to(p)
    was_training = model.training
    model.eval()
    for m in bns:
        m.train()
        m.momentum = 1.0
    try:
        model(x)
    finally:
        for m, (momentum, training) in zip(bns, saved):
            m.momentum = momentum
            m.train(training)
        model.train(was_training)


@torch.no_grad()
def fake_sparsity_(model: torch.nn.Module, fraction: float = 0.6, factor: float = 0.01,
                   beta_std: float = 0.5, seed: int = 0, img_size: int = 128) -> torch.nn.Module:
    """In place: calibrate BN statistics, then scale ``gamma`` of a random ``fraction`` of each BN's
    channels by ``factor`` (others uniform in [0.5, 1.5]) and draw beta ~ N(0, beta_std^2)."""
    calibrate_bn_(model, img_size, seed=seed)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if not isinstance(m, torch.nn.BatchNorm2d):
            continue
        c = m.num_features
        gamma = torch.rand(c, generator=g) + 0.5
        gamma[torch.randperm(c, generator=g)[: int(fraction * c)]] *= factor
        m.weight.copy_(gamma.to(m.weight))
        m.bias.copy_((torch.randn(c, generator=g) * beta_std).to(m.bias))
    return model
