"""Arch samplers: the contract every sampler keeps, complexity-aware bands and buckets, performance banks,
the trainer's side of ElasticViT's recipe (bank re-scoring, probability averaging, gradient clipping, the
adaptive alpha-divergence), and the validation of `train.sampler` / `train.distill` / `train.clip`."""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from nas.data import load
from nas.errors import NASError, SpecError
from nas.sampling import (
    ArchSampler,
    ComplexityAwareSampler,
    PerformanceBank,
    check_train,
    make_sampler,
    neighbours,
    plan_buckets,
    width_depth_pick,
    width_depth_ratio,
)
from nas.space import ArchConfig, SearchSpace
from nas.spec import ClipSpec, ProbabilitySchedule, Spec, TrainSpec, parse_spec
from nas.supernet import Supernet
from nas.train import (
    _backward_step,
    adaptive_clip_,
    alpha_divergence_loss,
    clip_gradients,
    mean_probability_target,
    train_supernet,
)

TINY = Path(__file__).resolve().parent / "specs" / "tiny.yaml"
BUCKETED = {"name": "complexity_aware", "buckets": 5, "estimate_samples": 400, "performance": False}
PERFORMANCE = {**BUCKETED, "performance": {"bank_size": 3, "candidates": 3, "rescore_every": 5,
                                           "probability": {"start": 0.3, "step": 0.3, "every_epochs": 1}}}
BANDS = {"name": "complexity_aware", "estimate_samples": 400, "step": ["random", "random", "min"]}  # paper defaults


def _raw(resolution: list[int] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(TINY.read_text())
    if resolution is not None:
        raw["space"]["resolution"] = resolution
    return raw


def _spec(sampler: Any = "sandwich", resolution: list[int] | None = None, **train: Any) -> Spec:
    raw = _raw(resolution)
    raw["train"]["sampler"] = copy.deepcopy(sampler)
    raw["train"].update(train)
    return parse_spec(raw, "tiny.yaml")


def _error(**train: Any) -> str:
    raw = yaml.safe_load(TINY.read_text())
    raw["train"].update(train)
    with pytest.raises(SpecError) as info:
        parse_spec(raw, "tiny.yaml")
    return str(info.value)


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace.from_spec(_spec(), 1, 10)


MULTIRES = [8, 12]  # a space with more than one resolution: the extremes must take the extreme resolution too


@pytest.fixture(scope="module")
def multires() -> SearchSpace:
    return SearchSpace.from_spec(_spec(resolution=MULTIRES), 1, 10)


@pytest.fixture(scope="module", params=["tiny", "multires"])
def any_space(request: pytest.FixtureRequest) -> tuple[SearchSpace, list[int] | None]:
    resolution = MULTIRES if request.param == "multires" else None
    return SearchSpace.from_spec(_spec(resolution=resolution), 1, 10), resolution


def _fake_loss(space: SearchSpace, arch: ArchConfig, noise: random.Random) -> float:
    """A loss that falls with FLOPs, plus noise: what a bank should learn from."""
    return 3.0 - space.flops(arch) / 5e5 + noise.random() * 0.1


# ---- the contract every sampler keeps --------------------------------------------------------------------
CONTRACT = {"uniform": "uniform", "sandwich": "sandwich", "complexity_aware": BUCKETED,
            "performance_aware": PERFORMANCE, "elasticvit": BANDS}


@pytest.mark.parametrize("sampler", list(CONTRACT.values()), ids=list(CONTRACT))
def test_sampler_contract(any_space: tuple[SearchSpace, list[int] | None], sampler: Any) -> None:
    space, resolution = any_space
    train = _spec(sampler, resolution).train

    def run(s: ArchSampler, rng: random.Random, noise: random.Random, steps: int, epoch0: int) -> list[list[str]]:
        seen = []
        for i in range(steps):
            if i % 20 == 0:
                s.on_epoch_start(epoch0 + i // 20)
            archs = s.step(rng)
            assert archs and len(archs) == len(s.slots)
            if s.rescore_every and i % s.rescore_every == 0:  # as the trainer does, with a noisy synthetic loss
                s.rescore(lambda arch: _fake_loss(space, arch, noise))
            for arch in archs:
                space.validate_arch(arch)
                s.observe(arch, _fake_loss(space, arch, noise))
            seen.append([a.arch_hash() for a in archs])
        return seen

    # Deterministic for a seed.
    first = run(make_sampler(space, train), random.Random(1), random.Random(2), 60, 0)
    assert first == run(make_sampler(space, train), random.Random(1), random.Random(2), 60, 0)
    # State + RNG saved mid-run and restored into a fresh sampler continue exactly.
    a, rng, noise = make_sampler(space, train), random.Random(5), random.Random(6)
    run(a, rng, noise, 40, 0)
    saved, rng_state, noise_state = copy.deepcopy(a.state_dict()), rng.getstate(), noise.getstate()
    straight = run(a, rng, noise, 40, 2)
    b = make_sampler(space, train)
    b.load_state_dict(saved)
    rng.setstate(rng_state)
    noise.setstate(noise_state)
    assert run(b, rng, noise, 40, 2) == straight


def test_sandwich_slots_and_teacher(space: SearchSpace) -> None:
    sampler = make_sampler(space, _spec({"name": "sandwich", "step": ["max", "random", "random", "min"]}).train)
    archs = sampler.step(random.Random(0))
    assert sampler.teacher_first and sampler.slots == ("max", "random", "random", "min")
    assert archs[0] == space.largest() and archs[-1] == space.smallest() and len(archs) == 4
    elastic = make_sampler(space, _spec({"name": "uniform", "step": ["random", "random", "random", "min"]}).train)
    assert not elastic.teacher_first and elastic.step(random.Random(0))[-1] == space.smallest()


def test_extremes_take_the_extreme_resolution_too(multires: SearchSpace) -> None:
    """With more than one resolution, `max`/`min` (and complexity_aware's first and last band) must use the
    largest/smallest resolution: swapping the resolution alone in `smallest()`/`largest()` fails here."""
    largest, smallest = multires.largest(), multires.smallest()
    assert (largest.resolution, smallest.resolution) == (max(MULTIRES), min(MULTIRES))
    rng = random.Random(0)
    costs = [multires.flops(multires.sample(rng)) for _ in range(500)]
    assert multires.flops(smallest) <= min(costs) and multires.flops(largest) >= max(costs)
    # Each extreme beats the arch that differs from it in resolution alone.
    assert multires.flops(smallest) < multires.flops(dataclasses.replace(smallest, resolution=max(MULTIRES)))
    assert multires.flops(largest) > multires.flops(dataclasses.replace(largest, resolution=min(MULTIRES)))
    sandwich = make_sampler(multires, _spec({"name": "sandwich", "step": ["max", "random", "min"]}, MULTIRES).train)
    step = sandwich.step(rng)
    assert step[0] == largest and step[-1] == smallest
    bands = make_sampler(multires, _spec(BANDS, MULTIRES).train)
    assert isinstance(bands, ComplexityAwareSampler)
    assert bands.plan.mins[0] == smallest and bands.plan.bounds[0][0] == multires.flops(smallest)
    assert bands.plan.bounds[-1][1] == multires.flops(largest)
    assert {arch.resolution for pool in bands.plan.pools for arch in pool} == set(MULTIRES)


# ---- complexity-aware buckets ----------------------------------------------------------------------------
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), buckets=st.integers(2, 6), limit=st.integers(1, 2),
       attempts=st.sampled_from([0, 8, 32]), walk=st.sampled_from(["balanced", "random"]))
