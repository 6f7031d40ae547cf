"""Arch samplers for supernet training: which subnets each training step updates.

Lifecycle (the trainer's call order):

1. `__init__(space, train_spec)` once (may raise `NASError`, e.g. FLOPs buckets the space leaves empty);
2. `load_state_dict(state)` when a run resumes from a checkpoint;
3. per epoch `on_epoch_start(epoch)` (0-based; a no-op unless the sampler follows a schedule);
4. per step `step(rng)` returns the step's archs (the teacher first when `teacher_first`), then
   `observe(arch, loss)` once per arch with its minibatch cross-entropy (a no-op unless the sampler learns);
5. `state_dict()` at every checkpoint: what, with the trainer's RNG states, makes a resumed run continue
   exactly.

All randomness comes from the `random.Random` the trainer passes to `step`; a sampler's own seeded RNGs (for
example the sample that estimates FLOPs buckets) are fixed by the spec, so they are rebuilt, not saved.

Samplers built from the spec's `train.sampler` are `SlotSampler`s: each step fills the slots of
`train.sampler.step` (`max`, `min`, `random`); subclasses decide how a `random` slot is drawn. `uniform` and
`sandwich` draw uniformly from the space; `complexity_aware` (ElasticViT) walks over FLOPs buckets, moving at
most `max_bucket_step` buckets between consecutive steps, and with `performance` set keeps a bank per bucket
of the best (arch, minibatch loss) pairs seen.
"""

from __future__ import annotations

import bisect
import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.errors import NASError, SpecError
from nas.space import ArchConfig, SearchSpace
from nas.spec import PerformanceSpec, SamplerSpec, Spec, TrainSpec

_SAMPLERS: dict[str, type[ArchSampler]] = {}

CostFn = Callable[[ArchConfig], float]


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

    def __init__(self, space: SearchSpace, train: TrainSpec):
        self.space = space
        self.train = train

    @abstractmethod
    def step(self, rng: random.Random) -> list[ArchConfig]:
        """The archs to train in this step (the teacher first when `teacher_first`)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first step of every (0-based) epoch, also when a run resumes."""

    def observe(self, arch: ArchConfig, loss: float) -> None:
        """Called with each arch's minibatch cross-entropy after the step."""

    def state_dict(self) -> dict[str, Any]:
        """What `load_state_dict` needs to resume exactly: plain data only (dicts, lists, strings, numbers, None,
        tensors), since checkpoints are loaded with `weights_only=True`; the trainer refuses anything else."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved."""


class SlotSampler(ArchSampler):
    """Fills the slots of `train.sampler.step`: `max` is the largest arch, `min` the smallest, and `random`
    whatever `pick` draws. `begin_step` runs once per step before the slots are filled."""

    def __init__(self, space: SearchSpace, train: TrainSpec):
        super().__init__(space, train)
        self.slots = train.slots
        self.teacher_first = self.slots[0] == "max"

    def begin_step(self, rng: random.Random) -> None:
        """Per-step state change before the slots are filled (no-op by default)."""

    @abstractmethod
    def pick(self, rng: random.Random) -> ArchConfig:
        """The arch of one `random` slot."""

    def step(self, rng: random.Random) -> list[ArchConfig]:
        self.begin_step(rng)
        archs = []
        for slot in self.slots:
            if slot == "max":
                archs.append(self.space.largest())
            elif slot == "min":
                archs.append(self.space.smallest())
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


# ---- FLOPs buckets ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BucketPlan:
    """FLOPs buckets of a space: bucket i holds costs in [edges[i], edges[i + 1]) (the last one closed), and
    `pools[i]` distinct archs of a seeded sample that fall in it (the fallback when rejection sampling fails).
    """

    edges: tuple[float, ...]
    pools: tuple[tuple[ArchConfig, ...], ...]
    counts: tuple[int, ...]

    @property
    def num_buckets(self) -> int:
        return len(self.edges) - 1

    def bucket_of(self, cost: float) -> int | None:
        """The bucket holding `cost`, or None outside the edges."""
        if cost < self.edges[0] or cost > self.edges[-1]:
            return None
        return min(bisect.bisect_right(self.edges, cost) - 1, self.num_buckets - 1)


