"""Boxes, NMS and detection metrics: hand cases, reference implementations and pycocotools."""
import numpy as np
import pytest
import torch
import torchvision

from utils.boxes import (box_iou, clip_boxes, non_max_suppression, scale_boxes, xywh2xyxy, xywhn2xyxy,
                         xyxy2xywh, xyxy2xywhn)
from utils.metrics import ConfusionMatrix, ap_per_class, compute_ap, fitness, match_predictions

IOUV = torch.linspace(0.5, 0.95, 10)


# ------------------------------------------------------------------------------------- boxes
@pytest.mark.parametrize("kind", ["torch", "numpy"])
def test_box_conversions_round_trip(kind):
    rng = np.random.default_rng(0)
    xywh = np.concatenate([rng.uniform(10, 90, (50, 2)), rng.uniform(1, 20, (50, 2))], 1)
    x = torch.from_numpy(xywh) if kind == "torch" else xywh
    xyxy = xywh2xyxy(x)
    assert type(xyxy) is type(x)
    np.testing.assert_allclose(np.asarray(xyxy)[:, 2:] - np.asarray(xyxy)[:, :2], xywh[:, 2:])
    np.testing.assert_allclose(np.asarray(xyxy2xywh(xyxy)), xywh, rtol=1e-12)
    n = xyxy2xywhn(xywhn2xyxy(x / 100, w=100, h=100, padw=3, padh=5), w=100, h=100)
    back = np.asarray(n) * 100
    np.testing.assert_allclose(back[:, :2], xywh[:, :2] + [3, 5], rtol=1e-12)
    np.testing.assert_allclose(back[:, 2:], xywh[:, 2:], rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(x), xywh)  # inputs untouched


def test_conversions_keep_halves_of_integer_input():
    out = xywh2xyxy(torch.tensor([[5, 5, 3, 3]]))
    assert out.tolist() == [[3.5, 3.5, 6.5, 6.5]]


def test_xyxy2xywhn_clip_does_not_modify_input():
    x = torch.tensor([[-10.0, 5.0, 50.0, 120.0]])
    n = xyxy2xywhn(x, w=100, h=100, clip=True)
    assert x.tolist() == [[-10.0, 5.0, 50.0, 120.0]]
    assert torch.allclose(n, torch.tensor([[0.25, 0.525, 0.5, 0.95]]))


def test_box_iou_hand_values():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[5.0, 5, 15, 15], [0, 0, 10, 10], [0, 0, 5, 10], [20, 20, 30, 30], [10, 0, 20, 10]])
    iou = box_iou(a, b)
    assert iou.shape == (1, 5)
    torch.testing.assert_close(iou[0], torch.tensor([25 / 175, 1.0, 0.5, 0.0, 0.0]))
    assert box_iou(a, torch.zeros(0, 4)).shape == (1, 0)
    z = torch.tensor([[1.0, 1, 1, 1]])  # empty boxes give 0, never NaN
    assert box_iou(z, z).item() == 0.0


def test_clip_and_scale_boxes():
    b = torch.tensor([[-5.0, 2, 30, 50]])
    assert clip_boxes(b.clone(), (40, 20)).tolist() == [[0, 2, 20, 40]]
    # original 100x200 (h, w) letterboxed to 64x64: gain 0.32, pad (0, 16)
    letterboxed = torch.tensor([[16.0, 20.0, 32.0, 36.0]])
    out = scale_boxes((64, 64), letterboxed.clone(), (100, 200), ((0.32, 0.32), (0.0, 16.0)))
    torch.testing.assert_close(out, torch.tensor([[50.0, 12.5, 100.0, 62.5]]))
    same = scale_boxes((64, 64), letterboxed.clone(), (100, 200))  # letterbox recomputed
    torch.testing.assert_close(same, out)


# --------------------------------------------------------------------------------------- NMS
def _pred(rows, nc):
    """rows of (cx, cy, w, h, obj, class scores...) -> (1, N, 5+nc)."""
    t = torch.tensor(rows, dtype=torch.float32)
    assert t.shape[1] == 5 + nc
    return t[None]


def test_nms_keeps_best_of_overlapping_same_class():
    p = _pred([[50, 50, 20, 20, 0.9, 0.9, 0.1],
               [52, 50, 20, 20, 0.8, 0.9, 0.1],   # IoU ~0.82 with the first, same class: dropped
               [150, 50, 20, 20, 0.7, 0.9, 0.1],  # far away: kept
               [50, 52, 20, 20, 0.9, 0.1, 0.8],   # overlaps but other class: kept
               [90, 90, 10, 10, 0.0001, 1.0, 1.0]], nc=2)  # below the objectness threshold
    out = non_max_suppression(p, conf_thres=0.25, iou_thres=0.45)[0]
    assert out.shape == (3, 6)
    assert out[:, 4].tolist() == sorted(out[:, 4].tolist(), reverse=True)
    torch.testing.assert_close(out[0], torch.tensor([40.0, 40, 60, 60, 0.81, 0]))
    assert sorted(out[:, 5].tolist()) == [0, 0, 1]
    agnostic = non_max_suppression(p, conf_thres=0.25, iou_thres=0.45, agnostic=True)[0]
    assert agnostic.shape[0] == 2  # the other-class box is now suppressed
    only1 = non_max_suppression(p, conf_thres=0.25, iou_thres=0.45, classes=[1])[0]
    assert only1[:, 5].tolist() == [1.0]


