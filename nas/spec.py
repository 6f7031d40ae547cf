"""The declarative search spec: a versioned YAML schema that validates itself and round-trips.

`load_spec(path)` reads YAML with PyYAML's safe loader, validates it with pydantic models that forbid unknown
keys, and raises one `SpecError` whose message holds one line per broken rule, each naming the file, the
field path and the rule (`space.yaml: space.stages[2].depth: max (2) must be >= min (4)`).

Input is bounded: a spec file is at most MAX_SPEC_BYTES of UTF-8 text with at most MAX_YAML_NODES values once
its YAML aliases are expanded; every number has an upper bound (the MAX_* constants below: depth <= 64,
resolution <= 4096, channels <= 16384, ratios <= 64, epochs <= 100000, candidates <= 1000000, workers <= 1024,
seeds in 0..2^32-1, ...); every float is finite; an error quotes at most about MAX_QUOTE characters of a value
and a spec reports at most MAX_ERROR_LINES errors.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from nas.errors import SpecError
from nas.ops import ATTENTION_KINDS, FFN_ACTIVATIONS, cost_order

SPEC_VERSION = 1
DATASETS = ("fashion-mnist", "digits", "folder", "arrays")
METRICS = ("accuracy", "latency", "params", "flops")

# Upper bounds: far beyond any search that fits a machine, low enough that nothing downstream overflows, hangs
# or allocates without end (a bad value is refused here, in one line, instead of failing hours later).
MAX_DEPTH = 64  # layers per stage
MAX_STAGES = 64  # stages per space
MAX_RESOLUTION = 4096  # input side in pixels (space.resolution, deploy.resolution)
MAX_CHANNELS = 16384  # stem, stage and head widths, and head_dim
MAX_RATIO = 64  # expand, mlp_ratio, v_scale, downsample_expand
MAX_HEAD_CHOICES = 16  # heads of a layer whose attention is chosen per head
MAX_EPOCHS = 100_000  # train.epochs, sampler probability every_epochs
MAX_STEPS = 1_000_000_000  # train.warmup_steps
MAX_CROP_PAD = 64  # train.augment.random_crop (pixels of padding)
MAX_BATCH_SIZE = 65_536  # data.batch_size
MAX_IMAGES = 2**31 - 1  # data.limit, search.val_images, search.calibration_images
MAX_CANDIDATES = 1_000_000  # search.candidates, search.population
MAX_FINETUNE_EPOCH_LIST = 64  # search.finetune.epochs as a list
MAX_WORKERS = 1024  # search.workers, train.threads
MAX_SUBNETS = 64  # subnets per training step (train.num_random, sampler step)
MAX_BUCKETS = 1024  # complexity-aware FLOPs buckets
MAX_SAMPLES = 100_000  # sampler pool_size, attempts, estimate_samples, bank_size, candidates
MAX_SEED = 2**32 - 1  # train.seed, data.seed, search.seed: 0..2^32-1 (what numpy and torch accept)
MAX_SPEC_BYTES = 1_000_000  # a spec file is a few kB
MAX_YAML_NODES = 100_000  # values in a spec once its aliases are expanded
MAX_YAML_DEPTH = 32  # nesting of a spec's YAML
MAX_QUOTE = 200  # characters of a user's value quoted in an error message
MAX_ERROR_LINES = 20  # error lines of one spec before "... and N more"


def _upto(high: int, low: int = 1) -> Any:
    """An int in low..high (a positive one says "greater than 0", as `PositiveInt` does)."""
    return Annotated[int, Field(gt=0, le=high) if low == 1 else Field(ge=low, le=high)]


PositiveInt = Annotated[int, Field(gt=0)]
Choices = Annotated[list[PositiveInt], Field(min_length=1)]
Seed = _upto(MAX_SEED, 0)
Finite = Annotated[float, Field(allow_inf_nan=False)]
ChannelChoices = Annotated[list[_upto(MAX_CHANNELS)], Field(min_length=1)]
RatioChoices = Annotated[list[_upto(MAX_RATIO)], Field(min_length=1)]
ResolutionChoices = Annotated[list[_upto(MAX_RESOLUTION)], Field(min_length=1)]


def quote(value: Any, limit: int = MAX_QUOTE) -> str:
    """`repr(value)` cut to about `limit` characters, so that a huge value never floods a message."""
    text = repr(value) if not isinstance(value, (list, tuple, dict)) else _bounded_repr(value, limit)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bounded_repr(value: Any, limit: int) -> str:
    """The repr of a container, built only as far as about `limit` characters (YAML aliases can share one
    container many times over, so a full repr may be enormous even for a small file)."""
    out: list[str] = []
    size = 0
    stack: list[Any] = [value]
    while stack and size <= limit:
        item = stack.pop()
        if isinstance(item, _Text):
            piece = item.text
        elif isinstance(item, (list, tuple, dict)):
            is_dict = isinstance(item, dict)
            children = list(item.items())[:limit] if is_dict else list(item[:limit])
            stack.append(_Text("}" if is_dict else "]"))
            for i, child in enumerate(reversed(children)):
                if i:
                    stack.append(_Text(", "))
                stack.append(child[1] if is_dict else child)
                if is_dict:
                    stack.append(_Text(f"{repr(child[0])[:limit]}: "))
            piece = "{" if is_dict else "["
        else:
            piece = repr(item)[: limit + 1]
        out.append(piece)
        size += len(piece)
    return "".join(out)


class _Text:
    """Literal text on `_bounded_repr`'s work stack."""

    def __init__(self, text: str):
        self.text = text


