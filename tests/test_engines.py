"""The batched ask/tell loop: reproducible whatever the completion order or number of workers, budgets of
distinct archs, and a resume that replays exactly the interrupted search."""

from __future__ import annotations

import random

import pytest

from nas.engines import ENGINES, BatchedStudy, extreme_choices, make_sampler
from nas.errors import NASError
from nas.problem import CandidateResult, Problem
from nas.space import ArchConfig, SearchSpace
from nas.spec import load_spec


@pytest.fixture(scope="module")
def setting(tiny_spec_path):
    spec = load_spec(tiny_spec_path)
    space = SearchSpace(spec.space, 1, 10, spec.deploy.resolution)
    return spec, space, Problem.from_spec(spec, ["dev"])


def score(space: SearchSpace, arch: ArchConfig) -> CandidateResult:
    """A deterministic stand-in for the evaluator: bigger nets are more accurate and slower."""
    flops = space.flops(arch)
    return CandidateResult(arch=arch, accuracy=1 - 1 / (1 + flops / 1e5) + (hash(arch.arch_hash()) % 7) / 1000,
                           params=space.params(arch), flops=flops, latency_ms={"dev": flops / 1e5})


def run(setting, engine: str, budget: int, workers: int, order_seed: int | None = None,
        stored: dict[str, CandidateResult] | None = None, stop_after: int | None = None) -> tuple[list[str], int]:
    """Drive a study as Tune would with `workers` slots, completing in a random order; returns the archs in ask
    order and how many were evaluated."""
    spec, space, problem = setting
    study = BatchedStudy(space, problem, make_sampler(engine, 3, 4), 4, budget, stored)
    rng = random.Random(order_seed)
    running: list[ArchConfig] = []
    evaluated = 0
    while True:
        while len(running) < workers:
            try:
                arch = study.next_arch()
            except StopIteration:
                arch = None
                if not running:
                    return [h for h, r in study.results.items() if r is not None], evaluated
            if arch is None:
                break
            running.append(arch)
        done = running.pop(rng.randrange(len(running)) if order_seed is not None else 0)
        study.complete(done.arch_hash(), score(space, done))
        evaluated += 1
        if stop_after is not None and evaluated >= stop_after:
            return [h for h, r in study.results.items() if r is not None], evaluated


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_same_seed_same_candidates_whatever_the_workers_and_order(setting, engine: str) -> None:
    one, _ = run(setting, engine, 20, workers=1)
    two, _ = run(setting, engine, 20, workers=2, order_seed=1)
    five, _ = run(setting, engine, 20, workers=5, order_seed=2)
    assert one == two == five
    assert len(one) == len(set(one)) == 20


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_resume_replays_the_interrupted_search(setting, engine: str) -> None:
    _, space, _ = setting
    full, evaluated = run(setting, engine, 20, workers=2, order_seed=4)
    assert evaluated == 20
    partial, _ = run(setting, engine, 20, workers=2, order_seed=5, stop_after=7)
    assert len(partial) == 7 and set(partial) <= set(full)
    by_hash = {h: score(space, ArchConfig.from_dict(ARCHS[h])) for h in partial}
    resumed, evaluated_again = run(setting, engine, 20, workers=3, order_seed=6, stored=by_hash)
    assert resumed == full
    assert evaluated_again == 20 - 7  # nothing stored is evaluated again


ARCHS: dict[str, dict] = {}


@pytest.fixture(autouse=True)
def _record_archs(monkeypatch):
    """Remember every arch handed out, by hash, so stored results can be rebuilt."""
    original = BatchedStudy._ask_batch

    def recording(self: BatchedStudy) -> None:
        original(self)
        for asked in self._batch:
            ARCHS[asked.arch_hash] = asked.arch.to_dict()

    monkeypatch.setattr(BatchedStudy, "_ask_batch", recording)


def test_budget_counts_distinct_archs_and_a_spent_space_stops(setting) -> None:
    spec, space, problem = setting
    # A space of 2 archs cannot give 5 distinct candidates: the study stops early instead of looping forever.
    small = SearchSpace(spec.space.model_copy(update={"stages": spec.space.stages[:1]}), 1, 10)
    tiny = small.spec.model_copy(update={
        "stem": small.spec.stem.model_copy(update={"channels": [8]}),
        "head": small.spec.head.model_copy(update={"channels": [32]}),
        "stages": [small.spec.stages[0].model_copy(update={"channels": [8], "expand": [2]})],
    })
    space2 = SearchSpace(tiny, 1, 10)
    assert space2.count() == 2
    study = BatchedStudy(space2, problem, make_sampler("random", 0, 4), 4, 5)
    seen = []
    while True:
        try:
            arch = study.next_arch()
        except StopIteration:
            break
        assert arch is not None
        seen.append(arch.arch_hash())
        study.complete(arch.arch_hash(), score(space2, arch))
    assert len(seen) == len(set(seen)) == 2 and study.stopped_early


def test_a_failed_evaluation_is_told_as_failed_and_counts(setting) -> None:
    _, space, problem = setting
    study = BatchedStudy(space, problem, make_sampler("nsga2", 0, 4), 4, 4)
    archs = [study.next_arch() for _ in range(4)]
    assert all(a is not None for a in archs) and study.next_arch() is None  # waits for the batch
    for arch in archs[:-1]:
        study.complete(arch.arch_hash(), score(space, arch))
    study.complete(archs[-1].arch_hash(), None)
    with pytest.raises(StopIteration):
        study.next_arch()
    states = [t.state.name for t in study.study.trials]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") == 3
    with pytest.raises(KeyError):
        study.complete(archs[0].arch_hash(), None)


def test_unknown_engine_lists_the_known_ones() -> None:
    with pytest.raises(NASError, match="known: .*nsga2"):
        make_sampler("annealing", 0, 4)


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_search_starts_with_the_smallest_and_the_largest_arch(setting, engine: str) -> None:
    """The ends of every front: asked first whatever the engine, then the engine's own proposals."""
    _, space, _ = setting
    archs, _ = run(setting, engine, 8, workers=2)
    assert archs[:2] == [space.smallest().arch_hash(), space.largest().arch_hash()]
    assert len(set(archs)) == 8


def test_extreme_choices_rebuild_the_smallest_and_the_largest(setting) -> None:
    _, space, _ = setting
    ends = extreme_choices(space)
    assert [space.from_choices(values) for values in ends] == [space.smallest(), space.largest()]
