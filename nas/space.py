"""SearchSpace and ArchConfig: the space as pure Python (no torch).

An ArchConfig holds the choices only (resolution, stem width, per stage a width and per-layer choices, head
width and, when the head has one, the width of its final layer). The SearchSpace adds the fixed parts (stage
kinds, strides, SE, shortcuts, attention options, head dim, input channels, classes) to describe a whole
network, samples archs with a caller's seeded `random.Random`, encodes them to a flat
vector of choice indices for search engines, counts the space, and computes params, FLOPs (multiply-
accumulates of convolutions, linear layers and attention matmuls) and the block decomposition used by the
latency models.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from dataclasses import dataclass, replace
from typing import Any

from nas.blocks import Block
from nas.ops import DEFAULT_ACTIVATION, DEFAULT_ATTENTION, layer_kinds, mix_name
from nas.spec import ConvStageSpec, SpaceSpec, Spec, TransformerStageSpec


@dataclass(frozen=True)
class ConvLayer:
    expand: int
    kernel: int


@dataclass(frozen=True)
class TransformerLayer:
    """A transformer layer's choices. `attention`: one kind for every head, or one kind per head (in a stage
    with `attention_per_head`); `act`: the FFN's activation."""

    mlp_ratio: int
    v_scale: int
    attention: tuple[str, ...] = (DEFAULT_ATTENTION,)
    act: str = DEFAULT_ACTIVATION

    def to_dict(self) -> dict[str, Any]:
        """The layer's choices; the defaults (softmax everywhere, hard-swish) are left out."""
        data: dict[str, Any] = {"mlp_ratio": self.mlp_ratio, "v_scale": self.v_scale}
        if self.attention != (DEFAULT_ATTENTION,):
            data["attention"] = self.attention[0] if len(self.attention) == 1 else list(self.attention)
        if self.act != DEFAULT_ACTIVATION:
            data["act"] = self.act
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransformerLayer:
        return cls(int(data["mlp_ratio"]), int(data["v_scale"]), layer_kinds(data),
                   str(data.get("act", DEFAULT_ACTIVATION)))


Layer = ConvLayer | TransformerLayer


def layer_dict(layer: Layer) -> dict[str, Any]:
    return layer.to_dict() if isinstance(layer, TransformerLayer) else dict(vars(layer))


@dataclass(frozen=True)
class StageArch:
    channels: int
    layers: tuple[Layer, ...]

    @property
    def depth(self) -> int:
        return len(self.layers)


@dataclass(frozen=True)
class ArchConfig:
    """One subnet's choices. Round-trips through `to_dict`/`from_dict`; `arch_hash` is stable."""

    resolution: int
    stem: int
    stages: tuple[StageArch, ...]
    head: int
    final: int = 0  # width of the head's final layer; 0: the head has none (and `to_dict` leaves it out)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "resolution": self.resolution,
            "stem": self.stem,
            "stages": [
                {"channels": s.channels, "layers": [layer_dict(layer) for layer in s.layers]} for s in self.stages
            ],
            "head": self.head,
        }
        if self.final:
            data["final"] = self.final
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchConfig:
        stages = []
        for stage in data["stages"]:
            layers: list[Layer] = [
                ConvLayer(**layer) if "expand" in layer else TransformerLayer.from_dict(layer)
                for layer in stage["layers"]
            ]
            stages.append(StageArch(int(stage["channels"]), tuple(layers)))
        return cls(int(data["resolution"]), int(data["stem"]), tuple(stages), int(data["head"]),
                   int(data.get("final", 0)))

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def arch_hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]