def test_bucket_walk_respects_the_limit_and_visits_every_bucket(space: SearchSpace, seed: int, buckets: int,
                                                                 limit: int, attempts: int, walk: str) -> None:
    options = {"name": "complexity_aware", "buckets": buckets, "max_bucket_step": limit, "attempts": attempts,
               "estimate_samples": 300, "step": ["random", "random"], "walk": walk, "performance": False}
    sampler = make_sampler(space, _spec(options, seed=seed).train)
    assert isinstance(sampler, ComplexityAwareSampler)
    rng = random.Random(seed)
    previous, visits = None, Counter()
    for _ in range(1200):
        archs = sampler.step(rng)
        current = sampler.bucket
        assert current is not None
        for arch in archs:  # every random arch really lies in the step's bucket
            assert sampler.bucket_of(arch) == current
        if previous is not None:
            assert abs(current - previous) <= limit
        visits[current] += 1
        previous = current
    assert sorted(visits) == list(range(buckets))
    assert min(visits.values()) > 1200 / buckets / 3  # the symmetric walk spreads steps over the buckets
    assert sampler.visits == [visits[b] for b in range(buckets)]
    if walk == "balanced":  # the least-visited-first walk keeps the buckets' counts level
        assert max(visits.values()) - min(visits.values()) <= buckets


@pytest.mark.parametrize("walk", ["balanced", "random"])
def test_zero_step_pins_the_bucket(space: SearchSpace, walk: str) -> None:
    sampler = make_sampler(space, _spec({**BUCKETED, "max_bucket_step": 0, "walk": walk}).train)
    rng = random.Random(3)
    sampler.step(rng)
    first = sampler.bucket
    for _ in range(200):
        sampler.step(rng)
        assert sampler.bucket == first


def test_balanced_walk_sweeps_evenly_where_the_random_walk_is_lumpy(space: SearchSpace) -> None:
    """Over a short run (here 400 steps, 8 buckets) the random walk's visit counts vary several-fold."""
    spreads = {}
    for walk in ("balanced", "random"):
        sampler = make_sampler(space, _spec({**BUCKETED, "buckets": 8, "walk": walk}).train)
        assert isinstance(sampler, ComplexityAwareSampler)
        rng = random.Random(0)
        for _ in range(400):
            sampler.begin_step(rng)
        spreads[walk] = max(sampler.visits) - min(sampler.visits)
    assert spreads["balanced"] <= 8 < 20 < spreads["random"]


def test_quantile_buckets_hold_equal_shares(space: SearchSpace) -> None:
    options = _spec({"name": "complexity_aware", "buckets": 4, "estimate_samples": 1000}).train.sampler
    plan = plan_buckets(space, options, seed=0)
    assert plan.num_buckets == 4 and plan.edges[0] == space.flops(space.smallest())
    assert plan.edges[-1] == space.flops(space.largest())
    assert all(200 <= count <= 300 for count in plan.counts), plan.counts
    for index, pool in enumerate(plan.pools):
        assert 0 < len(pool) <= options.pool_size
        assert all(plan.bucket_of(space.flops(arch)) == index for arch in pool)


def test_explicit_edges_and_empty_bucket_errors(space: SearchSpace) -> None:
    low, high = space.flops(space.smallest()) / 1e6, space.flops(space.largest()) / 1e6
    ok = _spec({"name": "complexity_aware", "edges_mflops": [low, 0.3, 0.5, high]})
    assert make_sampler(space, ok.train).plan.num_buckets == 3  # type: ignore[attr-defined]
    empty = _spec({"name": "complexity_aware", "edges_mflops": [low, 0.3, 0.30001, high]})
    with pytest.raises(SpecError, match=r"^tiny.yaml: train.sampler.edges_mflops: no arch .* bucket 1 "):
        check_train(empty, space, "tiny.yaml")
    with pytest.raises(NASError, match="train.sampler.edges_mflops"):
        make_sampler(space, empty.train)
    beyond = _spec({"name": "complexity_aware", "edges_mflops": [high + 1, high + 2]})
    with pytest.raises(SpecError, match="bucket 0"):
        check_train(beyond, space, "tiny.yaml")
    # A space with a single FLOPs value cannot be split into quantile buckets.
    raw = yaml.safe_load(TINY.read_text())
    raw["space"] = {"resolution": [8], "stem": {"channels": [8], "stride": 1}, "head": {"channels": [16]},
                    "stages": [{"type": "conv", "depth": [1, 1], "channels": [8], "expand": [2], "kernel": [3]}]}
    raw["train"]["sampler"] = {"name": "complexity_aware", "buckets": 2}
    flat = parse_spec(raw, "flat.yaml")
    with pytest.raises(SpecError, match=r"^flat.yaml: train.sampler.buckets: 2 quantile buckets leave bucket 0"):
        check_train(flat, SearchSpace.from_spec(flat, 1, 10), "flat.yaml")


