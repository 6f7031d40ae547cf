"""Arch samplers for supernet training: which subnets each training step updates.

Lifecycle (the trainer's call order):

1. `__init__(space, train_spec)` once (may raise `NASError`, e.g. FLOPs bands the space leaves empty);
2. `load_state_dict(state)` when a run resumes from a checkpoint;
3. per epoch `on_epoch_start(epoch)` (0-based; a no-op unless the sampler follows a schedule);
4. per step `step(rng)` returns the step's archs (the teacher first when `teacher_first`); then, on the steps
   whose global index is a multiple of `rescore_every` (when it is > 0), `rescore(evaluate_loss)`, where
   `evaluate_loss(arch)` is the arch's cross-entropy on the step's batch with the current weights (no
   gradient, no trace left in the model); then the step trains, and `observe(arch, loss)` is called once per
   arch with its minibatch cross-entropy (`rescore` and `observe` are no-ops unless the sampler learns);
5. `state_dict()` at every checkpoint: what, with the trainer's RNG states, makes a resumed run continue
   exactly.

All randomness comes from the `random.Random` the trainer passes to `step`; a sampler's own seeded RNGs (for
example the sample that places the FLOPs bands and fills their pools) are fixed by the spec, so what they
build is rebuilt, not saved.

Samplers built from the spec's `train.sampler` are `SlotSampler`s: each step fills the slots of
`train.sampler.step` (`max`, `min`, `random`); subclasses decide how a `random` slot is drawn and what `min`
is. `uniform` and `sandwich` draw uniformly from the space; `complexity_aware` is ElasticViT's
complexity-aware sampling (FLOPs bands, a walk over them that moves at most `max_bucket_step` bands between
steps, the smallest arch of the step's band as `min`) and, by default, its performance-aware sampling (a
bank per band of the best (arch, loss) pairs, re-scored on the current batch every `rescore_every` steps,
and the width-over-depth pick among fresh candidates).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import random
import re
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Any

from nas.errors import NASError, SpecError
from nas.space import ArchConfig, SearchSpace
from nas.spec import PerformanceSpec, SamplerSpec, Spec, TrainSpec

_SAMPLERS: dict[str, type[ArchSampler]] = {}

CostFn = Callable[[ArchConfig], float]
LossFn = Callable[[ArchConfig], float]

WALK_MOVES = 64  # single-choice moves a draw may take to walk a sample into its band
FILL_STARTS = 8  # a band no sampled arch falls in: its closest sampled archs walked into it
FILL_TRIES = 4  # per missing pool member, random walks inside the band from the members found so far
MIN_STARTS = 3  # per band, the lowest-FLOPs pool members the smallest-arch descent starts from
COST_CACHE = 50_000  # FLOPs values remembered per sampler (cleared when full)
REJECTION_HITS = 4  # a band is drawn by rejection when `attempts` uniform samples are expected to hit it this often
WANDER_MOVES = 8  # random moves inside its band after an arch is walked into it, or a sparse band's draw


def register_sampler(name: str) -> Callable[[type[ArchSampler]], type[ArchSampler]]:
    """Class decorator: make a sampler available under `name` (`train.sampler.name`)."""

    def wrap(cls: type[ArchSampler]) -> type[ArchSampler]:
        _SAMPLERS[name] = cls
        return cls

    return wrap


def sampler_names() -> list[str]:
    return sorted(_SAMPLERS)


def make_sampler(space: SearchSpace, train: TrainSpec) -> ArchSampler:
    """The sampler `train.sampler` names, built for `space`; an unknown name lists the known ones."""
    name = train.sampler if isinstance(train.sampler, str) else train.sampler.name
    try:
        cls = _SAMPLERS[name]
    except KeyError:
        raise NASError(f"train.sampler: unknown sampler '{name}'; known: {', '.join(sampler_names())}") from None
    return cls(space, train)


class ArchSampler(ABC):
    """Chooses the subnets of each training step (see the module docstring for the call order)."""

    teacher_first: bool = False
    #: What each arch of a step is (`max`, `random`, `min`), aligned with `step()`'s list; empty when unknown.
    slots: tuple[str, ...] = ()
    #: The trainer calls `rescore` on the steps whose global index is a multiple of this (0: never).
    rescore_every: int = 0

    def __init__(self, space: SearchSpace, train: TrainSpec):
        self.space = space
        self.train = train

    @abstractmethod
    def step(self, rng: random.Random) -> list[ArchConfig]:
        """The archs to train in this step (the teacher first when `teacher_first`)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first step of every (0-based) epoch, also when a run resumes."""

    def rescore(self, evaluate_loss: LossFn) -> None:
        """Called after `step` every `rescore_every` steps: `evaluate_loss(arch)` is the arch's cross-entropy on
        the step's batch with the current weights."""

    def observe(self, arch: ArchConfig, loss: float) -> None:
        """Called with each arch's minibatch cross-entropy after the step."""

    def state_dict(self) -> dict[str, Any]:
        """What `load_state_dict` needs to resume exactly: plain data only (dicts, lists, strings, numbers, None,
        tensors), since checkpoints are loaded with `weights_only=True`; the trainer refuses anything else."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved."""