def _same_padding_out(hw: int, stride: int) -> int:
    return (hw - 1) // stride + 1


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of `divisor`, never below it and never below 90% of `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def se_channels(hidden: int) -> int:
    """Width of the squeeze-excite bottleneck for an MBConv hidden width."""
    return make_divisible(hidden / 4)


class SearchSpace:
    """The space described by a spec, for a data set with `in_channels` and `num_classes`."""

    def __init__(self, space: SpaceSpec, in_channels: int, num_classes: int, deploy_resolution: int | None = None):
        self.spec = space
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.deploy_resolution = deploy_resolution

    @classmethod
    def from_spec(cls, spec: Spec, in_channels: int, num_classes: int) -> SearchSpace:
        return cls(spec.space, in_channels, num_classes, spec.deploy.resolution)

    # ---- choices -------------------------------------------------------------------------------------
    @staticmethod
    def _layer_choices(stage: ConvStageSpec | TransformerStageSpec) -> list[Layer]:
        """Every choice of one layer; in a stage with per-head attention, with the attention left at its
        default (the heads' kinds are chosen apart: `_with_heads`)."""
        if isinstance(stage, ConvStageSpec):
            return [ConvLayer(e, k) for e in stage.expand for k in stage.kernel]
        kinds = [(DEFAULT_ATTENTION,)] if stage.attention_per_head else [(a,) for a in stage.attention]
        return [TransformerLayer(m, v, a, act) for m in stage.mlp_ratio for v in stage.v_scale for a in kinds
                for act in stage.ffn_act]

    @staticmethod
    def _per_layer(layer: Layer, stage: ConvStageSpec | TransformerStageSpec) -> Layer:
        """`layer` as `_layer_choices` lists it (per-head kinds reset to the default)."""
        if isinstance(stage, TransformerStageSpec) and stage.attention_per_head and isinstance(layer, TransformerLayer):
            return replace(layer, attention=(DEFAULT_ATTENTION,))
        return layer

    def _with_heads(self, layer: Layer, stage: ConvStageSpec | TransformerStageSpec, channels: int,
                    rng: random.Random) -> Layer:
        """A sampled layer with a random kind per head when the stage chooses attention per head."""
        if isinstance(stage, TransformerStageSpec) and stage.attention_per_head and isinstance(layer, TransformerLayer):
            heads = stage.heads(channels)
            return replace(layer, attention=tuple(rng.choice(stage.attention) for _ in range(heads)))
        return layer

    def head_widths(self, last: int) -> list[int]:
        """The head widths open to an arch whose last stage is `last` wide (`head.channels`, or `head.expand`
        times `last`), in increasing order."""
        head = self.spec.head
        return list(head.channels) if head.channels is not None else [r * last for r in head.expand or ()]

    def _head_choice(self) -> list[int]:
        """The head's own dimension: widths (`channels`) or ratios (`expand`)."""
        head = self.spec.head
        return list(head.channels if head.channels is not None else head.expand or ())

    def sample(self, rng: random.Random) -> ArchConfig:
        """A uniformly random choice per dimension (depth uniform over its range)."""
        stages = []
        for stage in self.spec.stages:
            depth = rng.randint(stage.depth.min, stage.depth.max)
            choices = self._layer_choices(stage)
            channels = rng.choice(stage.channels)
            layers = tuple(self._with_heads(rng.choice(choices), stage, channels, rng) for _ in range(depth))
            stages.append(StageArch(channels, layers))
        arch = ArchConfig(rng.choice(self.spec.resolution), rng.choice(self.spec.stem.channels), tuple(stages),
                          rng.choice(self.head_widths(stages[-1].channels)))
        if self.spec.head.final_channels:
            arch = replace(arch, final=rng.choice(self.spec.head.final_channels))
        return arch

    def _extreme(self, pick: int) -> ArchConfig:
        stages = []
        for stage in self.spec.stages:
            depth = stage.depth.max if pick < 0 else stage.depth.min
            if isinstance(stage, ConvStageSpec):
                layer: Layer = ConvLayer(stage.expand[pick], stage.kernel[pick])
            else:
                heads = stage.heads(stage.channels[pick]) if stage.attention_per_head else 1
                layer = TransformerLayer(stage.mlp_ratio[pick], stage.v_scale[pick], (stage.attention[pick],) * heads,
                                         stage.ffn_act[pick])
            stages.append(StageArch(stage.channels[pick], (layer,) * depth))
        finals = self.spec.head.final_channels
        return ArchConfig(self.spec.resolution[pick], self.spec.stem.channels[pick], tuple(stages),
                          self.head_widths(stages[-1].channels)[pick], finals[pick] if finals else 0)

    def largest(self) -> ArchConfig:
        return self._extreme(-1)

    def smallest(self) -> ArchConfig:
        return self._extreme(0)

    def count(self) -> int:
        """Number of distinct architectures in the space."""
        head = len(self._head_choice()) * max(1, len(self.spec.head.final_channels))
        total = len(self.spec.resolution) * len(self.spec.stem.channels) * head
        for stage in self.spec.stages:
            per_channels, choices = 0, len(self._layer_choices(stage))
            for channels in stage.channels:
                per_layer = choices
                if isinstance(stage, TransformerStageSpec) and stage.attention_per_head:
                    per_layer *= len(stage.attention) ** stage.heads(channels)
                per_channels += sum(per_layer**d for d in range(stage.depth.min, stage.depth.max + 1))
            total *= per_channels
        return total

    def validate_arch(self, arch: ArchConfig) -> None:
        """Raise ValueError when `arch` is not a member of this space."""
        problems = []
        if arch.resolution not in self.spec.resolution:
            problems.append(f"resolution {arch.resolution}")
        if arch.stem not in self.spec.stem.channels:
            problems.append(f"stem {arch.stem}")
        if len(arch.stages) != len(self.spec.stages):
            raise ValueError(f"arch has {len(arch.stages)} stages, the space has {len(self.spec.stages)}")
        for i, (stage, spec) in enumerate(zip(arch.stages, self.spec.stages, strict=True)):
            if stage.channels not in spec.channels:
                problems.append(f"stages[{i}].channels {stage.channels}")
            if not spec.depth.min <= stage.depth <= spec.depth.max:
                problems.append(f"stages[{i}].depth {stage.depth}")
            allowed = self._layer_choices(spec)
            problems += [f"stages[{i}].layers[{j}]" for j, layer in enumerate(stage.layers)
                         if self._per_layer(layer, spec) not in allowed]
            if isinstance(spec, TransformerStageSpec):
                problems += [problem for j, layer in enumerate(stage.layers) for problem in
                             self._attention_problems(layer, spec, stage.channels, f"stages[{i}].layers[{j}]")]
        if arch.head not in self.head_widths(arch.stages[-1].channels):
            last, expand = arch.stages[-1].channels, self.spec.head.expand
            rule = f" (head.expand {expand} x the last stage's {last})" if expand else ""
            problems.append(f"head {arch.head}{rule}")
        finals = self.spec.head.final_channels
        if (arch.final not in finals) if finals else arch.final != 0:
            problems.append(f"final {arch.final}" + ("" if finals else " (the head has no final layer)"))
        if problems:
            raise ValueError("arch is not in the space: " + ", ".join(problems))

    @staticmethod
    def _attention_problems(layer: Layer, spec: TransformerStageSpec, channels: int, where: str) -> list[str]:
        if not isinstance(layer, TransformerLayer):
            return []
        if spec.attention_per_head:
            heads = spec.heads(channels)
            if len(layer.attention) != heads:
                return [f"{where}.attention (one kind per head: {heads} heads at {channels} channels, got "
                        f"{len(layer.attention)})"]
            return [f"{where}.attention[{h}] {kind!r}" for h, kind in enumerate(layer.attention)
                    if kind not in spec.attention]
        if len(layer.attention) != 1:
            return [f"{where}.attention (the stage chooses one kind per layer; attention_per_head is off)"]
        return []

    # ---- flat encoding for search engines ------------------------------------------------------------
    def dimensions(self) -> list[tuple[str, list[Any]]]:
        """Named categorical dimensions; layers beyond a stage's depth are encoded but ignored. `head` holds
        widths (`head.channels`) or ratios to the last stage's width (`head.expand`)."""
        dims: list[tuple[str, list[Any]]] = [("resolution", list(self.spec.resolution)),
                                             ("stem", list(self.spec.stem.channels))]
        for i, stage in enumerate(self.spec.stages):
            dims.append((f"s{i}.depth", list(range(stage.depth.min, stage.depth.max + 1))))
            dims.append((f"s{i}.channels", list(stage.channels)))
            fields = ("expand", "kernel") if isinstance(stage, ConvStageSpec) else ("mlp_ratio", "v_scale")
            for j in range(stage.depth.max):
                for name in fields:
                    dims.append((f"s{i}.l{j}.{name}", list(getattr(stage, name))))
                if isinstance(stage, TransformerStageSpec):
                    dims += self._transformer_dims(stage, f"s{i}.l{j}")
        dims.append(("head", self._head_choice()))
        if self.spec.head.final_channels:
            dims.append(("final", list(self.spec.head.final_channels)))
        return dims

    @staticmethod
    def _transformer_dims(stage: TransformerStageSpec, prefix: str) -> list[tuple[str, list[Any]]]:
        """The attention and activation dimensions of one layer, where the stage has a choice: one attention
        dimension per head up to the most heads (a layer with fewer heads uses the leading ones)."""
        dims: list[tuple[str, list[Any]]] = []
        if stage.attention_per_head:
            dims += [(f"{prefix}.h{h}.attention", list(stage.attention))
                     for h in range(stage.heads(max(stage.channels)))]
        elif len(stage.attention) > 1:
            dims.append((f"{prefix}.attention", list(stage.attention)))
        if len(stage.ffn_act) > 1:
            dims.append((f"{prefix}.act", list(stage.ffn_act)))
        return dims

    def encode(self, arch: ArchConfig) -> list[int]:
        head = arch.head if self.spec.head.channels is not None else arch.head // arch.stages[-1].channels
        values: dict[str, Any] = {"resolution": arch.resolution, "stem": arch.stem, "head": head, "final": arch.final}
        for i, stage in enumerate(arch.stages):
            values[f"s{i}.depth"] = stage.depth
            values[f"s{i}.channels"] = stage.channels
            for j, layer in enumerate(stage.layers):
                for name, value in vars(layer).items():
                    values[f"s{i}.l{j}.{name}"] = value
                if isinstance(layer, TransformerLayer):
                    values[f"s{i}.l{j}.attention"] = layer.attention[0]
                    values.update({f"s{i}.l{j}.h{h}.attention": kind for h, kind in enumerate(layer.attention)})
        return [choices.index(values[name]) if name in values else 0 for name, choices in self.dimensions()]

    def decode(self, vector: list[int]) -> ArchConfig:
        values = {name: choices[index] for (name, choices), index in zip(self.dimensions(), vector, strict=True)}
        return self.from_choices(values)

    def from_choices(self, values: dict[str, Any]) -> ArchConfig:
        """Build an arch from named dimension values (as a search engine suggests them)."""
        stages = []
        for i, stage in enumerate(self.spec.stages):
            layers: list[Layer] = []
            for j in range(values[f"s{i}.depth"]):
                if isinstance(stage, ConvStageSpec):
                    layers.append(ConvLayer(values[f"s{i}.l{j}.expand"], values[f"s{i}.l{j}.kernel"]))
                else:
                    layers.append(self._transformer_layer(values, stage, f"s{i}.l{j}", values[f"s{i}.channels"]))
            stages.append(StageArch(values[f"s{i}.channels"], tuple(layers)))
        head = values["head"] if self.spec.head.channels is not None else values["head"] * stages[-1].channels
        return ArchConfig(values["resolution"], values["stem"], tuple(stages), head, values.get("final", 0))

    @staticmethod
    def _transformer_layer(values: dict[str, Any], stage: TransformerStageSpec, prefix: str,
                           channels: int) -> TransformerLayer:
        if stage.attention_per_head:
            kinds = tuple(values[f"{prefix}.h{h}.attention"] for h in range(stage.heads(channels)))
        else:
            kinds = (values.get(f"{prefix}.attention", stage.attention[0]),)
        return TransformerLayer(values[f"{prefix}.mlp_ratio"], values[f"{prefix}.v_scale"], kinds,
                                values.get(f"{prefix}.act", stage.ffn_act[0]))

    # ---- the network an arch describes ---------------------------------------------------------------
    def describe(self, arch: ArchConfig) -> dict[str, Any]:
        """A self-contained description of the network (what `static_model.build` takes; format 3)."""
        stages = []
        for stage, spec in zip(arch.stages, self.spec.stages, strict=True):
            entry: dict[str, Any] = {"type": spec.type, "stride": spec.stride, "channels": stage.channels,
                                     "layers": [layer_dict(layer) for layer in stage.layers]}
            if isinstance(spec, ConvStageSpec):
                entry.update(se=spec.se, shortcut=spec.shortcut)
            else:
                entry.update(head_dim=spec.head_dim, downsample_expand=spec.downsample_expand,
                             downsample_se=spec.downsample_se, shortcut=spec.shortcut, v_dwconv=spec.v_dwconv,
                             rel_pos_bias=spec.rel_pos_bias, proj_act=spec.proj_act, qkv_bias=spec.qkv_bias)
            stages.append(entry)
        return {
            "format_version": DESCRIPTION_FORMAT,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "resolution": arch.resolution,
            "stem": {"channels": arch.stem, "stride": self.spec.stem.stride, "kernel": self.spec.stem.kernel},
            "stages": stages,
            "head": {"channels": arch.head, "final": arch.final},
        }

    def deploy_resolution_for(self, arch: ArchConfig) -> int:
        """The input side at which latency is predicted for `arch`."""
        if self.deploy_resolution is None:
            return arch.resolution
        return max(1, round(self.deploy_resolution * arch.resolution / max(self.spec.resolution)))

    def blocks(self, arch: ArchConfig, resolution: int | None = None) -> list[Block]:
        """The network as a list of blocks at input side `resolution` (default: the deploy resolution)."""
        return network_blocks(self.describe(arch), resolution or self.deploy_resolution_for(arch))

    def distinct_blocks(self) -> list[Block]:
        """Every block any arch of the space can contain, at the deploy resolution of each resolution choice."""
        found: set[Block] = set()
        spec = self.spec
        finals = spec.head.final_channels or [0]
        for resolution in spec.resolution:
            side = self.deploy_resolution_for(ArchConfig(resolution, spec.stem.channels[0], (), 0))
            hw = _same_padding_out(side, spec.stem.stride)
            for stem in spec.stem.channels:
                found.add(Block("stem", side, self.in_channels, stem, spec.stem.stride, spec.stem.kernel))
            inputs = set(spec.stem.channels)
            for stage in spec.stages:
                out_hw = _same_padding_out(hw, stage.stride)
                for cin in inputs:
                    for cout in stage.channels:
                        if isinstance(stage, ConvStageSpec):
                            for layer in self._layer_choices(stage):
                                assert isinstance(layer, ConvLayer)
                                found.add(_conv_block("mbconv", hw, cin, cout, stage.stride, layer.kernel,
                                                      layer.expand, stage.se, stage.shortcut))
                                if stage.depth.max > 1:
                                    found.add(_conv_block("mbconv", out_hw, cout, cout, 1, layer.kernel,
                                                          layer.expand, stage.se, stage.shortcut))
                        else:
                            found.add(_conv_block("transds", hw, cin, cout, stage.stride, 3, stage.downsample_expand,
                                                  stage.downsample_se, stage.shortcut))
                for cout in stage.channels if isinstance(stage, TransformerStageSpec) else ():
                    for v_scale in stage.v_scale:
                        for mix in _attention_mixes(stage, cout):
                            found.add(Block("attn", out_hw, cout, cout, v_scale=v_scale, head_dim=stage.head_dim,
                                            attention=mix, **_attn_options(stage.model_dump())))
                    for ratio in stage.mlp_ratio:
                        for act in stage.ffn_act:
                            found.add(Block("ffn", out_hw, cout, cout, mlp_ratio=ratio, act=act))
                inputs, hw = set(stage.channels), out_hw
            for cin in inputs:
                for head in self.head_widths(cin):
                    for final in finals:
                        found.add(Block("head", hw, cin, head, num_classes=self.num_classes, final=final))
        return sorted(found)

    def params(self, arch: ArchConfig) -> int:
        return sum(block_cost(b)[0] for b in self.blocks(arch, arch.resolution))

    def flops(self, arch: ArchConfig, resolution: int | None = None) -> int:
        """Multiply-accumulates at `resolution` (default: the training resolution of `arch`)."""
        return sum(block_cost(b)[1] for b in self.blocks(arch, resolution or arch.resolution))


DESCRIPTION_FORMAT = 3  # of `SearchSpace.describe` (see `nas.static_model`: formats 1 and 2 are read too)


def _attention_mixes(stage: TransformerStageSpec, channels: int) -> list[str]:
    """The attention names (`nas.ops.mix_name`) a layer of `stage` at `channels` can have."""
    if not stage.attention_per_head:
        return list(stage.attention)
    heads = stage.heads(channels)
    return sorted({mix_name(kinds) for kinds in itertools.combinations_with_replacement(stage.attention, heads)})
ATTN_OPTIONS = {"v_dwconv": False, "rel_pos_bias": False, "proj_act": False, "qkv_bias": True}  # and defaults


def _attn_options(stage: dict[str, Any]) -> dict[str, bool]:
    return {name: bool(stage.get(name, default)) for name, default in ATTN_OPTIONS.items()}


def _conv_block(kind: str, hw: int, cin: int, cout: int, stride: int, kernel: int, expand: int, se: bool,
                shortcut: str, legacy: bool = False) -> Block:
    """An MBConv-shaped block as built from a format-2 description (format 1: `legacy`): no 1x1 expansion at
    expand 1, and the shortcut named only where the layer changes the stride or the width."""
    changes = stride != 1 or cin != cout
    return Block(kind, hw, cin, cout, stride, kernel, expand, se,
                 shortcut=shortcut if changes and not legacy else "none", expand_conv=legacy or expand > 1)


def network_blocks(network: dict[str, Any], resolution: int) -> list[Block]:
    """Decompose a described network (description format 1 or 2) into blocks at input side `resolution`."""
    legacy = network["format_version"] == 1
    stem = network["stem"]
    blocks = [Block("stem", resolution, network["in_channels"], stem["channels"], stem["stride"], stem["kernel"])]
    hw = _same_padding_out(resolution, stem["stride"])
    cin = stem["channels"]
    for stage in network["stages"]:
        cout = stage["channels"]
        shortcut = stage.get("shortcut", "none")
        if stage["type"] == "conv":
            for j, layer in enumerate(stage["layers"]):
                stride = stage["stride"] if j == 0 else 1
                blocks.append(_conv_block("mbconv", hw, cin, cout, stride, layer["kernel"], layer["expand"],
                                          stage["se"], shortcut, legacy))
                hw, cin = _same_padding_out(hw, stride), cout
        else:
            se = False if legacy else stage.get("downsample_se", False)
            blocks.append(_conv_block("transds", hw, cin, cout, stage["stride"], 3, stage["downsample_expand"], se,
                                      shortcut, legacy))
            hw, cin = _same_padding_out(hw, stage["stride"]), cout
            options = {} if legacy else _attn_options(stage)
            for layer in stage["layers"]:
                blocks.append(Block("attn", hw, cout, cout, v_scale=layer["v_scale"], head_dim=stage["head_dim"],
                                    attention=mix_name(layer_kinds(layer)), **options))
                blocks.append(Block("ffn", hw, cout, cout, mlp_ratio=layer["mlp_ratio"],
                                    act=layer.get("act", DEFAULT_ACTIVATION)))
    head = network["head"]
    blocks.append(Block("head", hw, cin, head["channels"], num_classes=network["num_classes"],
                        final=0 if legacy else head.get("final", 0)))
    return blocks


def _mbconv_cost(hw: int, cin: int, cout: int, stride: int, kernel: int, expand: int, se: bool,
                 expand_conv: bool = True, shortcut: str = "none") -> tuple[int, int]:
    hidden = cin * expand
    out = _same_padding_out(hw, stride)
    params = macs = 0
    if expand_conv:
        params += cin * hidden + 2 * hidden  # expand conv + BN
        macs += hw * hw * cin * hidden
    params += hidden * kernel * kernel + 2 * hidden  # depthwise + BN
    macs += out * out * hidden * kernel * kernel
    if se:
        mid = se_channels(hidden)
        params += hidden * mid + mid + mid * hidden + hidden
        macs += hidden * mid + mid * hidden
    params += hidden * cout + 2 * cout  # project + BN
    macs += out * out * hidden * cout
    if shortcut == "avgpool_conv" and cin != cout:  # 1x1 conv (no bias) on the pooled input
        params += cin * cout
        macs += out * out * cin * cout
    return params, macs


def block_cost(block: Block) -> tuple[int, int]:
    """(parameters, multiply-accumulates) of one block, matching the torch modules of `static_model`."""
    b = block
    if b.kind == "stem":
        out = _same_padding_out(b.hw, b.stride)
        return b.cin * b.cout * b.kernel**2 + 2 * b.cout, out * out * b.cin * b.cout * b.kernel**2
    if b.kind in ("mbconv", "transds"):
        return _mbconv_cost(b.hw, b.cin, b.cout, b.stride, b.kernel, b.expand, b.se, b.expand_conv, b.shortcut)
    tokens = b.hw * b.hw
    if b.kind == "attn":
        heads = b.cin // b.head_dim
        qk, v = 2 * heads * b.head_dim, heads * b.v_scale * b.head_dim
        params = 2 * b.cin + b.cin * (qk + v) + (qk + v if b.qkv_bias else 0) + v * b.cin + b.cin
        macs = tokens * b.cin * (qk + v) + tokens * v * b.cin
        macs += heads * tokens * tokens * b.head_dim + heads * tokens * tokens * b.v_scale * b.head_dim
        if b.v_dwconv:  # 3x3 depthwise on V, no bias
            params += 9 * v
            macs += 9 * tokens * v
        if b.rel_pos_bias:  # one bias per head and relative offset
            params += (2 * b.hw - 1) ** 2 * heads
        return params, macs
    if b.kind == "ffn":
        hidden = b.cin * b.mlp_ratio
        return 2 * b.cin + 2 * b.cin * hidden + hidden + b.cin, 2 * tokens * b.cin * hidden
    if b.kind == "head":
        params, macs = b.cin * b.cout + 2 * b.cout, tokens * b.cin * b.cout
        last = b.cout
        if b.final:
            params += b.cout * b.final + b.final
            macs += b.cout * b.final
            last = b.final
        return params + last * b.num_classes + b.num_classes, macs + last * b.num_classes
    raise ValueError(f"unknown block kind {b.kind!r}")