def test_check_train_passes_good_specs_and_checks_the_teacher_file(space: SearchSpace, tmp_path: Path) -> None:
    check_train(_spec(PERFORMANCE), space, "tiny.yaml")
    check_train(_spec("uniform"), space, "tiny.yaml")
    missing = _spec(distill={"teacher": "external", "checkpoint": str(tmp_path / "nope")})
    with pytest.raises(SpecError, match=r"^tiny.yaml: train.distill.checkpoint: teacher checkpoint .* not exist"):
        check_train(missing, space, "tiny.yaml")


def test_resume_refuses_other_buckets(space: SearchSpace) -> None:
    state = make_sampler(space, _spec(BUCKETED).train).state_dict()
    other = make_sampler(space, _spec({**BUCKETED, "buckets": 4}).train)
    with pytest.raises(NASError, match="FLOPs buckets differ"):
        other.load_state_dict(state)


# ---- performance-aware sampling --------------------------------------------------------------------------
def test_bank_keeps_the_best_and_replaces_the_worst(space: SearchSpace) -> None:
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(6)]
    bank = PerformanceBank(buckets=2, capacity=3)
    for arch, loss in zip(archs[:3], [2.0, 1.0, 3.0], strict=True):
        bank.add(0, arch, loss)
    bank.add(0, archs[3], 5.0)  # worse than every entry: ignored
    assert {a for a, _ in bank.entries[0]} == set(archs[:3])
    bank.add(0, archs[4], 0.5)  # replaces the worst (loss 3.0)
    assert {a for a, _ in bank.entries[0]} == {archs[0], archs[1], archs[4]}
    bank.add(0, archs[0], 0.1)  # a known arch updates its loss, no duplicate
    assert len(bank.entries[0]) == 3 and bank.best(0) == archs[0]
    bank.add(0, archs[5], float("nan"))
    assert archs[5] not in {a for a, _ in bank.entries[0]}
    assert bank.entries[1] == [] and bank.best(1) is None and bank.draw(1, rng, 1.0) is None
    # Draws follow softmax(-loss / temperature).
    bank.entries[1] = [(archs[0], 0.0), (archs[1], 1.0)]
    draws = Counter(bank.draw(1, rng, 1.0) for _ in range(4000))
    share = draws[archs[0]] / 4000
    assert abs(share - 1 / (1 + math.exp(-1.0))) < 0.03
    again = PerformanceBank(2, 3)
    again.load_state_dict(copy.deepcopy(bank.state_dict()))
    assert again.entries == bank.entries


def test_probability_schedule() -> None:
    schedule = ProbabilitySchedule(start=0.2, step=0.15, every_epochs=100, max=0.9)
    assert [schedule.at(e) for e in (0, 99, 100, 250, 10_000)] == pytest.approx([0.2, 0.2, 0.35, 0.5, 0.9])


def test_bank_is_consulted_once_half_full_and_prefers_the_closest(space: SearchSpace,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    options = {**BUCKETED, "performance": {"bank_size": 2, "candidates": 3, "pick": "nearest",
                                           "probability": {"start": 0.0, "step": 0.0}}}
    sampler = make_sampler(space, _spec(options).train)
    assert isinstance(sampler, ComplexityAwareSampler)
    rng = random.Random(0)
    sampler.begin_step(rng)
    bucket = sampler.bucket
    assert bucket is not None
    pool = sampler.plan.pools[bucket]
    best = pool[0]
    near = min(pool[1:], key=lambda a: sampler.distance(a, best))
    far = max(pool[1:], key=lambda a: sampler.distance(a, best))
    assert sampler.distance(far, best) > sampler.distance(near, best)
    calls: list[int] = []

    def fake_draw(r: random.Random, b: int) -> ArchConfig:
        calls.append(b)
        return [far, near, far][(len(calls) - 1) % 3]

    monkeypatch.setattr(sampler, "_draw", fake_draw)
    assert sampler.pick(rng) == far and calls == [bucket]  # empty bank: one candidate, no preference
    sampler.observe(far, 9.0)
    calls.clear()
    assert sampler.pick(rng) == far and len(calls) == 1  # one entry of two: not more than half full yet
    sampler.bank.add(bucket, best, 0.1)
    calls.clear()
    assert sampler.pick(rng) == near and len(calls) == 3  # the candidate closest to the best entry wins


def test_bank_draws_grow_with_the_schedule(space: SearchSpace) -> None:
    options = {**BUCKETED, "performance": {"probability": {"start": 0.0, "step": 1.0, "every_epochs": 2}}}
    sampler = make_sampler(space, _spec(options).train)
    assert isinstance(sampler, ComplexityAwareSampler)
    rng, noise = random.Random(0), random.Random(1)
    sampler.on_epoch_start(0)
    for _ in range(300):  # epoch 0: p = 0, the banks fill from fresh candidates
        for arch in sampler.step(rng):
            sampler.observe(arch, _fake_loss(space, arch, noise))
    assert sampler.bank_probability() == 0.0
    assert all(len(entries) == 8 for entries in sampler.bank.entries)
    sampler.on_epoch_start(2)
    assert sampler.bank_probability() == 1.0
    for _ in range(100):  # p = 1: every pick comes from its bucket's bank
        arch = sampler.step(rng)[0]
        assert arch in {a for a, _ in sampler.bank.entries[sampler.bucket]}  # type: ignore[index]
        sampler.observe(arch, _fake_loss(space, arch, noise))


# ---- spec validation -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("train", "expected"), [
    ({"sampler": "sandwhich"}, "tiny.yaml: train.sampler: unknown sampler 'sandwhich'; did you mean 'sandwich'?"),
    ({"sampler": {"name": "complexity_aware", "max_bucket_step": -1}},
     "tiny.yaml: train.sampler.max_bucket_step: Input should be greater than or equal to 0 (got -1)"),
    ({"sampler": {"name": "complexity_aware", "buckets": 0}},
     "tiny.yaml: train.sampler.buckets: Input should be greater than 0 (got 0)"),
    ({"sampler": {"name": "complexity_aware", "performance": {"bank_size": 0}}},
     "tiny.yaml: train.sampler.performance.bank_size: Input should be greater than 0 (got 0)"),
    ({"sampler": {"name": "complexity_aware", "performance": {"probability": {"start": 1.5}}}},
     "tiny.yaml: train.sampler.performance.probability.start: Input should be less than or equal to 1 (got 1.5)"),
    ({"sampler": {"name": "complexity_aware", "performance": {"probability": {"start": 0.5, "max": 0.4}}}},
     "tiny.yaml: train.sampler.performance.probability.max: max (0.4) must be >= start (0.5)"),
    ({"sampler": {"name": "complexity_aware", "performance": {"probability": {"step": -0.1}}}},
     "tiny.yaml: train.sampler.performance.probability.step: Input should be greater than or equal to 0"),
    ({"sampler": {"name": "sandwich", "buckets": 4}},
     "tiny.yaml: train.sampler.buckets: only the complexity_aware sampler uses `buckets`, but the sampler is "
     "'sandwich'"),
    ({"sampler": {"name": "complexity_aware", "buckets": 4, "edges_mflops": [0.1, 0.2]}},
     "tiny.yaml: train.sampler.edges_mflops: give either `buckets` (quantile edges) or `edges_mflops`, not both"),
    ({"sampler": {"name": "complexity_aware", "edges_mflops": [0.1, 0.3, 0.2]}},
     "tiny.yaml: train.sampler.edges_mflops: edges must increase strictly"),
    ({"sampler": {"name": "complexity_aware", "bukets": 4}},
     "tiny.yaml: train.sampler.bukets: unknown key 'bukets'; did you mean 'buckets'?"),
    ({"sampler": {"name": "sandwich", "step": ["max", "random", "max"]}},
     "tiny.yaml: train.sampler.step: `max` may appear at most once per step"),
    ({"sampler": {"name": "complexity_aware"}, "distill": {"teacher": "largest"}},
     "tiny.yaml: train.distill: teacher 'largest' needs `max` in train.sampler.step, but the step is ['random']"),
    ({"sampler": {"name": "uniform", "step": ["random", "random"]}, "distill": {"teacher": "random_mean"}},
     "tiny.yaml: train.distill: teacher 'random_mean' has no student in the step ['random', 'random']"),
    ({"distill": {"teacher": "external"}}, "tiny.yaml: train.distill: `teacher: external` needs `checkpoint`"),
    ({"distill": {"teacher": "largest", "checkpoint": "t.pt"}},
     "tiny.yaml: train.distill.checkpoint: a checkpoint is only used with `teacher: external`"),
    ({"distill": {"alpha_min": 0.5}},
     "tiny.yaml: train.distill.alpha_min: `alpha_min` is only used with `loss: alpha`"),
    ({"distill": {"loss": "alpha", "alpha_min": 0.5, "alpha_max": 0.0}},
     "tiny.yaml: train.distill.alpha_max: alpha_max (0.0) must be >= alpha_min (0.5)"),
    ({"distill": {"teacher": "none", "loss": "alpha"}},
     "tiny.yaml: train.distill.loss: `loss: alpha` needs a teacher (teacher is 'none')"),
    ({"distill": "inpalce"}, "tiny.yaml: train.distill: distill is `inplace`, `none` or a mapping with `teacher`"),
])
def test_bad_sampler_specs_name_the_field(train: dict[str, Any], expected: str) -> None:
    assert _error(**train).startswith(expected)


