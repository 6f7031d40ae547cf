"""Search engines (Optuna samplers, one registry) and the batched ask/tell loop that makes a search reproducible.

`BatchedStudy` asks the engine for a fixed batch of trials (NSGA-II: one generation), hands the new archs out
for evaluation in any order on any number of workers, and tells Optuna the whole batch, in ask order, only
once every result of the batch is in. What the engine proposes therefore depends on the seed and the results,
never on which worker finished first or how many there were. The budget counts distinct archs: an arch
proposed again is told its known result and not evaluated twice.

The same replay makes a search resumable: started again with the results already stored, the study asks
exactly the same trials as the interrupted run did (same seed, same answers), so the stored archs are told
from the store and only the rest is evaluated.

The first batch starts with the space's smallest and largest archs (Optuna's `enqueue_trial`): the ends of
every front a user reads, which a random first generation of a space of millions of archs almost never holds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from nas.errors import NASError
from nas.problem import CandidateResult, Problem
from nas.space import ArchConfig, SearchSpace

#: An engine: (seed, population) -> an Optuna sampler. The batch size is the population for every engine.
EngineFactory = Callable[[int, int], Any]
ENGINES: dict[str, EngineFactory] = {}
#: Consecutive batches that brought no new arch before a search stops early (the space or the engine is spent).
MAX_STALE_BATCHES = 20


def register_engine(name: str) -> Callable[[EngineFactory], EngineFactory]:
    def add(factory: EngineFactory) -> EngineFactory:
        if name in ENGINES:
            raise ValueError(f"search engine {name!r} is registered twice")
        ENGINES[name] = factory
        return factory

    return add


@register_engine("nsga2")
def _nsga2(seed: int, population: int) -> Any:
    import optuna

    return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)


@register_engine("random")
def _random(seed: int, population: int) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


@register_engine("tpe")
def _tpe(seed: int, population: int) -> Any:
    import optuna

    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(10, population))


def make_sampler(engine: str, seed: int, population: int) -> Any:
    """The Optuna sampler of a registered engine, seeded."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    factory = ENGINES.get(engine)
    if factory is None:
        raise NASError(f"search.engine: unknown engine '{engine}'; known: {', '.join(ENGINES)}")
    return factory(seed, population)


def extreme_choices(space: SearchSpace) -> list[dict[str, Any]]:
    """The dimension values of the space's smallest and largest archs (each dimension at its first / last
    choice: the spec keeps numbers ascending and attention kinds and activations cheapest first; checked
    against `smallest()` / `largest()`, and left out where the two differ)."""
    dims = space.dimensions()
    ends = [({name: choices[0] for name, choices in dims}, space.smallest()),
            ({name: choices[-1] for name, choices in dims}, space.largest())]
    return [values for values, arch in ends if space.from_choices(values) == arch]


@dataclass
class _Asked:
    trial: Any  # optuna.Trial
    arch: ArchConfig
    arch_hash: str


class BatchedStudy:
    """Optuna ask/tell in fixed batches over the space's dimensions (see the module docstring).

    Lifecycle: `next_arch()` until it returns None (wait for results) or raises StopIteration (done);
    `complete(arch_hash, result)` for every arch handed out (`result=None`: its evaluation failed).
    `stored` holds results known before the run (e.g. from an interrupted run): they are told, never handed out.
    """

    def __init__(self, space: SearchSpace, problem: Problem, sampler: Any, batch_size: int, budget: int,
                 stored: dict[str, CandidateResult] | None = None):
        import optuna

        self.space, self.problem, self.budget = space, problem, budget
        self.batch_size = max(1, batch_size)
        self.study = optuna.create_study(directions=["maximize" if up else "minimize"
                                                     for _, _, up in problem.objectives], sampler=sampler)
        self.distributions = {name: optuna.distributions.CategoricalDistribution(list(choices))
                              for name, choices in space.dimensions()}
        for extreme in extreme_choices(space):
            self.study.enqueue_trial(extreme)
        self.stored = dict(stored or {})
        self.results: dict[str, CandidateResult | None] = {}  # every distinct arch of this run, in ask order
        self.reused: list[CandidateResult] = []  # stored results this run told instead of evaluating
        self._batch: list[_Asked] = []
        self._queue: deque[ArchConfig] = deque()
        self._waiting: set[str] = set()
        self._stale_batches = 0
        self.stopped_early = False

    @property
    def distinct(self) -> int:
        return len(self.results)

    def next_arch(self) -> ArchConfig | None:
        """The next arch to evaluate; None while the batch waits for results; StopIteration when done."""
        while True:
            if self._queue:
                return self._queue.popleft()
            if self._batch:
                return None
            if self.distinct >= self.budget or self.stopped_early:
                raise StopIteration
            before = self.distinct
            self._ask_batch()
            self._stale_batches = 0 if self.distinct > before else self._stale_batches + 1
            if self._stale_batches >= MAX_STALE_BATCHES:
                self.stopped_early = True
            if not self._waiting:
                self._tell_batch()

    def requeue(self, arch: ArchConfig) -> None:
        """Put back an arch taken by `next_arch` but not handed out (it is next again)."""
        self._queue.appendleft(arch)

    def complete(self, arch_hash: str, result: CandidateResult | None) -> None:
        """The result of an arch handed out by `next_arch` (None: it failed)."""
        if arch_hash not in self._waiting:
            raise KeyError(f"arch {arch_hash} was not handed out or was already completed")
        self._waiting.discard(arch_hash)
        self.results[arch_hash] = result
        if not self._waiting and not self._queue:
            self._tell_batch()

    def _ask_batch(self) -> None:
        for _ in range(self.batch_size):
            if self.distinct >= self.budget:
                break
            trial = self.study.ask(self.distributions)
            arch = self.space.from_choices(trial.params)
            arch_hash = arch.arch_hash()
            self._batch.append(_Asked(trial, arch, arch_hash))
            if arch_hash in self.results:
                continue  # asked again: told its known result with the batch
            if arch_hash in self.stored:
                self.results[arch_hash] = self.stored[arch_hash]
                self.reused.append(self.stored[arch_hash])
                continue
            self.results[arch_hash] = None
            self._waiting.add(arch_hash)
            self._queue.append(arch)

    def _tell_batch(self) -> None:
        import optuna

        for asked in self._batch:
            result = self.results.get(asked.arch_hash)
            if result is None:
                self.study.tell(asked.trial, state=optuna.trial.TrialState.FAIL)
                continue
            for i, violation in enumerate(self.problem.violations(result)):
                asked.trial.set_constraint(f"c{i}", violation)
            self.study.tell(asked.trial, [result.value(m, t) for m, t, _ in self.problem.objectives])
        self._batch = []

    def finished_results(self) -> Iterator[CandidateResult]:
        """Every distinct arch's result of this run (stored or evaluated), in ask order; failures left out."""
        return (r for r in self.results.values() if r is not None)