class _Strict(BaseModel):
    """Base of every spec section: unknown keys are errors, values are not coerced across types."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _unique(values: list[int]) -> list[int]:
    if len(set(values)) != len(values):
        raise ValueError(f"choices must be distinct, but got {quote(values)}")
    return sorted(values)


class DepthRange(_Strict):
    """An inclusive range of layer counts."""

    min: _upto(MAX_DEPTH)
    max: _upto(MAX_DEPTH)

    @model_validator(mode="after")
    def _ordered(self) -> DepthRange:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


def _depth_from_yaml(value: Any) -> Any:
    """Accept `depth: [1, 3]`, `depth: 2` or `depth: {min: 1, max: 3}`."""
    if isinstance(value, list):
        if len(value) != 2:
            raise ValueError(f"depth must be [min, max], but got {quote(value)}")
        return {"min": value[0], "max": value[1]}
    if isinstance(value, int) and not isinstance(value, bool):
        return {"min": value, "max": value}
    return value


class StemSpec(_Strict):
    channels: ChannelChoices
    stride: Literal[1, 2] = 2
    kernel: Literal[3, 5] = 3

    _sorted = field_validator("channels")(_unique)


class ConvStageSpec(_Strict):
    """An MBConv stage: elastic depth, width, expand ratio and kernel per layer.

    An expand ratio of 1 is a depthwise-separable block (no 1x1 expansion). `se`: squeeze-excite in every
    layer. `shortcut`: what a layer that changes the stride or the width adds to its output: `none` (nothing;
    the default) or `avgpool_conv` (ElasticViT: its input average-pooled by the stride, through a 1x1 conv when
    the widths differ). A layer that changes neither has an identity residual either way."""

    type: Literal["conv"]
    depth: DepthRange
    channels: ChannelChoices
    expand: RatioChoices
    kernel: Annotated[list[Literal[3, 5, 7]], Field(min_length=1)]
    stride: Literal[1, 2] = 1
    se: bool = False
    shortcut: Literal["none", "avgpool_conv"] = "none"

    _depth = field_validator("depth", mode="before")(_depth_from_yaml)
    _sorted = field_validator("channels", "expand", "kernel")(_unique)


class TransformerStageSpec(_Strict):
    """A transformer stage: a downsampling MBConv (3x3 depthwise, expand `downsample_expand`, squeeze-excite
    when `downsample_se`, `shortcut` as in a conv stage) then layers of pre-norm attention + MLP with a fixed
    head dim. Attention options (all on in ElasticViT, whose q/k/v projections also have no bias): `v_dwconv`,
    a 3x3 depthwise conv on V over the token grid; `rel_pos_bias`, a learned relative position bias per head;
    `proj_act`, hard-swish before the output projection; `qkv_bias` (default true), biases on q, k and v."""

    type: Literal["transformer"]
    depth: DepthRange
    channels: ChannelChoices
    head_dim: _upto(MAX_CHANNELS) = 16
    mlp_ratio: RatioChoices
    v_scale: RatioChoices
    stride: Literal[1, 2] = 2
    downsample_expand: _upto(MAX_RATIO) = 4
    downsample_se: bool = False
    shortcut: Literal["none", "avgpool_conv"] = "none"
    v_dwconv: bool = False
    rel_pos_bias: bool = False
    proj_act: bool = False
    qkv_bias: bool = True
    attention: Annotated[list[str], Field(min_length=1)] = ["softmax"]
    attention_per_head: bool = False
    ffn_act: Annotated[list[str], Field(min_length=1)] = ["hswish"]

    _depth = field_validator("depth", mode="before")(_depth_from_yaml)
    _sorted = field_validator("channels", "mlp_ratio", "v_scale")(_unique)

    @field_validator("attention")
    @classmethod
    def _known_attention(cls, value: list[str]) -> list[str]:
        return _known_names(value, ATTENTION_KINDS, "attention kind")

    @field_validator("ffn_act")
    @classmethod
    def _known_activation(cls, value: list[str]) -> list[str]:
        return _known_names(value, FFN_ACTIVATIONS, "activation")

    @model_validator(mode="after")
    def _heads_fit(self) -> TransformerStageSpec:
        bad = [c for c in self.channels if c % self.head_dim]
        if bad:
            raise ValueError(f"every channel choice must be a multiple of head_dim ({self.head_dim}), "
                             f"but got {quote(bad)}")
        if self.attention_per_head:
            heads = [c // self.head_dim for c in self.channels]
            if min(heads) < 2:
                raise ValueError(f"attention_per_head: a per-head choice needs at least 2 heads, but channels "
                                 f"{min(self.channels)} / head_dim {self.head_dim} gives {min(heads)}")
            if max(heads) > MAX_HEAD_CHOICES:
                raise ValueError(f"attention_per_head: at most {MAX_HEAD_CHOICES} heads can be chosen per head, but "
                                 f"channels {max(self.channels)} / head_dim {self.head_dim} gives {max(heads)}")
        return self

    def heads(self, channels: int) -> int:
        return channels // self.head_dim

    @model_serializer(mode="wrap")
    def _short(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The attention and activation choices only where they differ from the build before they existed, so a
        spec that does not use them serialises, and hashes (its trained supernet is found again), as before."""
        data = handler(self)
        for name, default in (("attention", ["softmax"]), ("attention_per_head", False), ("ffn_act", ["hswish"])):
            if data.get(name) == default:
                del data[name]
        return data


def _known_names(value: list[str], known: Sequence[str], what: str) -> list[str]:
    """`value` without repeats, cheapest first (`nas.ops.cost_order`); an unknown name lists the known ones."""
    unknown = [name for name in value if name not in known]
    if unknown:
        raise ValueError(f"unknown {what} {quote(unknown[0], 60)} (known: {', '.join(known)})")
    return cost_order(value)


StageSpec = Annotated[ConvStageSpec | TransformerStageSpec, Field(discriminator="type")]


def _unique_or_none(values: list[int] | None) -> list[int] | None:
    return None if values is None else _unique(values)


class HeadSpec(_Strict):
    """The classifier head: a 1x1 conv (+ BatchNorm, hard-swish) to a width from `channels`, or to `expand` x
    the last stage's width (ElasticViT: `expand: [6]`; give one of the two), global average pooling, then, when
    `final_channels` is given, a linear layer to one of those widths + hard-swish (ElasticViT: [1984]), then the
    linear classifier."""

    channels: ChannelChoices | None = None
    expand: RatioChoices | None = None
    final_channels: Annotated[list[_upto(MAX_CHANNELS)], Field(max_length=MAX_CHANNELS)] = []

    _sorted = field_validator("channels", "expand")(_unique_or_none)
    _sorted_final = field_validator("final_channels")(_unique)

    @model_validator(mode="after")
    def _one_width_rule(self) -> HeadSpec:
        if (self.channels is None) == (self.expand is None):
            raise ValueError("the head's width is `channels: [...]` or `expand: [...]` (x the last stage's width); "
                             "give exactly one")
        return self


class SpaceSpec(_Strict):
    resolution: ResolutionChoices
    stem: StemSpec
    stages: Annotated[list[StageSpec], Field(min_length=1, max_length=MAX_STAGES)]
    head: HeadSpec

    _sorted = field_validator("resolution")(_unique)


class DeploySpec(_Strict):
    """Where latency is predicted: the input side of the deployed network (the largest training resolution
    maps to it; smaller resolution choices scale in proportion)."""

    resolution: _upto(MAX_RESOLUTION) | None = None


class ArrayKeys(_Strict):
    """The names of the arrays in an `arrays` data set's `.npz`: train is required, val and test optional."""

    x_train: str
    y_train: str
    x_val: str | None = None
    y_val: str | None = None
    x_test: str | None = None
    y_test: str | None = None

    @model_validator(mode="after")
    def _pairs_and_distinct(self) -> ArrayKeys:
        for split in ("val", "test"):
            if (getattr(self, f"x_{split}") is None) != (getattr(self, f"y_{split}") is None):
                raise ValueError(f"x_{split} and y_{split} go together: name both or neither")
        names = [name for name in self.model_dump().values() if name is not None]
        if len(set(names)) != len(names):
            raise ValueError(f"each key must name a different array, but got {names}")
        return self


