"""Autoanchor: recall metric, k-means, anchor evolution and writing anchors into the model."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from models import build_model
from models.darknet import YOLOLayer
from utils import autoanchor
from utils.autoanchor import (anchor_fitness, best_possible_recall, check_anchors, kmean_anchors, kmeans,
                              label_wh)

DEFAULT_ANCHORS = np.array([[10, 13], [16, 30], [33, 23], [30, 61], [62, 45], [59, 119],
                            [116, 90], [156, 198], [373, 326]], dtype=float)


def make_dataset(wh_px: np.ndarray, per_image: int = 6, img: int = 640) -> SimpleNamespace:
    """Square ``img`` px images whose labels have the given pixel sizes (random centres)."""
    rng = np.random.default_rng(0)
    labels = []
    for start in range(0, len(wh_px), per_image):
        wh = wh_px[start:start + per_image] / img
        xy = rng.uniform(0.2, 0.8, (len(wh), 2))
        labels.append(np.concatenate([np.zeros((len(wh), 1)), xy, wh], 1).astype(np.float32))
    return SimpleNamespace(shapes=np.full((len(labels), 2), float(img)), labels=labels)


def thin_boxes(n: int = 300, seed: int = 1) -> np.ndarray:
    """Long thin boxes (300-600 x 4-10 px): no default anchor matches them within a ratio of 4."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(300, 600, n), rng.uniform(4, 10, n)], 1)


def anchors_of(model) -> np.ndarray:
    return torch.cat([m.anchors for m in model.yolo_layers]).numpy().copy()


def test_best_possible_recall_by_hand():
    wh = torch.tensor([[10.0, 10.0], [100.0, 10.0], [30.0, 30.0]])
    anchors = torch.tensor([[10.0, 10.0], [20.0, 20.0]])
    # (10,10) matches both; (100,10) neither (width ratios 10 and 5); (30,30) both (ratios 3, 1.5)
    bpr, aat = best_possible_recall(wh, anchors, thr=4.0)
    assert bpr == pytest.approx(2 / 3, rel=1e-6) and aat == pytest.approx(4 / 3, rel=1e-6)
    assert best_possible_recall(wh, anchors, thr=2.5)[1] == pytest.approx(3 / 3, rel=1e-6)
    # fitness: mean over labels of the best ratio where matched: (1 + 0 + 20/30) / 3
    assert anchor_fitness(wh, anchors, thr=4.0) == pytest.approx((1 + 0 + 2 / 3) / 3, rel=1e-6)


def test_label_wh_letterbox_and_jitter():
    ds = SimpleNamespace(shapes=np.array([[1280.0, 640.0]]),
                         labels=[np.array([[0, 0.5, 0.5, 0.5, 0.5]])])
    assert label_wh(ds, 640).tolist() == [[320.0, 160.0]]
    jittered = label_wh(ds, 640, np.random.default_rng(0))
    assert 0.9 <= jittered[0, 0] / 320 <= 1.1 and jittered[0, 0] / 320 == pytest.approx(jittered[0, 1] / 160)
    with pytest.raises(ValueError, match="shapes"):
        label_wh(SimpleNamespace(shapes=np.ones((2, 2)), labels=[np.zeros((0, 5))]), 640)


def test_kmeans_recovers_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[10, 10], [50, 20], [20, 80], [200, 150]], float)
    points = np.concatenate([c + rng.normal(0, 1, (200, 2)) for c in centres])
    found, dist = kmeans(points, 4, np.random.default_rng(0))
    order = np.lexsort(found.T[::-1])
    assert np.abs(found[order] - centres[np.lexsort(centres.T[::-1])]).max() < 0.5
    assert dist < 2
    with pytest.raises(ValueError, match="distinct"):
        kmeans(np.ones((10, 2)), 3, np.random.default_rng(0))


def test_kmean_anchors_sorted_deterministic_and_improving():
    wh = np.concatenate([thin_boxes(150), np.random.default_rng(2).uniform(20, 80, (150, 2))])
    a = kmean_anchors(wh, n=6, gen=300, seed=3, verbose=False)
    b = kmean_anchors(wh, n=6, gen=300, seed=3, verbose=False)
    assert a.shape == (6, 2) and np.array_equal(a, b)
    assert np.all(np.diff(a.prod(1)) >= 0)  # sorted by area
    start = kmean_anchors(wh, n=6, gen=0, seed=3, verbose=False)  # same seed: the k-means start
    assert anchor_fitness(wh, a) >= anchor_fitness(wh, start)
    assert best_possible_recall(wh, a)[0] > 0.95
    assert not np.array_equal(kmean_anchors(wh, n=6, gen=300, seed=4, verbose=False), a)


def test_kmean_anchors_edge_cases():
    few = np.tile([[30.0, 40.0], [60.0, 20.0]], (10, 1))  # only 2 distinct sizes for 9 anchors
    k = kmean_anchors(few, n=9, gen=200, seed=0, verbose=False)
    assert k.shape == (9, 2) and best_possible_recall(few, k)[0] == 1.0
    with pytest.raises(ValueError, match=r"all 5 labels are smaller than 2 pixels on both sides \(largest side 1 px"):
        kmean_anchors(np.full((5, 2), 1.0), n=3, verbose=False)