@pytest.mark.parametrize(("sampler", "distill"), [
    ("sandwich", "inplace"),
    ("uniform", "none"),
    ({**PERFORMANCE, "step": ["random", "random", "min"]},
     {"teacher": "random_mean", "loss": "alpha", "alpha_min": -0.5}),
    ({"name": "complexity_aware", "edges_mflops": [0.1, 0.4, 0.9], "step": ["max", "random", "min"]},
     {"teacher": "largest"}),
    ({"name": "sandwich", "step": ["random", "random", "random", "min"]}, {"teacher": "external", "checkpoint": "t"}),
])
def test_sampler_specs_round_trip(sampler: Any, distill: Any) -> None:
    spec = _spec(sampler, distill=distill)
    again = parse_spec(spec.to_dict(), "again")
    assert again == spec and again.spec_hash() == spec.spec_hash()
    if isinstance(sampler, str):  # the shorthand is written back as it was written
        assert spec.to_dict()["train"]["sampler"] == sampler and spec.to_dict()["train"]["distill"] == distill
        assert str(spec.train.sampler) == sampler


def test_shorthands_keep_their_meaning() -> None:
    train = _spec("sandwich", num_random=2).train
    assert train.slots == ("max", "random", "random", "min")
    assert train.distill.roles(train.slots) == ("teacher", "student", "student", "student")
    uniform = _spec("uniform").train  # `inplace` with no largest subnet in the step: labels only, as before
    assert uniform.slots == ("random",) and uniform.distill.roles(uniform.slots) == ("label",)
    assert TrainSpec().sampler.name == "sandwich" and str(TrainSpec().distill) == "inplace"
    elastic = _spec({"name": "uniform", "step": ["max", "random", "random", "min"]},
                    distill={"teacher": "random_mean"}).train
    assert elastic.distill.roles(elastic.slots) == ("label", "teacher", "teacher", "student")


# ---- ElasticViT's bands, per-band smallest arch ----------------------------------------------------------
def test_automatic_bands_have_gaps_and_hold_what_is_drawn(space: SearchSpace) -> None:
    sampler = make_sampler(space, _spec({**BANDS, "step": ["random", "random", "random", "min"]}).train)
    assert isinstance(sampler, ComplexityAwareSampler)
    plan = sampler.plan
    low, high = space.flops(space.smallest()), space.flops(space.largest())
    assert plan.kind == "bands" and plan.num_buckets == 8
    width = (high - low) / 16  # the default width: (max - min) / (2 * count)
    assert plan.bounds[0] == (low, low + width) and plan.bounds[-1] == pytest.approx((high - width, high))
    for (_, top), (bottom, _) in zip(plan.bounds, plan.bounds[1:], strict=False):
        assert bottom - top > 0.5 * width  # a real gap between neighbours
        gap_cost = (top + bottom) / 2
        assert plan.bucket_of(gap_cost) is None
    for index, pool in enumerate(plan.pools):  # sparse end bands are found too
        assert pool and all(plan.bucket_of(space.flops(arch)) == index for arch in pool)
    rng, previous = random.Random(0), None
    for _ in range(300):
        archs = sampler.step(rng)
        band = sampler.bucket
        assert band is not None and (previous is None or abs(band - previous) <= 1)
        assert all(plan.bucket_of(space.flops(arch)) == band for arch in archs)  # `min` included
        previous = band
    assert min(sampler.visits) > 0