class DataSpec(_Strict):
    """The data set; `keys` renames the arrays of an `arrays` data set (default `x_train`, `y_train`, ...).
    `channels` and `classes` declare the images' channels and the number of classes: what prices an arch
    without loading the data (`nas arch`); checked against the data whenever it is loaded."""

    dataset: Literal["fashion-mnist", "digits", "folder", "arrays"]
    path: str | None = None
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    batch_size: _upto(MAX_BATCH_SIZE) = 128
    limit: _upto(MAX_IMAGES) | None = None
    seed: Seed = 0
    keys: ArrayKeys | None = None
    channels: _upto(MAX_CHANNELS) | None = None
    classes: Annotated[int, Field(ge=2, le=MAX_CHANNELS)] | None = None

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    @model_validator(mode="after")
    def _path_when_needed(self) -> DataSpec:
        if self.dataset in ("folder", "arrays") and not self.path:
            raise ValueError(f"dataset '{self.dataset}' needs a `path`")
        if self.keys is not None and self.dataset != "arrays":
            raise ValueError(f"`keys` only applies to dataset 'arrays', not '{self.dataset}'")
        return self


class OptimizerSpec(_Strict):
    name: Literal["adamw", "sgd"] = "adamw"
    lr: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 2e-3
    weight_decay: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.05

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


SAMPLER_NAMES = ("uniform", "sandwich", "complexity_aware")
UnitFloat = Annotated[float, Field(ge=0.0, le=1.0)]


def _is_default(model: BaseModel, skip: tuple[str, ...] = ()) -> bool:
    """True when every field of `model` outside `skip` holds its declared default."""
    return all(getattr(model, name) == field.default for name, field in type(model).model_fields.items()
               if name not in skip)


