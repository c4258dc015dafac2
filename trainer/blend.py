"""Blended faces taught by a teacher that sees the same blend: more of the teacher's function.

The cached teacher vectors cover each training image once, so the projected term can only match
dlib at 44k points. Here each step also blends pairs of training faces (mixup, lambda uniform in
0..1) and runs dlib's network (trainer/dlib_net.py) on the same blend of their dlib chips, so the
student is taught the teacher's answer on faces in between people: the look-alikes that set the
low-FPR threshold. Teacher and student see the same pair, the same lambda and the same mirror
("consistent teaching", Beyer et al., CVPR 2022, "Knowledge distillation: a good teacher is
patient and consistent"). The blends get the distillation term only: they have no CosFace class.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recognizer.preprocess import AlignmentRecipe, to_tensor


class TeacherBlends:
    """Makes (student batch, teacher targets) for blends of training rows; built once per run."""

    def __init__(self, crops: np.ndarray, chips: np.ndarray, centre: np.ndarray, recipe: AlignmentRecipe,
                 net: nn.Module, views: str = "plain") -> None:
        if len(crops) != len(chips):
            raise ValueError(f"{len(crops)} crops against {len(chips)} chips")
        self.crops, self.chips, self.recipe, self.net = crops, chips, recipe, net.eval()
        self.centre = torch.from_numpy(np.asarray(centre, np.float32))
        self.views = views  # as the cached targets were made (trainer/teacher.py TEACHER_VIEWS)

    def teacher(self, chips: torch.Tensor) -> torch.Tensor:
        """dlib's unit descriptor of float chips (NCHW, 0-255), made and centred as the cached
        targets are."""
        from .teacher import describe_tensor

        with torch.no_grad():
            vecs = describe_tensor(self.net, chips, self.views)
        return F.normalize(vecs - self.centre.to(vecs.device), dim=1)

    def make(self, first: np.ndarray, second: np.ndarray, generator: torch.Generator,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Blend row ``first[i]`` with ``second[i]``: the student's normalised crops and the
        teacher's centred unit vector of the same blend, mirrored alike."""
        n = len(first)
        lam = torch.rand(n, 1, 1, 1, generator=generator)
        flip = (torch.rand(n, generator=generator) < 0.5)[:, None, None, None]
        student = lam * to_tensor(self.crops[first], self.recipe) + (1 - lam) * to_tensor(self.crops[second], self.recipe)
        chip = lambda rows: torch.from_numpy(np.ascontiguousarray(self.chips[rows])).permute(0, 3, 1, 2).float()  # noqa: E731
        blend = lam * chip(first) + (1 - lam) * chip(second)
        student = torch.where(flip, student.flip(3), student)
        blend = torch.where(flip, blend.flip(3), blend)
        return student.to(device), self.teacher(blend.to(device))