def _quantile_edges(costs: Sequence[float], buckets: int, low: float, high: float) -> list[float]:
    """`buckets` + 1 edges from `low` to `high` that split `costs` into groups of equal size."""
    ordered = sorted(costs)
    inner = [ordered[min(len(ordered) - 1, (len(ordered) * i) // buckets)] for i in range(1, buckets)]
    return [low, *inner, high]


def plan_buckets(space: SearchSpace, sampler: SamplerSpec, seed: int, cost: CostFn | None = None,
                 where: str = "train.sampler") -> BucketPlan:
    """Bucket edges and per-bucket pools for `space`, from a sample of `sampler.estimate_samples` archs drawn
    with `random.Random(seed)`; raises a one-line `NASError` naming the field when a bucket is empty.

    Quantile edges (`buckets`) run from the smallest arch's cost to the largest's; explicit `edges_mflops` are
    in millions of `cost` units (default `space.flops`, multiply-accumulates at the training resolution).
    """
    cost = cost or space.flops
    rng = random.Random(seed)
    sample = [space.sample(rng) for _ in range(sampler.estimate_samples)]
    sample += [space.smallest(), space.largest()]
    costs = [float(cost(arch)) for arch in sample]
    if sampler.edges_mflops is not None:
        edges = [edge * 1e6 for edge in sampler.edges_mflops]
        field = "edges_mflops"
    else:
        edges = _quantile_edges(costs[:-2], sampler.num_buckets, costs[-2], costs[-1])
        field = "buckets"
    plan = BucketPlan(tuple(edges), (), ())
    members: list[dict[str, ArchConfig]] = [{} for _ in range(plan.num_buckets)]
    counts = [0] * plan.num_buckets
    for arch, value in zip(sample, costs, strict=True):
        index = plan.bucket_of(value)
        if index is None:
            continue
        counts[index] += 1
        if len(members[index]) < sampler.pool_size:
            members[index].setdefault(arch.arch_hash(), arch)
    empty = [i for i, count in enumerate(counts) if count == 0]
    if empty:
        span = f"[{edges[empty[0]] / 1e6:.6g}, {edges[empty[0] + 1] / 1e6:.6g}] MFLOPs"
        if field == "buckets":
            rule = (f"{plan.num_buckets} quantile buckets leave bucket {empty[0]} {span} empty (the space has "
                    f"too few distinct FLOPs values); use fewer buckets")
        else:
            rule = (f"no arch of {len(sample)} sampled from the space falls in bucket {empty[0]} {span} "
                    f"(the space spans [{min(costs) / 1e6:.4g}, {max(costs) / 1e6:.4g}] MFLOPs); move the edges")
        raise SpecError(f"{where}.{field}: {rule}")
    return BucketPlan(tuple(edges), tuple(tuple(m.values()) for m in members), tuple(counts))


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
    """Per bucket, the `capacity` best (arch, minibatch loss) pairs seen; a new pair replaces the worst.

    Seeing an arch already in the bank updates its loss (losses fall as training goes on, so the latest
    measurement is the relevant one).
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

    def ready(self, bucket: int) -> bool:
        """Whether the bucket's bank is more than half full, ElasticViT's condition for consulting it."""
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
    """ElasticViT's complexity-aware sampling, optionally performance-aware.

    Each step picks a FLOPs bucket within `max_bucket_step` of the previous step's. `walk: random` adds a
    delta drawn uniformly from [-max_bucket_step, max_bucket_step], staying put when that leaves the range (a
    symmetric walk: every bucket equally often in the long run, but lumpily over a few hundred steps: 118 vs
    29 visits of the end buckets in 490 steps of the sampling benchmark). `walk: balanced` (the default)
    moves to the least-visited bucket within reach, ties broken at random, which sweeps the buckets back and
    forth and keeps their visit counts within a few of each other. Every `random` slot of the step is drawn from
    that bucket: up to `attempts` uniform samples of the space, keeping the first that falls in it, else a
    member of the bucket's pre-sampled pool (never an unbounded loop).

    With `performance`: with probability `probability.at(epoch)` a slot is drawn from the bucket's bank with
    weights softmax(-loss / temperature); otherwise `candidates` archs are drawn from the bucket and the one
    the bank prefers is kept. The bank prefers the candidate closest to its best (lowest-loss) arch, by L1
    distance between arch encodings with every dimension's choice index scaled to [0, 1] (layers beyond a
    stage's depth count as its smallest choice): an arch near a good one inherits good weights and is likely
    good too. Until a bucket's bank is more than half full (ElasticViT's rule) it is not consulted: one
    candidate is drawn. Bank losses are those measured when the arch was trained (ElasticViT also re-measures
    a bank on the current minibatch when it inserts into it; that costs a forward pass per entry, so not here).
    """

    def __init__(self, space: SearchSpace, train: TrainSpec, cost: CostFn | None = None):
        super().__init__(space, train)
        self.options: SamplerSpec = train.sampler
        self.cost = cost or space.flops
        self.plan = plan_buckets(space, self.options, train.seed, self.cost)
        self.performance: PerformanceSpec | None = self.options.performance
        self.bank = PerformanceBank(self.plan.num_buckets, self.performance.bank_size if self.performance else 1)
        self.bucket: int | None = None
        self.visits = [0] * self.plan.num_buckets
        self.epoch = 0
        self._pending: dict[str, int] = {}
        self._scale = [max(1, len(choices) - 1) for _, choices in space.dimensions()]

    # -- buckets
    def bucket_of(self, arch: ArchConfig) -> int | None:
        return self.plan.bucket_of(float(self.cost(arch)))

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

    def _draw(self, rng: random.Random, bucket: int) -> ArchConfig:
        for _ in range(self.options.attempts):
            arch = self.space.sample(rng)
            if self.bucket_of(arch) == bucket:
                return arch
        return rng.choice(self.plan.pools[bucket])

    # -- performance
    def bank_probability(self) -> float:
        return self.performance.probability.at(self.epoch) if self.performance else 0.0

    def distance(self, a: ArchConfig, b: ArchConfig) -> float:
        """L1 distance of normalised arch encodings (what the bank's preference minimises)."""
        return sum(abs(x - y) / s for x, y, s in zip(self.space.encode(a), self.space.encode(b), self._scale,
                                                      strict=True))

    def pick(self, rng: random.Random) -> ArchConfig:
        assert self.bucket is not None
        bucket = self.bucket
        perf = self.performance
        if perf is None:
            arch = self._draw(rng, bucket)
        else:
            best = self.bank.best(bucket) if self.bank.ready(bucket) else None
            if best is None:
                arch = self._draw(rng, bucket)
            elif rng.random() < self.bank_probability():
                arch = self.bank.draw(bucket, rng, perf.temperature)  # type: ignore[assignment]
            else:
                candidates = [self._draw(rng, bucket) for _ in range(perf.candidates)]
                arch = min(candidates, key=lambda c: self.distance(c, best))
            self._pending[arch.arch_hash()] = bucket
        return arch

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def observe(self, arch: ArchConfig, loss: float) -> None:
        bucket = self._pending.pop(arch.arch_hash(), None)
        if bucket is not None:
            self.bank.add(bucket, arch, loss)

    def state_dict(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "visits": list(self.visits), "epoch": self.epoch,
                "edges": list(self.plan.edges), "banks": self.bank.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["edges"]) != self.plan.edges:
            raise NASError("train.sampler: the checkpoint's FLOPs buckets differ from this spec's; the run cannot "
                           "resume with another sampler configuration")
        self.bucket, self.visits, self.epoch = state["bucket"], list(state["visits"]), state["epoch"]
        self.bank.load_state_dict(state["banks"])
        self._pending = {}