def _without_defaults(model: BaseModel, data: dict[str, Any], keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """`data` (the serialised `model`) without the fields left at their defaults: the canonical form, which
    also re-validates (options that only apply to some settings are not written back where they do not)."""
    fields = type(model).model_fields
    return {key: value for key, value in data.items()
            if key in keep or key not in fields or getattr(model, key) != fields[key].default}


class ProbabilitySchedule(_Strict):
    """The probability of sampling from the performance bank at an epoch:
    `min(max, start + step * (epoch // every_epochs))` (ElasticViT: 0.2, +0.15 every 100 epochs)."""

    start: UnitFloat = 0.2
    step: Annotated[float, Field(ge=0.0, le=1.0)] = 0.15
    every_epochs: _upto(MAX_EPOCHS) = 1
    max: UnitFloat = 1.0

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    @field_validator("max")
    @classmethod
    def _max_covers_start(cls, value: float, info: ValidationInfo) -> float:
        start = info.data.get("start")
        if start is not None and value < start:
            raise ValueError(f"max ({value}) must be >= start ({start})")
        return value

    def at(self, epoch: int) -> float:
        """The bank probability during (0-based) `epoch`."""
        return min(self.max, self.start + self.step * (epoch // self.every_epochs))


class PerformanceSpec(_Strict):
    """Performance-aware sampling (ElasticViT): a bank per FLOPs band of the `bank_size` best (arch, loss)
    pairs; with probability `probability.at(epoch)` a subnet comes from the bank (weights softmax(-loss /
    temperature)), otherwise `candidates` fresh draws from the band and `pick` keeps one: `width_depth`
    (ElasticViT's width-over-depth rule, see `nas.sampling.width_depth_ratio`) or `nearest` (closest to the
    band's best entry). Every `rescore_every` training steps (0: never) the current band's bank is re-scored on
    the step's batch with the current weights, so its losses stay comparable. `enabled: false` (written
    `performance: false`) turns performance-aware sampling off."""

    enabled: bool = True
    bank_size: _upto(MAX_SAMPLES) = 8
    candidates: _upto(MAX_SAMPLES) = 5
    temperature: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 1.0
    probability: ProbabilitySchedule = ProbabilitySchedule()
    rescore_every: _upto(MAX_STEPS, 0) = 20
    pick: Literal["width_depth", "nearest"] = "width_depth"

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    @model_validator(mode="after")
    def _off_means_off(self) -> PerformanceSpec:
        if not self.enabled and not _is_default(self, skip=("enabled",)):
            raise ValueError("performance-aware sampling is off (`enabled: false`), so its other options are unused")
        return self

    @model_serializer(mode="wrap")
    def _short(self, handler: SerializerFunctionWrapHandler) -> bool | dict[str, Any]:
        """Off serialises as `false`, as it is written; on, without `enabled`."""
        return False if not self.enabled else {k: v for k, v in handler(self).items() if k != "enabled"}


def _needs_complexity_aware(value: Any, info: ValidationInfo) -> Any:
    name = info.data.get("name")
    if name is not None and name != "complexity_aware":
        raise ValueError(f"only the complexity_aware sampler uses `{info.field_name}`, but the sampler is '{name}'")
    return value


DEFAULT_BANDS = 8  # complexity_aware: automatic FLOPs bands (ElasticViT's code has 8 targets)


class BandSpec(_Strict):
    """`train.sampler.bands`: ElasticViT's FLOPs bands, narrow ranges [t, t + width] (in millions of
    `SearchSpace.flops` multiply-accumulates) around fixed targets, with gaps between them (its code: targets
    100, 200, ..., 1200 MFLOPs, width 20).

    Explicit: `targets_mflops` (increasing, each more than `width_mflops` above the previous, so bands never
    touch) and `width_mflops`. Automatic (the default): `count` targets (default 8) evenly spaced so that the
    first band starts at the smallest arch's FLOPs and the last ends at the largest's, each `width_mflops` wide
    (default (max - min) / (2 * count): a gap about as wide as a band between neighbours). `bands: N` is
    short for `{count: N}`.
    """

    count: Annotated[int, Field(ge=2, le=MAX_BUCKETS)] | None = None
    targets_mflops: Annotated[list[Annotated[float, Field(ge=0.0, allow_inf_nan=False)]],
                              Field(min_length=1, max_length=MAX_BUCKETS)] | None = None
    width_mflops: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] | None = None

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    @model_validator(mode="after")
    def _targets_apart(self) -> BandSpec:
        targets, width = self.targets_mflops, self.width_mflops
        if targets is None:
            return self
        if self.count is not None:
            raise ValueError("give either `count` (automatic targets) or `targets_mflops`, not both")
        if width is None:
            raise ValueError("`targets_mflops` needs `width_mflops` (each band is [target, target + width])")
        for low, high in zip(targets, targets[1:], strict=False):
            if high <= low + width:
                raise ValueError(f"bands must not touch: target {high} must be more than width_mflops ({width}) "
                                 f"above the previous target {low}")
        return self

    @property
    def num_bands(self) -> int:
        return len(self.targets_mflops) if self.targets_mflops is not None else self.count or DEFAULT_BANDS


def _needs_complexity_aware(value: Any, info: ValidationInfo) -> Any:
    name = info.data.get("name")
    if name is not None and name != "complexity_aware":
        raise ValueError(f"only the complexity_aware sampler uses `{info.field_name}`, but the sampler is '{name}'")
    return value


class SamplerSpec(_Strict):
    """`train.sampler`: a name (`uniform`, `sandwich`, `complexity_aware`) or a mapping with `name` and options.

    `step` lists the subnets of each training step: `max` (largest), `min` (smallest; for complexity_aware,
    with `min_arch: band` (the default) the smallest arch found in the step's band, `global` the space's) and
    `random` (uniform for uniform/sandwich, from the current FLOPs band for complexity_aware). Defaults:
    uniform `[random]`, sandwich `[max, random x num_random, min]`, complexity_aware `[random]`.

    complexity_aware (ElasticViT) trains each step's subnets inside one FLOPs band: `bands` (the default:
    8 automatic bands with gaps, see `BandSpec`), or contiguous buckets from `edges_mflops` (B+1 increasing
    boundaries, in MFLOPs) or `buckets` (B equal-mass quantiles of the FLOPs of `estimate_samples` seeded
    samples); give at most one of the three. Between steps the band moves by at most `max_bucket_step`: to
    the least-visited band within reach (`walk: balanced`, even coverage in short runs) or by a uniform random
    delta (`walk: random`, ElasticViT's). A `random` slot takes the first of up to `attempts` uniform samples
    that falls in the band (else walks the closest of them into it one choice at a time); in a band uniform
    samples rarely reach, a member of the band's pool (`pool_size` archs found in it) moved a few random
    choices within the band (see `nas.sampling.ComplexityAwareSampler`). `performance` (on by default for
    complexity_aware; `false` turns it off) is ElasticViT's performance-aware sampling (see `PerformanceSpec`).

        sampler: {name: complexity_aware, bands: {targets_mflops: [1, 2, 3, 4], width_mflops: 0.3},
                  step: [random, random, random, min],
                  performance: {bank_size: 8, candidates: 5, rescore_every: 20, pick: width_depth,
                                probability: {start: 0.2, step: 0.15, every_epochs: 100, max: 1.0}}}
    """

    name: Literal["uniform", "sandwich", "complexity_aware"]
    step: Annotated[list[Literal["max", "random", "min"]], Field(min_length=1, max_length=MAX_SUBNETS)] | None = None
    buckets: _upto(MAX_BUCKETS) | None = None
    edges_mflops: Annotated[list[Annotated[float, Field(ge=0.0, allow_inf_nan=False)]],
                            Field(min_length=2, max_length=MAX_BUCKETS + 1)] | None = None
    bands: BandSpec | None = None
    min_arch: Literal["band", "global"] = "band"
    max_bucket_step: _upto(MAX_BUCKETS, 0) = 1
    walk: Literal["balanced", "random"] = "balanced"
    pool_size: _upto(MAX_SAMPLES) = 32
    attempts: _upto(MAX_SAMPLES, 0) = 32
    estimate_samples: _upto(MAX_SAMPLES, 10) = 2000
    performance: PerformanceSpec | None = None

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    _bucketed = field_validator("buckets", "edges_mflops", "bands", "min_arch", "max_bucket_step", "walk",
                                "pool_size", "attempts", "estimate_samples", "performance")(_needs_complexity_aware)

    @field_validator("step")
    @classmethod
    def _extremes_once(cls, value: list[str] | None) -> list[str] | None:
        for slot in ("max", "min"):
            if value is not None and value.count(slot) > 1:
                raise ValueError(f"`{slot}` may appear at most once per step, but got {quote(value)}")
        return value

    @field_validator("edges_mflops")
    @classmethod
    def _edges_increase(cls, value: list[float] | None, info: ValidationInfo) -> list[float] | None:
        if value is None:
            return value
        if info.data.get("buckets") is not None:
            raise ValueError("give either `buckets` (quantile edges) or `edges_mflops`, not both")
        bad = [f"{a} >= {b}" for a, b in zip(value, value[1:], strict=False) if a >= b]
        if bad:
            raise ValueError(f"edges must increase strictly, but got {bad[0]} in {quote(value)}")
        return value

    @field_validator("bands", mode="before")
    @classmethod
    def _bands_shorthand(cls, value: Any) -> Any:
        return {"count": value} if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("bands")
    @classmethod
    def _one_kind_of_band(cls, value: BandSpec | None, info: ValidationInfo) -> BandSpec | None:
        if value is None:
            return value
        if info.data.get("buckets") is not None or info.data.get("edges_mflops") is not None:
            given = "buckets" if info.data.get("buckets") is not None else "edges_mflops"
            raise ValueError(f"give one of `bands`, `buckets` (quantile edges) or `edges_mflops`, but got `bands` "
                             f"and `{given}`")
        automatic = value.targets_mflops is None and value.width_mflops is None
        return None if automatic and value.num_bands == DEFAULT_BANDS else value  # the default, written once

    @field_validator("performance", mode="before")
    @classmethod
    def _performance_shorthand(cls, value: Any) -> Any:
        """`performance: true` (the default) and `false` (off)."""
        return {"enabled": value} if isinstance(value, bool) else value

    @field_validator("performance")
    @classmethod
    def _default_performance_once(cls, value: PerformanceSpec | None) -> PerformanceSpec | None:
        return None if value == PerformanceSpec() else value  # `performance: {}` / `true` is the default

    @model_serializer(mode="wrap")
    def _short(self, handler: SerializerFunctionWrapHandler) -> str | dict[str, Any]:
        """A sampler with nothing but its name serialises as the name, as it is usually written."""
        return self.name if _is_default(self, skip=("name",)) else _without_defaults(self, handler(self), ("name",))

    def __str__(self) -> str:
        return self.name

    @property
    def bucketed(self) -> bool:
        return self.name == "complexity_aware"

    @property
    def band_kind(self) -> str:
        """How complexity_aware cuts the FLOPs range: `bands`, `edges` (edges_mflops) or `quantiles`."""
        if self.edges_mflops is not None:
            return "edges"
        return "quantiles" if self.buckets is not None else "bands"

    @property
    def num_buckets(self) -> int:
        if self.edges_mflops is not None:
            return len(self.edges_mflops) - 1
        if self.buckets is not None:
            return self.buckets
        return self.bands.num_bands if self.bands is not None else DEFAULT_BANDS

    @property
    def band_options(self) -> BandSpec:
        """The bands (for `band_kind == "bands"`), defaults resolved."""
        return self.bands if self.bands is not None else BandSpec(count=DEFAULT_BANDS)

    @property
    def performance_options(self) -> PerformanceSpec | None:
        """Performance-aware sampling as configured: on by default for complexity_aware, None when off."""
        if self.name != "complexity_aware":
            return None
        options = self.performance if self.performance is not None else PerformanceSpec()
        return options if options.enabled else None

    def slots(self, num_random: int) -> tuple[str, ...]:
        """The resolved step: what each subnet of a training step is."""
        if self.step is not None:
            return tuple(self.step)
        if self.name == "sandwich":
            return ("max", *("random",) * num_random, "min")
        return ("random",)


CLIP_DEFAULTS = {"norm": 5.0, "value": 1.0, "adaptive": 0.02}  # train.clip.max per kind


class ClipSpec(_Strict):
    """`train.clip`: gradient clipping before each optimiser step (`clip: KIND` is short for `{kind: KIND}`).

    `norm`: the L2 norm of all gradients together at most `max` (default 5.0); `value`: every gradient element
    in [-max, max] (default 1.0, AlphaNet's, which its alpha-divergence needs); `adaptive`: unit-wise adaptive
    gradient clipping (AGC, Brock et al. 2021; ElasticViT's) with clip factor `max` (default 0.02): each output
    unit's gradient (a weight's slice along its first dimension; a 1-d parameter is one unit) is scaled down to
    norm max x its weight's norm (floored at 1e-3) when larger; `none`. Without `train.clip`: `adaptive` for
    the complexity_aware sampler (ElasticViT's recipe), `norm` 5.0 otherwise.
    """

    kind: Literal["norm", "value", "adaptive", "none"]
    max: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] | None = None

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    @field_validator("max")
    @classmethod
    def _max_needs_clipping(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("kind") == "none":
            raise ValueError("`max` is not used with `kind: none`")
        return value

    @property
    def limit(self) -> float | None:
        """`max`, or the kind's default (None for `none`)."""
        return self.max if self.max is not None else CLIP_DEFAULTS.get(self.kind)


class DistillSpec(_Strict):
    """`train.distill`: `inplace` (KL to the largest subnet of the step, when it has one), `none`, or a mapping.

    teacher: `largest` (the step's `max` subnet), `random_mean` (the mean softmax probabilities of the step's
    `random` subnets, which train on labels; ElasticViT's [random x3, min]), `external` (a trained model at
    `checkpoint`: an exported folder from `nas export` or a TorchScript file), `none`. Subnets that are not
    a teacher learn from the teacher's soft labels with `loss`: `kl` or `alpha` (AlphaNet's adaptive
    alpha-divergence, clipped between `alpha_min` and `alpha_max`).
    """

    teacher: Literal["largest", "random_mean", "external", "none"] = "largest"
    loss: Literal["kl", "alpha"] = "kl"
    alpha_min: Finite = -1.0
    alpha_max: Finite = 1.0
    checkpoint: str | None = None

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    @field_validator("alpha_min", "alpha_max")
    @classmethod
    def _alpha_only(cls, value: float, info: ValidationInfo) -> float:
        if info.data.get("loss") != "alpha":
            raise ValueError(f"`{info.field_name}` is only used with `loss: alpha`")
        if info.field_name == "alpha_max" and "alpha_min" in info.data and value < info.data["alpha_min"]:
            raise ValueError(f"alpha_max ({value}) must be >= alpha_min ({info.data['alpha_min']})")
        return value

    @field_validator("loss")
    @classmethod
    def _loss_needs_teacher(cls, value: str, info: ValidationInfo) -> str:
        if value == "alpha" and info.data.get("teacher") == "none":
            raise ValueError("`loss: alpha` needs a teacher (teacher is 'none')")
        return value

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_for_external(cls, value: str | None, info: ValidationInfo) -> str | None:
        teacher = info.data.get("teacher")
        if value is not None and teacher not in (None, "external"):
            raise ValueError(f"a checkpoint is only used with `teacher: external`, but the teacher is '{teacher}'")
        return value

    @model_validator(mode="after")
    def _external_needs_checkpoint(self) -> DistillSpec:
        if self.teacher == "external" and not self.checkpoint:
            raise ValueError("`teacher: external` needs `checkpoint` (an exported model folder or TorchScript file)")
        return self

    @model_serializer(mode="wrap")
    def _short(self, handler: SerializerFunctionWrapHandler) -> str | dict[str, Any]:
        """The two classic settings serialise as they are usually written: `inplace` and `none`."""
        if _is_default(self):
            return "inplace"
        if self.teacher == "none" and _is_default(self, skip=("teacher",)):
            return "none"
        return _without_defaults(self, handler(self))

    def __str__(self) -> str:
        if _is_default(self):
            return "inplace"
        return self.teacher if self.loss == "kl" else f"{self.teacher} ({self.loss})"

    @property
    def enabled(self) -> bool:
        return self.teacher != "none"

    def roles(self, slots: Sequence[str]) -> tuple[str, ...]:
        """What each subnet of a step learns from: `label` (labels only), `teacher` (labels, and its logits
        make the soft labels) or `student` (the soft labels).

        largest: `max` teaches the rest (no `max`: every subnet learns from labels); random_mean: the `random`
        subnets teach `min`, `max` learns from labels; external: every subnet is a student; none: labels.
        """
        if self.teacher == "external":
            return tuple("student" for _ in slots)
        if self.teacher == "largest" and "max" in slots:
            return tuple("teacher" if s == "max" else "student" for s in slots)
        if self.teacher == "random_mean" and "random" in slots:
            return tuple("teacher" if s == "random" else "student" if s == "min" else "label" for s in slots)
        return tuple("label" for _ in slots)


class AugmentSpec(_Strict):
    """`train.augment`: light augmentation of each training batch, on its (normalised) tensors, seeded.

    `random_crop: PAD` pads each image by PAD pixels (repeating its edge pixels) and crops it back at a random
    offset, i.e. shifts it by up to PAD pixels (0: off); `hflip: true` mirrors a random half of the images
    left-right (off by default: digits and text must not be flipped)."""

    random_crop: _upto(MAX_CROP_PAD, 0) = 0
    hflip: bool = False

    @property
    def enabled(self) -> bool:
        return self.random_crop > 0 or self.hflip


ONECYCLE_WARMUP_FRACTION = 0.3  # train.schedule onecycle: the warm-up share of the steps when none is given


class TrainSpec(_Strict):
    """`train`: epochs, optimiser and schedule, the arch sampler, distillation and diagnostics.

    schedule: `cosine` (linear warm-up over `warmup_steps`, then cosine decay to 0), `constant` (the same
    warm-up, then lr) or `onecycle` (linear warm-up from lr/25 to lr, then cosine annealing to lr/25e4; its
    warm-up is `warmup_fraction` of the steps, 0.3 unless `warmup_steps` or `warmup_fraction` is given).
    `warmup_fraction`, when given, sizes the warm-up of any schedule as a share of all steps instead of
    `warmup_steps`. `label_smoothing` applies to the cross-entropy with labels (not to distillation);
    `augment` (see AugmentSpec) is off by default.
    """

    epochs: _upto(MAX_EPOCHS) = 3
    sampler: SamplerSpec = SamplerSpec(name="sandwich")
    num_random: _upto(MAX_SUBNETS, 0) = 2
    distill: DistillSpec = DistillSpec()
    optimizer: OptimizerSpec = OptimizerSpec()
    schedule: Literal["cosine", "constant", "onecycle"] = "cosine"
    warmup_steps: _upto(MAX_STEPS, 0) = 50
    warmup_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    label_smoothing: Annotated[float, Field(ge=0.0, le=0.5)] = 0.0
    augment: AugmentSpec | None = None
    seed: Seed = 0
    threads: _upto(MAX_WORKERS) | None = None
    grad_cosine: bool = False
    clip: ClipSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _onecycle_warmup(cls, data: Any) -> Any:
        """One-cycle warms up over a share of the run (ONECYCLE_WARMUP_FRACTION) unless told otherwise."""
        if (isinstance(data, dict) and data.get("schedule") == "onecycle" and "warmup_steps" not in data
                and "warmup_fraction" not in data):
            return {**data, "warmup_fraction": ONECYCLE_WARMUP_FRACTION}
        return data

    @field_validator("augment")
    @classmethod
    def _augment_off_is_none(cls, value: AugmentSpec | None) -> AugmentSpec | None:
        """An augmentation that changes nothing is no augmentation (one canonical form, one training hash)."""
        return value if value is not None and value.enabled else None

    @field_validator("sampler", mode="before")
    @classmethod
    def _sampler_shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value not in SAMPLER_NAMES:
                close = difflib.get_close_matches(value, SAMPLER_NAMES, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ValueError(f"unknown sampler {quote(value)}{hint} (known: {', '.join(SAMPLER_NAMES)})")
            return {"name": value}
        return value

    @field_validator("distill", mode="before")
    @classmethod
    def _distill_shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value not in ("inplace", "none"):
                raise ValueError(f"distill is `inplace`, `none` or a mapping with `teacher`, but got {quote(value)}")
            return {} if value == "inplace" else {"teacher": "none"}
        return value

    @field_validator("distill")
    @classmethod
    def _teacher_in_step(cls, value: DistillSpec, info: ValidationInfo) -> DistillSpec:
        sampler: SamplerSpec | None = info.data.get("sampler")
        if sampler is None or "num_random" not in info.data or "teacher" not in value.model_fields_set:
            # The `inplace` shorthand keeps its old meaning: distil when the step has a largest subnet.
            return value
        slots = list(sampler.slots(info.data["num_random"]))
        if value.teacher == "largest" and "max" not in slots:
            raise ValueError(f"teacher 'largest' needs `max` in train.sampler.step, but the step is {slots}")
        if value.teacher == "random_mean" and "random" not in slots:
            raise ValueError(f"teacher 'random_mean' needs `random` in train.sampler.step, but the step is {slots}")
        if value.enabled and "student" not in value.roles(slots):
            raise ValueError(f"teacher '{value.teacher}' has no student in the step {slots} "
                             "(add `min` or `random` subnets)")
        return value

    @property
    def slots(self) -> tuple[str, ...]:
        """The resolved subnets of each training step (see `SamplerSpec.slots`)."""
        return self.sampler.slots(self.num_random)

    @field_validator("clip", mode="before")
    @classmethod
    def _clip_shorthand(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value

    @property
    def gradient_clip(self) -> ClipSpec:
        """`clip`, or its default: adaptive (AGC 0.02) for complexity_aware (ElasticViT), else norm 5.0."""
        if self.clip is not None:
            return self.clip
        return ClipSpec(kind="adaptive" if self.sampler.name == "complexity_aware" else "norm")


class FinetuneSpec(_Strict):
    """`search.finetune`: after the fronts are written, fine-tune `top` members of the Pareto fronts (all
    targets' fronts together) for `epochs` each (or a list: one entry per pick, fewest MACs first; see
    `epochs_for`), before they are exported. `pick`: `spread` (default) takes
    them evenly along the front by MACs, smallest and largest included, so the whole front a user deploys from
    is fine-tuned; `accuracy` takes the most accurate by validation accuracy. Each subnet trains alone with
    AdamW (`lr`, default train.optimizer.lr; weight decay train.optimizer.weight_decay), a one-cycle schedule,
    `label_smoothing` and train.augment; `distill` is the weight (0..1) of a KL term to the teacher, the rest
    going to the labels, and `feature_weight` the weight of an MSE term between the token features (the last
    stage's output) of student and teacher (MPCViT's distillation). `teacher`: `largest` (the supernet's
    largest subnet), `softmax` (the student's own arch with softmax in every head: MPCViT's teacher for an
    MPC-friendly student) or `external` (`checkpoint`: an exported model folder or TorchScript file)."""

    top: _upto(MAX_CANDIDATES) = 3
    epochs: int | list[int] = 2
    pick: Literal["spread", "accuracy"] = "spread"

    @field_validator("epochs", mode="before")
    @classmethod
    def _epochs(cls, value: Any) -> Any:
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) and not 1 <= len(value) <= MAX_FINETUNE_EPOCH_LIST:
            raise ValueError(f"a list of epochs needs 1 to {MAX_FINETUNE_EPOCH_LIST} entries, got {len(value)}")
        for item in items:
            if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= MAX_EPOCHS:
                raise ValueError(f"epochs must be an integer in 1..{MAX_EPOCHS} or a list of them, got {item!r}")
        return value

    def epochs_for(self, rank: int, count: int) -> int:
        """Epochs of the `rank`-th (0 = fewest MACs) of `count` picked members: `epochs` itself, or from a list
        (the smallest pick first; small subnets train fast and gain most from more epochs) the entry at the
        same relative position, so the smallest gets the first and the largest the last."""
        if isinstance(self.epochs, int):
            return self.epochs
        last = len(self.epochs) - 1
        return self.epochs[round(rank * last / (count - 1)) if count > 1 else 0]
    lr: Annotated[float, Field(gt=0.0, le=10.0, allow_inf_nan=False)] | None = None
    label_smoothing: Annotated[float, Field(ge=0.0, le=0.5)] = 0.1
    distill: UnitFloat = 0.0
    teacher: Literal["largest", "softmax", "external"] = "largest"
    feature_weight: Annotated[float, Field(ge=0.0, le=1000.0, allow_inf_nan=False)] = 0.0
    checkpoint: str | None = None

    @model_validator(mode="after")
    def _teacher_fields(self) -> FinetuneSpec:
        if (self.teacher == "external") != (self.checkpoint is not None):
            raise ValueError("`teacher: external` needs `checkpoint` (an exported model folder or TorchScript file), "
                             "and `checkpoint` is only used with it")
        return self


class MPCViTSpec(_Strict):
    """`search.mpcvit`: MPCViT's differentiable head search, run after the engine's search. Every head of the
    `arch` (`largest`, or a preset's name) mixes the attention kinds `between` (the costlier first, e.g.
    [softmax, scaling]) with a learnable weight: out = w first + (1 - w) second, w = sigmoid(logit). The supernet's
    weights stay frozen; the logits train for `steps` batches (Adam, `lr`) on KL to the all-softmax subnet plus
    `feature_weight` x MSE on its token features, plus `penalty` x the expected cost: each head's weight times
    what its costlier kind adds to the latency on the first target, over the arch's latency gap between all
    costlier and all cheaper. Each of `budgets` (fractions of that gap) is then met by giving the costlier kind
    to the heads of the largest weights while the latency stays within the budget; each becomes a candidate of
    the job, evaluated and stored like any other. `ffn_act` sets every FFN's activation of the searched archs
    (e.g. relu: under two-party computation GELU costs ~20x ReLU's rounds); default: the arch's own. Needs
    `attention_per_head` and both kinds (and `ffn_act`) in every transformer stage."""

    between: Annotated[list[str], Field(min_length=2, max_length=2)] = ["softmax", "scaling"]
    arch: str = "largest"
    ffn_act: str | None = None  # every FFN of the searched archs takes this activation (default: the arch's own)
    steps: _upto(MAX_STEPS) = 200
    lr: Annotated[float, Field(gt=0.0, le=10.0, allow_inf_nan=False)] = 0.05
    penalty: Annotated[float, Field(ge=0.0, le=1000.0, allow_inf_nan=False)] = 1.0
    feature_weight: Annotated[float, Field(ge=0.0, le=1000.0, allow_inf_nan=False)] = 1.0
    budgets: Annotated[list[Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]],
                       Field(min_length=1, max_length=64)] = [0.1, 0.25, 0.5, 0.75]

    @field_validator("between")
    @classmethod
    def _two_known_kinds(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in ATTENTION_KINDS]
        if unknown:
            raise ValueError(f"unknown attention kind {quote(unknown[0], 60)} (known: {', '.join(ATTENTION_KINDS)})")
        if value[0] == value[1]:
            raise ValueError(f"`between` names two different attention kinds, got {value[0]!r} twice")
        return value


class SearchSpec(_Strict):
    engine: Literal["nsga2", "random", "tpe"] = "nsga2"
    candidates: _upto(MAX_CANDIDATES) = 200
    population: _upto(MAX_CANDIDATES, 2) = 40
    seed: Seed = 0
    workers: _upto(MAX_WORKERS) = 2
    val_images: _upto(MAX_IMAGES) | None = None
    calibration_images: _upto(MAX_IMAGES) = 2000  # training images that re-estimate a subnet's BatchNorm
    finetune: FinetuneSpec | None = None
    mpcvit: MPCViTSpec | None = None


class Objective(_Strict):
    maximize: Literal["accuracy", "latency", "params", "flops"] | None = None
    minimize: Literal["accuracy", "latency", "params", "flops"] | None = None

    @model_validator(mode="after")
    def _one_direction(self) -> Objective:
        if (self.maximize is None) == (self.minimize is None):
            raise ValueError("an objective is exactly one of {maximize: METRIC} or {minimize: METRIC}")
        return self

    @property
    def metric(self) -> str:
        return self.maximize or self.minimize  # type: ignore[return-value]

    @property
    def direction(self) -> str:
        return "maximize" if self.maximize else "minimize"


class Bound(_Strict):
    min: Finite | None = None
    max: Finite | None = None

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    @model_validator(mode="after")
    def _some_bound(self) -> Bound:
        if self.min is None and self.max is None:
            raise ValueError("a bound needs `min`, `max` or both")
        if self.min is not None and self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


class Constraint(_Strict):
    """One bound on one metric; `latency_ms` applies on every target of the search."""

    latency_ms: Bound | None = None
    params: Bound | None = None
    flops: Bound | None = None
    accuracy: Bound | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Constraint:
        set_fields = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(set_fields) != 1:
            raise ValueError("a constraint names exactly one of latency_ms, params, flops, accuracy")
        return self

    @property
    def metric(self) -> str:
        return next(name for name in type(self).model_fields if getattr(self, name) is not None)

    @property
    def bound(self) -> Bound:
        return getattr(self, self.metric)


class ConvLayerArch(_Strict):
    expand: _upto(MAX_RATIO)
    kernel: _upto(MAX_RATIO)


class TransformerLayerArch(_Strict):
    mlp_ratio: _upto(MAX_RATIO)
    v_scale: _upto(MAX_RATIO)
    attention: str | Annotated[list[str], Field(min_length=1, max_length=MAX_HEAD_CHOICES)] = "softmax"
    act: str = "hswish"


def _layer_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "conv" if "expand" in value or "kernel" in value else "transformer"
    return "conv" if isinstance(value, ConvLayerArch) else "transformer"


LayerArch = Annotated[Annotated[ConvLayerArch, Tag("conv")] | Annotated[TransformerLayerArch, Tag("transformer")],
                      Discriminator(_layer_kind)]


class StageArchSpec(_Strict):
    channels: _upto(MAX_CHANNELS)
    layers: Annotated[list[LayerArch], Field(min_length=1, max_length=MAX_DEPTH)]


class ArchSpec(_Strict):
    """One arch in the format of `ArchConfig.to_dict()` (a preset; `nas arch --arch`)."""

    resolution: _upto(MAX_RESOLUTION)
    stem: _upto(MAX_CHANNELS)
    stages: Annotated[list[StageArchSpec], Field(min_length=1, max_length=MAX_STAGES)]
    head: _upto(MAX_CHANNELS)
    final: _upto(MAX_CHANNELS, 0) = 0

    def arch_dict(self) -> dict[str, Any]:
        """The `ArchConfig.to_dict()` form (`final` only when there is a final layer)."""
        data = self.model_dump(mode="json")
        if not data["final"]:
            del data["final"]
        return data


PRESET_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"


class Spec(_Strict):
    """A whole search: the space, the data, how to train, how to search, and what to optimise.

    `presets` names archs of the space (name -> arch in `ArchConfig.to_dict()` form), each checked to be a
    member of the space: published models to price (`nas arch SPEC --preset NAME`) or to compare with."""

    version: Literal[1]
    name: str | None = None
    space: SpaceSpec
    deploy: DeploySpec = DeploySpec()
    data: DataSpec
    train: TrainSpec = TrainSpec()
    search: SearchSpec = SearchSpec()
    objectives: Annotated[list[Objective], Field(min_length=1)] = [
        Objective(maximize="accuracy"),
        Objective(minimize="latency"),
    ]
    constraints: list[Constraint] = []
    presets: dict[Annotated[str, Field(pattern=f"^{PRESET_NAME}$")], ArchSpec] | None = None

    @field_validator("presets")
    @classmethod
    def _presets_in_space(cls, value: dict[str, ArchSpec] | None, info: ValidationInfo) -> dict[str, ArchSpec] | None:
        space = info.data.get("space")
        if not value or space is None:
            return value or None
        from nas.space import ArchConfig, SearchSpace  # nas.space imports this module

        members = SearchSpace(space, 1, 2)
        problems = []
        for name, arch in value.items():
            try:
                members.validate_arch(ArchConfig.from_dict(arch.arch_dict()))
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @model_validator(mode="after")
    def _population_fits(self) -> Spec:
        if self.search.engine == "nsga2" and self.search.population > self.search.candidates:
            raise ValueError(
                f"search.population ({self.search.population}) must be <= search.candidates "
                f"({self.search.candidates})"
            )
        return self

    @model_validator(mode="after")
    def _mpcvit_fits(self) -> Spec:
        mpcvit = self.search.mpcvit
        if mpcvit is None:
            return self
        stages = [(i, s) for i, s in enumerate(self.space.stages) if isinstance(s, TransformerStageSpec)]
        if not stages:
            raise ValueError("search.mpcvit: the space has no transformer stage whose heads could be searched")
        for i, stage in stages:
            if not stage.attention_per_head:
                raise ValueError(f"search.mpcvit: space.stages[{i}] chooses attention per layer; the head search "
                                 "needs `attention_per_head: true`")
            missing = [kind for kind in mpcvit.between if kind not in stage.attention]
            if missing:
                raise ValueError(f"search.mpcvit.between: {missing[0]!r} is not among space.stages[{i}].attention "
                                 f"({', '.join(stage.attention)})")
            if mpcvit.ffn_act is not None and mpcvit.ffn_act not in stage.ffn_act:
                raise ValueError(f"search.mpcvit.ffn_act: {mpcvit.ffn_act!r} is not among space.stages[{i}].ffn_act "
                                 f"({', '.join(stage.ffn_act)})")
        if mpcvit.arch != "largest" and mpcvit.arch not in (self.presets or {}):
            known = ", ".join(["largest", *sorted(self.presets or {})])
            raise ValueError(f"search.mpcvit.arch: {mpcvit.arch!r} is neither `largest` nor a preset (known: {known})")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def spec_hash(self) -> str:
        """A stable hash of the normalised spec."""
        return _hash(self.to_dict())

    def training_hash(self) -> str:
        """What decides the trained supernet's weights: space, data and training (not search or targets)."""
        return _hash({"space": self.model_dump(mode="json")["space"], "data": self.data.model_dump(mode="json"),
                      "train": self.train.model_dump(mode="json")})


def _hash(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("conv", "transformer"):
            continue  # the discriminator tag pydantic inserts for tagged unions
        else:
            name = str(part) if len(str(part)) <= 60 else quote(str(part), 60)
            out += f".{name}" if out else name
    return out or "(top level)"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the key at `loc` (for 'did you mean')."""
    model: Any = Spec
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if part == "conv":
            model = ConvStageSpec
            continue
        if part == "transformer":
            model = TransformerStageSpec
            continue
        field = model.model_fields.get(part) if isinstance(model, type) else None
        if field is None:
            return None
        model = _unwrap(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _unwrap(arg)
        if isinstance(found, type) and issubclass(found, BaseModel):
            return found
    if getattr(annotation, "__metadata__", None):
        return _unwrap(annotation.__origin__)
    return annotation


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        owner = _model_at(loc)
        known = sorted(owner.model_fields) if owner else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else (f"; known keys: {', '.join(known)}" if known else "")
        return f"unknown key {quote(str(loc[-1]), 60)}{hint}"
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    if kind not in ("value_error", "assertion_error") and "input" in error:
        message += f" (got {quote(error['input'])})"
    return message


def parse_spec(raw: Any, source: str) -> Spec:
    """Validate an already-parsed YAML document; `source` names it in error messages."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: (top level): a spec must be a mapping, but got {type(raw).__name__}")
    version = raw.get("version")
    if version != SPEC_VERSION:
        raise SpecError(f"{source}: version: this nas reads spec version {SPEC_VERSION}, but got {quote(version)}")
    try:
        return Spec.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        lines = [f"{source}: {_format_loc(tuple(e['loc']))}: {_describe(e)}" for e in errors[:MAX_ERROR_LINES]]
        if len(errors) > MAX_ERROR_LINES:
            lines.append(f"{source}: ... and {len(errors) - MAX_ERROR_LINES} more errors")
        raise SpecError("\n".join(lines)) from None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_graph(root: yaml.Node, path: Path) -> None:
    """Refuse a composed YAML document that, once its aliases are expanded, holds more than MAX_YAML_NODES
    values, nests deeper than MAX_YAML_DEPTH or contains itself. Counted on the shared graph (each node once),
    so a 600-byte "billion laughs" document is refused in microseconds instead of being expanded."""
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values once expanded, nesting depth)
    active: set[int] = set()  # the nodes on the current path from the root
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            parts = [sizes[id(child)] for child in _children(node)]
            size = min(1 + sum(n for n, _ in parts), MAX_YAML_NODES + 1)
            sizes[key] = (size, 1 + max((d for _, d in parts), default=0))
            active.discard(key)
            continue
        if key in sizes:
            continue
        if key in active:
            raise SpecError(f"{path}: line {node.start_mark.line + 1}: a YAML alias refers to a value that "
                            "contains it (a recursive document)")
        active.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node))
    size, depth = sizes[id(root)]
    if size > MAX_YAML_NODES:
        raise SpecError(f"{path}: the document expands to more than {MAX_YAML_NODES:,} values (YAML aliases "
                        "multiply them); a spec holds a few hundred")
    if depth > MAX_YAML_DEPTH:
        raise SpecError(f"{path}: the document nests {depth} levels deep; a spec nests at most {MAX_YAML_DEPTH}")


def _read_yaml(path: Path) -> Any:
    """The YAML document of a spec file: at most MAX_SPEC_BYTES of UTF-8 text, safe-loaded, bounded in size."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise SpecError(f"{path}: file not found") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: larger than {MAX_SPEC_BYTES:,} bytes; a spec is a small YAML text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); a spec is "
                        "a YAML text file") from None
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # refuses control characters already
        node = loader.get_single_node()
        if node is None:
            return None
        _check_graph(node, path)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        problem = problem if len(problem) <= 2 * MAX_QUOTE else problem[: 2 * MAX_QUOTE - 3] + "..."
        raise SpecError(f"{path}: {where}malformed YAML: {problem}") from None
    except RecursionError:
        raise SpecError(f"{path}: the document nests too deep; a spec nests at most {MAX_YAML_DEPTH} levels") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_spec(path: str | Path) -> Spec:
    """Read and validate a YAML spec file (UTF-8 text, at most MAX_SPEC_BYTES, at most MAX_YAML_NODES values
    once YAML aliases are expanded)."""
    path = Path(path)
    raw = _read_yaml(path)
    spec = parse_spec(raw, str(path))
    if spec.name is None:
        spec = spec.model_copy(update={"name": path.stem})
    return spec
