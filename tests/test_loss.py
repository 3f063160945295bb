"""Detection loss: hand-checked values, an independent loop-based re-derivation, assignment rules."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from models import build_model
from models.darknet import YOLOLayer
from utils.loss import ComputeLoss, bbox_iou, level_balance, scale_loss_gains

HYP = dict(box=0.05, obj=1.0, cls=0.5, cls_pw=1.0, obj_pw=1.0, anchor_t=4.0, fl_gamma=0.0)
OFFSETS = [(0, 0), (1, 0), (0, 1), (-1, 0), (0, -1)]  # centre, left, top, right, bottom (x0.5)


class LevelsModel(nn.Module):
    """The part of the model the loss reads: ``yolo_layers`` (pixel anchors, stride) and ``nc``."""

    def __init__(self, levels: list[tuple[list[list[float]], float]], nc: int):
        super().__init__()
        self.layers = nn.ModuleList(YOLOLayer(torch.tensor(a), s) for a, s in levels)
        self.nc = nc

    @property
    def yolo_layers(self):
        return list(self.layers)


# ---------------------------------------------------------------- plain-python reference
def softplus(x: float) -> float:
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def bce(x: float, t: float, pw: float = 1.0) -> float:
    """-(pw t log s(x) + (1-t) log(1-s(x))), written with softplus: -log s(x) = softplus(-x)."""
    return pw * t * softplus(-x) + (1 - t) * softplus(x)


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def ciou(b1: tuple, b2: tuple) -> float:
    """Complete IoU of two xywh boxes, textbook formula."""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = b1, b2
    l1, r1, t1, d1 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    l2, r2, t2, d2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    inter = max(0.0, min(r1, r2) - max(l1, l2)) * max(0.0, min(d1, d2) - max(t1, t2))
    iou = inter / (w1 * h1 + w2 * h2 - inter)
    c2 = (max(r1, r2) - min(l1, l2)) ** 2 + (max(d1, d2) - min(t1, t2)) ** 2
    rho2 = (x1 - x2) ** 2 + (y1 - y2) ** 2
    v = 4 / math.pi ** 2 * (math.atan(w2 / h2) - math.atan(w1 / h1)) ** 2
    alpha = v / (1 - iou + v) if v > 0 else 0.0
    return iou - rho2 / c2 - alpha * v


def reference_assign(shape: tuple, anchors: list, targets: list, anchor_t: float) -> list:
    """[(b, a, gj, gi, tbox, cls)] in the documented order: offset, then anchor, then target."""
    _, _, h, w, _ = shape
    out = []
    for ox, oy in OFFSETS:
        for a, (aw, ah) in enumerate(anchors):
            for b, c, x, y, bw, bh in targets:
                gx, gy, gw, gh = x * w, y * h, bw * w, bh * h
                if max(gw / aw, aw / gw, gh / ah, ah / gh) >= anchor_t:
                    continue
                fx, fy = gx % 1, gy % 1
                ok = {(0, 0): True,
                      (1, 0): fx < 0.5 and gx > 1, (0, 1): fy < 0.5 and gy > 1,
                      (-1, 0): (w - gx) % 1 < 0.5 and w - gx > 1,
                      (0, -1): (h - gy) % 1 < 0.5 and h - gy > 1}[(ox, oy)]
                if not ok:
                    continue
                gi = min(max(math.floor(gx - 0.5 * ox), 0), w - 1)
                gj = min(max(math.floor(gy - 0.5 * oy), 0), h - 1)
                out.append((int(b), a, gj, gi, (gx - gi, gy - gj, gw, gh), int(c)))
    return out


def reference_loss(preds: list, anchors_grid: list, targets: list, hyp: dict, nc: int,
                   eps: float = 0.0) -> tuple[float, float, float]:
    """Loss terms (box, obj, cls), gains applied, by explicit loops over assignments and cells."""
    balance = [4.0, 1.0, 0.4] if len(preds) == 3 else [4.0, 1.0, 0.25, 0.06, 0.02]
    lbox = lobj = lcls = 0.0
    for p, anchors, bal in zip(preds, anchors_grid, balance):
        p = p.detach().double()
        bsz, na, h, w, _ = p.shape
        assigned = reference_assign(tuple(p.shape), anchors, targets, hyp["anchor_t"])
        tobj = {}
        box_terms, cls_terms = [], []
        for b, a, gj, gi, tbox, c in assigned:
            v = p[b, a, gj, gi].tolist()
            pbox = (sig(v[0]) * 2 - 0.5, sig(v[1]) * 2 - 0.5,
                    (sig(v[2]) * 2) ** 2 * anchors[a][0], (sig(v[3]) * 2) ** 2 * anchors[a][1])
            iou = ciou(pbox, tbox)
            box_terms.append(1 - iou)
            tobj[(b, a, gj, gi)] = max(iou, 0.0)  # later assignments overwrite earlier ones
            if nc > 1:
                for k in range(nc):
                    t = 1 - 0.5 * eps if k == c else 0.5 * eps
                    cls_terms.append(bce(v[5 + k], t, hyp["cls_pw"]))
        if box_terms:
            lbox += sum(box_terms) / len(box_terms)
        if cls_terms:
            lcls += sum(cls_terms) / len(cls_terms)
        cells = [(b, a, j, i) for b in range(bsz) for a in range(na) for j in range(h) for i in range(w)]
        lobj += bal * sum(bce(float(p[c][4]), tobj.get(c, 0.0), hyp["obj_pw"]) for c in cells) / len(cells)
    return lbox * hyp["box"], lobj * hyp["obj"], lcls * hyp["cls"]


# ---------------------------------------------------------------- tests
def test_scale_loss_gains():
    out = scale_loss_gains(HYP, nl=4, nc=20, img_size=320)
    assert out["box"] == pytest.approx(0.05 * 3 / 4)
    assert out["cls"] == pytest.approx(0.5 * 20 / 80 * 3 / 4)
    assert out["obj"] == pytest.approx(1.0 * 0.25 * 3 / 4)
    assert out["anchor_t"] == HYP["anchor_t"] and HYP["box"] == 0.05  # copy, input untouched


def test_bbox_iou_basic():
    a = torch.tensor([[5.0, 5.0, 2.0, 4.0]])
    assert bbox_iou(a, a).item() == pytest.approx(1.0, abs=1e-5)
    assert bbox_iou(a, a, CIoU=True).item() == pytest.approx(1.0, abs=1e-5)
    far = torch.tensor([[50.0, 5.0, 2.0, 4.0]])
    assert bbox_iou(a, far).item() == pytest.approx(0.0, abs=1e-6)
    assert bbox_iou(a, far, CIoU=True).item() < 0
    xyxy = torch.tensor([[4.0, 3.0, 6.0, 7.0]])
    b = torch.tensor([[6.0, 5.0, 2.0, 2.0]])
    assert torch.allclose(bbox_iou(xyxy, torch.tensor([[5.0, 4.0, 7.0, 6.0]]), xywh=False), bbox_iou(a, b))
    # broadcasting (3, 1, 4) x (1, 2, 4) -> (3, 2), and CIoU equals the textbook formula
    b1, b2 = torch.rand(3, 1, 4) + 0.5, torch.rand(1, 2, 4) + 0.5
    got = bbox_iou(b1, b2, CIoU=True)
    assert got.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            want = ciou(tuple(b1[i, 0].double().tolist()), tuple(b2[0, j].double().tolist()))
            assert got[i, j].item() == pytest.approx(want, abs=1e-5)


def test_hand_checked_single_target():
    """One level (4x4 grid, stride 8, one 8x8 px anchor), nc=2, one target of class 1.

    Target x=0.3, y=0.625, w=0.375, h=0.25 -> grid (1.2, 2.5, 1.5, 1.0): its own cell (gi=1, gj=2)
    and the left neighbour (gi=0); 2.5 sits exactly on a half, so no vertical neighbour.
    Box logits 0 -> predicted box (0.5, 0.5, 1, 1) in cell coordinates.
    """
    model = LevelsModel([([[8.0, 8.0]], 8.0)], nc=2)
    p = torch.zeros(1, 1, 4, 4, 7)
    p[..., 4] = -1.0
    p[0, 0, 2, 1, 5:] = torch.tensor([1.0, 0.3])
    p[0, 0, 2, 0, 5:] = torch.tensor([1.0, 0.3])
    targets = torch.tensor([[0, 1, 0.3, 0.625, 0.375, 0.25]])
    loss_fn = ComputeLoss(model, HYP)
    tcls, tbox, (idx,), anch = loss_fn.build_targets([p], targets)
    cells = sorted(zip(idx[2].tolist(), idx[3].tolist()))
    assert cells == [(2, 0), (2, 1)]

    def ciou_hand(inter, union, enclose_w, enclose_h, dx):
        iou = inter / union
        v = 4 / math.pi ** 2 * (math.atan(1.5 / 1.0) - math.atan(1.0)) ** 2
        return iou - dx ** 2 / (enclose_w ** 2 + enclose_h ** 2) - v * v / (1 - iou + v)

    # own cell: target spans x [-0.55, 0.95], prediction [0, 1]; both span y [0, 1]
    c_own = ciou_hand(0.95, 1.0 + 1.5 - 0.95, 1.55, 1.0, 0.3)
    # left cell: target x [0.45, 1.95]
    c_left = ciou_hand(0.55, 1.0 + 1.5 - 0.55, 1.95, 1.0, 0.7)
    lbox = ((1 - c_own) + (1 - c_left)) / 2
    positives = sum(t * softplus(1.0) + (1 - t) * softplus(-1.0) for t in (c_own, c_left))
    obj_terms = 14 * softplus(-1.0) + positives
    lobj = 4.0 * obj_terms / 16  # one level: balance 4.0
    lcls = (softplus(1.0) + softplus(-0.3)) / 2  # targets [0, 1] against logits [1.0, 0.3]
    loss, items = loss_fn([p], targets)
    want = [0.05 * lbox, 1.0 * lobj, 0.5 * lcls]
    assert items.tolist() == pytest.approx(want, rel=1e-5)
    assert loss.shape == (1,) and loss.item() == pytest.approx(sum(want), rel=1e-5)


def test_matches_loop_reference_random():
    torch.manual_seed(0)
    anchors_px = [[[10, 13], [16, 30], [33, 23]], [[30, 61], [62, 45], [59, 119]],
                  [[116, 90], [156, 198], [373, 326]]]
    model = LevelsModel([(a, s) for a, s in zip(anchors_px, (8.0, 16.0, 32.0))], nc=3)
    hyp = dict(HYP, cls_pw=1.3, obj_pw=0.7)
    hyp = scale_loss_gains(hyp, nl=3, nc=3, img_size=128)
    preds = [torch.randn(2, 3, 128 // s, 128 // s, 8) for s in (8, 16, 32)]
    preds[0][..., 2:4] -= 4  # tiny predicted boxes on P3: negative CIoU, so the clamp matters
    n = 12
    targets = torch.cat([torch.randint(0, 2, (n, 1)).float(), torch.randint(0, 3, (n, 1)).float(),
                         torch.rand(n, 2), torch.rand(n, 2) * 0.6 + 0.02], 1)
    targets[0, 2:4] = torch.tensor([1.0, 0.0])  # on the image border: exercises clamping
    rows = [tuple(r) for r in targets.tolist()]
    for eps in (0.0, 0.1):
        got = ComputeLoss(model, hyp, label_smoothing=eps)(preds, targets)[1]
        grid = [[(w / s, h / s) for w, h in a] for a, s in zip(anchors_px, (8, 16, 32))]
        want = reference_loss(preds, grid, rows, hyp, nc=3, eps=eps)
        assert got.tolist() == pytest.approx(list(want), rel=1e-4)
    # and the assignment itself, level by level
    tcls, tbox, indices, anch = ComputeLoss(model, hyp).build_targets(preds, targets)
    for lvl, p in enumerate(preds):
        ref = reference_assign(tuple(p.shape), grid[lvl], rows, hyp["anchor_t"])
        got_rows = list(zip(*(t.tolist() for t in indices[lvl])))
        assert got_rows == [r[:4] for r in ref]
        assert torch.allclose(tbox[lvl], torch.tensor([r[4] for r in ref]).view(-1, 4), atol=1e-5)
        assert tcls[lvl].tolist() == [r[5] for r in ref]
        assert torch.allclose(anch[lvl], torch.tensor([grid[lvl][r[1]] for r in ref]).view(-1, 2))


def test_neighbour_cells():
    """gx=3.3, gy=5.8 on an 8x8 grid: centre (3,5), left (2,5) and bottom (3,6) cells."""
    model = LevelsModel([([[16.0, 16.0]], 8.0)], nc=1)
    p = torch.zeros(1, 1, 8, 8, 6)
    targets = torch.tensor([[0, 0, 3.3 / 8, 5.8 / 8, 0.25, 0.25]])
    _, tbox, (idx,), _ = ComputeLoss(model, HYP).build_targets([p], targets)
    b, a, gj, gi = (t.tolist() for t in idx)
    assert list(zip(gi, gj)) == [(3, 5), (2, 5), (3, 6)]
    want = torch.tensor([[0.3, 0.8, 2, 2], [1.3, 0.8, 2, 2], [0.3, -0.2, 2, 2]])
    assert torch.allclose(tbox[0], want, atol=1e-5)
    items = ComputeLoss(model, HYP)([p], targets)[1]
    assert items[0] > 0 and items[2] == 0  # a single class has no class loss
    # no neighbours beyond the outer rows/columns: a target in the first cell near its corner
    targets = torch.tensor([[0, 0, 0.3 / 8, 0.2 / 8, 0.25, 0.25]])
    _, _, (idx,), _ = ComputeLoss(model, HYP).build_targets([p], targets)
    assert list(zip(idx[3].tolist(), idx[2].tolist())) == [(0, 0)]


def test_anchor_t_filter():
    """A target 5x the anchor's width matches only when anchor_t > 5."""
    model = LevelsModel([([[8.0, 8.0], [40.0, 8.0]], 8.0)], nc=1)
    p = torch.zeros(1, 2, 8, 8, 6)
    targets = torch.tensor([[0, 0, 0.5, 0.5, 40 / 64, 8 / 64]])  # 40x8 px
    _, _, (idx,), _ = ComputeLoss(model, HYP).build_targets([p], targets)
    assert set(idx[1].tolist()) == {1}
    _, _, (idx,), _ = ComputeLoss(model, dict(HYP, anchor_t=5.5)).build_targets([p], targets)
    assert set(idx[1].tolist()) == {0, 1}


