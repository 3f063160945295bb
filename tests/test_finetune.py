"""prune_finetune.py and the distillation losses."""
from pathlib import Path

import pytest
import torch

from models import build_model, load_checkpoint, save_checkpoint
from utils.distill import Distiller, bounded_box_loss, check_teacher, soft_target_loss
from utils.loss import ComputeLoss, scale_loss_gains

HYP = {"box": 0.05, "obj": 1.0, "cls": 0.5, "cls_pw": 1.0, "obj_pw": 1.0, "anchor_t": 4.0,
       "fl_gamma": 0.0}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from utils.synthetic import make_shapes_dataset
    root = make_shapes_dataset(tmp_path_factory.mktemp("shapes"), n_train=16, n_val=8, img_size=64,
                               seed=5, workers=1)
    return root / "dataset.yaml"


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, tiny_data) -> tuple[Path, Path]:
    """A tiny 'sparse' checkpoint and its 8x-pruned child."""
    import slim_prune_yolov5s_8x
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = build_model("models/yolov5n.yaml", nc=5)
    model.names = ["circle", "rectangle", "triangle", "cross", "ring"]
    with torch.no_grad():
        for _, seq in model.conv_layers():
            if "BatchNorm2d" in seq._modules:
                g = seq.BatchNorm2d.weight
                g.mul_(torch.where(torch.rand_like(g) < 0.5, 0.01, 1.0))
    sparse = save_checkpoint(d / "sparse.pt", model)
    assert slim_prune_yolov5s_8x.main(["--weights", str(sparse), "--global_percent", "0.5",
                                       "--img_size", "64", "--no-eval", "--data", str(tiny_data)]) == 0
    return sparse, d / "prune_0.5_keep_0.01_8x_sparse.pt"


def _targets():
    # image 0: two boxes, image 1: one box (normalised xywh)
    return torch.tensor([[0, 1, 0.3, 0.4, 0.2, 0.3], [0, 0, 0.7, 0.6, 0.3, 0.2], [1, 2, 0.5, 0.5, 0.4, 0.4]])


def test_soft_loss_zero_for_identical_models():
    torch.manual_seed(0)
    model = build_model("models/yolov5n.yaml", nc=3).eval()
    _, raw = model(torch.rand(2, 3, 64, 64))
    assert soft_target_loss(raw, raw, 3.0).abs() < 1e-5
    assert soft_target_loss(raw, raw, 3.0, compat=True).abs() < 1e-5
    other = [r + torch.randn_like(r) for r in raw]
    assert soft_target_loss(other, raw, 3.0) > 0


def test_bounded_box_counts_only_cells_where_the_student_is_behind():
    torch.manual_seed(0)
    model = build_model("models/yolov5n.yaml", nc=3)
    raw = model(torch.rand(2, 3, 64, 64))  # train mode: raw maps
    loss_fn = ComputeLoss(model, scale_loss_gains(HYP, 3, 3, 64))
    _, tbox, indices, anchors = loss_fn.build_targets(raw, _targets())
    # identical models: d_S == d_T, so with margin 0 nothing counts
    loss, behind, count = bounded_box_loss(raw, raw, tbox, indices, anchors)
    assert count > 0 and behind == 0 and loss == 0
    # a teacher that predicts the targets better everywhere: every cell counts
    teacher = [r.clone() for r in raw]
    for t, tb, (b, a, gj, gi), anc in zip(teacher, tbox, indices, anchors):
        xy = ((tb[:, :2] + 0.5) / 2).clamp(1e-4, 1 - 1e-4)
        wh = (torch.sqrt(tb[:, 2:] / anc) / 2).clamp(1e-4, 1 - 1e-4)
        t[b, a, gj, gi, :4] = torch.logit(torch.cat((xy, wh), 1))
    loss, behind, count = bounded_box_loss(raw, teacher, tbox, indices, anchors)
    assert behind == count and loss > 0
    # the loss equals the student's squared distance summed over the counted cells
    total = 0.0
    for s, tb, (b, a, gj, gi), anc in zip(raw, tbox, indices, anchors):
        p = s[b, a, gj, gi, :4]
        box = torch.cat((p[:, :2].sigmoid() * 2 - 0.5, (p[:, 2:4].sigmoid() * 2) ** 2 * anc), 1)
        total += ((box - tb) ** 2).sum()
    assert torch.allclose(loss, total)