class SlotSampler(ArchSampler):
    """Fills the slots of `train.sampler.step`: `max` is the largest arch, `min` what `smallest` says (the
    space's smallest by default), and `random` whatever `pick` draws. `begin_step` runs once per step before
    the slots are filled."""

    def __init__(self, space: SearchSpace, train: TrainSpec):
        super().__init__(space, train)
        self.slots = train.slots
        self.teacher_first = self.slots[0] == "max"

    def begin_step(self, rng: random.Random) -> None:
        """Per-step state change before the slots are filled (no-op by default)."""

    @abstractmethod
    def pick(self, rng: random.Random) -> ArchConfig:
        """The arch of one `random` slot."""

    def smallest(self) -> ArchConfig:
        """The arch of the `min` slot."""
        return self.space.smallest()

    def step(self, rng: random.Random) -> list[ArchConfig]:
        self.begin_step(rng)
        archs = []
        for slot in self.slots:
            if slot == "max":
                archs.append(self.space.largest())
            elif slot == "min":
                archs.append(self.smallest())
            else:
                archs.append(self.pick(rng))
        return archs


@register_sampler("uniform")
class UniformSampler(SlotSampler):
    """Uniformly random subnets (one per step unless `step` says otherwise)."""

    def pick(self, rng: random.Random) -> ArchConfig:
        return self.space.sample(rng)


@register_sampler("sandwich")
class SandwichSampler(UniformSampler):
    """The largest, `num_random` random and the smallest subnet per step; the largest teaches the others."""


# ---- moves in the space: walking an arch into a FLOPs band -----------------------------------------------
Move = tuple[int, int]  # (index of a dimension of `SearchSpace.dimensions()`, its new choice index)
_LAYER_DIM = re.compile(r"^s(\d+)\.l(\d+)\.")
_DEPTH_DIM = re.compile(r"^s(\d+)\.depth$")


class _Dimensions:
    """A space's encoding dimensions (`SearchSpace.dimensions()`, read once), which stage and layer each
    per-layer dimension belongs to, and the encodings of recently seen archs."""

    def __init__(self, space: SearchSpace):  # holds no reference to `space`: it keys a weak dictionary
        self.dims = space.dimensions()
        self.sizes = [len(choices) for _, choices in self.dims]
        layers = [_LAYER_DIM.match(name) for name, _ in self.dims]
        depths = [_DEPTH_DIM.match(name) for name, _ in self.dims]
        self.layer = [(int(m[1]), int(m[2])) if m else None for m in layers]
        self.depth = [int(m[1]) if m else None for m in depths]
        self.encodings: dict[ArchConfig, list[int]] = {}

    @classmethod
    def of(cls, space: SearchSpace) -> _Dimensions:
        found = _DIMENSIONS.get(space)
        if found is None:
            found = _DIMENSIONS[space] = cls(space)
        return found

    def encode(self, space: SearchSpace, arch: ArchConfig) -> list[int]:
        vector = self.encodings.get(arch)
        if vector is None:
            if len(self.encodings) >= COST_CACHE:
                self.encodings.clear()
            vector = self.encodings[arch] = space.encode(arch)
        return list(vector)

    def decode(self, space: SearchSpace, vector: Sequence[int]) -> ArchConfig:
        """The arch of `vector`: any vector of choice indices is an arch of the space (what search engines rely
        on too)."""
        return space.from_choices({name: choices[i] for (name, choices), i in zip(self.dims, vector, strict=True)})


