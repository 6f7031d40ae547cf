"""Scaling attention weights (MPCViT): s / N, N the number of keys. Linear, so under two-party computation it
needs no comparison, exponential or division: only the truncation of a multiplication by a public constant."""

from __future__ import annotations

import torch


def normalise(scores: torch.Tensor) -> torch.Tensor:
    """Attention weights from scores (... x queries x keys): the scores divided by the number of keys."""
    return scores * (1.0 / scores.shape[-1])
