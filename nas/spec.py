"""The declarative search spec: a versioned YAML schema that validates itself and round-trips.

`load_spec(path)` reads YAML with `yaml.safe_load`, validates it with pydantic models that forbid unknown
keys, and raises one `SpecError` whose message holds one line per broken rule, each naming the file, the
field path and the rule (`space.yaml: space.stages[2].depth: max (2) must be >= min (4)`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nas.errors import SpecError

SPEC_VERSION = 1
DATASETS = ("fashion-mnist", "digits", "folder", "arrays")
METRICS = ("accuracy", "latency", "params", "flops")

PositiveInt = Annotated[int, Field(gt=0)]
Choices = Annotated[list[PositiveInt], Field(min_length=1)]


class _Strict(BaseModel):
    """Base of every spec section: unknown keys are errors, values are not coerced across types."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _unique(values: list[int]) -> list[int]:
    if len(set(values)) != len(values):
        raise ValueError(f"choices must be distinct, but got {values}")
    return sorted(values)


class DepthRange(_Strict):
    """An inclusive range of layer counts."""

    min: PositiveInt
    max: PositiveInt

    @model_validator(mode="after")
    def _ordered(self) -> DepthRange:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


def _depth_from_yaml(value: Any) -> Any:
    """Accept `depth: [1, 3]`, `depth: 2` or `depth: {min: 1, max: 3}`."""
    if isinstance(value, list):
        if len(value) != 2:
            raise ValueError(f"depth must be [min, max], but got {value}")
        return {"min": value[0], "max": value[1]}
    if isinstance(value, int) and not isinstance(value, bool):
        return {"min": value, "max": value}
    return value


class StemSpec(_Strict):
    channels: Choices
    stride: Literal[1, 2] = 2
    kernel: Literal[3, 5] = 3

    _sorted = field_validator("channels")(_unique)


class ConvStageSpec(_Strict):
    """An MBConv stage: elastic depth, width, expand ratio and kernel per layer."""

    type: Literal["conv"]
    depth: DepthRange
    channels: Choices
    expand: Choices
    kernel: Annotated[list[Literal[3, 5, 7]], Field(min_length=1)]
    stride: Literal[1, 2] = 1
    se: bool = False

    _depth = field_validator("depth", mode="before")(_depth_from_yaml)
    _sorted = field_validator("channels", "expand", "kernel")(_unique)


class TransformerStageSpec(_Strict):
    """A transformer stage: a downsampling MBConv then layers of attention + MLP with a fixed head dim."""

    type: Literal["transformer"]
    depth: DepthRange
    channels: Choices
    head_dim: PositiveInt = 16
    mlp_ratio: Choices
    v_scale: Choices
    stride: Literal[1, 2] = 2
    downsample_expand: PositiveInt = 4

    _depth = field_validator("depth", mode="before")(_depth_from_yaml)
    _sorted = field_validator("channels", "mlp_ratio", "v_scale")(_unique)

    @model_validator(mode="after")
    def _heads_fit(self) -> TransformerStageSpec:
        bad = [c for c in self.channels if c % self.head_dim]
        if bad:
            raise ValueError(f"every channel choice must be a multiple of head_dim ({self.head_dim}), but got {bad}")
        return self


StageSpec = Annotated[ConvStageSpec | TransformerStageSpec, Field(discriminator="type")]


class HeadSpec(_Strict):
    channels: Choices

    _sorted = field_validator("channels")(_unique)


class SpaceSpec(_Strict):
    resolution: Choices
    stem: StemSpec
    stages: Annotated[list[StageSpec], Field(min_length=1)]
    head: HeadSpec

    _sorted = field_validator("resolution")(_unique)


class DeploySpec(_Strict):
    """Where latency is predicted: the input side of the deployed network (the largest training resolution
    maps to it; smaller resolution choices scale in proportion)."""

    resolution: PositiveInt | None = None


class DataSpec(_Strict):
    dataset: Literal["fashion-mnist", "digits", "folder", "arrays"]
    path: str | None = None
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    batch_size: PositiveInt = 128
    limit: PositiveInt | None = None
    seed: int = 0

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    @model_validator(mode="after")
    def _path_when_needed(self) -> DataSpec:
        if self.dataset in ("folder", "arrays") and not self.path:
            raise ValueError(f"dataset '{self.dataset}' needs a `path`")
        return self


class OptimizerSpec(_Strict):
    name: Literal["adamw", "sgd"] = "adamw"
    lr: Annotated[float, Field(gt=0.0)] = 2e-3
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.05

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


class TrainSpec(_Strict):
    epochs: PositiveInt = 3
    sampler: Literal["uniform", "sandwich"] = "sandwich"
    num_random: Annotated[int, Field(ge=0)] = 2
    distill: Literal["inplace", "none"] = "inplace"
    optimizer: OptimizerSpec = OptimizerSpec()
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: Annotated[int, Field(ge=0)] = 50
    seed: int = 0
    threads: PositiveInt | None = None


class SearchSpec(_Strict):
    engine: Literal["nsga2", "random", "tpe"] = "nsga2"
    candidates: PositiveInt = 200
    population: Annotated[int, Field(ge=2)] = 40
    seed: int = 0
    workers: PositiveInt = 2
    val_images: PositiveInt | None = None


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
    min: float | None = None
    max: float | None = None

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


class Spec(_Strict):
    """A whole search: the space, the data, how to train, how to search, and what to optimise."""

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

    @model_validator(mode="after")
    def _population_fits(self) -> Spec:
        if self.search.engine == "nsga2" and self.search.population > self.search.candidates:
            raise ValueError(
                f"search.population ({self.search.population}) must be <= search.candidates "
                f"({self.search.candidates})"
            )
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
            out += f".{part}" if out else str(part)
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
        return f"unknown key '{loc[-1]}'{hint}"
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    if kind not in ("value_error", "assertion_error") and "input" in error:
        message += f" (got {error['input']!r})"
    return message


def parse_spec(raw: Any, source: str) -> Spec:
    """Validate an already-parsed YAML document; `source` names it in error messages."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: (top level): a spec must be a mapping, but got {type(raw).__name__}")
    version = raw.get("version")
    if version != SPEC_VERSION:
        raise SpecError(f"{source}: version: this nas reads spec version {SPEC_VERSION}, but got {version!r}")
    try:
        return Spec.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{source}: {_format_loc(tuple(e['loc']))}: {_describe(e)}" for e in exc.errors()]
        raise SpecError("\n".join(lines)) from None


def load_spec(path: str | Path) -> Spec:
    """Read and validate a YAML spec file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"{path}: file not found") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{path}: {where}malformed YAML: {problem}") from None
    spec = parse_spec(raw, str(path))
    if spec.name is None:
        spec = spec.model_copy(update={"name": path.stem})
    return spec
