"""Arch samplers: the contract every sampler keeps, complexity-aware buckets, performance banks, and the
validation of `train.sampler` / `train.distill`."""

from __future__ import annotations

import copy
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from nas.errors import NASError, SpecError
from nas.sampling import (
    ArchSampler,
    ComplexityAwareSampler,
    PerformanceBank,
    check_train,
    make_sampler,
    plan_buckets,
)
from nas.space import ArchConfig, SearchSpace
from nas.spec import ProbabilitySchedule, Spec, TrainSpec, parse_spec

TINY = Path(__file__).resolve().parent / "specs" / "tiny.yaml"
BUCKETED = {"name": "complexity_aware", "buckets": 5, "estimate_samples": 400}
PERFORMANCE = {**BUCKETED, "performance": {"bank_size": 3, "candidates": 3,
                                           "probability": {"start": 0.3, "step": 0.3, "every_epochs": 1}}}


def _spec(sampler: Any = "sandwich", **train: Any) -> Spec:
    raw = yaml.safe_load(TINY.read_text())
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


def _fake_loss(space: SearchSpace, arch: ArchConfig, noise: random.Random) -> float:
    """A loss that falls with FLOPs, plus noise: what a bank should learn from."""
    return 3.0 - space.flops(arch) / 5e5 + noise.random() * 0.1


# ---- the contract every sampler keeps --------------------------------------------------------------------
CONTRACT = {"uniform": "uniform", "sandwich": "sandwich", "complexity_aware": BUCKETED,
            "performance_aware": PERFORMANCE}


@pytest.mark.parametrize("sampler", list(CONTRACT.values()), ids=list(CONTRACT))
def test_sampler_contract(space: SearchSpace, sampler: Any) -> None:
    train = _spec(sampler).train

    def run(s: ArchSampler, rng: random.Random, noise: random.Random, steps: int, epoch0: int) -> list[list[str]]:
        seen = []
        for i in range(steps):
            if i % 20 == 0:
                s.on_epoch_start(epoch0 + i // 20)
            archs = s.step(rng)
            assert archs and len(archs) == len(s.slots)
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


# ---- complexity-aware buckets ----------------------------------------------------------------------------
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), buckets=st.integers(2, 6), limit=st.integers(1, 2),
       attempts=st.sampled_from([0, 8, 32]), walk=st.sampled_from(["balanced", "random"]))
def test_bucket_walk_respects_the_limit_and_visits_every_bucket(space: SearchSpace, seed: int, buckets: int,
                                                                 limit: int, attempts: int, walk: str) -> None:
    options = {"name": "complexity_aware", "buckets": buckets, "max_bucket_step": limit, "attempts": attempts,
               "estimate_samples": 300, "step": ["random", "random"], "walk": walk}
    sampler = make_sampler(space, _spec(options, seed=seed).train)
    assert isinstance(sampler, ComplexityAwareSampler)
    rng = random.Random(seed)
    previous, visits = None, Counter()
    for _ in range(2000):
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
    assert min(visits.values()) > 2000 / buckets / 3  # the symmetric walk spreads steps over the buckets
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
    options = {**BUCKETED, "performance": {"bank_size": 2, "candidates": 3,
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