def test_explicit_band_targets(space: SearchSpace) -> None:
    options = {"name": "complexity_aware", "bands": {"targets_mflops": [0.2, 0.4, 0.6], "width_mflops": 0.05}}
    sampler = make_sampler(space, _spec(options).train)
    assert isinstance(sampler, ComplexityAwareSampler)
    assert sampler.plan.bounds == pytest.approx([(2e5, 2.5e5), (4e5, 4.5e5), (6e5, 6.5e5)])
    assert sampler.plan.bucket_of(3e5) is None and sampler.plan.bucket_of(4.5e5) == 1
    rng = random.Random(1)
    for _ in range(60):
        archs = sampler.step(rng)
        low, high = sampler.plan.bounds[sampler.bucket]  # type: ignore[index]
        assert all(low <= space.flops(arch) <= high for arch in archs)


@pytest.mark.parametrize("kind", ["bands", "quantiles"])
def test_min_slot_is_the_smallest_arch_of_the_band(multires: SearchSpace, kind: str) -> None:
    options = {**BANDS, "step": ["random", "random", "min"]}
    if kind == "quantiles":
        options["buckets"] = 4
    sampler = make_sampler(multires, _spec(options, MULTIRES).train)
    assert isinstance(sampler, ComplexityAwareSampler)
    plan, rng = sampler.plan, random.Random(2)
    drawn: dict[int, list[float]] = {b: [] for b in range(plan.num_buckets)}
    for _ in range(400):
        *randoms, smallest = sampler.step(rng)
        band = sampler.bucket
        assert band is not None and smallest == plan.mins[band]
        drawn[band] += [multires.flops(arch) for arch in randoms]
    for band, found in enumerate(plan.mins):
        cost, (low, high) = multires.flops(found), plan.bounds[band]
        assert plan.bucket_of(cost) == band and cost <= min(multires.flops(a) for a in plan.pools[band])
        # A local minimum (no single smaller choice stays in the band), at the band's bottom: within a few
        # percent of its width above the lower bound, below all but a few of the archs drawn from the band.
        assert all(plan.bucket_of(multires.flops(n)) != band for n in neighbours(multires, found, grow=False))
        assert cost - low <= 0.1 * (high - low)
        assert sum(c < cost for c in drawn[band]) <= 0.1 * len(drawn[band])
    assert plan.mins[0] == multires.smallest()
    spreads = [max(costs) / multires.flops(plan.mins[b]) for b, costs in drawn.items() if costs and b > 0]
    assert max(spreads) < multires.flops(multires.largest()) / multires.flops(multires.smallest())
    global_min = make_sampler(multires, _spec({**options, "min_arch": "global"}, MULTIRES).train)
    assert all(global_min.step(rng)[-1] == multires.smallest() for _ in range(20))


# ---- performance bank: re-scoring and the width-over-depth pick ------------------------------------------
def test_rescoring_replaces_the_losses_and_reorders_the_bank(space: SearchSpace) -> None:
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(4)]
    bank = PerformanceBank(buckets=2, capacity=4)
    for i, arch in enumerate(archs):
        bank.add(0, arch, float(i))  # archs[0] best, archs[3] worst (stale losses)
    bank.add(1, archs[0], 7.0)
    fresh = {archs[0]: 3.0, archs[1]: 2.0, archs[2]: float("nan"), archs[3]: 0.5}
    bank.rescore(0, fresh.__getitem__)
    assert bank.best(0) == archs[3]
    assert sorted(bank.entries[0], key=lambda e: e[1]) == [(archs[3], 0.5), (archs[1], 2.0), (archs[0], 3.0)]
    assert bank.entries[1] == [(archs[0], 7.0)]  # other bands are left alone
    # A newcomer is now compared with fresh losses: 2.5 beats the re-scored worst (3.0), not the stale best (0.0).
    bank.add(0, archs[2], 2.5)
    bank.add(0, space.sample(rng), 2.6)
    assert archs[0] not in {a for a, _ in bank.entries[0]}


def test_sampler_rescores_its_current_band_only(space: SearchSpace) -> None:
    options = {**BANDS, "performance": {"rescore_every": 3, "bank_size": 4}}
    sampler = make_sampler(space, _spec(options).train)
    assert isinstance(sampler, ComplexityAwareSampler) and sampler.rescore_every == 3
    rng, noise = random.Random(0), random.Random(1)
    for _ in range(200):
        for arch in sampler.step(rng):
            sampler.observe(arch, _fake_loss(space, arch, noise))
    band = sampler.bucket
    assert band is not None
    before = copy.deepcopy(sampler.bank.entries)
    scored: list[ArchConfig] = []

    def reversed_loss(arch: ArchConfig) -> float:
        scored.append(arch)
        return space.flops(arch) / 1e6  # the opposite of _fake_loss: now the smallest arch is best

    sampler.rescore(reversed_loss)
    assert scored == [arch for arch, _ in before[band]]
    assert sampler.bank.best(band) == min((a for a, _ in before[band]), key=space.flops)
    assert sampler.bank.best(band) != min(before[band], key=lambda e: e[1])[0]
    assert all(sampler.bank.entries[b] == before[b] for b in range(len(before)) if b != band)
    off = make_sampler(space, _spec({**BANDS, "performance": False}).train)
    assert off.rescore_every == 0


def test_width_over_depth_pick_rule() -> None:
    # The smallest ratio not below the reference wins; below it all, the largest; ties go to the first.
    assert width_depth_pick([0.5, 1.4, 1.1, 2.0], reference=1.0) == 2
    assert width_depth_pick([0.5, 0.9, 0.7], reference=1.0) == 1
    assert width_depth_pick([1.2, 1.0, 1.0], reference=1.0) == 1
    assert width_depth_pick([0.3, 0.3], reference=1.0) == 0


