"""Convolution-block op variants (torch only; exports carry a copy of this file as `ops_conv.py`).

Every function takes the weights it uses as arguments, so the supernet passes slices of its largest weights
and the static model its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def squeeze_excite(x: torch.Tensor, reduce_w: torch.Tensor, reduce_b: torch.Tensor, expand_w: torch.Tensor,
                   expand_b: torch.Tensor) -> torch.Tensor:
    """x scaled per channel by hardsigmoid(expand(relu(reduce(mean over space))))."""
    scale = F.conv2d(torch.relu(F.conv2d(x.mean((2, 3), keepdim=True), reduce_w, reduce_b)), expand_w, expand_b)
    return x * F.hardsigmoid(scale)


def pool_shortcut(x: torch.Tensor, stride: int, weight: torch.Tensor | None = None) -> torch.Tensor:
    """ElasticViT's shortcut on a stride or width change: average-pool by `stride` (kernel = stride, padding 1
    on an odd side, so the result has the size of a `same`-padded strided conv's output), then a 1x1 conv
    (no bias) with `weight` when the widths differ (None: they do not)."""
    if stride > 1:
        x = F.avg_pool2d(x, stride, padding=x.shape[-1] % 2)
    return x if weight is None else F.conv2d(x, weight)
