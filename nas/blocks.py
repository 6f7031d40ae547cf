"""The block vocabulary shared by the space (which decomposes networks) and the latency models.

A network is the sum of its blocks: stem, MBConv layers, the downsample that opens a transformer stage,
attention and FFN per transformer layer, and the classifier head. The kinds and their fields mirror the
ones measured on phones (ElasticViT / nn-Meter), so a table of any device can be keyed the same way.

Keys (latency tables store them) are versioned. Format 1 is positional: the twelve fields from `kind` to
`num_classes` joined by `_` (`mbconv_56_16_24_2_3_3_0_0_0_16_0`). Format 2 (KEY_FORMAT) appends, for each
field added since (`FORMAT2_FIELDS`, every one of which describes an option of the build), `~name=value` when
the field differs from its default (`attn_14_96_96_1_0_0_0_0_2_16_0~v_dwconv=1~rel_pos_bias=1`). The defaults
are the build of format-1 days, so a block format 1 can express keeps its format-1 key exactly, and tables
written before key format 2 read unchanged (string for string). A format-1 reader refuses a `~` key as "not a
block key"; an unknown field name, a malformed value or a default written out is refused by `from_key`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from nas.ops import DEFAULT_ACTIVATION, DEFAULT_ATTENTION, FFN_ACTIVATIONS, mix_counts

BLOCK_KINDS = ("stem", "mbconv", "transds", "attn", "ffn", "head")
KEY_FORMAT = 2
FORMAT1_FIELDS = ("kind", "hw", "cin", "cout", "stride", "kernel", "expand", "se", "mlp_ratio", "v_scale",
                  "head_dim", "num_classes")
FORMAT2_FIELDS = ("shortcut", "expand_conv", "v_dwconv", "rel_pos_bias", "proj_act", "qkv_bias", "final", "attention",
                  "act")
SHORTCUTS = ("none", "avgpool_conv")


@dataclass(frozen=True, order=True)
class Block:
    """One block of a network at a given input size.

    hw: side of the block's input feature map (for attn/ffn: side of the token grid).
    cin/cout: channels in and out (attn/ffn: cin == cout == width; head: cout is the 1x1 expand width).
    se: squeeze-excite after the depthwise conv (mbconv, transds).

    Format-2 fields (defaults: the build before they existed):
    shortcut (mbconv, transds): on a stride or width change, `none` (no residual) or `avgpool_conv`
      (ElasticViT: the input average-pooled by the stride, then a 1x1 conv when the widths differ, is added).
      Only set where the shapes change (an identity residual needs no name).
    expand_conv (mbconv, transds): the 1x1 expansion conv is present. False only at expand 1
      (depthwise-separable, ElasticViT's and MobileNetV2's reading of expand 1); format-1 builds had it always.
    v_dwconv, rel_pos_bias, proj_act, qkv_bias (attn): a 3x3 depthwise conv on V over the token grid, a learned
      relative position bias per head, hard-swish before the output projection, biases on the q/k/v projections.
    final (head): width of the linear + hard-swish layer between the pooled features and the classifier (0: none).
    attention (attn): the attention kind of every head, or a mix of kinds over the heads (`nas.ops.mix_name`:
      `relu_softmax:2+scaling:2`).
    act (ffn): the FFN's activation (`nas.ops.FFN_ACTIVATIONS`).
    """

    kind: str
    hw: int
    cin: int
    cout: int
    stride: int = 1
    kernel: int = 0
    expand: int = 0
    se: bool = False
    mlp_ratio: int = 0
    v_scale: int = 0
    head_dim: int = 16
    num_classes: int = 0
    shortcut: str = "none"
    expand_conv: bool = True
    v_dwconv: bool = False
    rel_pos_bias: bool = False
    proj_act: bool = False
    qkv_bias: bool = True
    final: int = 0
    attention: str = DEFAULT_ATTENTION
    act: str = DEFAULT_ACTIVATION

    def __post_init__(self) -> None:
        if self.attention != DEFAULT_ATTENTION:
            heads = self.cin // self.head_dim if self.kind == "attn" and self.head_dim > 0 else 0
            mix_counts(self.attention, heads)  # ValueError naming the problem
        if self.act not in FFN_ACTIVATIONS:
            raise ValueError(f"unknown activation {self.act!r} (known: {', '.join(FFN_ACTIVATIONS)})")

    def attention_counts(self) -> dict[str, int]:
        """Heads per attention kind (attn blocks)."""
        return mix_counts(self.attention, self.cin // self.head_dim)

    def key(self) -> str:
        """A stable string key, unique per distinct block (format 2; format 1 where that can express it)."""
        parts = [_text(getattr(self, name)) for name in FORMAT1_FIELDS]
        extra = [f"~{name}={_text(getattr(self, name))}" for name in FORMAT2_FIELDS
                 if getattr(self, name) != _DEFAULTS[name]]
        return "_".join(parts) + "".join(extra)

    @classmethod
    def from_key(cls, key: str) -> Block:
        """The block of a format-1 or format-2 key; ValueError naming the key and the formats otherwise."""
        if not isinstance(key, str):
            raise ValueError(f"a block key must be a string, got {type(key).__name__}")
        head, *extensions = key.split("~")
        parts = head.split("_")
        if len(parts) != len(FORMAT1_FIELDS) or parts[0] not in BLOCK_KINDS:
            raise ValueError(f"not a block key: {key!r} (format 1: {'_'.join(FORMAT1_FIELDS)}; format 2 appends "
                             f"~name=value for {', '.join(FORMAT2_FIELDS)})")
        values: dict[str, object] = {"kind": parts[0]}
        try:
            for name, raw in zip(FORMAT1_FIELDS[1:], parts[1:], strict=True):
                values[name] = _parse(name, raw)
            for extension in extensions:
                name, sep, raw = extension.partition("=")
                if not sep or name not in FORMAT2_FIELDS or name in values:
                    raise ValueError(f"unknown or repeated field {name!r}")
                values[name] = _parse(name, raw)
                if values[name] == _DEFAULTS[name]:
                    raise ValueError(f"{name} holds its default and must be left out")
        except ValueError as exc:
            raise ValueError(f"not a block key: {key!r} ({exc}; key format {KEY_FORMAT} appends ~name=value for "
                             f"{', '.join(FORMAT2_FIELDS)})") from None
        try:
            return cls(**values)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ValueError(f"not a block key: {key!r} ({exc})") from None


_DEFAULTS = {f.name: f.default for f in fields(Block)}
_TYPES = {f.name: type(f.default) for f in fields(Block) if f.name != "kind"}


def _text(value: object) -> str:
    return value if isinstance(value, str) else f"{int(value):d}"  # type: ignore[call-overload]


def _parse(name: str, raw: str) -> object:
    kind = _TYPES[name]
    if kind is str:
        if name == "shortcut" and raw not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {', '.join(SHORTCUTS)}, got {raw!r}")
        return raw
    if not raw.lstrip("-").isdigit():
        raise ValueError(f"{name} must be an integer, got {raw!r}")
    if kind is bool:
        if raw not in ("0", "1"):
            raise ValueError(f"{name} must be 0 or 1, got {raw!r}")
        return raw == "1"
    return int(raw)
