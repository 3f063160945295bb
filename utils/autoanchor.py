"""Anchor fit check and anchor evolution (k-means on label sizes, then a genetic refinement).

A label of size wh matches an anchor when both side ratios lie within [1/thr, thr] (the loss's
``anchor_t`` rule). The best possible recall (BPR) is the fraction of labels that match at least one
anchor; when it is low, the loss cannot assign many labels at all, so the anchors are re-fitted to
the data before training. Anchors are in input pixels at the training image size.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .general import LOGGER, colorstr

__all__ = ["label_wh", "best_possible_recall", "anchor_fitness", "kmeans", "kmean_anchors",
           "check_anchors"]

_PREFIX = "AutoAnchor: "
_GOOD_BPR = 0.98
_MIN_PIXELS = 2.0  # labels smaller than this on both sides carry no usable shape information
_KMEANS_MAX_POINTS = 30000  # k-means only seeds the genetic search; a sample is enough


def _as_wh(wh: Any) -> torch.Tensor:
    wh = torch.as_tensor(np.asarray(wh, dtype=np.float32) if not torch.is_tensor(wh) else wh)
    if wh.dim() != 2 or wh.shape[1] != 2:
        raise ValueError(f"label sizes must be (n, 2) width/height pairs, got shape {tuple(wh.shape)}")
    return wh.float().cpu()


def label_wh(dataset: Any, img_size: int, rng: np.random.Generator | None = None,
             scale_range: tuple[float, float] = (0.9, 1.1)) -> np.ndarray:
    """(n, 2) label widths/heights in pixels after letterboxing each image to ``img_size``.

    ``dataset.shapes`` is (num_images, 2) original (w, h); ``dataset.labels`` a list of (k, 5) arrays
    (cls, x, y, w, h normalised). With ``rng`` each image is also scaled by a random factor in
    ``scale_range``, as the scale augmentation does during training.
    """
    if not img_size >= 1:
        raise ValueError(f"label_wh: img_size must be at least 1 pixel, got {img_size}")
    shapes = np.asarray(dataset.shapes, dtype=np.float64).reshape(-1, 2)
    labels = list(dataset.labels)
    if len(labels) != len(shapes):
        raise ValueError(f"dataset has {len(shapes)} image shapes but {len(labels)} label arrays")
    sizes = img_size * shapes / shapes.max(1, keepdims=True)  # (n, 2) letterboxed (w, h)
    if rng is not None:
        sizes = sizes * rng.uniform(scale_range[0], scale_range[1], size=(len(sizes), 1))
    parts = [np.asarray(lb, dtype=np.float64).reshape(-1, 5)[:, 3:5] * s for s, lb in zip(sizes, labels)]
    return np.concatenate(parts, 0) if parts else np.zeros((0, 2))


def _ratio_metric(wh: torch.Tensor, anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (label, anchor) worst side ratio min(r, 1/r) (n, k), and the best over anchors (n,)."""
    r = wh[:, None] / anchors[None]  # (n, k, 2)
    x = torch.minimum(r, 1 / r).amin(2)  # (n, k)
    return x, x.amax(1)


def best_possible_recall(wh: Any, anchors_px: Any, thr: float = 4.0) -> tuple[float, float]:
    """(fraction of labels matched by some anchor, mean number of anchors matching a label)."""
    wh, anchors = _as_wh(wh), _as_wh(anchors_px)
    if len(wh) == 0:
        return 0.0, 0.0
    x, best = _ratio_metric(wh, anchors)
    return float((best > 1 / thr).float().mean()), float((x > 1 / thr).float().sum(1).mean())


def anchor_fitness(wh: Any, anchors_px: Any, thr: float = 4.0) -> float:
    """Genetic-search objective: mean best ratio over labels, counting only matched labels."""
    wh, anchors = _as_wh(wh), _as_wh(anchors_px)
    _, best = _ratio_metric(wh, anchors)
    return float((best * (best > 1 / thr).float()).mean())


