"""The MPC cost decomposition of a block: the pieces a two-party run of it executes one after another.

Under SEMI2K an addition of shares is local, so residual additions cost nothing and are no piece; reshapes,
transposes and slicing of shares are local too. What costs rounds and bytes is the work between them: layer
norms, linear layers, activations, the depthwise conv on V, and the attention core of each attention kind.
The conv blocks (stem, MBConv, transformer downsample, head) have no per-head choice, so they are measured
whole. A network costs the sum of its pieces (see `nas.mpc.runner` for how close that sum is).

Pure Python (imports `nas.blocks` and `nas.ops` only): the torch side and SPU's venv both read it. Keys are
stable and human-readable (`linear_49_64_128_b1`, `attn_core_relu_softmax_49_2_16_16_rb0`,
`block:` + a `Block.key()`), so a table of measured pieces can be keyed by them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from nas.blocks import Block
from nas.ops import ATTENTION_KINDS, FFN_ACTIVATIONS

BLOCK_PREFIX = "block:"
WHOLE_BLOCKS = ("stem", "mbconv", "transds", "head")  # measured whole: no per-head choice inside
# The fields of each kind, in key order. `name` is the activation (act) or the attention kind (attn_core);
# bools are written with a tag (`b1`, `rb0`) so a key reads on its own.
SCHEMA: dict[str, tuple[str, ...]] = {
    "layernorm": ("tokens", "channels"),
    "linear": ("tokens", "cin", "cout", "bias"),
    "act": ("name", "tokens", "channels"),
    "dwconv": ("side", "channels"),
    "attn_core": ("name", "tokens", "heads", "head_dim", "v_dim", "rel_bias"),
}
KINDS = ("block",) + tuple(SCHEMA)
BOOL_TAGS = {"bias": "b", "rel_bias": "rb"}


@dataclass(frozen=True)
class Piece:
    """One unit of MPC work (batch 1).

    block: a whole stem / mbconv / transds / head, by its `Block.key()`.
    layernorm(tokens, channels); linear(tokens, cin, cout, bias): x W^T (+ b);
    act(name, tokens, channels): an elementwise FFN activation; dwconv(side, channels): a 3x3 depthwise conv
    (no bias) over a side x side token grid; attn_core(name, tokens, heads, head_dim, v_dim, rel_bias):
    scores q k^T head_dim^-0.5 (+ a relative position bias per head), the kind's normalise over the keys, times v.
    """

    kind: str
    block: str = ""
    name: str = ""
    tokens: int = 0
    channels: int = 0
    cin: int = 0
    cout: int = 0
    bias: bool = False
    side: int = 0
    heads: int = 0
    head_dim: int = 0
    v_dim: int = 0
    rel_bias: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown piece kind {self.kind!r} (known: {', '.join(KINDS)})")
        used = ("block",) if self.kind == "block" else SCHEMA[self.kind]
        for f in fields(self):
            if f.name != "kind" and f.name not in used and getattr(self, f.name) != f.default:
                raise ValueError(f"a {self.kind} piece has no field {f.name}")
        for name in used:
            value = getattr(self, name)
            if name in ("block", "name") or name in BOOL_TAGS:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{self.kind} piece: {name} must be a positive integer, got {value!r}")
        if self.kind == "block":
            block = Block.from_key(self.block)  # ValueError naming the key
            if block.kind not in WHOLE_BLOCKS:
                raise ValueError(f"a block piece is one of {', '.join(WHOLE_BLOCKS)}, not {block.kind!r} "
                                 "(attn and ffn blocks decompose: pieces_of)")
        elif self.kind == "act" and self.name not in FFN_ACTIVATIONS:
            raise ValueError(f"unknown activation {self.name!r} (known: {', '.join(FFN_ACTIVATIONS)})")
        elif self.kind == "attn_core":
            if self.name not in ATTENTION_KINDS:
                raise ValueError(f"unknown attention kind {self.name!r} (known: {', '.join(ATTENTION_KINDS)})")
            if self.rel_bias and math.isqrt(self.tokens) ** 2 != self.tokens:
                raise ValueError(f"a relative position bias needs a square token grid, got {self.tokens} tokens")

    def as_block(self) -> Block:
        """The block of a `block` piece."""
        if self.kind != "block":
            raise ValueError(f"a {self.kind} piece is not a whole block")
        return Block.from_key(self.block)

    def key(self) -> str:
        """A stable, human-readable key (`from_key` reads it back)."""
        if self.kind == "block":
            return BLOCK_PREFIX + self.block
        parts = [self.kind]
        for name in SCHEMA[self.kind]:
            value = getattr(self, name)
            parts.append(f"{BOOL_TAGS[name]}{int(value)}" if name in BOOL_TAGS else str(value))
        return "_".join(parts)

    @classmethod
    def from_key(cls, key: str) -> Piece:
        """The piece of a key written by `key()`; ValueError naming the key otherwise."""
        try:
            return cls._parse(key)
        except ValueError as exc:
            raise ValueError(f"not a piece key: {key!r} ({exc})") from None

    @classmethod
    def _parse(cls, key: object) -> Piece:
        if not isinstance(key, str):
            raise ValueError(f"a key is a string, got {type(key).__name__}")
        if key.startswith(BLOCK_PREFIX):
            return cls("block", block=key[len(BLOCK_PREFIX):])
        kind = next((k for k in sorted(SCHEMA, key=len, reverse=True) if key.startswith(k + "_")), None)
        if kind is None:
            raise ValueError(f"keys start with {BLOCK_PREFIX} or one of {', '.join(k + '_' for k in SCHEMA)}")
        names = SCHEMA[kind]
        raw = key[len(kind) + 1:].split("_")
        numeric = len(names) - ("name" in names)
        if len(raw) < numeric + ("name" in names):
            raise ValueError(f"a {kind} key has the fields {', '.join(names)}")
        values: dict[str, object] = {}
        if "name" in names:  # a name may hold underscores (relu_softmax): it takes what the numbers leave
            values["name"] = "_".join(raw[:len(raw) - numeric])
            raw = raw[len(raw) - numeric:]
        for name, text in zip([n for n in names if n != "name"], raw, strict=True):
            if name in BOOL_TAGS:
                tag = BOOL_TAGS[name]
                if text not in (f"{tag}0", f"{tag}1"):
                    raise ValueError(f"{name} is written {tag}0 or {tag}1, got {text!r}")
                values[name] = text.endswith("1")
            elif not text.isdigit() or str(int(text)) != text:
                raise ValueError(f"{name} must be a positive integer written plainly, got {text!r}")
            else:
                values[name] = int(text)
        piece = cls(kind, **values)  # type: ignore[arg-type]
        if piece.key() != key:
            raise ValueError(f"it reads back as {piece.key()!r}")
        return piece


def pieces_of(block: Block) -> list[Piece]:
    """The pieces of `block`, in execution order (see the module docstring)."""
    if block.kind in WHOLE_BLOCKS:
        return [Piece("block", block=block.key())]
    tokens, width = block.hw * block.hw, block.cin
    if block.kind == "attn":
        heads, d = width // block.head_dim, block.head_dim
        dv = block.v_scale * block.head_dim
        pieces = [Piece("layernorm", tokens=tokens, channels=width),
                  Piece("linear", tokens=tokens, cin=width, cout=2 * heads * d, bias=block.qkv_bias),
                  Piece("linear", tokens=tokens, cin=width, cout=heads * dv, bias=block.qkv_bias)]
        if block.v_dwconv:
            pieces.append(Piece("dwconv", side=block.hw, channels=heads * dv))
        for kind, count in block.attention_counts().items():
            pieces.append(Piece("attn_core", name=kind, tokens=tokens, heads=count, head_dim=d, v_dim=dv,
                                rel_bias=block.rel_pos_bias))
        if block.proj_act:
            pieces.append(Piece("act", name="hswish", tokens=tokens, channels=heads * dv))
        pieces.append(Piece("linear", tokens=tokens, cin=heads * dv, cout=width, bias=True))
        return pieces
    if block.kind == "ffn":
        hidden = width * block.mlp_ratio
        return [Piece("layernorm", tokens=tokens, channels=width),
                Piece("linear", tokens=tokens, cin=width, cout=hidden, bias=True),
                Piece("act", name=block.act, tokens=tokens, channels=hidden),
                Piece("linear", tokens=tokens, cin=hidden, cout=width, bias=True)]
    raise ValueError(f"unknown block kind {block.kind!r}")
