"""CosFace: large margin cosine loss (Wang et al. 2018, arXiv 1801.09414), as its own module.

logits_j = s * (cos(theta_j) - m * [j == y]) with L2-normalised features and class weights;
the loss is plain cross-entropy over those logits. The margin can be changed while training
(``margin`` attribute) so that it ramps up from 0, which lets a network learn from scratch.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class CosFaceHead(nn.Module):
    def __init__(self, embedding_size: int, num_classes: int, scale: float = 32.0, margin: float = 0.35) -> None:
        super().__init__()
        self.scale = scale
        self.margin = margin
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine of each embedding with each class centre, in float32."""
        return F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(self.weight.float(), dim=1))

    def logits(self, cosines: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled cosines with the margin subtracted from the target class only."""
        margin = torch.zeros_like(cosines).scatter_(1, labels.view(-1, 1), self.margin)
        return self.scale * (cosines - margin)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (loss, cosines); cosines give the training accuracy without the margin."""
        cos = self.cosines(embeddings)
        return F.cross_entropy(self.logits(cos, labels), labels), cos