def test_width_over_depth_pick_follows_the_first_ready_bank(space: SearchSpace, monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    options = {**BANDS, "performance": {"bank_size": 2, "candidates": 3, "probability": {"start": 0.0,
                                                                                          "step": 0.0}}}
    sampler = make_sampler(space, _spec(options).train)
    assert isinstance(sampler, ComplexityAwareSampler)
    rng = random.Random(0)
    archs = sorted({space.sample(rng) for _ in range(300)}, key=lambda a: width_depth_ratio(space, a))
    ratios = [width_depth_ratio(space, a) for a in archs]
    assert ratios[0] < ratios[len(ratios) // 2] < ratios[-1]
    wide_shallow, middle, narrow_deep = archs[-1], archs[len(archs) // 2], archs[0]
    sampler.bucket = 5
    draws = [narrow_deep, wide_shallow, middle]
    monkeypatch.setattr(sampler, "_draw", lambda r, b: draws[len(calls) - 1] if calls.append(b) is None else None)
    calls: list[int] = []
    assert sampler.pick(rng) == narrow_deep and calls == [5]  # no bank ready anywhere: one candidate
    # Band 3's bank is the first ready one; its best arch (loss 0.1) sets the reference ratio.
    sampler.bank.add(3, middle, 0.1)
    sampler.bank.add(3, narrow_deep, 0.9)
    sampler.bank.add(6, wide_shallow, 0.0)  # a later band, even with a better loss, is not the reference
    sampler.bank.add(6, narrow_deep, 0.5)
    assert sampler.reference(5) == middle
    calls.clear()
    assert sampler.pick(rng) == middle and len(calls) == 3  # ratio equal to the reference: nothing closer above
    sampler.bank.entries[3] = [(wide_shallow, 0.1), (narrow_deep, 0.9)]
    calls.clear()
    assert sampler.pick(rng) == wide_shallow  # nothing reaches the reference ratio: the widest-over-depth
    sampler.bank.entries[3] = [(narrow_deep, 0.1), (middle, 0.9)]
    draws = [wide_shallow, middle, wide_shallow]
    calls.clear()
    assert sampler.pick(rng) == middle  # both are above the reference: the closer one


# ---- the trainer's side: probability averaging, clipping, re-scoring, alpha-divergence -----------------
def test_random_mean_averages_probabilities_not_logits() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(5, 10) * 3, torch.randn(5, 10) * 3
    target = mean_probability_target([a, b])
    expected = (F.softmax(a, -1) + F.softmax(b, -1)) / 2
    assert torch.allclose(F.softmax(target, -1), expected, atol=1e-6)
    assert not torch.allclose(F.softmax((a + b) / 2, -1), expected, atol=1e-3)  # the logit mean differs
    assert torch.equal(mean_probability_target([a]), a)


def test_random_mean_student_learns_the_mean_probabilities(space: SearchSpace) -> None:
    """Through the training step: the student's gradient is KL's toward the teachers' mean probabilities."""
    spec = _spec({"name": "uniform", "step": ["random", "random", "min"]}, distill={"teacher": "random_mean"})
    rng = random.Random(0)
    archs = [space.sample(rng), space.sample(rng), space.smallest()]
    roles = spec.train.distill.roles(spec.train.slots)
    assert roles == ("teacher", "teacher", "student")
    images, labels = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    torch.manual_seed(0)
    model = Supernet(space).eval()
    _backward_step(model, archs[2:], ("label",), images, labels, spec.train.distill, None)  # warm: shapes only
    model.zero_grad(set_to_none=True)
    _backward_step(model, archs, roles, images, labels, spec.train.distill, None)
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        probabilities = []
        for arch in archs[:2]:
            model.set_active(arch)
            probabilities.append(F.softmax(model(images), -1))
    for arch in archs[:2]:
        model.set_active(arch)
        F.cross_entropy(model(images), labels).backward()
    model.set_active(archs[2])
    mean = (probabilities[0] + probabilities[1]) / 2
    F.kl_div(F.log_softmax(model(images), -1), mean, reduction="batchmean").backward()
    for name, param in model.named_parameters():
        if param.grad is not None:
            assert torch.allclose(got[name], param.grad, atol=1e-5), name


def _params_with_grads() -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    conv = torch.nn.Parameter(torch.randn(3, 2, 3, 3))
    linear = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [0.0, 0.0005]]))
    bias = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    conv.grad = torch.randn(3, 2, 3, 3)
    linear.grad = torch.tensor([[0.03, 0.04], [1.0, 0.0]])
    bias.grad = torch.tensor([0.3, 0.4])
    return [conv, linear, bias]


def test_adaptive_clipping_matches_a_hand_computation() -> None:
    conv, linear, bias = _params_with_grads()
    conv_grad = conv.grad.clone()  # type: ignore[union-attr]
    adaptive_clip_([conv, linear, bias], factor=0.02)
    # linear row 0: |W| = 5, limit 0.1 > |G| = 0.05: unchanged. Row 1: |W| = 5e-4 < eps 1e-3 -> floor 1e-3,
    # limit 2e-5, |G| = 1: scaled to norm 2e-5.
    assert torch.allclose(linear.grad, torch.tensor([[0.03, 0.04], [2e-5, 0.0]]))  # type: ignore[arg-type]
    # bias (one unit): |W| = sqrt(5), limit 0.02 sqrt(5) ~ 0.0447 < |G| = 0.5: scaled by 0.0447 / 0.5.
    assert torch.allclose(bias.grad, torch.tensor([0.3, 0.4]) * 0.02 * math.sqrt(5) / 0.5)  # type: ignore[arg-type]
    # conv: per output filter, norm min(|G_i|, 0.02 |W_i|).
    for i in range(3):
        limit = 0.02 * conv[i].norm().item()
        expected = conv_grad[i] * min(1.0, limit / conv_grad[i].norm().item())
        assert torch.allclose(conv.grad[i], expected, atol=1e-7)  # type: ignore[index]


@pytest.mark.parametrize("kind", ["norm", "value", "adaptive", "none"])
def test_each_clip_kind(kind: str) -> None:
    params = _params_with_grads()
    before = [p.grad.clone() for p in params]  # type: ignore[union-attr]
    clip = ClipSpec(kind=kind, max=0.5) if kind != "none" else ClipSpec(kind="none")
    clip_gradients(params, clip)
    after = [p.grad for p in params]
    if kind == "norm":
        total = torch.sqrt(sum((g ** 2).sum() for g in after))  # type: ignore[operator, misc]
        assert total == pytest.approx(0.5, rel=1e-4)
        ratio = after[0] / before[0]  # type: ignore[operator]
        assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio))  # one scale for everything
    elif kind == "value":
        for b, a in zip(before, after, strict=True):
            assert torch.equal(a, b.clamp(-0.5, 0.5))  # type: ignore[arg-type]
    elif kind == "adaptive":
        reference = _params_with_grads()
        adaptive_clip_(reference, 0.5)
        assert all(torch.equal(a, r.grad) for a, r in zip(after, reference, strict=True))  # type: ignore[arg-type]
    else:
        assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))  # type: ignore[arg-type]