_DIMENSIONS: weakref.WeakKeyDictionary[SearchSpace, _Dimensions] = weakref.WeakKeyDictionary()


def moves(space: SearchSpace, arch: ArchConfig, grow: bool) -> list[Move]:
    """The single-choice moves from `arch` in one direction: one dimension of the space's encoding (resolution,
    stem, a stage's depth or width, one existing layer's choice, head, ...) moved to its next larger (`grow`) or
    smaller choice. Choices are sorted, so each move changes the FLOPs in that direction (or not at all)."""
    dims = _Dimensions.of(space)
    vector = dims.encode(space, arch)
    step = 1 if grow else -1
    out = []
    for k, (size, layer) in enumerate(zip(dims.sizes, dims.layer, strict=True)):
        if layer is not None and layer[1] >= arch.stages[layer[0]].depth:
            continue  # a layer beyond its stage's depth: encoded, but not part of the arch
        if 0 <= vector[k] + step < size:
            out.append((k, vector[k] + step))
    return out


def apply_move(space: SearchSpace, arch: ArchConfig, move: Move, rng: random.Random | None = None) -> ArchConfig:
    """`arch` after `move` (see `moves`). A stage made one layer deeper gets a new layer of random choices (with
    `rng`; without, its smallest choices)."""
    dims = _Dimensions.of(space)
    vector = dims.encode(space, arch)
    k, index = move
    stage = dims.depth[k]
    if stage is not None and index > vector[k]:
        added = arch.stages[stage].depth  # the new layer's index
        for j, layer in enumerate(dims.layer):
            if layer == (stage, added):
                vector[j] = rng.randrange(dims.sizes[j]) if rng is not None else 0
    vector[k] = index
    return dims.decode(space, vector)


def neighbours(space: SearchSpace, arch: ArchConfig, grow: bool) -> list[ArchConfig]:
    """Every arch one move from `arch` in one direction (`moves`, `apply_move`; new layers their smallest)."""
    return [apply_move(space, arch, move) for move in moves(space, arch, grow)]


def walk_into(space: SearchSpace, cost: CostFn, arch: ArchConfig, inside: Callable[[float], bool], low: float,
              rng: random.Random, limit: int = WALK_MOVES) -> ArchConfig | None:
    """Walk `arch` into a FLOPs band one choice at a time: while below the band (cost < `low`) take a random
    growing move that does not jump past the band, while above it a random shrinking move that does not jump
    below it. None when every move from some point jumps over the band, or after `limit` moves."""
    current = cost(arch)
    for _ in range(limit + 1):
        if inside(current):
            return arch
        grow = current < low
        options = moves(space, arch, grow)
        rng.shuffle(options)
        for move in options:
            option = apply_move(space, arch, move, rng)
            value = cost(option)
            if (value > current and (value < low or inside(value))) if grow else (low <= value < current):
                arch, current = option, value
                break
        else:
            return None
    return None


def wander(space: SearchSpace, cost: CostFn, arch: ArchConfig, inside: Callable[[float], bool],
           rng: random.Random, count: int) -> ArchConfig:
    """`count` random single-choice moves from `arch` (growing or shrinking with equal chance), each kept only
    when the result stays in the band (`inside`): a short random walk inside the band, which spreads the archs
    a walk or a pool member starts from over the band."""
    for _ in range(count):
        options = moves(space, arch, rng.random() < 0.5)
        if options:
            moved = apply_move(space, arch, rng.choice(options), rng)
            if inside(cost(moved)):
                arch = moved
    return arch


def width_depth_ratio(space: SearchSpace, arch: ArchConfig) -> float:
    """Width over depth: the mean over stages of width / the stage's largest width, divided by the mean over
    stages of depth / the stage's largest depth (both in (0, 1]; stem and head are not counted)."""
    stages = list(zip(arch.stages, space.spec.stages, strict=True))
    if not stages:
        return 1.0
    width = sum(s.channels / max(spec.channels) for s, spec in stages) / len(stages)
    depth = sum(s.depth / spec.depth.max for s, spec in stages) / len(stages)
    return width / depth


