"""Multi-objective search: Optuna samplers driven by Ray Tune on a local Ray, candidates scored on workers.

The trained supernet, the evaluation data and the latency models travel to the workers once, through Ray's
object store (`tune.with_parameters`); each worker builds its scorer once and reuses it for every trial it
runs (`reuse_actors`). Every engine (NSGA-II, random, TPE) runs through the same machinery, so a comparison
at an equal candidate budget measures the sampler and nothing else. Results reach the driver through a Tune
callback, which hands each finished candidate to `on_result` (the CLI commits it to the store at once).
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback

from nas.errors import NASError
from nas.latency.targets import LatencyModel
from nas.pareto import pareto_indices
from nas.space import ArchConfig, SearchSpace
from nas.spec import Spec

ENGINES = ("nsga2", "random", "tpe")


@dataclass(frozen=True)
class CandidateResult:
    """One scored candidate, as a worker reports it."""

    arch: ArchConfig
    accuracy: float
    params: int
    flops: int
    latency_ms: dict[str, float]
    latency_flags: dict[str, str] = field(default_factory=dict)

    def value(self, metric: str, target: str = "") -> float:
        if metric == "latency":
            return self.latency_ms[target]
        return float(getattr(self, metric))


@dataclass(frozen=True)
class Problem:
    """Objectives and constraints of a spec, expanded over the search's targets."""

    objectives: tuple[tuple[str, str, bool], ...]  # (metric, target, maximise)
    constraints: tuple[tuple[str, str, float | None, float | None], ...]  # (metric, target, min, max)

    @classmethod
    def from_spec(cls, spec: Spec, targets: Sequence[str]) -> Problem:
        objectives = []
        for objective in spec.objectives:
            for target in (targets if objective.metric == "latency" else [""]):
                objectives.append((objective.metric, target, objective.direction == "maximize"))
        constraints = []
        for constraint in spec.constraints:
            metric = "latency" if constraint.metric == "latency_ms" else constraint.metric
            for target in (targets if metric == "latency" else [""]):
                constraints.append((metric, target, constraint.bound.min, constraint.bound.max))
        return cls(tuple(objectives), tuple(constraints))

    def violations(self, result: CandidateResult) -> list[float]:
        """Per constraint: <= 0 when satisfied, else how far it is broken."""
        out = []
        for metric, target, low, high in self.constraints:
            value = result.value(metric, target)
            worst = -math.inf
            if high is not None:
                worst = max(worst, value - high)
            if low is not None:
                worst = max(worst, low - value)
            out.append(worst)
        return out

    def feasible(self, result: CandidateResult) -> bool:
        return all(v <= 0 for v in self.violations(result))

    def front(self, results: Sequence[CandidateResult], target: str) -> list[int]:
        """Indices of the feasible candidates on the Pareto front for one latency target."""
        objectives = [(m, t, up) for m, t, up in self.objectives if m != "latency" or t == target]
        if not any(m == "latency" for m, _, _ in objectives):
            objectives.append(("latency", target, False))
        feasible = [i for i, r in enumerate(results) if self.feasible(r)]
        points = [[results[i].value(m, t) for m, t, _ in objectives] for i in feasible]
        return [feasible[j] for j in pareto_indices(points, [up for _, _, up in objectives])]


class CandidateScorer:
    """Scores archs: inherited-weight accuracy, params, FLOPs and latency on each target."""

    def __init__(self, space: SearchSpace, evaluator: Any, latency: dict[str, LatencyModel]):
        self.space = space
        self.evaluator = evaluator
        self.latency = latency

    def score(self, arch: ArchConfig) -> CandidateResult:
        blocks = self.space.blocks(arch)
        predictions = {name: model.predict(blocks) for name, model in self.latency.items()}
        return CandidateResult(
            arch=arch,
            accuracy=self.evaluator.val_accuracy(arch),
            params=self.space.params(arch),
            flops=self.space.flops(arch),
            latency_ms={name: p.ms for name, p in predictions.items()},
            latency_flags={name: p.flag for name, p in predictions.items() if p.flag},
        )


def make_optuna_sampler(engine: str, spec: Spec) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    seed = spec.search.seed
    if engine == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=spec.search.population, seed=seed)
    if engine == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if engine == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    raise NASError(f"search.engine: unknown engine '{engine}'; known: {', '.join(ENGINES)}")


# ---- worker side -----------------------------------------------------------------------------------------
_WORKER_CACHE: dict[str, CandidateScorer] = {}


def _build_scorer(payload: dict[str, Any]) -> CandidateScorer:
    import torch

    from nas.evaluate import Evaluator
    from nas.spec import SpaceSpec
    from nas.supernet import Supernet

    torch.set_num_threads(1)
    space = SearchSpace(SpaceSpec.model_validate(payload["space"]), payload["in_channels"], payload["num_classes"],
                        payload["deploy_resolution"])
    supernet = Supernet(space)
    supernet.load_state_dict(payload["state_dict"])
    evaluator = Evaluator(supernet.eval(), payload["calibration"], payload["x_val"], payload["y_val"])
    return CandidateScorer(space, evaluator, payload["latency"])