def test_label_smoothing_targets():
    """nc=3, one assigned cell, cls logits 0: the class loss is that of targets (1-e/2, e/2, e/2)."""
    model = LevelsModel([([[8.0, 8.0]], 8.0)], nc=3)
    p = torch.zeros(1, 1, 4, 4, 8)
    p[0, 0, 1, 1, 5:] = torch.tensor([0.5, -1.0, 2.0])
    targets = torch.tensor([[0, 2, 1.5 / 4, 1.5 / 4, 0.25, 0.25]])  # centre of cell (1, 1) only
    eps = 0.2
    items = ComputeLoss(model, HYP, label_smoothing=eps)([p], targets)[1]
    t = [eps / 2, eps / 2, 1 - eps / 2]
    want = sum(bce(x, ti) for x, ti in zip([0.5, -1.0, 2.0], t)) / 3 * HYP["cls"]
    assert items[2].item() == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError):
        ComputeLoss(model, HYP, label_smoothing=1.5)


def test_zero_targets_and_focal():
    model = LevelsModel([([[8.0, 8.0]], 8.0), ([[16.0, 16.0]], 16.0), ([[32.0, 32.0]], 32.0)], nc=4)
    preds = [torch.full((2, 1, n, n, 9), 0.7, requires_grad=True) for n in (8, 4, 2)]
    loss, items = ComputeLoss(model, HYP)(preds, torch.zeros(0, 6))
    assert items[0] == 0 and items[2] == 0
    assert items[1].item() == pytest.approx(softplus(0.7) * (4.0 + 1.0 + 0.4), rel=1e-5)
    assert loss.item() == pytest.approx(2 * items.sum().item(), rel=1e-6)  # times batch size
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in preds)
    # focal loss (gamma 1.5, alpha 0.25): negatives weighted by 0.75 * sigmoid(x)^1.5
    items = ComputeLoss(model, dict(HYP, fl_gamma=1.5))(preds, torch.zeros(0, 6))[1]
    want = softplus(0.7) * 0.75 * sig(0.7) ** 1.5 * (4.0 + 1.0 + 0.4)
    assert items[1].item() == pytest.approx(want, rel=1e-5)