def test_nms_multi_label():
    p = _pred([[50, 50, 20, 20, 0.9, 0.8, 0.6, 0.1]], nc=3)
    single = non_max_suppression(p, conf_thres=0.25)[0]
    assert single[:, 5].tolist() == [0.0]
    multi = non_max_suppression(p, conf_thres=0.25, multi_label=True)[0]
    assert multi[:, 5].tolist() == [0.0, 1.0]  # class 2 score 0.09 < 0.25
    torch.testing.assert_close(multi[:, 4], torch.tensor([0.72, 0.54]))


def test_nms_max_det_and_empty():
    xs = torch.arange(40) * 30.0 + 15
    rows = [[x, 15, 20, 20, 0.5 + i / 100, 1.0] for i, x in enumerate(xs.tolist())]
    out = non_max_suppression(_pred(rows, 1), conf_thres=0.1, max_det=7)[0]
    assert out.shape == (7, 6)
    assert torch.allclose(out[:, 4], torch.tensor([0.89, 0.88, 0.87, 0.86, 0.85, 0.84, 0.83]))
    none = non_max_suppression(torch.zeros(2, 10, 6), conf_thres=0.1)
    assert len(none) == 2 and all(o.shape == (0, 6) for o in none)
    with pytest.raises(ValueError, match="conf_thres"):
        non_max_suppression(torch.zeros(1, 4, 6), conf_thres=1.5)


def _reference_nms(pred, conf, iou, max_det):
    """Plain multi-label NMS over every candidate at once (no early stop)."""
    x = pred[0][pred[0, :, 4] > conf]
    scores = x[:, 5:] * x[:, 4:5]
    i, j = (scores > conf).nonzero(as_tuple=True)
    box = xywh2xyxy(x[i, :4])
    keep = torchvision.ops.nms(box + j[:, None] * 10000.0, scores[i, j], iou)[:max_det]
    return torch.cat((box[keep], scores[i, j][keep, None], j[keep, None].float()), 1)


@pytest.mark.parametrize("max_det", [5, 300, 2500])
def test_nms_prefix_search_equals_full_nms(max_det):
    """Many low-score, heavily overlapping candidates (as a weak model gives): exact same result."""
    g = torch.Generator().manual_seed(0)
    n, nc = 3000, 3
    xy = torch.rand(n, 2, generator=g) * 300
    wh = torch.rand(n, 2, generator=g) * 60 + 5
    obj = torch.rand(n, 1, generator=g)
    cls = torch.rand(n, nc, generator=g)
    pred = torch.cat((xy, wh, obj, cls), 1)[None]
    ours = non_max_suppression(pred, conf_thres=0.001, iou_thres=0.6, multi_label=True, max_det=max_det)[0]
    ref = _reference_nms(pred, 0.001, 0.6, max_det)
    assert ours.shape == ref.shape
    assert ours[:, 4].tolist() == ref[:, 4].tolist()  # same scores in the same order
    assert sorted(map(tuple, ours.tolist())) == sorted(map(tuple, ref.tolist()))  # ties may swap


# ----------------------------------------------------------------------------------- metrics
def test_compute_ap_hand_cases():
    # envelope: 1 up to recall 0.2, then linear to 0.5 at 0.4, then to 0 at recall 1: area 0.5
    ap, mpre, mrec = compute_ap(np.array([0.2, 0.4]), np.array([1.0, 0.5]))
    assert ap == pytest.approx(0.5, abs=1e-12)
    assert mrec.tolist() == [0, 0.2, 0.4, 1] and mpre.tolist() == [1, 1, 0.5, 0]
    # a later, higher precision lifts the earlier one (upper envelope)
    ap2, mpre2, _ = compute_ap(np.array([0.2, 0.4]), np.array([0.5, 1.0]))
    assert mpre2.tolist() == [1, 1, 1, 0] and ap2 == pytest.approx(0.2 + 0.2 + 0.3, abs=1e-12)
    # a perfect detector scores 0.995 with this 101-point trapezoid rule (upstream's figure)
    assert compute_ap(np.array([1.0]), np.array([1.0]))[0] == pytest.approx(0.995, abs=1e-12)