def _kmeans_pp_init(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: spread initial centres; distinct as long as there are >= k distinct points."""
    centres = [points[rng.integers(len(points))]]
    d2 = ((points - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        idx = rng.choice(len(points), p=d2 / total) if total > 0 else rng.integers(len(points))
        centres.append(points[idx])
        d2 = np.minimum(d2, ((points - points[idx]) ** 2).sum(1))
    return np.stack(centres)


def _sq_dist(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Squared euclidean distances (n, k), by expansion (a matrix product instead of an (n, k, d) array)."""
    d2 = (points * points).sum(1)[:, None] - 2 * points @ centres.T + (centres * centres).sum(1)[None]
    return np.maximum(d2, 0.0)


def kmeans(points: np.ndarray, k: int, rng: np.random.Generator, n_init: int = 3,
           max_iter: int = 50) -> tuple[np.ndarray, float]:
    """Lloyd's k-means, best of ``n_init`` k-means++ starts: (centres (k, d), mean distance to centre).

    Each start iterates until no point changes cluster (or ``max_iter``); an emptied cluster keeps
    its previous centre.
    """
    points = np.asarray(points, dtype=np.float64)
    distinct = len(np.unique(points, axis=0))
    if distinct < k:
        raise ValueError(f"k-means needs at least {k} distinct points, got {distinct}")
    best, best_dist = None, np.inf
    for _ in range(n_init):
        c = _kmeans_pp_init(points, k, rng)
        assign = None
        for _ in range(max_iter):
            new_assign = _sq_dist(points, c).argmin(1)  # (n,)
            if assign is not None and np.array_equal(new_assign, assign):
                break
            assign = new_assign
            counts = np.bincount(assign, minlength=k)  # (k,)
            sums = np.stack([np.bincount(assign, weights=points[:, j], minlength=k)
                             for j in range(points.shape[1])], 1)  # (k, d)
            c = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], c)
        dist = float(np.sqrt(_sq_dist(points, c).min(1)).mean())
        if dist < best_dist:
            best, best_dist = c, dist
    return best, best_dist


def _no_usable_labels(wh: np.ndarray, img_size: int | None) -> str:
    """Why no label can seed anchors: there are none, or all are under _MIN_PIXELS (at ``img_size``)."""
    if len(wh) == 0:
        return "the dataset has no labels to fit anchors to"
    at = f" at image size {img_size}" if img_size is not None else ""
    fix = "use a larger image size (--img) or check" if img_size is not None else "check"
    return (f"all {len(wh)} labels are smaller than {_MIN_PIXELS:g} pixels on both sides{at} (largest side "
            f"{float(wh.max()):.2g} px), too small to fit anchors to; {fix} that the label sizes are right")


def _sorted_by_area(k: np.ndarray) -> np.ndarray:
    return k[np.argsort(k.prod(1), kind="stable")]


def _log_anchors(k: np.ndarray, wh: torch.Tensor, thr: float, img_size: int) -> None:
    bpr, aat = best_possible_recall(wh, k, thr)
    fit = anchor_fitness(wh, k, thr)
    LOGGER.info(f"{colorstr(_PREFIX)}thr={1 / thr:.2f}: {bpr:.4f} best possible recall, "
                f"{aat:.2f} anchors past thr, fitness {fit:.4f}; n={len(k)}, img_size={img_size}, "
                "anchors: " + ", ".join(f"{w:.0f},{h:.0f}" for w, h in k))


