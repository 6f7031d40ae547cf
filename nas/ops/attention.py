"""Attention op variants (torch only; exports carry a copy of this file as `ops_attention.py`).

Every function takes the weights it uses as arguments, so the supernet passes slices of its largest weights
and the static model its own: one formula serves both. Attention kinds are registered by name
(`ATTENTION_KINDS`, `get_attention`): a kind maps (q, k, v, scale, bias) to the attended values.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, torch.Tensor | None], torch.Tensor]


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v, per head (q, k: B x heads x N x d; v: B x heads x N x dv)."""
    scores = (q @ k.transpose(-2, -1)) * scale
    if bias is not None:
        scores = scores + bias
    return torch.softmax(scores, dim=-1) @ v


ATTENTION_KINDS: dict[str, AttentionFn] = {"softmax": softmax_attention}


def get_attention(name: str) -> AttentionFn:
    """The attention kind `name`; an unknown name lists the known ones."""
    try:
        return ATTENTION_KINDS[name]
    except KeyError:
        raise ValueError(f"unknown attention kind {name!r} (known: {', '.join(sorted(ATTENTION_KINDS))})") from None


def relative_position_index(side: int, table_side: int) -> torch.Tensor:
    """For a side x side token grid (row-major), the N x N row indices into a (2 table_side - 1)^2 table of
    relative offsets (dy, dx), row (dy + table_side - 1) * (2 table_side - 1) + dx + table_side - 1
    (Swin's / ElasticViT's layout). Needs side <= table_side."""
    if side > table_side:
        raise ValueError(f"a {side} x {side} token grid does not fit a relative position table of side {table_side}")
    grid = torch.arange(side)
    coords = torch.stack(torch.meshgrid(grid, grid, indexing="ij")).flatten(1)  # 2 x N
    offsets = coords[:, :, None] - coords[:, None, :] + (table_side - 1)  # 2 x N x N
    return offsets[0] * (2 * table_side - 1) + offsets[1]


def relative_table_rows(side: int, table_side: int) -> torch.Tensor:
    """The rows of a (2 table_side - 1)^2 table that a side x side grid can address, in the order of a table
    of its own ((2 side - 1)^2 rows): slicing a supernet's table with them gives the static model's."""
    offsets = torch.arange(-(side - 1), side) + (table_side - 1)
    return (offsets[:, None] * (2 * table_side - 1) + offsets[None, :]).flatten()


def relative_bias(table: torch.Tensor, index: torch.Tensor, heads: int) -> torch.Tensor:
    """The 1 x heads x N x N bias of the first `heads` columns of `table` (rows x max heads) at `index`."""
    n = index.shape[0]
    return table[index.reshape(-1), :heads].reshape(n, n, heads).permute(2, 0, 1).unsqueeze(0)


def depthwise_tokens(x: torch.Tensor, weight: torch.Tensor, side: int) -> torch.Tensor:
    """A depthwise conv (no bias, `same` padding) of tokens B x N x L over their side x side grid."""
    batch, tokens, width = x.shape
    grid = x.transpose(1, 2).reshape(batch, width, side, side)
    out = F.conv2d(grid, weight, None, 1, weight.shape[-1] // 2, 1, width)
    return out.flatten(2).transpose(1, 2)
