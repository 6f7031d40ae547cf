"""Activation op variants by name (torch only; exports carry a copy of this file as `ops_activation.py`).

The FFN of a transformer layer takes one of these (`FFN_ACTIVATIONS` in `nas.ops` lists the names the spec
accepts; a contract test keeps the two equal). Hard-swish is the default (ElasticViT's); ReLU is the cheapest
under two-party computation (one comparison), GELU the costliest (an erf or tanh approximation).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "relu": F.relu,
    "hswish": F.hardswish,
}


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation `name`; an unknown name lists the known ones."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r} (known: {', '.join(sorted(ACTIVATIONS))})") from None