def kmean_anchors(wh_or_dataset: Any, n: int = 9, img_size: int = 640, thr: float = 4.0,
                  gen: int = 1000, seed: int = 0, verbose: bool = True) -> np.ndarray:
    """Evolve ``n`` anchors (pixels, (n, 2), sorted by area) that fit the label sizes.

    ``wh_or_dataset`` is an (m, 2) array of label sizes in pixels or a dataset with ``shapes`` and
    ``labels`` (sizes then taken at ``img_size``). k-means on whitened sizes gives a start; a genetic
    search (``gen`` mutations, each gene mutated with probability 0.9 by a normal factor of sigma 0.1
    times a random strength) keeps every mutation that raises :func:`anchor_fitness`.
    Deterministic for a given ``seed``.
    """
    rng = np.random.default_rng(seed)
    from_dataset = hasattr(wh_or_dataset, "labels") and hasattr(wh_or_dataset, "shapes")
    if from_dataset:
        wh0 = label_wh(wh_or_dataset, img_size)
    else:
        wh0 = _as_wh(wh_or_dataset).double().numpy()
    small = int((wh0 < 3.0).any(1).sum())
    if small:
        LOGGER.warning(f"{colorstr(_PREFIX)}{small} of {len(wh0)} labels are smaller than 3 pixels")
    wh = wh0[(wh0 >= _MIN_PIXELS).any(1)]
    if len(wh) == 0:
        raise ValueError(f"kmean_anchors: {_no_usable_labels(wh0, img_size if from_dataset else None)}")

    sample = wh
    if len(wh) > _KMEANS_MAX_POINTS:
        sample = wh[rng.choice(len(wh), _KMEANS_MAX_POINTS, replace=False)]
    scale = sample.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    if len(np.unique(sample, axis=0)) >= n:
        k = kmeans(sample / scale, n, rng)[0] * scale
    else:  # too few distinct sizes for k-means: start from random anchors and let the search fit them
        k = np.sort(rng.random(n * 2)).reshape(n, 2) * img_size
    k = np.clip(k, _MIN_PIXELS, None)

    wh_t = torch.from_numpy(wh).float()
    best_fit, shape = anchor_fitness(wh_t, k, thr), k.shape
    mutate_p, sigma = 0.9, 0.1
    for _ in range(gen):
        v = np.ones(shape)
        while (v == 1).all():  # mutate until something changes
            v = ((rng.random(shape) < mutate_p) * rng.random() * rng.standard_normal(shape) * sigma + 1)
            v = v.clip(0.3, 3.0)
        candidate = (k * v).clip(min=_MIN_PIXELS)
        fit = anchor_fitness(wh_t, candidate, thr)
        if fit > best_fit:
            best_fit, k = fit, candidate
    k = _sorted_by_area(k)
    if verbose:
        _log_anchors(k, torch.from_numpy(wh0).float(), thr, img_size)
    return k.astype(np.float32)


def _levels_by_stride(model: torch.nn.Module) -> list:
    """YOLO layers ordered from the finest stride to the coarsest."""
    layers = list(model.yolo_layers)
    return [layers[i] for i in sorted(range(len(layers)), key=lambda i: float(layers[i].stride))]


@torch.no_grad()
def _write_anchors(model: torch.nn.Module, anchors_px: np.ndarray) -> None:
    """Store anchors sorted by area into the levels, smallest anchors to the finest stride."""
    k = _sorted_by_area(np.asarray(anchors_px, dtype=np.float64))
    start = 0
    for layer in _levels_by_stride(model):
        chunk = torch.as_tensor(k[start:start + layer.na], dtype=layer.anchors.dtype,
                                device=layer.anchors.device)
        layer.anchors.copy_(chunk)
        start += layer.na


def check_anchors(dataset: Any, model: torch.nn.Module, thr: float = 4.0, img_size: int = 640,
                  seed: int = 0) -> bool:
    """Log the anchors' best possible recall on the dataset; below 0.98 evolve better anchors.

    New anchors are written into ``model.yolo_layers[*].anchors`` (pixels, in order of increasing
    area from the finest level) only when they raise the recall; returns True when they were written.
    """
    model = model.module if hasattr(model, "module") and hasattr(model.module, "yolo_layers") else model
    rng = np.random.default_rng(seed)
    wh = torch.from_numpy(label_wh(dataset, img_size, rng)).float()
    if not bool((wh >= _MIN_PIXELS).any()):
        LOGGER.warning(f"{colorstr(_PREFIX)}{_no_usable_labels(wh.numpy(), img_size)}; anchors left unchanged")
        return False
    layers = model.yolo_layers
    current = torch.cat([m.anchors.detach().float().cpu() for m in layers])  # (total, 2) pixels
    bpr, aat = best_possible_recall(wh, current, thr)
    msg = f"{colorstr(_PREFIX)}{aat:.2f} anchors/target, {bpr:.3f} best possible recall (BPR). "
    if bpr > _GOOD_BPR:
        LOGGER.info(msg + "Current anchors are a good fit to the dataset")
        return False
    LOGGER.info(msg + "Anchors are a poor fit to the dataset, evolving better anchors...")
    new = kmean_anchors(dataset, n=len(current), img_size=img_size, thr=thr, gen=1000, seed=seed,
                        verbose=False)
    new_bpr, _ = best_possible_recall(wh, new, thr)
    if new_bpr <= bpr:
        LOGGER.info(f"{colorstr(_PREFIX)}evolved anchors (BPR {new_bpr:.3f}) are no better; "
                    "original anchors kept")
        return False
    _write_anchors(model, new)
    LOGGER.info(f"{colorstr(_PREFIX)}new anchors saved to the model (BPR {bpr:.3f} -> {new_bpr:.3f}): "
                + ", ".join(f"{w:.0f},{h:.0f}" for w, h in new))
    return True
