"""The block vocabulary shared by the space (which decomposes networks) and the latency models.

A network is the sum of its blocks: stem, MBConv layers, the downsample that opens a transformer stage,
attention and FFN per transformer layer, and the classifier head. The kinds and their fields mirror the
ones measured on phones (ElasticViT / nn-Meter), so a table of any device can be keyed the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

BLOCK_KINDS = ("stem", "mbconv", "transds", "attn", "ffn", "head")


@dataclass(frozen=True, order=True)
class Block:
    """One block of a network at a given input size.

    hw: side of the block's input feature map (for attn/ffn: side of the token grid).
    cin/cout: channels in and out (attn/ffn: cin == cout == width).
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

    def key(self) -> str:
        """A stable string key, unique per distinct block."""
        return "_".join(f"{v:d}" if not isinstance(v, str) else v for v in asdict(self).values())

    @classmethod
    def from_key(cls, key: str) -> Block:
        names = list(cls.__dataclass_fields__)
        parts = key.split("_")
        if len(parts) != len(names) or parts[0] not in BLOCK_KINDS:
            raise ValueError(f"not a block key: {key!r}")
        values: dict[str, object] = {"kind": parts[0]}
        for name, raw in zip(names[1:], parts[1:], strict=True):
            values[name] = bool(int(raw)) if name == "se" else int(raw)
        return cls(**values)  # type: ignore[arg-type]
