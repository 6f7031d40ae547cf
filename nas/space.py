"""SearchSpace and ArchConfig: the space as pure Python (no torch).

An ArchConfig holds the choices only (resolution, stem width, per stage a width and per-layer choices, head
width). The SearchSpace adds the fixed parts (stage kinds, strides, SE, head dim, input channels, classes)
to describe a whole network, samples archs with a caller's seeded `random.Random`, encodes them to a flat
vector of choice indices for search engines, counts the space, and computes params, FLOPs (multiply-
accumulates of convolutions, linear layers and attention matmuls) and the block decomposition used by the
latency models.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any

from nas.blocks import Block
from nas.spec import ConvStageSpec, SpaceSpec, Spec, TransformerStageSpec


@dataclass(frozen=True)
class ConvLayer:
    expand: int
    kernel: int


@dataclass(frozen=True)
class TransformerLayer:
    mlp_ratio: int
    v_scale: int


Layer = ConvLayer | TransformerLayer


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "resolution": self.resolution,
            "stem": self.stem,
            "stages": [
                {"channels": s.channels, "layers": [dict(vars(layer)) for layer in s.layers]} for s in self.stages
            ],
            "head": self.head,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchConfig:
        stages = []
        for stage in data["stages"]:
            layers: list[Layer] = [
                ConvLayer(**layer) if "expand" in layer else TransformerLayer(**layer) for layer in stage["layers"]
            ]
            stages.append(StageArch(int(stage["channels"]), tuple(layers)))
        return cls(int(data["resolution"]), int(data["stem"]), tuple(stages), int(data["head"]))

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
        if isinstance(stage, ConvStageSpec):
            return [ConvLayer(e, k) for e in stage.expand for k in stage.kernel]
        return [TransformerLayer(m, v) for m in stage.mlp_ratio for v in stage.v_scale]

    def sample(self, rng: random.Random) -> ArchConfig:
        """A uniformly random choice per dimension (depth uniform over its range)."""
        stages = []
        for stage in self.spec.stages:
            depth = rng.randint(stage.depth.min, stage.depth.max)
            choices = self._layer_choices(stage)
            stages.append(StageArch(rng.choice(stage.channels), tuple(rng.choice(choices) for _ in range(depth))))
        return ArchConfig(rng.choice(self.spec.resolution), rng.choice(self.spec.stem.channels), tuple(stages),
                          rng.choice(self.spec.head.channels))

    def _extreme(self, pick: int) -> ArchConfig:
        stages = []
        for stage in self.spec.stages:
            depth = stage.depth.max if pick < 0 else stage.depth.min
            if isinstance(stage, ConvStageSpec):
                layer: Layer = ConvLayer(stage.expand[pick], stage.kernel[pick])
            else:
                layer = TransformerLayer(stage.mlp_ratio[pick], stage.v_scale[pick])
            stages.append(StageArch(stage.channels[pick], (layer,) * depth))
        return ArchConfig(self.spec.resolution[pick], self.spec.stem.channels[pick], tuple(stages),
                          self.spec.head.channels[pick])

    def largest(self) -> ArchConfig:
        return self._extreme(-1)

    def smallest(self) -> ArchConfig:
        return self._extreme(0)

    def count(self) -> int:
        """Number of distinct architectures in the space."""
        total = len(self.spec.resolution) * len(self.spec.stem.channels) * len(self.spec.head.channels)
        for stage in self.spec.stages:
            per_layer = len(self._layer_choices(stage))
            depths = sum(per_layer**d for d in range(stage.depth.min, stage.depth.max + 1))
            total *= len(stage.channels) * depths
        return total

    def validate_arch(self, arch: ArchConfig) -> None:
        """Raise ValueError when `arch` is not a member of this space."""
        problems = []
        if arch.resolution not in self.spec.resolution:
            problems.append(f"resolution {arch.resolution}")
        if arch.stem not in self.spec.stem.channels:
            problems.append(f"stem {arch.stem}")
        if arch.head not in self.spec.head.channels:
            problems.append(f"head {arch.head}")
        if len(arch.stages) != len(self.spec.stages):
            raise ValueError(f"arch has {len(arch.stages)} stages, the space has {len(self.spec.stages)}")
        for i, (stage, spec) in enumerate(zip(arch.stages, self.spec.stages, strict=True)):
            if stage.channels not in spec.channels:
                problems.append(f"stages[{i}].channels {stage.channels}")
            if not spec.depth.min <= stage.depth <= spec.depth.max:
                problems.append(f"stages[{i}].depth {stage.depth}")
            allowed = self._layer_choices(spec)
            problems += [f"stages[{i}].layers[{j}]" for j, layer in enumerate(stage.layers) if layer not in allowed]
        if problems:
            raise ValueError("arch is not in the space: " + ", ".join(problems))

    # ---- flat encoding for search engines ------------------------------------------------------------
    def dimensions(self) -> list[tuple[str, list[Any]]]:
        """Named categorical dimensions; layers beyond a stage's depth are encoded but ignored."""
        dims: list[tuple[str, list[Any]]] = [("resolution", list(self.spec.resolution)),
                                             ("stem", list(self.spec.stem.channels))]
        for i, stage in enumerate(self.spec.stages):
            dims.append((f"s{i}.depth", list(range(stage.depth.min, stage.depth.max + 1))))
            dims.append((f"s{i}.channels", list(stage.channels)))
            fields = ("expand", "kernel") if isinstance(stage, ConvStageSpec) else ("mlp_ratio", "v_scale")
            for j in range(stage.depth.max):
                for name in fields:
                    dims.append((f"s{i}.l{j}.{name}", list(getattr(stage, name))))
        dims.append(("head", list(self.spec.head.channels)))
        return dims

    def encode(self, arch: ArchConfig) -> list[int]:
        values: dict[str, Any] = {"resolution": arch.resolution, "stem": arch.stem, "head": arch.head}
        for i, stage in enumerate(arch.stages):
            values[f"s{i}.depth"] = stage.depth
            values[f"s{i}.channels"] = stage.channels
            for j, layer in enumerate(stage.layers):
                for name, value in vars(layer).items():
                    values[f"s{i}.l{j}.{name}"] = value
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
                    layers.append(TransformerLayer(values[f"s{i}.l{j}.mlp_ratio"], values[f"s{i}.l{j}.v_scale"]))
            stages.append(StageArch(values[f"s{i}.channels"], tuple(layers)))
        return ArchConfig(values["resolution"], values["stem"], tuple(stages), values["head"])

    # ---- the network an arch describes ---------------------------------------------------------------
    def describe(self, arch: ArchConfig) -> dict[str, Any]:
        """A self-contained description of the network (what `static_model.build` takes)."""
        stages = []
        for stage, spec in zip(arch.stages, self.spec.stages, strict=True):
            entry: dict[str, Any] = {"type": spec.type, "stride": spec.stride, "channels": stage.channels,
                                     "layers": [dict(vars(layer)) for layer in stage.layers]}
            if isinstance(spec, ConvStageSpec):
                entry["se"] = spec.se
            else:
                entry["head_dim"] = spec.head_dim
                entry["downsample_expand"] = spec.downsample_expand
            stages.append(entry)
        return {
            "format_version": 1,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "resolution": arch.resolution,
            "stem": {"channels": arch.stem, "stride": self.spec.stem.stride, "kernel": self.spec.stem.kernel},
            "stages": stages,
            "head": {"channels": arch.head},
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
        for resolution in spec.resolution:
            side = self.deploy_resolution_for(ArchConfig(resolution, spec.stem.channels[0], (), spec.head.channels[0]))
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
                                found.add(Block("mbconv", hw, cin, cout, stage.stride, layer.kernel, layer.expand,
                                                stage.se))
                                if stage.depth.max > 1:
                                    found.add(Block("mbconv", out_hw, cout, cout, 1, layer.kernel, layer.expand,
                                                    stage.se))
                        else:
                            found.add(Block("transds", hw, cin, cout, stage.stride, 3, stage.downsample_expand))
                for cout in stage.channels if isinstance(stage, TransformerStageSpec) else ():
                    for v_scale in stage.v_scale:
                        found.add(Block("attn", out_hw, cout, cout, v_scale=v_scale, head_dim=stage.head_dim))
                    for ratio in stage.mlp_ratio:
                        found.add(Block("ffn", out_hw, cout, cout, mlp_ratio=ratio))
                inputs, hw = set(stage.channels), out_hw
            for cin in inputs:
                for head in spec.head.channels:
                    found.add(Block("head", hw, cin, head, num_classes=self.num_classes))
        return sorted(found)

    def params(self, arch: ArchConfig) -> int:
        return sum(block_cost(b)[0] for b in self.blocks(arch, arch.resolution))

    def flops(self, arch: ArchConfig, resolution: int | None = None) -> int:
        """Multiply-accumulates at `resolution` (default: the training resolution of `arch`)."""
        return sum(block_cost(b)[1] for b in self.blocks(arch, resolution or arch.resolution))


def network_blocks(network: dict[str, Any], resolution: int) -> list[Block]:
    """Decompose a described network into blocks at input side `resolution`."""
    stem = network["stem"]
    blocks = [Block("stem", resolution, network["in_channels"], stem["channels"], stem["stride"], stem["kernel"])]
    hw = _same_padding_out(resolution, stem["stride"])
    cin = stem["channels"]
    for stage in network["stages"]:
        cout = stage["channels"]
        if stage["type"] == "conv":
            for j, layer in enumerate(stage["layers"]):
                stride = stage["stride"] if j == 0 else 1
                blocks.append(Block("mbconv", hw, cin, cout, stride, layer["kernel"], layer["expand"], stage["se"]))
                hw, cin = _same_padding_out(hw, stride), cout
        else:
            blocks.append(Block("transds", hw, cin, cout, stage["stride"], 3, stage["downsample_expand"]))
            hw, cin = _same_padding_out(hw, stage["stride"]), cout
            for layer in stage["layers"]:
                blocks.append(Block("attn", hw, cout, cout, v_scale=layer["v_scale"], head_dim=stage["head_dim"]))
                blocks.append(Block("ffn", hw, cout, cout, mlp_ratio=layer["mlp_ratio"]))
    blocks.append(Block("head", hw, cin, network["head"]["channels"], num_classes=network["num_classes"]))
    return blocks


def _mbconv_cost(hw: int, cin: int, cout: int, stride: int, kernel: int, expand: int, se: bool) -> tuple[int, int]:
    hidden = cin * expand
    out = _same_padding_out(hw, stride)
    params = cin * hidden + 2 * hidden  # expand conv + BN
    macs = hw * hw * cin * hidden
    params += hidden * kernel * kernel + 2 * hidden  # depthwise + BN
    macs += out * out * hidden * kernel * kernel
    if se:
        mid = se_channels(hidden)
        params += hidden * mid + mid + mid * hidden + hidden
        macs += hidden * mid + mid * hidden
    params += hidden * cout + 2 * cout  # project + BN
    macs += out * out * hidden * cout
    return params, macs


def block_cost(block: Block) -> tuple[int, int]:
    """(parameters, multiply-accumulates) of one block, matching the torch modules of `static_model`."""
    b = block
    if b.kind == "stem":
        out = _same_padding_out(b.hw, b.stride)
        return b.cin * b.cout * b.kernel**2 + 2 * b.cout, out * out * b.cin * b.cout * b.kernel**2
    if b.kind == "mbconv":
        return _mbconv_cost(b.hw, b.cin, b.cout, b.stride, b.kernel, b.expand, b.se)
    if b.kind == "transds":
        return _mbconv_cost(b.hw, b.cin, b.cout, b.stride, b.kernel, b.expand, False)
    tokens = b.hw * b.hw
    if b.kind == "attn":
        heads = b.cin // b.head_dim
        qk, v = 2 * heads * b.head_dim, heads * b.v_scale * b.head_dim
        params = 2 * b.cin + b.cin * (qk + v) + (qk + v) + v * b.cin + b.cin
        macs = tokens * b.cin * (qk + v) + tokens * v * b.cin
        macs += heads * tokens * tokens * b.head_dim + heads * tokens * tokens * b.v_scale * b.head_dim
        return params, macs
    if b.kind == "ffn":
        hidden = b.cin * b.mlp_ratio
        return 2 * b.cin + 2 * b.cin * hidden + hidden + b.cin, 2 * tokens * b.cin * hidden
    if b.kind == "head":
        params = b.cin * b.cout + 2 * b.cout + b.cout * b.num_classes + b.num_classes
        return params, tokens * b.cin * b.cout + b.cout * b.num_classes
    raise ValueError(f"unknown block kind {b.kind!r}")
