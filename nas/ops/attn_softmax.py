"""Softmax attention weights: exp(s) / sum exp(s) over the keys (the transformer's own; the costliest under
two-party computation: a max, exponentials and a division per row)."""

from __future__ import annotations

import torch


def normalise(scores: torch.Tensor) -> torch.Tensor:
    """Attention weights from scores (... x queries x keys), normalised over the keys."""
    return torch.softmax(scores, dim=-1)