def test_clip_defaults() -> None:
    assert _spec("sandwich").train.gradient_clip == ClipSpec(kind="norm") and ClipSpec(kind="norm").limit == 5.0
    elastic = _spec(BANDS).train.gradient_clip
    assert elastic.kind == "adaptive" and elastic.limit == 0.02  # ElasticViT's recipe for complexity_aware
    assert ClipSpec(kind="value").limit == 1.0 and ClipSpec(kind="none").limit is None
    assert _spec(BANDS, clip="none").train.gradient_clip.kind == "none"
    assert _spec("uniform", clip={"kind": "value", "max": 2.0}).train.gradient_clip.limit == 2.0


def test_adaptive_alpha_divergence_takes_the_larger_divergence() -> None:
    """Per sample, the loss's gradient is the gradient of max(D_alpha_min, D_alpha_max), computed here from the
    closed forms (D_-1(p||q) = sum q (q/p - 1) / 2, D_1 = KL(p || q)); taking the min would fail."""
    torch.manual_seed(3)
    teacher = torch.randn(64, 6) * 0.4
    student = torch.randn(64, 6) * 0.4
    p = F.softmax(teacher, -1)
    assert (F.softmax(student, -1) / p).max() < 5.0  # below AlphaNet's importance-weight clip: exact forms apply

    def closed_form_grad(pick: Any) -> torch.Tensor:
        logits = student.clone().requires_grad_(True)
        q = F.softmax(logits, -1)
        minus = (q * (q / p - 1.0)).sum(-1) / 2.0
        kl = (p * (p.log() - q.log())).sum(-1)
        pick(minus, kl).mean().backward()
        assert logits.grad is not None
        return logits.grad

    logits = student.clone().requires_grad_(True)
    alpha_divergence_loss(logits, teacher, -1.0, 1.0).backward()
    assert logits.grad is not None
    larger, smaller = closed_form_grad(torch.maximum), closed_form_grad(torch.minimum)
    with torch.no_grad():
        q = F.softmax(student, -1)
        minus = (q * (q / p - 1.0)).sum(-1) / 2.0
        kl = (p * (p.log() - q.log())).sum(-1)
    assert 0 < int((minus > kl).sum()) < len(kl)  # both sides win somewhere
    assert torch.allclose(logits.grad, larger, atol=1e-6)
    assert not torch.allclose(logits.grad, smaller, atol=1e-4)


def test_rescoring_on_the_batch_leaves_the_model_unchanged(space: SearchSpace) -> None:
    from nas.train import rescore_on_batch

    class Recorder(ComplexityAwareSampler):
        def rescore(self, evaluate_loss: Any) -> None:
            self.losses = [evaluate_loss(arch) for arch in (space.largest(), space.smallest(), space.largest())]

    torch.manual_seed(0)
    model = Supernet(space).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sampler = Recorder(space, _spec(BANDS).train)
    images, labels = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    rescore_on_batch(model, sampler, images, labels)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm stats restored
    assert all(p.grad is None for p in model.parameters())
    assert sampler.losses[0] == sampler.losses[2] and all(math.isfinite(v) for v in sampler.losses)
    model.set_active(space.smallest())
    with torch.no_grad():
        assert sampler.losses[1] == pytest.approx(F.cross_entropy(model(images), labels).item(), rel=1e-6)