def test_ap_per_class_perfect_and_missing_class():
    tp = np.ones((6, 10), bool)
    conf = np.linspace(0.9, 0.4, 6)
    pred_cls = np.array([0, 0, 0, 1, 1, 1])
    target_cls = np.array([0, 0, 0, 1, 1, 1, 2])  # class 2 has a label and no prediction
    tpc, fpc, p, r, f1, ap, classes = ap_per_class(tp, conf, pred_cls, target_cls)
    assert classes.tolist() == [0, 1, 2]
    np.testing.assert_allclose(ap[:2], 0.995, atol=1e-12)
    np.testing.assert_array_equal(ap[2], 0)
    np.testing.assert_allclose(p[:2], 1.0, atol=1e-9)
    np.testing.assert_allclose(r[:2], 1.0, atol=1e-9)
    assert tpc.tolist() == [3, 3, 0]


def test_fitness():
    assert fitness([0.5, 0.5, 0.6, 0.4]) == pytest.approx(0.42)
    np.testing.assert_allclose(fitness(np.array([[0, 0, 1, 0], [0, 0, 0, 1]])), [0.1, 0.9])


def _reference_match(det, labels, iouv):
    """Upstream v6.2 val.py process_batch rule, one threshold at a time, with NumPy sorting."""
    iou = box_iou(labels[:, 1:], det[:, :4]).numpy()
    same = (labels[:, 0:1] == det[:, 5]).numpy()
    correct = np.zeros((len(det), len(iouv)), bool)
    for k, t in enumerate(iouv.tolist()):
        li, di = np.nonzero((iou >= t) & same)
        if not len(li):
            continue
        m = np.stack([li, di, iou[li, di]], 1)
        m = m[np.argsort(-m[:, 2], kind="stable")]
        m = m[np.unique(m[:, 1], return_index=True)[1]]  # best label per detection
        m = m[np.unique(m[:, 0], return_index=True)[1]]  # first (highest-score) detection per label
        correct[m[:, 1].astype(int), k] = True
    return correct


def test_match_predictions_hand_case():
    labels = torch.tensor([[0, 0.0, 0, 10, 10], [1, 20, 20, 30, 30]])
    det = torch.tensor([[0.0, 0, 10, 10, 0.9, 0],    # exact: TP at every threshold
                        [0.5, 0, 10.5, 10, 0.8, 0],  # same label, lower score: FP
                        [20, 20, 30, 31, 0.7, 0],    # right place, wrong class: FP
                        [20, 20, 30, 32, 0.6, 1]])   # IoU 100/120 = 0.83: TP up to 0.80
    c = match_predictions(det, labels, IOUV)
    assert c.dtype == torch.bool and c.shape == (4, 10)
    assert c[0].all() and not c[1].any() and not c[2].any()
    assert c[3].tolist() == [True] * 7 + [False] * 3
    assert match_predictions(det[:0], labels, IOUV).shape == (0, 10)
    assert not match_predictions(det, labels[:0], IOUV).any()


def test_match_predictions_equals_reference_on_random_crowds():
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        m, n = int(torch.randint(1, 12, (1,), generator=g)), int(torch.randint(1, 40, (1,), generator=g))
        lab_xy = torch.rand(m, 2, generator=g) * 60
        labels = torch.cat((torch.randint(0, 2, (m, 1), generator=g).float(),
                            lab_xy, lab_xy + 10 + torch.rand(m, 2, generator=g) * 20), 1)
        src = labels[torch.randint(0, m, (n,), generator=g)]
        boxes = src[:, 1:] + torch.randn(n, 4, generator=g) * 3  # crowded near the labels
        det = torch.cat((boxes, torch.rand(n, 1, generator=g), src[:, :1]), 1)
        det = det[det[:, 4].argsort(descending=True)]
        np.testing.assert_array_equal(match_predictions(det, labels, IOUV).numpy(),
                                      _reference_match(det, labels, IOUV))


def test_confusion_matrix_counts():
    cm = ConfusionMatrix(nc=2, conf=0.25, iou_thres=0.45)
    labels = torch.tensor([[0, 0.0, 0, 10, 10], [1, 20, 20, 30, 30], [1, 50, 50, 60, 60]])
    det = torch.tensor([[0.0, 0, 10, 10, 0.9, 0],    # correct class 0
                        [20, 20, 30, 30, 0.8, 0],    # class-1 label predicted as 0
                        [80, 80, 90, 90, 0.7, 1],    # background predicted as 1
                        [50, 50, 60, 60, 0.1, 1]])   # below conf: ignored -> label 3 missed
    cm.process_batch(det, labels)
    cm.process_batch(None, torch.tensor([[0, 0.0, 0, 5, 5]]))  # an image without detections
    expected = np.array([[1, 1, 0],
                         [0, 0, 1],
                         [1, 1, 0]])
    np.testing.assert_array_equal(cm.matrix, expected)
    tp, fp = cm.tp_fp()
    assert tp.tolist() == [1, 0] and fp.tolist() == [1, 1]


