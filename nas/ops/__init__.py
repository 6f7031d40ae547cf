"""Op variants written once, used by both the elastic supernet (`nas.supernet`, with sliced weights) and the
plain modules of `nas.static_model` (with their own weights).

One module per op family or variant, each depending on torch alone and on no other module here, so that an
export can ship a copy of each beside its `model.py` (as `ops_<name>.py`; see `static_model.OP_FILES`):

    attention     scores, per-head dispatch to the attention kinds, relative position bias, depthwise conv on V
    attn_<kind>   one attention kind each: `normalise(scores) -> weights` (softmax, relu_softmax, scaling, quad)
    activation    activations by name (the FFN's choice)
    conv          squeeze-excite and ElasticViT's projection shortcut (average pool + 1x1 conv)

This file is torch-free: the spec reads the names it accepts from here. The attention kinds are the
`attn_<kind>.py` files of this folder (adding a kind is adding a file); `FFN_ACTIVATIONS` must equal the keys
of `activation.ACTIVATIONS` (a contract test checks both).

A layer's attention is one kind, or one kind per head (`kinds`, a tuple). Blocks and keys name it by
`mix_name`: the kind itself when all heads share it, else `kind:count` parts in name order joined by `+`
(`relu_softmax:2+scaling:2`); the cost of a layer does not depend on which head has which kind.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
BASE_MODULES = ("attention", "activation", "conv")
ATTENTION_KINDS = tuple(sorted(p.stem[len("attn_"):] for p in _HERE.glob("attn_*.py")))
FFN_ACTIVATIONS = ("gelu", "hswish", "relu")
DEFAULT_ATTENTION = "softmax"
DEFAULT_ACTIVATION = "hswish"
OP_MODULES = BASE_MODULES + tuple(f"attn_{kind}" for kind in ATTENTION_KINDS)

# Numeric formats (FLIQS): name -> (family, bits, exponent bits, mantissa bits). Integers are symmetric
# (-(2^(b-1) - 1) .. 2^(b-1) - 1 times a scale; `quant_int`); floats have IEEE-style subnormals, round to nearest
# even and saturate at their largest finite value (`quant_float`; fp8_e4m3 is the "fn" variant without
# infinities, max 448; fp4_e2m1 has no infinity or NaN, max 6). fp32 is the identity.
NUMERIC_FORMATS: dict[str, tuple[str, int, int, int]] = {
    "fp32": ("none", 32, 8, 23),
    "bf16": ("float", 16, 8, 7),
    "fp8_e4m3": ("float", 8, 4, 3),
    "fp8_e5m2": ("float", 8, 5, 2),
    "fp4_e2m1": ("float", 4, 2, 1),
    "int8": ("int", 8, 0, 0),
    "int4": ("int", 4, 0, 0),
}
# Expected cost under two-party computation, cheapest first (measured: `latency_tables/mpc-*.json`). A
# space's choices are kept in this order, so its smallest arch takes the cheapest and its largest the
# costliest (the all-softmax teacher). Kinds and activations not listed go last, by name.
COST_ORDER = ("scaling", "quad", "relu_softmax", "softmax", "relu", "hswish", "gelu")


def cost_order(names: list[str] | tuple[str, ...]) -> list[str]:
    """`names` without repeats, cheapest first (`COST_ORDER`)."""
    rank = {name: i for i, name in enumerate(COST_ORDER)}
    return sorted(set(names), key=lambda name: (rank.get(name, len(rank)), name))


def layer_kinds(layer: dict[str, Any]) -> tuple[str, ...]:
    """The attention kinds of a described transformer layer (`attention`: a kind for every head, or a list of one
    per head; the default when absent)."""
    attention = layer.get("attention", DEFAULT_ATTENTION)
    return (attention,) if isinstance(attention, str) else tuple(attention)


def mix_name(kinds: tuple[str, ...] | list[str]) -> str:
    """The name of a layer whose heads use `kinds` (one entry: every head)."""
    counts = Counter(kinds)
    if len(counts) == 1:
        return next(iter(counts))
    return "+".join(f"{kind}:{counts[kind]}" for kind in sorted(counts))


def mix_counts(name: str, heads: int) -> dict[str, int]:
    """Heads per kind of a layer named `name` (see `mix_name`) with `heads` heads; ValueError when the name is
    malformed, names an unknown kind, or its counts do not add up to `heads`."""
    if "+" not in name and ":" not in name:
        counts = {name: heads}
    else:
        counts = {}
        for part in name.split("+"):
            kind, sep, raw = part.partition(":")
            if not sep or not raw.isdigit() or int(raw) < 1 or kind in counts:
                raise ValueError(f"attention {name!r}: each part is kind:count with a count >= 1, kinds once each")
            counts[kind] = int(raw)
        if len(counts) < 2 or list(counts) != sorted(counts):
            raise ValueError(f"attention {name!r}: a mix names two or more kinds in name order")
        if sum(counts.values()) != heads:
            raise ValueError(f"attention {name!r}: the counts add up to {sum(counts.values())}, the layer has "
                             f"{heads} heads")
    unknown = sorted(set(counts) - set(ATTENTION_KINDS))
    if unknown:
        raise ValueError(f"unknown attention kind {unknown[0]!r} (known: {', '.join(ATTENTION_KINDS)})")
    return counts
