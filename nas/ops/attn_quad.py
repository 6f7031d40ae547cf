"""Quadratic attention weights (MPCFormer's 2Quad): (s + c)^2 / sum (s + c)^2 over the keys, c = 5. A square
and one division per row: no max and no exponentials under two-party computation."""

from __future__ import annotations

import torch

SHIFT = 5.0  # MPCFormer's c
EPS = 1e-3  # keeps the division finite when every shifted score is 0


def normalise(scores: torch.Tensor) -> torch.Tensor:
    """Attention weights from scores (... x queries x keys), normalised over the keys."""
    weights = (scores + SHIFT) ** 2
    return weights / (weights.sum(dim=-1, keepdim=True) + EPS)