def test_p6_balance():
    model = build_model("models/yolov5n6.yaml", nc=2)
    assert level_balance(4) == [4.0, 1.0, 0.25, 0.06]
    preds = [torch.full((1, 3, n, n, 7), -0.4) for n in (16, 8, 4, 2)]
    items = ComputeLoss(model, HYP)(preds, torch.zeros(0, 6))[1]
    assert items[1].item() == pytest.approx(softplus(-0.4) * (4.0 + 1.0 + 0.25 + 0.06), rel=1e-5)


def test_real_model_gradients_and_wrapped_model():
    torch.manual_seed(1)
    model = build_model("models/yolov5n.yaml", nc=3).train()
    hyp = scale_loss_gains(HYP, nl=3, nc=3, img_size=64)

    class Wrapped(nn.Module):  # the shape of a DistributedDataParallel wrapper
        def __init__(self, m):
            super().__init__()
            self.module = m

    loss_fn = ComputeLoss(Wrapped(model), hyp)
    preds = model(torch.rand(2, 3, 64, 64))
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [1, 2, 0.2, 0.7, 0.1, 0.1],
                            [1, 0, 0.8, 0.3, 0.6, 0.5]])
    loss, items = loss_fn(preds, targets)
    assert torch.isfinite(loss).all() and (items > 0).all()
    loss.backward()
    head = [model.module_list[m.inputs[0]] for m in (model.cfg.layers[i] for i in model.yolo_indices)]
    for seq in head:
        g = seq.Conv2d.weight.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    first = next(model.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0  # reaches the backbone


def test_anchors_read_at_call_time():
    model = LevelsModel([([[8.0, 8.0]], 8.0)], nc=1)
    loss_fn = ComputeLoss(model, HYP)
    p = torch.zeros(1, 1, 4, 4, 6)
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.25, 0.25]])
    before = loss_fn.build_targets([p], targets)[3][0]
    assert len(before) and (before == 1.0).all()
    with torch.no_grad():
        model.yolo_layers[0].anchors.mul_(2)
    after = loss_fn.build_targets([p], targets)[3][0]
    assert len(after) == len(before) and (after == 2.0).all()


def test_bad_inputs():
    model = LevelsModel([([[8.0, 8.0]], 8.0)], nc=2)
    loss_fn = ComputeLoss(model, HYP)
    with pytest.raises(ValueError, match="targets"):
        loss_fn([torch.zeros(1, 1, 4, 4, 7)], torch.zeros(3, 5))
    with pytest.raises(ValueError, match="level 0"):
        loss_fn([torch.zeros(1, 1, 4, 4, 9)], torch.zeros(0, 6))
    with pytest.raises(KeyError, match="anchor_t"):
        ComputeLoss(model, {k: v for k, v in HYP.items() if k != "anchor_t"})
