"""Distillation terms beside CosFace: what the student owes the teacher for one batch.

Both take the student's unit embeddings (B x 512), the teacher's unit embeddings (B x 128,
centred over the training set: dlib's raw descriptors all point one way, so their cosines sit
around 0.5-0.9 even between strangers, where CosFace pushes strangers towards 0) and a mask of
the rows that have a teacher vector.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class RelationalDistillation(nn.Module):
    """Mean squared difference of the batch's pairwise cosine matrices (off the diagonal): the
    student learns who resembles whom, with no projection between 512-d and 128-d."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, have: torch.Tensor) -> torch.Tensor:
        s, t = F.normalize(student[have], dim=1), F.normalize(teacher[have], dim=1)
        if len(s) < 2:
            return student.sum() * 0.0
        off = ~torch.eye(len(s), dtype=torch.bool, device=s.device)
        return ((s @ s.T - t @ t.T)[off] ** 2).mean()


class ProjectedDistillation(nn.Module):
    """A learned 512->128 linear map of the student, pulled to the teacher's direction
    (1 - cosine). Used only in training; the served embedding stays the 512-d one."""

    def __init__(self, student_dim: int = 512, teacher_dim: int = 128) -> None:
        super().__init__()
        self.project = nn.Linear(student_dim, teacher_dim, bias=False)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, have: torch.Tensor) -> torch.Tensor:
        if not bool(have.any()):
            return student.sum() * 0.0
        p = F.normalize(self.project(student[have]), dim=1)
        return (1.0 - (p * F.normalize(teacher[have], dim=1)).sum(1)).mean()


class ProjectedAndRelational(ProjectedDistillation):
    """Both terms: the projected one pins each face near its own teacher direction, which is what
    separates the closest strangers (the low-FPR tail); the relational one matches who resembles
    whom across all pairs (the AUC). As a fine-tune's only term, each gave one and lost the other
    (docs/BENCHMARKS.md, session 15). ``relation_share`` scales the relational term against the
    projected one (its default, ``TrainConfig.distill_relation_share``, says why)."""

    def __init__(self, relation_share: float) -> None:
        super().__init__()
        self.relation_share = relation_share
        self.relation = RelationalDistillation()

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, have: torch.Tensor) -> torch.Tensor:
        return super().forward(student, teacher, have) + self.relation_share * self.relation(student, teacher, have)


DISTILLERS = {"relation": RelationalDistillation, "projection": ProjectedDistillation, "both": ProjectedAndRelational}


def build_distiller(kind: str, relation_share: float | None = None) -> nn.Module | None:
    """``"none"`` -> None, else the named term; an unknown name raises ValueError naming the choices.
    ``relation_share`` is read by ``"both"`` alone, which needs it."""
    if kind == "none":
        return None
    if kind not in DISTILLERS:
        raise ValueError(f"distill must be none or one of {', '.join(DISTILLERS)}, not {kind!r}")
    if kind == "both":
        if relation_share is None:
            raise ValueError("distill=both needs relation_share (TrainConfig.distill_relation_share)")
        return ProjectedAndRelational(relation_share)
    return DISTILLERS[kind]()