def width_depth_pick(ratios: Sequence[float], reference: float) -> int:
    """ElasticViT's width-over-depth preference, as implemented here: the index of the candidate whose ratio
    is the smallest one not below `reference` (the ratio of the best arch of the first ready bank); when every
    candidate is below it, the one with the largest ratio. Ties go to the earliest candidate."""
    above = [i for i, r in enumerate(ratios) if r >= reference]
    if above:
        return min(above, key=lambda i: (ratios[i] - reference, i))
    return max(range(len(ratios)), key=lambda i: (ratios[i], -i))


class _CachedCost:
    """A FLOPs function that remembers its last COST_CACHE answers (draws and walks revisit archs)."""

    def __init__(self, cost: CostFn):
        self.cost = cost
        self.values: dict[ArchConfig, float] = {}

    def __call__(self, arch: ArchConfig) -> float:
        value = self.values.get(arch)
        if value is None:
            if len(self.values) >= COST_CACHE:
                self.values.clear()
            value = self.values[arch] = float(self.cost(arch))
        return value


# ---- FLOPs bands -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BucketPlan:
    """The FLOPs bands of a space. Band i holds costs in [bounds[i][0], bounds[i][1]]; contiguous buckets
    (`kind` `quantiles` or `edges`) share their boundaries, which belong to the upper bucket (the last one is
    closed); ElasticViT's `bands` have gaps between them. `pools[i]` holds distinct archs found in band i (a
    seeded sample's members, topped up by walking samples into sparse bands), `counts[i]` how many of the
    seeded sample fell in it, and `mins[i]` the smallest arch found in it (the `min` slot of
    `min_arch: band`)."""

    kind: str
    bounds: tuple[tuple[float, float], ...]
    pools: tuple[tuple[ArchConfig, ...], ...] = ()
    counts: tuple[int, ...] = ()
    mins: tuple[ArchConfig, ...] = ()

    @property
    def num_buckets(self) -> int:
        return len(self.bounds)

    @cached_property
    def _lows(self) -> list[float]:
        return [low for low, _ in self.bounds]

    @property
    def edges(self) -> tuple[float, ...]:
        """Contiguous buckets' B + 1 boundaries (for bands: every band's low and high)."""
        if self.kind == "bands":
            return tuple(value for bound in self.bounds for value in bound)
        return (*(low for low, _ in self.bounds), self.bounds[-1][1])

    def bucket_of(self, cost: float) -> int | None:
        """The band holding `cost`, or None (outside every band: beyond the range, or in a gap)."""
        index = bisect.bisect_right(self._lows, cost) - 1
        return index if index >= 0 and cost <= self.bounds[index][1] else None

    def contains(self, index: int, cost: float) -> bool:
        return self.bucket_of(cost) == index


