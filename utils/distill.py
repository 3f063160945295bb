"""Knowledge distillation from the unpruned model (the teacher) into the pruned one (the student).

Mode 2 (default), after Chen et al. 2017 ("Learning Efficient Object Detection Models with Knowledge
Distillation"):

* soft targets: per cell and anchor, the student's objectness and class outputs learn the teacher's
  at temperature T. Outputs are independent sigmoids, so the divergence is the sum of Bernoulli
  KL terms ``KL(sigmoid(t/T) || sigmoid(s/T))``, scaled by ``T^2 / B`` (zero when student equals
  teacher). ``compat=True`` uses the original formulation instead: one softmax over
  ``[obj, cls...]``.
* teacher-bounded regression: on the cells the detection loss assigns to ground truth, the
  squared distance ``d_S`` of the student's decoded box (YOLOv5: ``xy = 2 sigmoid - 0.5``,
  ``wh = (2 sigmoid)^2 anchor``, grid units) to the target counts only where the student is farther
  from the target than the teacher (``d_S + margin > d_T``).

``loss = w_soft * sum_levels soft + w_box * box``, constants as in the original (1e-4, 1e-3).
Mode 1 is the Hinton-style loss: KL of softmax over every raw output vector, weight 1e-3.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models import Darknet
from utils.engine import Hook
from utils.errors import UserError

__all__ = ["Distiller", "DistillError", "soft_target_loss", "bounded_box_loss", "check_teacher"]


class DistillError(UserError, ValueError):
    """The teacher cannot teach the student (other classes, anchors or strides)."""


def _bernoulli_kl(t_logits: torch.Tensor, s_logits: torch.Tensor, T: float) -> torch.Tensor:
    """Sum over elements of KL(Bern(sigmoid(t/T)) || Bern(sigmoid(s/T)))."""
    t, s = t_logits / T, s_logits / T
    pt = torch.sigmoid(t)
    # log p = logsigmoid(x), log (1-p) = logsigmoid(-x): numerically stable
    return (pt * (F.logsigmoid(t) - F.logsigmoid(s))
            + (1 - pt) * (F.logsigmoid(-t) - F.logsigmoid(-s))).sum()


def _softmax_kl(t_logits: torch.Tensor, s_logits: torch.Tensor, T: float) -> torch.Tensor:
    """Sum over rows of KL(softmax(t/T) || softmax(s/T)) along the last dimension."""
    return F.kl_div(F.log_softmax(s_logits / T, -1), F.log_softmax(t_logits / T, -1),
                    reduction="sum", log_target=True)


def soft_target_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], T: float,
                     compat: bool = False) -> torch.Tensor:
    """Objectness/class soft-target divergence summed over levels and cells, times T^2 / B."""
    bs = student[0].shape[0]
    total = student[0].new_zeros(())
    for s, t in zip(student, teacher):
        s, t = s[..., 4:].float(), t[..., 4:].float()
        total = total + (_softmax_kl(t, s, T) if compat else _bernoulli_kl(t, s, T))
    return total * T * T / bs


def _decode_v5(p: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """(n, 4) raw box outputs -> (n, 4) box (x, y offsets in the cell, w, h) in grid units."""
    xy = p[:, :2].sigmoid() * 2 - 0.5
    wh = (p[:, 2:4].sigmoid() * 2) ** 2 * anchors
    return torch.cat((xy, wh), 1)


def _decode_v3(p: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """The original's YOLOv3-style decode (compat mode); exp clamped against overflow."""
    return torch.cat((p[:, :2].sigmoid(), p[:, 2:4].clamp(max=10).exp() * anchors), 1)


def bounded_box_loss(student, teacher, tbox, indices, anchors, margin: float = 0.0,
                     compat: bool = False) -> tuple[torch.Tensor, int, int]:
    """Teacher-bounded box loss; returns (loss, cells where the student is behind, cells)."""
    decode = _decode_v3 if compat else _decode_v5
    total = student[0].new_zeros(())
    behind = count = 0
    for s, t, tb, (b, a, gj, gi), anc in zip(student, teacher, tbox, indices, anchors):
        if b.numel() == 0:
            continue
        bs_ = decode(s[b, a, gj, gi, :4].float(), anc)
        bt_ = decode(t[b, a, gj, gi, :4].float(), anc)
        d_s = ((bs_ - tb) ** 2).sum(1)
        d_t = ((bt_ - tb) ** 2).sum(1)
        mask = (d_s + margin) > d_t
        total = total + (d_s * mask).sum()
        behind += int(mask.sum())
        count += int(b.numel())
    return total, behind, count


def check_teacher(student: Darknet, teacher: Darknet, teacher_name: str) -> None:
    """The teacher must predict the same classes with the same anchors and strides."""
    problems = []
    if teacher.nc != student.nc:
        problems.append(f"{teacher.nc} classes vs the student's {student.nc}")
    if teacher.stride.tolist() != student.stride.tolist():
        problems.append(f"strides {teacher.stride.tolist()} vs {student.stride.tolist()}")
    ta = [m.anchors.cpu() for m in teacher.yolo_layers]
    sa = [m.anchors.cpu() for m in student.yolo_layers]
    if len(ta) != len(sa) or any(x.shape != y.shape or not torch.allclose(x, y) for x, y in zip(ta, sa)):
        problems.append("different anchors")
    if problems:
        raise DistillError(f"teacher {teacher_name} cannot teach this model: " + "; ".join(problems)
                         + ". Use the unpruned checkpoint the pruned model was made from.")


@dataclass
class Distiller(Hook):
    """Distillation as a training-engine hook: its ``loss`` is added to the detection loss."""

    teacher: Darknet
    mode: int = 2
    T: float = 3.0
    soft_weight: float = 1e-4
    box_weight: float = 1e-3
    kd1_weight: float = 1e-3
    margin: float = 0.0
    compat: bool = False

    def __post_init__(self):
        if self.mode not in (1, 2):
            raise DistillError(f"--distill-mode {self.mode}: use 1 (Hinton) or 2 (soft targets + bounded box)")
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def teacher_maps(self, imgs: torch.Tensor) -> list[torch.Tensor]:
        with torch.autocast(device_type=imgs.device.type, enabled=False):
            _, raw = self.teacher(imgs.float())
        return raw

    def distill_loss(self, student_maps, imgs, targets, build_targets) -> tuple[torch.Tensor, dict]:
        """(weighted distillation loss, {term: value}) of the student's raw maps on ``imgs``."""
        teacher_maps = self.teacher_maps(imgs)
        if self.mode == 1:
            bs = imgs.shape[0]
            kl = sum(_softmax_kl(t.float(), s.float(), self.T) for s, t in zip(student_maps, teacher_maps))
            loss = self.kd1_weight * kl * self.T ** 2 / bs
            return loss, {"soft": float(loss.detach())}
        soft = soft_target_loss(student_maps, teacher_maps, self.T, self.compat)
        _, tbox, indices, anchors = build_targets(student_maps, targets.to(imgs.device))
        box, behind, count = bounded_box_loss(student_maps, teacher_maps, tbox, indices, anchors,
                                              self.margin, self.compat)
        loss = self.soft_weight * soft + self.box_weight * box
        return loss, {"soft": float(self.soft_weight * soft.detach()),
                      "dbox": float(self.box_weight * box.detach()),
                      "rratio": behind / max(count, 1)}

    def loss(self, trainer, imgs, targets, preds) -> tuple[torch.Tensor, dict]:
        return self.distill_loss(preds, imgs, targets, trainer.compute_loss.build_targets)
