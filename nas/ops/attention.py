"""Attention op variants (torch only; exports carry a copy of this file as `ops_attention.py`).

Every function takes the weights it uses as arguments, so the supernet passes slices of its largest weights
and the static model its own: one formula serves both. The attention kinds live in their own modules
(`attn_<kind>.py`, each a `normalise(scores)`); `attend` takes a registry of them, so this file imports none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

Normaliser = Callable[[torch.Tensor], torch.Tensor]


def scores(q: torch.Tensor, k: torch.Tensor, scale: float, bias: torch.Tensor | None = None) -> torch.Tensor:
    """q k^T * scale (+ bias), per head (q, k: B x heads x N x d; bias: 1 x heads x N x N)."""
    out = (q @ k.transpose(-2, -1)) * scale
    return out if bias is None else out + bias


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, bias: torch.Tensor | None,
           kinds: Sequence[str], registry: Mapping[str, Normaliser]) -> torch.Tensor:
    """normalise(scores) v per head (v: B x heads x N x dv), where `kinds` names the kind of every head, or
    holds one kind for all of them; `registry` maps a kind to its `normalise` (an `attn_<kind>` module's).
    Heads of one kind are computed together."""
    heads = q.shape[1]
    if len(set(kinds)) == 1:
        return registry[kinds[0]](scores(q, k, scale, bias)) @ v
    if len(kinds) != heads:
        raise ValueError(f"{len(kinds)} attention kinds for {heads} heads")
    parts, order = [], []
    for kind in sorted(set(kinds)):
        heads_of_kind = [h for h, name in enumerate(kinds) if name == kind]
        index = torch.tensor(heads_of_kind, device=q.device)
        part_bias = None if bias is None else bias.index_select(1, index)
        part = scores(q.index_select(1, index), k.index_select(1, index), scale, part_bias)
        parts.append(registry[kind](part) @ v.index_select(1, index))
        order += heads_of_kind
    inverse = torch.tensor(sorted(range(heads), key=order.__getitem__), device=q.device)
    return torch.cat(parts, dim=1).index_select(1, inverse)


def attend_mixed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, bias: torch.Tensor | None,
                 first: Normaliser, second: Normaliser, weight: torch.Tensor) -> torch.Tensor:
    """MPCViT's relaxed choice per head: weight x first's attention + (1 - weight) x second's, `weight` one
    number in [0, 1] per head (differentiable in it)."""
    s = scores(q, k, scale, bias)
    w = weight.view(1, -1, 1, 1)
    return (w * first(s) + (1 - w) * second(s)) @ v


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