def test_check_anchors_good_fit_leaves_model_alone(monkeypatch):
    def no_evolution(*args, **kwargs):
        raise AssertionError("anchors evolved although they fit")

    monkeypatch.setattr(autoanchor, "kmean_anchors", no_evolution)
    rng = np.random.default_rng(0)
    wh = np.repeat(DEFAULT_ANCHORS, 30, 0) * rng.uniform(0.8, 1.25, (270, 2))
    ds = make_dataset(wh)
    model = build_model("models/yolov5n.yaml", nc=1)
    before = anchors_of(model)
    jittered = label_wh(ds, 640, np.random.default_rng(0))
    assert best_possible_recall(jittered, before)[0] > 0.99
    assert check_anchors(ds, model, thr=4.0, img_size=640) is False
    assert np.array_equal(anchors_of(model), before)


def test_check_anchors_evolves_and_writes_into_model():
    ds = make_dataset(thin_boxes(300))
    model = build_model("models/yolov5n.yaml", nc=1)
    wh = label_wh(ds, 640, np.random.default_rng(0))
    bpr_before = best_possible_recall(wh, anchors_of(model))[0]
    assert bpr_before < 0.5
    assert check_anchors(ds, model, thr=4.0, img_size=640, seed=0) is True
    new = anchors_of(model)
    assert best_possible_recall(wh, new)[0] > 0.95 > bpr_before
    assert new[:, 0].min() > 100 and new[:, 1].max() < 20  # in pixels, shaped like the labels
    # smallest anchors on the finest level: mean area grows with stride
    areas = [m.anchors.prod(1).mean().item() for m in sorted(model.yolo_layers, key=lambda m: m.stride)]
    assert areas == sorted(areas)
    assert np.all(np.diff(new.prod(1)) >= 0)
    # the cfg written from the model (and so the checkpoint) carries the new anchors
    cfg_anchors = np.array([a for level in model.to_cfg().level_anchors() for a in level])
    assert np.allclose(cfg_anchors, new)
    # same seed, fresh model: same anchors; the now-fitting model is left alone
    other = build_model("models/yolov5n.yaml", nc=1)
    check_anchors(ds, other, seed=0)
    assert np.array_equal(anchors_of(other), new)
    assert check_anchors(ds, model, seed=0) is False


def test_check_anchors_keeps_anchors_when_evolution_is_worse(monkeypatch):
    monkeypatch.setattr(autoanchor, "kmean_anchors", lambda *a, **k: np.full((9, 2), 2.0, np.float32))
    ds = make_dataset(np.concatenate([thin_boxes(30), np.repeat(DEFAULT_ANCHORS, 10, 0)]))
    model = build_model("models/yolov5n.yaml", nc=1)
    before = anchors_of(model)
    assert check_anchors(ds, model) is False
    assert np.array_equal(anchors_of(model), before)


def test_check_anchors_level_order_follows_strides():
    class Levels(nn.Module):  # levels listed out of stride order
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(YOLOLayer(torch.tensor([[10.0, 13.0], [16.0, 30.0]]), s)
                                        for s in (32.0, 8.0, 16.0))

        @property
        def yolo_layers(self):
            return list(self.layers)

    model = Levels()
    ds = make_dataset(thin_boxes(120))
    assert check_anchors(ds, model) is True
    by_stride = sorted(model.yolo_layers, key=lambda m: m.stride)
    flat = torch.cat([m.anchors for m in by_stride]).prod(1)
    assert torch.all(flat[1:] >= flat[:-1])


def test_check_anchors_without_labels():
    ds = SimpleNamespace(shapes=np.full((2, 2), 640.0), labels=[np.zeros((0, 5))] * 2)
    model = build_model("models/yolov5n.yaml", nc=1)
    before = anchors_of(model)
    assert check_anchors(ds, model) is False
    assert np.array_equal(anchors_of(model), before)


def test_tiny_labels_message_is_accurate():
    """Labels that exist but are under 2 pixels at this image size are not reported as 'no labels'."""
    ds = make_dataset(np.full((12, 2), 3.0), img=640)  # 3 px at 640 -> 0.15 px at 32
    with pytest.raises(ValueError, match=r"all 12 labels are smaller than 2 pixels on both sides at image size 32 "
                                         r".*--img"):
        kmean_anchors(ds, n=3, img_size=32, gen=10, verbose=False)
    with pytest.raises(ValueError, match="has no labels"):
        kmean_anchors(np.zeros((0, 2)), n=3, verbose=False)
    with pytest.raises(ValueError, match="img_size must be at least 1"):
        kmean_anchors(ds, n=3, img_size=0, verbose=False)
    with pytest.raises(ValueError, match="img_size must be at least 1"):
        check_anchors(ds, build_model("models/yolov5n.yaml", nc=1), img_size=0)


def test_check_anchors_with_only_tiny_labels_keeps_anchors(caplog):
    ds = make_dataset(np.full((12, 2), 3.0), img=640)
    model = build_model("models/yolov5n.yaml", nc=1)
    before = anchors_of(model)
    with caplog.at_level("WARNING", logger="yolov5-prune"):
        assert check_anchors(ds, model, img_size=32) is False
    assert "smaller than 2 pixels" in caplog.text and "anchors left unchanged" in caplog.text
    assert np.array_equal(anchors_of(model), before)