def _quantile_edges(costs: Sequence[float], buckets: int, low: float, high: float) -> list[float]:
    """`buckets` + 1 edges from `low` to `high` that split `costs` into groups of equal size."""
    ordered = sorted(costs)
    inner = [ordered[min(len(ordered) - 1, (len(ordered) * i) // buckets)] for i in range(1, buckets)]
    return [low, *inner, high]


def _bounds(sampler: SamplerSpec, low: float, high: float, costs: Sequence[float], where: str
            ) -> tuple[str, list[tuple[float, float]]]:
    """(field, band bounds in cost units) for the sampler's kind of band; the space spans [low, high]."""
    kind = sampler.band_kind
    if kind == "edges":
        edges = [edge * 1e6 for edge in sampler.edges_mflops or ()]
        return "edges_mflops", list(zip(edges, edges[1:], strict=False))
    if kind == "quantiles":
        edges = _quantile_edges(costs, sampler.num_buckets, low, high)
        return "buckets", list(zip(edges, edges[1:], strict=False))
    bands = sampler.band_options
    if bands.targets_mflops is not None:
        width = (bands.width_mflops or 0.0) * 1e6
        return "bands", [(t * 1e6, t * 1e6 + width) for t in bands.targets_mflops]
    count = bands.num_bands
    if high <= low:
        raise SpecError(f"{where}.bands: every arch of the space costs {low / 1e6:.4g} MFLOPs: no room for {count} "
                        f"bands; use `buckets` or `edges_mflops`")
    width = bands.width_mflops * 1e6 if bands.width_mflops is not None else (high - low) / (2 * count)
    spacing = (high - low - width) / (count - 1)
    if spacing <= width:
        field = "bands.width_mflops" if bands.width_mflops is not None else "bands.count"
        raise SpecError(f"{where}.{field}: {count} bands {width / 1e6:.4g} MFLOPs wide leave no gap between them "
                        f"in the space's [{low / 1e6:.4g}, {high / 1e6:.4g}] MFLOPs; the width must be below "
                        f"{(high - low) / count / 1e6:.4g}")
    return "bands", [(low + i * spacing, low + i * spacing + width) for i in range(count)]


def _band_minimum(space: SearchSpace, cost: CostFn, plan: BucketPlan, index: int,
                  pool: Sequence[ArchConfig]) -> ArchConfig:
    """The smallest arch found in band `index`: from each of the band's MIN_STARTS lowest-FLOPs pool members,
    a descent that takes, in the order of `moves`, the first shrinking move that stays in the band, until no
    move does (a local minimum, in practice within a few percent of the band's width above its lower
    bound). Deterministic: no randomness, ties to the smallest canonical JSON."""
    best, best_cost = None, math.inf
    for start in sorted(pool, key=lambda a: (cost(a), a.canonical_json()))[:MIN_STARTS]:
        arch, current, improved = start, cost(start), True
        while improved:
            improved = False
            for moved in neighbours(space, arch, grow=False):
                value = cost(moved)
                if value < current and plan.contains(index, value):
                    arch, current, improved = moved, value, True
                    break
        if current < best_cost or (current == best_cost and best is not None
                                   and arch.canonical_json() < best.canonical_json()):
            best, best_cost = arch, current
    assert best is not None
    return best


def plan_buckets(space: SearchSpace, sampler: SamplerSpec, seed: int, cost: CostFn | None = None,
                 where: str = "train.sampler") -> BucketPlan:
    """FLOPs bands, their pools and smallest archs for `space`, from a sample of `sampler.estimate_samples`
    archs drawn with `random.Random(seed)` (plus the smallest and largest arch); raises a one-line `SpecError`
    naming the field when a band holds no arch or automatic bands cannot have gaps.

    Costs are `cost` (default `space.flops`: multiply-accumulates at the training resolution); `*_mflops`
    options are in millions of them. Quantile edges (`buckets`) run from the smallest arch's cost to the
    largest's. A band no sampled arch falls in gets the FILL_STARTS sampled archs closest to it walked into it
    (`walk_into`); a band with fewer than `pool_size` distinct members gets its pool topped up by random walks
    inside it from its members (`wander`), so sparse bands (near the largest arch) are found and filled.
    """
    cost = cost if isinstance(cost, _CachedCost) else _CachedCost(cost or space.flops)
    rng = random.Random(seed)
    sample = [space.sample(rng) for _ in range(sampler.estimate_samples)]
    sample += [space.smallest(), space.largest()]
    costs = [cost(arch) for arch in sample]
    field, bounds = _bounds(sampler, costs[-2], costs[-1], costs[:-2], where)
    plan = BucketPlan(sampler.band_kind, tuple(bounds))
    members: list[dict[str, ArchConfig]] = [{} for _ in range(plan.num_buckets)]
    counts = [0] * plan.num_buckets
    for arch, value in zip(sample, costs, strict=True):
        index = plan.bucket_of(value)
        if index is None:
            continue
        counts[index] += 1
        if len(members[index]) < sampler.pool_size:
            members[index].setdefault(arch.arch_hash(), arch)
    fill = random.Random(seed + 1)
    for index, found in enumerate(members):
        low, high = bounds[index]
        inside = partial(plan.contains, index)
        if not found:  # walk the sampled archs closest to the band into it
            by_gap = sorted(range(len(sample)), key=lambda i: (max(low - costs[i], costs[i] - high, 0.0), i))
            for i in by_gap[:FILL_STARTS]:
                walked = walk_into(space, cost, sample[i], inside, low, fill)
                if walked is not None:
                    found.setdefault(walked.arch_hash(), walked)
        for _ in range(FILL_TRIES * (sampler.pool_size - len(found)) if found else 0):
            if len(found) >= sampler.pool_size:
                break
            spread = wander(space, cost, fill.choice(list(found.values())), inside, fill, WANDER_MOVES)
            found.setdefault(spread.arch_hash(), spread)
    empty = [i for i, found in enumerate(members) if not found]
    if empty:
        low, high = bounds[empty[0]]
        span = f"[{low / 1e6:.6g}, {high / 1e6:.6g}] MFLOPs"
        if field == "buckets":
            rule = (f"{plan.num_buckets} quantile buckets leave bucket {empty[0]} {span} empty (the space has "
                    f"too few distinct FLOPs values); use fewer buckets")
        else:
            what, move = ("bucket", "edges") if field == "edges_mflops" else ("band", "targets")
            rule = (f"no arch of the space was found in {what} {empty[0]} {span} (the space spans "
                    f"[{min(costs) / 1e6:.4g}, {max(costs) / 1e6:.4g}] MFLOPs); move the {move}")
        raise SpecError(f"{where}.{field}: {rule}")
    pools = tuple(tuple(found.values()) for found in members)
    mins = tuple(_band_minimum(space, cost, plan, i, pool) for i, pool in enumerate(pools))
    return dataclasses.replace(plan, pools=pools, counts=tuple(counts), mins=mins)


def check_train(spec: Spec, space: SearchSpace, source: str) -> None:
    """Checks of `train` that need the space or the file system (for `nas validate`); one-line `SpecError`s
    prefixed with `source` (the spec file). The trainer repeats them on the real space when it starts."""
    try:
        if spec.train.sampler.bucketed:
            plan_buckets(space, spec.train.sampler, spec.train.seed)
        checkpoint = spec.train.distill.checkpoint
        if checkpoint is not None and not Path(checkpoint).exists():
            raise SpecError(f"train.distill.checkpoint: teacher checkpoint {checkpoint} does not exist")
    except NASError as exc:
        raise SpecError(f"{source}: {exc}") from None


# ---- complexity- and performance-aware sampling ----------------------------------------------------------
class PerformanceBank:
    """Per band, the `capacity` best (arch, loss) pairs seen; a new pair replaces the worst when better.

    Seeing an arch already in the bank updates its loss (losses fall as training goes on, so the latest
    measurement is the relevant one); `rescore` re-measures a whole band's bank at once.
    """

    def __init__(self, buckets: int, capacity: int):
        self.capacity = capacity
        self.entries: list[list[tuple[ArchConfig, float]]] = [[] for _ in range(buckets)]

    def add(self, bucket: int, arch: ArchConfig, loss: float) -> None:
        if not math.isfinite(loss):
            return
        entries = self.entries[bucket]
        for i, (known, _) in enumerate(entries):
            if known == arch:
                entries[i] = (arch, loss)
                return
        if len(entries) < self.capacity:
            entries.append((arch, loss))
            return
        worst = max(range(len(entries)), key=lambda i: entries[i][1])
        if loss < entries[worst][1]:
            entries[worst] = (arch, loss)

    def rescore(self, bucket: int, evaluate_loss: LossFn) -> None:
        """Replace every loss of the band's bank by `evaluate_loss(arch)` (one batch, one set of weights, so
        the losses are comparable); an arch whose new loss is not finite leaves the bank."""
        scored = [(arch, float(evaluate_loss(arch))) for arch, _ in self.entries[bucket]]
        self.entries[bucket] = [(arch, loss) for arch, loss in scored if math.isfinite(loss)]

    def ready(self, bucket: int) -> bool:
        """Whether the band's bank is more than half full, ElasticViT's condition for consulting it."""
        return len(self.entries[bucket]) > self.capacity // 2

    def best(self, bucket: int) -> ArchConfig | None:
        entries = self.entries[bucket]
        return min(entries, key=lambda entry: entry[1])[0] if entries else None

    def draw(self, bucket: int, rng: random.Random, temperature: float) -> ArchConfig | None:
        """An entry drawn with probability softmax(-loss / temperature), or None for an empty bank."""
        entries = self.entries[bucket]
        if not entries:
            return None
        low = min(loss for _, loss in entries)
        weights = [math.exp(-(loss - low) / temperature) for _, loss in entries]
        return rng.choices([arch for arch, _ in entries], weights=weights)[0]

    def state_dict(self) -> list[list[dict[str, Any]]]:
        return [[{"arch": arch.to_dict(), "loss": loss} for arch, loss in bucket] for bucket in self.entries]

    def load_state_dict(self, state: list[list[dict[str, Any]]]) -> None:
        if len(state) != len(self.entries):
            raise NASError(f"sampler checkpoint has {len(state)} performance banks, the spec has {len(self.entries)}")
        self.entries = [[(ArchConfig.from_dict(e["arch"]), float(e["loss"])) for e in bucket] for bucket in state]


@register_sampler("complexity_aware")
class ComplexityAwareSampler(SlotSampler):
    """ElasticViT's complexity-aware sampling and (unless `performance: false`) performance-aware sampling.

    Complexity-aware: each step picks a FLOPs band within `max_bucket_step` of the previous step's. `walk:
    random` adds a delta drawn uniformly from [-max_bucket_step, max_bucket_step], staying put when that
    leaves the range (a symmetric walk: every band equally often in the long run, but lumpily over a few
    hundred steps: 118 vs 29 visits of the end buckets in 490 steps of the sampling benchmark). `walk:
    balanced` (the default) moves to the least-visited band within reach, ties broken at random, which sweeps
    the bands back and forth and keeps their visit counts within a few of each other. Every `random` slot of
    the step is drawn from that band. In a dense band (where `attempts` uniform samples are expected to land
    REJECTION_HITS times or more, judged from the seeded sample): the first of up to `attempts` uniform samples
    of the space that falls in it, else the closest of them walked into it one choice at a time
    (`walk_into`) and spread by WANDER_MOVES random moves inside it (`wander`), else a member of the band's
    pool (never an unbounded loop). In a sparse band (where uniform samples rarely land: near the smallest or
    largest arch, or any narrow band): a random member of the band's pool spread by WANDER_MOVES random moves
    inside the band. The `min` slot is the band's smallest arch found (`min_arch: band`, see
    `BucketPlan.mins`) or the space's (`global`).

    Performance-aware: a bank per band of the `bank_size` best (arch, loss) pairs. Once the band's bank is
    more than half full (ElasticViT's rule), a slot comes from it with probability `probability.at(epoch)`
    (weights softmax(-loss / temperature)). Otherwise `candidates` archs are drawn from the band and `pick`
    keeps one: `width_depth` (`width_depth_pick` with the width-over-depth ratio of the best arch of the first
    ready bank, in band order, as the reference; no bank ready: one candidate is drawn) or `nearest` (the
    candidate closest to the band's best entry by L1 distance between arch encodings with every dimension's
    choice index scaled to [0, 1]; the band's bank not ready: one candidate). Every `rescore_every` steps the
    current band's bank is re-scored on the step's batch (`rescore`), so stale losses from early training do
    not keep weak archs in it; between re-scorings an arch's loss is its minibatch loss when trained.
    """

    def __init__(self, space: SearchSpace, train: TrainSpec, cost: CostFn | None = None):
        super().__init__(space, train)
        self.options: SamplerSpec = train.sampler
        self.cost = _CachedCost(cost or space.flops)
        self.plan = plan_buckets(space, self.options, train.seed, self.cost)
        self.performance: PerformanceSpec | None = self.options.performance_options
        self.rescore_every = self.performance.rescore_every if self.performance else 0
        self.bank = PerformanceBank(self.plan.num_buckets, self.performance.bank_size if self.performance else 1)
        self.bucket: int | None = None
        self.visits = [0] * self.plan.num_buckets
        self.epoch = 0
        self._pending: dict[str, int] = {}
        self._scale = [max(1, len(choices) - 1) for _, choices in space.dimensions()]
        expected = [count / self.options.estimate_samples * self.options.attempts for count in self.plan.counts]
        self._dense = [hits >= REJECTION_HITS for hits in expected]

    # -- bands
    def bucket_of(self, arch: ArchConfig) -> int | None:
        return self.plan.bucket_of(self.cost(arch))

    def begin_step(self, rng: random.Random) -> None:
        buckets, reach = self.plan.num_buckets, self.options.max_bucket_step
        if self.options.walk == "balanced":
            reachable = range(buckets) if self.bucket is None else \
                range(max(0, self.bucket - reach), min(buckets, self.bucket + reach + 1))
            fewest = min(self.visits[b] for b in reachable)
            self.bucket = rng.choice([b for b in reachable if self.visits[b] == fewest])
        elif self.bucket is None:
            self.bucket = rng.randrange(buckets)
        else:
            moved = self.bucket + (rng.randint(-reach, reach) if reach else 0)
            if 0 <= moved < buckets:
                self.bucket = moved
        self.visits[self.bucket] += 1

    def smallest(self) -> ArchConfig:
        if self.options.min_arch == "band" and self.bucket is not None:
            return self.plan.mins[self.bucket]
        return self.space.smallest()

    def _draw(self, rng: random.Random, bucket: int) -> ArchConfig:
        """One arch of band `bucket` (see the class docstring)."""
        low, high = self.plan.bounds[bucket]

        def inside(value: float) -> bool:
            return self.plan.contains(bucket, value)

        if not self._dense[bucket]:
            return wander(self.space, self.cost, rng.choice(self.plan.pools[bucket]), inside, rng, WANDER_MOVES)
        start, gap = None, math.inf
        for _ in range(self.options.attempts):
            arch = self.space.sample(rng)
            value = self.cost(arch)
            if inside(value):
                return arch
            distance = low - value if value < low else value - high
            if distance < gap:
                start, gap = arch, distance
        walked = None if start is None else walk_into(self.space, self.cost, start, inside, low, rng)
        if walked is not None:
            return wander(self.space, self.cost, walked, inside, rng, WANDER_MOVES)
        return rng.choice(self.plan.pools[bucket])

    # -- performance
    def bank_probability(self) -> float:
        return self.performance.probability.at(self.epoch) if self.performance else 0.0

    def distance(self, a: ArchConfig, b: ArchConfig) -> float:
        """L1 distance of normalised arch encodings (what the `nearest` pick minimises)."""
        return sum(abs(x - y) / s for x, y, s in zip(self.space.encode(a), self.space.encode(b), self._scale,
                                                      strict=True))

    def reference(self, bucket: int) -> ArchConfig | None:
        """The arch the candidate pick compares with: for `width_depth` the best of the first ready bank (in
        band order), for `nearest` the best of `bucket`'s bank when ready; None when there is none."""
        assert self.performance is not None
        if self.performance.pick == "nearest":
            return self.bank.best(bucket) if self.bank.ready(bucket) else None
        ready = next((b for b in range(self.plan.num_buckets) if self.bank.ready(b)), None)
        return None if ready is None else self.bank.best(ready)

    def choose(self, candidates: Sequence[ArchConfig], reference: ArchConfig) -> ArchConfig:
        """The candidate the `pick` rule keeps (see the class docstring)."""
        assert self.performance is not None
        if self.performance.pick == "nearest":
            return min(candidates, key=lambda c: self.distance(c, reference))
        ratios = [width_depth_ratio(self.space, c) for c in candidates]
        return candidates[width_depth_pick(ratios, width_depth_ratio(self.space, reference))]

    def pick(self, rng: random.Random) -> ArchConfig:
        assert self.bucket is not None
        bucket = self.bucket
        perf = self.performance
        if perf is None:
            return self._draw(rng, bucket)
        if self.bank.ready(bucket) and rng.random() < self.bank_probability():
            arch = self.bank.draw(bucket, rng, perf.temperature)
            assert arch is not None
        else:
            reference = self.reference(bucket)
            if reference is None:
                arch = self._draw(rng, bucket)
            else:
                arch = self.choose([self._draw(rng, bucket) for _ in range(perf.candidates)], reference)
        self._pending[arch.arch_hash()] = bucket
        return arch

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def rescore(self, evaluate_loss: LossFn) -> None:
        if self.performance is not None and self.bucket is not None:
            self.bank.rescore(self.bucket, evaluate_loss)

    def observe(self, arch: ArchConfig, loss: float) -> None:
        bucket = self._pending.pop(arch.arch_hash(), None)
        if bucket is not None:
            self.bank.add(bucket, arch, loss)

    def state_dict(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "visits": list(self.visits), "epoch": self.epoch,
                "bounds": [list(bound) for bound in self.plan.bounds], "banks": self.bank.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "bounds" in state:
            bounds = tuple((float(low), float(high)) for low, high in state["bounds"])
        else:  # checkpoints before bands: contiguous edges
            edges = [float(edge) for edge in state["edges"]]
            bounds = tuple(zip(edges, edges[1:], strict=False))
        if bounds != self.plan.bounds:
            raise NASError("train.sampler: the checkpoint's FLOPs buckets differ from this spec's; the run cannot "
                           "resume with another sampler configuration")
        self.bucket, self.visits, self.epoch = state["bucket"], list(state["visits"]), state["epoch"]
        self.bank.load_state_dict(state["banks"])
        self._pending = {}
