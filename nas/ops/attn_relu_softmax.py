"""ReLU-softmax attention weights (MPCViT): relu(s) / (sum relu(s) + eps) over the keys. Under two-party
computation a comparison per score and one division per row replace softmax's max and exponentials."""

from __future__ import annotations

import torch

EPS = 1e-3  # keeps a row whose scores are all negative finite (fixed-point friendly: well above 2^-18)


def normalise(scores: torch.Tensor) -> torch.Tensor:
    """Attention weights from scores (... x queries x keys), normalised over the keys."""
    weights = torch.relu(scores)
    return weights / (weights.sum(dim=-1, keepdim=True) + EPS)