def test_plots_write_files(tmp_path):
    tp = np.random.default_rng(0).random((30, 10)) > 0.5
    ap_per_class(tp, np.linspace(1, 0, 30), np.arange(30) % 2, np.array([0, 1] * 12), plot=True,
                 save_dir=tmp_path, names=["a", "b"])
    cm = ConfusionMatrix(2)
    cm.matrix[:] = [[3, 1, 1], [0, 2, 1], [1, 0, 0]]
    cm.plot(tmp_path, ["a", "b"])
    for f in ("PR_curve.png", "F1_curve.png", "confusion_matrix.png"):
        assert (tmp_path / f).stat().st_size > 1000


# ------------------------------------------------------------------------------- pycocotools
def _synthetic_detection_set(seed=0, n_img=60, nc=3):
    """GT boxes and noisy, partly wrong predictions for a few images: dicts per image.

    Like a real evaluation at conf 0.001, every image also gets a tail of low-score false
    positives. That matters: the 101-point rule closes the curve linearly from the last recall to
    (1, 0), pycocotools counts nothing beyond the last recall, so the two agree only when precision
    at the highest recall is low, as it is with such a tail.
    """
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n_img):
        m = rng.integers(1, 9)
        xy = rng.uniform(0, 400, (m, 2))
        wh = rng.uniform(12, 120, (m, 2))
        gt = np.concatenate([xy, xy + wh], 1)
        gt_cls = rng.integers(0, nc, m)
        keep = rng.random(m) > 0.15  # some labels are missed
        jitter = rng.normal(0, 0.08, (m, 4)) * np.concatenate([wh, wh], 1)
        boxes = (gt + jitter)[keep]
        cls = np.where(rng.random(m) < 0.1, rng.integers(0, nc, m), gt_cls)[keep]  # some wrong class
        scores = rng.uniform(0.3, 1.0, len(boxes))
        n_fp = rng.integers(40, 90)  # false positives anywhere, mostly at low scores
        fxy = rng.uniform(0, 400, (n_fp, 2))
        fboxes = np.concatenate([fxy, fxy + rng.uniform(12, 100, (n_fp, 2))], 1)
        boxes = np.concatenate([boxes, fboxes])
        cls = np.concatenate([cls, rng.integers(0, nc, n_fp)])
        scores = np.concatenate([scores, rng.uniform(0.0, 0.6, n_fp) ** 2 + 0.001])
        order = np.argsort(-scores, kind="stable")
        images.append({"gt": gt, "gt_cls": gt_cls, "boxes": boxes[order], "cls": cls[order],
                       "scores": scores[order]})
    return images


def _ours(images):
    stats = []
    for im in images:
        det = torch.from_numpy(np.concatenate([im["boxes"], im["scores"][:, None], im["cls"][:, None]], 1))
        labels = torch.from_numpy(np.concatenate([im["gt_cls"][:, None], im["gt"]], 1))
        stats.append((match_predictions(det.float(), labels.float(), IOUV).numpy(), im["scores"],
                      im["cls"], im["gt_cls"]))
    tp, conf, pcls, tcls = (np.concatenate(x) for x in zip(*stats))
    ap = ap_per_class(tp, conf, pcls, tcls)[5]
    return ap[:, 0].mean(), ap.mean()


def _pycocotools(images, nc):
    COCO = pytest.importorskip("pycocotools.coco").COCO
    COCOeval = pytest.importorskip("pycocotools.cocoeval").COCOeval
    gt = COCO()
    anns, dets = [], []
    for i, im in enumerate(images):
        for b, c in zip(im["gt"], im["gt_cls"]):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c),
                         "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": 0})
        for b, c, s in zip(im["boxes"], im["cls"], im["scores"]):
            dets.append({"image_id": i, "category_id": int(c), "score": float(s),
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    gt.dataset = {"images": [{"id": i, "width": 520, "height": 520} for i in range(len(images))],
                  "annotations": anns, "categories": [{"id": c, "name": str(c)} for c in range(nc)]}
    gt.createIndex()
    ev = COCOeval(gt, gt.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats[1], ev.stats[0]


@pytest.mark.parametrize("seed", [0, 1])
def test_map_agrees_with_pycocotools(seed):
    images = _synthetic_detection_set(seed)
    ours50, ours = _ours(images)
    coco50, coco = _pycocotools(images, nc=3)
    assert 0.2 < ours < 0.95  # a case where the comparison means something
    assert abs(ours - coco) < 0.01, (ours, coco)
    assert abs(ours50 - coco50) < 0.02, (ours50, coco50)