def test_elasticvit_recipe_trains_and_resumes_exactly(tmp_path: Path) -> None:
    """Bands, per-band min, re-scoring every 2 steps, the width-over-depth pick, probability averaging and AGC:
    killed after epoch 1 and resumed, the run ends exactly where the uninterrupted one does."""
    torch.set_num_threads(1)
    raw = _raw()
    raw["data"]["limit"] = 400
    raw["train"].update(epochs=2, sampler={**BANDS, "performance": {"rescore_every": 2, "bank_size": 2,
                                                                     "probability": {"start": 0.5}}},
                        distill={"teacher": "random_mean"})
    spec = parse_spec(raw, "tiny.yaml")
    assert spec.train.gradient_clip.kind == "adaptive"
    splits = load(spec.data)
    space = SearchSpace.from_spec(spec, splits.in_channels, splits.num_classes)
    calls: list[int] = []
    original = ComplexityAwareSampler.rescore

    def counting(self: ComplexityAwareSampler, evaluate_loss: Any) -> None:
        calls.append(sum(len(bank) for bank in self.bank.entries))
        original(self, evaluate_loss)

    ComplexityAwareSampler.rescore = counting  # type: ignore[method-assign]
    try:
        train_supernet(spec, space, splits, tmp_path / "straight", progress=False)
    finally:
        ComplexityAwareSampler.rescore = original  # type: ignore[method-assign]
    assert len(calls) >= 3 and max(calls) > 0  # re-scoring ran, on non-empty banks
    crashed = tmp_path / "resumed" / "checkpoints"
    crashed.mkdir(parents=True)
    (crashed / "epoch_1.pt").write_bytes((tmp_path / "straight" / "checkpoints" / "epoch_1.pt").read_bytes())
    train_supernet(spec, space, splits, tmp_path / "resumed", resume=True, progress=False)
    a = torch.load(tmp_path / "straight" / "checkpoints" / "epoch_2.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "epoch_2.pt", weights_only=True)
    assert a["sampler"] == b["sampler"] and a["rng"] == b["rng"] and "bounds" in a["sampler"]
    assert sum(len(bank) for bank in a["sampler"]["banks"]) > 0
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name


# ---- validation of the new options -----------------------------------------------------------------------
@pytest.mark.parametrize(("train", "expected"), [
    ({"sampler": {"name": "complexity_aware", "bands": 1}},
     "tiny.yaml: train.sampler.bands.count: Input should be greater than or equal to 2 (got 1)"),
    ({"sampler": {"name": "complexity_aware", "bands": {"targets_mflops": [0.1, 0.2]}}},
     "tiny.yaml: train.sampler.bands: `targets_mflops` needs `width_mflops`"),
    ({"sampler": {"name": "complexity_aware", "bands": {"targets_mflops": [0.1, 0.15], "width_mflops": 0.05}}},
     "tiny.yaml: train.sampler.bands: bands must not touch: target 0.15 must be more than width_mflops (0.05) "
     "above the previous target 0.1"),
    ({"sampler": {"name": "complexity_aware", "bands": {"count": 4, "targets_mflops": [0.1], "width_mflops": 1}}},
     "tiny.yaml: train.sampler.bands: give either `count` (automatic targets) or `targets_mflops`, not both"),
    ({"sampler": {"name": "complexity_aware", "bands": {"width_mflops": -1}}},
     "tiny.yaml: train.sampler.bands.width_mflops: Input should be greater than 0 (got -1)"),
    ({"sampler": {"name": "complexity_aware", "buckets": 4, "bands": 4}},
     "tiny.yaml: train.sampler.bands: give one of `bands`, `buckets` (quantile edges) or `edges_mflops`, but got "
     "`bands` and `buckets`"),
    ({"sampler": {"name": "complexity_aware", "bands": {"target_mflops": [1]}}},
     "tiny.yaml: train.sampler.bands.target_mflops: unknown key 'target_mflops'; did you mean 'targets_mflops'?"),
    ({"sampler": {"name": "sandwich", "bands": 4}},
     "tiny.yaml: train.sampler.bands: only the complexity_aware sampler uses `bands`, but the sampler is "
     "'sandwich'"),
    ({"sampler": {"name": "uniform", "min_arch": "band"}},
     "tiny.yaml: train.sampler.min_arch: only the complexity_aware sampler uses `min_arch`"),
    ({"sampler": {"name": "complexity_aware", "min_arch": "tier"}},
     "tiny.yaml: train.sampler.min_arch: Input should be 'band' or 'global' (got 'tier')"),
    ({"sampler": {"name": "complexity_aware", "performance": {"rescore_every": -1}}},
     "tiny.yaml: train.sampler.performance.rescore_every: Input should be greater than or equal to 0 (got -1)"),
    ({"sampler": {"name": "complexity_aware", "performance": {"pick": "widest"}}},
     "tiny.yaml: train.sampler.performance.pick: Input should be 'width_depth' or 'nearest' (got 'widest')"),
    ({"sampler": {"name": "complexity_aware", "performance": {"enabled": False, "candidates": 2}}},
     "tiny.yaml: train.sampler.performance: performance-aware sampling is off (`enabled: false`), so its other "
     "options are unused"),
    ({"sampler": {"name": "uniform", "performance": False}},
     "tiny.yaml: train.sampler.performance: only the complexity_aware sampler uses `performance`"),
    ({"clip": "adaptve"}, "tiny.yaml: train.clip.kind: Input should be 'norm', 'value', 'adaptive' or 'none'"),
    ({"clip": {"kind": "none", "max": 1.0}}, "tiny.yaml: train.clip.max: `max` is not used with `kind: none`"),
    ({"clip": {"kind": "norm", "max": 0}}, "tiny.yaml: train.clip.max: Input should be greater than 0 (got 0)"),
    ({"clip": {"max": 1.0}}, "tiny.yaml: train.clip.kind: required key is missing"),
    ({"clip": {"kind": "value", "max": float("inf")}}, "tiny.yaml: train.clip.max: Input should be a finite number"),
])
def test_bad_new_options_name_the_field_in_one_line(train: dict[str, Any], expected: str) -> None:
    message = _error(**train)
    assert message.startswith(expected) and "\n" not in message, message


def test_bands_the_space_cannot_hold_are_refused_at_validate_time(space: SearchSpace) -> None:
    beyond = _spec({"name": "complexity_aware", "bands": {"targets_mflops": [0.3, 50.0], "width_mflops": 0.1}})
    with pytest.raises(SpecError, match=r"^tiny.yaml: train.sampler.bands: no arch of the space was found in "
                                        r"band 1 \[50, 50.1\] MFLOPs \(the space spans .*\); move the targets$"):
        check_train(beyond, space, "tiny.yaml")
    wide = _spec({"name": "complexity_aware", "bands": {"count": 8, "width_mflops": 0.2}})
    with pytest.raises(SpecError, match=r"^tiny.yaml: train.sampler.bands.width_mflops: 8 bands 0.2 MFLOPs wide "
                                        r"leave no gap between them .*; the width must be below 0.1"):
        check_train(wide, space, "tiny.yaml")
    raw = _raw()
    raw["space"] = {"resolution": [8], "stem": {"channels": [8], "stride": 1}, "head": {"channels": [16]},
                    "stages": [{"type": "conv", "depth": [1, 1], "channels": [8], "expand": [2], "kernel": [3]}]}
    raw["train"]["sampler"] = "complexity_aware"
    flat = parse_spec(raw, "flat.yaml")
    with pytest.raises(SpecError, match=r"^flat.yaml: train.sampler.bands: every arch of the space costs .* no room"):
        check_train(flat, SearchSpace.from_spec(flat, 1, 10), "flat.yaml")
    check_train(_spec(BANDS), space, "tiny.yaml")


@pytest.mark.parametrize("sampler", [
    "complexity_aware",
    {"name": "complexity_aware", "bands": 6, "min_arch": "global", "performance": False},
    {"name": "complexity_aware", "bands": {"targets_mflops": [0.2, 0.5], "width_mflops": 0.05},
     "performance": {"rescore_every": 0, "pick": "nearest", "candidates": 3}},
])
def test_new_sampler_options_round_trip(sampler: Any) -> None:
    spec = _spec(sampler, clip={"kind": "adaptive", "max": 0.01})
    again = parse_spec(spec.to_dict(), "again")
    assert again == spec and again.spec_hash() == spec.spec_hash()
    # The defaults are written once: `bands: 8`, `performance: true` / `{}` mean the bare sampler.
    for same in ({"name": "complexity_aware", "bands": 8}, {"name": "complexity_aware", "performance": True},
                 {"name": "complexity_aware", "performance": {}}):
        assert _spec(same).to_dict()["train"]["sampler"] == "complexity_aware"