def test_teacher_with_other_classes_is_refused():
    student = build_model("models/yolov5n.yaml", nc=3)
    with pytest.raises(ValueError, match="classes"):
        check_teacher(student, build_model("models/yolov5n.yaml", nc=4), "t.pt")
    with pytest.raises(ValueError, match="anchors"):
        check_teacher(student, build_model("models/yolov5n6.yaml", nc=3), "t.pt")
    check_teacher(student, build_model("models/yolov5s.yaml", nc=3), "t.pt")  # other width is fine


def test_distiller_mode1_zero_for_same_model():
    model = build_model("models/yolov5n.yaml", nc=3).eval()
    d = Distiller(model, mode=1)
    imgs = torch.rand(2, 3, 64, 64)
    _, raw = model(imgs)
    loss, items = d.distill_loss(raw, imgs, _targets(), None)
    assert abs(float(loss)) < 1e-6


@pytest.mark.parametrize("distill", [False, True])
def test_finetune_one_epoch(pruned, tiny_data, tmp_path, distill):
    import prune_finetune
    sparse, child = pruned
    args = ["--weights", str(child), "--data", str(tiny_data), "--img", "64", "--batch", "8",
            "--epochs", "1", "--workers", "0", "--project", str(tmp_path), "--name", "ft"]
    if distill:
        args.append("--distill")  # teacher: the parent recorded in the pruned checkpoint
    assert prune_finetune.main(args) == 0
    ck = load_checkpoint(tmp_path / "ft" / "weights" / "last.pt")
    steps = [e["step"] for e in ck["history"]]
    assert steps[-2:] == ["prune", "finetune"]
    assert ck["history"][-1]["distill"] is distill
    header = (tmp_path / "ft" / "results.csv").read_text().splitlines()[0].split(",")
    if distill:
        assert ck["history"][-1]["teacher"] == str(sparse)
        assert {"train/soft", "train/dbox", "train/rratio"} <= set(header)  # the distillation terms
    else:
        assert not any(h in header for h in ("train/soft", "train/dbox"))
    assert ck["cfg"] == load_checkpoint(child)["cfg"]  # compact architecture kept as it is


def test_finetune_refuses_a_teacher_with_other_classes(pruned, tiny_data, tmp_path, capsys):
    import prune_finetune
    _, child = pruned
    other = save_checkpoint(tmp_path / "other.pt", build_model("models/yolov5n.yaml", nc=2))
    assert prune_finetune.main(["--weights", str(child), "--data", str(tiny_data), "--img", "64",
                                "--batch", "8", "--epochs", "1", "--workers", "0", "--project",
                                str(tmp_path), "--distill", "--t_weight", str(other)]) == 2
    err = capsys.readouterr().err
    assert "classes" in err and str(other) in err and "Traceback" not in err
    with pytest.raises(ValueError, match="classes"):  # the library error stays a ValueError
        check_teacher(build_model("models/yolov5n.yaml", nc=5), build_model("models/yolov5n.yaml", nc=2), "t")


def test_finetune_cfg_must_describe_the_pruned_network(pruned, tiny_data, tmp_path):
    """The pruned .cfg written beside the weights is accepted (history kept); the unpruned one is refused."""
    import prune_finetune
    from utils.engine import Trainer, TrainError
    _, child = pruned
    base = ["--weights", str(child), "--data", str(tiny_data), "--img", "64", "--batch", "8", "--epochs", "1",
            "--workers", "0", "--project", str(tmp_path), "--device", "cpu"]
    trainer = Trainer(prune_finetune.parse_args(base + ["--cfg", str(child.with_suffix(".cfg")), "--name", "a"]),
                      step="finetune")
    assert [e["step"] for e in trainer.history][-1] == "prune"
    with pytest.raises(TrainError, match="does not match the network"):
        Trainer(prune_finetune.parse_args(base + ["--cfg", "models/yolov5n.yaml", "--name", "b"]), step="finetune")


def test_pruned_weights_under_the_original_cfg_do_not_claim_the_prune_step(pruned, tiny_data, tmp_path, capsys):
    import train
    from utils.engine import Trainer
    _, child = pruned
    base = ["--weights", str(child), "--cfg", "models/yolov5n.yaml", "--data", str(tiny_data), "--img", "64",
            "--workers", "0", "--project", str(tmp_path), "--device", "cpu", "--noautoanchor"]
    assert train.main(base + ["--epochs", "1"]) == 2
    assert "--allow-partial" in capsys.readouterr().err
    trainer = Trainer(train.parse_args(base + ["--allow-partial"]))
    assert trainer.history == []
    assert "WARNING --allow-partial" in capsys.readouterr().out