def _trainable(config: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    scorer = _WORKER_CACHE.get(payload["key"])
    if scorer is None:
        _WORKER_CACHE.clear()
        scorer = _WORKER_CACHE[payload["key"]] = _build_scorer(payload)
    arch = scorer.space.from_choices(config)
    result = scorer.score(arch)
    problem: Problem = payload["problem"]
    out: dict[str, Any] = {
        "arch_json": arch.canonical_json(),
        "accuracy": result.accuracy,
        "params": result.params,
        "flops": result.flops,
        "latency_flags": dict(result.latency_flags),
    }
    for target, ms in result.latency_ms.items():
        out[f"latency_ms/{target}"] = ms
    for i, violation in enumerate(problem.violations(result)):
        out[f"constraint/{i}"] = violation
    return out


# ---- driver side -----------------------------------------------------------------------------------------
def _metric_key(metric: str, target: str) -> str:
    return f"latency_ms/{target}" if metric == "latency" else metric


def _constrained_optuna_search(**kwargs: Any) -> Any:
    """Ray Tune's OptunaSearch, telling Optuna each trial's constraint values (`trial.set_constraint`)."""
    from ray.tune.search.optuna import OptunaSearch

    class ConstrainedOptunaSearch(OptunaSearch):
        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if result and trial_id in self._ot_trials:
                for key, value in result.items():
                    if key.startswith("constraint/"):
                        self._ot_trials[trial_id].set_constraint(key, float(value))
            super().on_trial_complete(trial_id, result, error)

    return ConstrainedOptunaSearch(**kwargs)


class _ResultCallback(Callback):
    """Hands each finished trial's candidate to the driver's `collect` as soon as it completes.

    Tune pickles its callbacks with the experiment state; the live `collect` function stays behind.
    """

    def __init__(self, targets: list[str], collect: Callable[[CandidateResult], None]):
        self.targets = targets
        self.collect: Callable[[CandidateResult], None] | None = collect

    def __getstate__(self) -> dict[str, Any]:
        return {"targets": self.targets, "collect": None}

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result
        if not result or "arch_json" not in result or self.collect is None:
            return
        self.collect(CandidateResult(
            arch=ArchConfig.from_dict(json.loads(result["arch_json"])),
            accuracy=float(result["accuracy"]),
            params=int(result["params"]),
            flops=int(result["flops"]),
            latency_ms={t: float(result[f"latency_ms/{t}"]) for t in self.targets},
            latency_flags=dict(result.get("latency_flags") or {}),
        ))


@dataclass
class RayOptions:
    workers: int = 2
    dashboard: bool = True
    address: str | None = None  # an existing cluster; None starts a local one on 127.0.0.1
    quiet: bool = True


def start_ray(options: RayOptions) -> tuple[Any, str | None, bool]:
    """Connect to Ray (or start a local instance on 127.0.0.1). Returns (ray, dashboard URL, started_here)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local, loopback-only run needs no dashboard token
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    import ray

    if ray.is_initialized():
        return ray, None, False
    kwargs: dict[str, Any] = {"log_to_driver": not options.quiet, "logging_level": logging.ERROR}
    if options.address:
        context = ray.init(address=options.address, **kwargs)
    else:
        context = ray.init(num_cpus=options.workers, include_dashboard=options.dashboard,
                           dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1", **kwargs)
    url = getattr(context, "dashboard_url", None)
    return ray, (f"http://{url}" if url and not url.startswith("http") else url), True


def run_search(
    spec: Spec,
    space: SearchSpace,
    payload: dict[str, Any],
    targets: Sequence[str],
    run_dir: Path,
    on_result: Callable[[CandidateResult], None],
    engine: str | None = None,
    candidates: int | None = None,
    ray_options: RayOptions | None = None,
    on_dashboard: Callable[[str], None] | None = None,
) -> list[CandidateResult]:
    """Search `space`; `payload` holds what workers need (see `_build_scorer`). Returns every result."""
    engine = engine or spec.search.engine
    budget = candidates or spec.search.candidates
    problem = Problem.from_spec(spec, targets)
    options = ray_options or RayOptions(workers=spec.search.workers)
    ray, url, started_here = start_ray(options)
    if url and on_dashboard:
        on_dashboard(url)
    from ray import tune

    results: list[CandidateResult] = []

    def collect(candidate: CandidateResult) -> None:
        results.append(candidate)
        on_result(candidate)

    param_space = {name: tune.choice(choices) for name, choices in space.dimensions()}
    search_alg = _constrained_optuna_search(
        sampler=make_optuna_sampler(engine, spec),
        metric=[_metric_key(m, t) for m, t, _ in problem.objectives],
        mode=["max" if up else "min" for _, _, up in problem.objectives],
        space=None,
    )
    payload = {**payload, "problem": problem}
    trainable = tune.with_resources(tune.with_parameters(_trainable, payload=payload), {"cpu": 1})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(search_alg=search_alg, num_samples=budget,
                                            max_concurrent_trials=options.workers, reuse_actors=True),
                run_config=tune.RunConfig(name="search", storage_path=str((run_dir / "tune").resolve()), verbose=0,
                                          callbacks=[_ResultCallback(list(targets), collect)], log_to_file=True),
            )
            tuner.fit()
    finally:
        if started_here:
            ray.shutdown()
    return results
