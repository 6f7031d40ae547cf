"""Multi-objective search: an Optuna engine asked in batches (`nas.engines`), trials run by Ray Tune on workers.

The trained supernet, the evaluation data and the latency models travel to the workers once, through Ray's
object store (`tune.with_parameters`); each worker builds its scorer once and reuses it for every trial it
runs (`reuse_actors`). Every engine runs through the same machinery, so a comparison at an equal candidate
budget measures the engine and nothing else. Each finished candidate reaches the driver's `on_result` at once
(the pipeline commits it to the store), so an interrupted search keeps everything it evaluated.

The embedded Ray binds to 127.0.0.1 with Ray's token authentication on: its dashboard and job-submission API
refuse requests without the token, which lives in a file only this user can read (`ray_token_path`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from nas.engines import BatchedStudy, make_sampler
from nas.errors import NASError
from nas.latency.targets import LatencyModel
from nas.problem import CandidateResult, Problem
from nas.space import ArchConfig, SearchSpace
from nas.spec import Spec


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
    arch = ArchConfig.from_dict(config["arch"])
    result = scorer.score(arch)
    out: dict[str, Any] = {
        "arch_json": arch.canonical_json(),
        "accuracy": result.accuracy,
        "params": result.params,
        "flops": result.flops,
        "latency_flags": json.dumps(result.latency_flags),  # a string: Tune flattens nested dicts in results
    }
    for target, ms in result.latency_ms.items():
        out[f"latency_ms/{target}"] = ms
    return out


# ---- driver side -----------------------------------------------------------------------------------------
def _candidate_from(result: dict[str, Any], targets: Sequence[str]) -> CandidateResult:
    return CandidateResult(
        arch=ArchConfig.from_dict(json.loads(result["arch_json"])),
        accuracy=float(result["accuracy"]),
        params=int(result["params"]),
        flops=int(result["flops"]),
        latency_ms={t: float(result[f"latency_ms/{t}"]) for t in targets},
        latency_flags=json.loads(result.get("latency_flags") or "{}"),
    )


class StudySearcher(Searcher):
    """A Ray Tune searcher that hands out a `BatchedStudy`'s archs and reports each finished one to `on_result`
    first (the store), then to the study. An `on_result` failure ends the search (no new trials) and is
    re-raised by `run_search`."""

    def __init__(self, study: BatchedStudy, targets: Sequence[str],
                 on_result: Callable[[CandidateResult], None]) -> None:
        super().__init__()
        self.study: BatchedStudy | None = study
        self.targets = list(targets)
        self.on_result: Callable[[CandidateResult], None] | None = on_result
        self.pending: dict[str, str] = {}  # Tune trial id -> arch hash
        self.error: BaseException | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its search algorithm with the experiment; the live study and store stay behind."""
        return {**self.__dict__, "study": None, "on_result": None, "pending": {}, "error": None}

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.error is not None or self.study is None:
            return Searcher.FINISHED
        try:
            arch = self.study.next_arch()
        except StopIteration:
            return Searcher.FINISHED
        if arch is None:
            return None
        self.pending[trial_id] = arch.arch_hash()
        return {"arch": arch.to_dict()}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        arch_hash = self.pending.pop(trial_id, None)
        if arch_hash is None or self.study is None:
            return
        ok = bool(result) and not error and "arch_json" in result
        candidate = _candidate_from(result, self.targets) if ok else None
        if candidate is not None and self.error is None and self.on_result is not None:
            try:
                self.on_result(candidate)
            except BaseException as exc:  # noqa: BLE001 - re-raised by run_search once Tune has stopped
                self.error = exc
        self.study.complete(arch_hash, candidate)

    def save_to_dir(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to save: the store holds every result, and a resumed search replays the study from it."""

    def restore_from_dir(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("nas resumes searches from its store (`nas resume`), not from Tune's state")


@dataclass
class RayOptions:
    workers: int = 2
    dashboard: bool = True
    address: str | None = None  # an existing cluster; None starts a local one on 127.0.0.1
    quiet: bool = True


@dataclass
class RayHandle:
    """A connection to Ray: the dashboard URL, where the token is, and whether this process started the cluster."""

    ray: Any
    dashboard_url: str | None
    started_here: bool
    token: str | None = None  # where the dashboard token is (a file path, or the environment variable)
    reaper: Any = None  # the watchdog process of an embedded cluster (nas.reaper)

    def shutdown(self) -> None:
        if not self.started_here:
            return
        self.ray.shutdown()
        if self.reaper is not None and self.reaper.poll() is None:
            self.reaper.terminate()  # it stops whatever the shutdown left of the session, then exits
            try:
                self.reaper.wait(timeout=15)
            except Exception:  # noqa: BLE001 - it finishes on its own once this process exits
                pass


def ray_token_path() -> Path:
    """The file holding the embedded cluster's auth token: `$NAS_RAY_TOKEN_PATH`, else ~/.nas/ray_auth_token."""
    return Path(os.environ.get("NAS_RAY_TOKEN_PATH") or Path.home() / ".nas" / "ray_auth_token")


def ensure_ray_token(path: Path) -> Path:
    """Create the token file (64 hex digits) readable by this user only, or tighten an existing one's mode."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists() or not path.read_text().strip():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return path


def start_ray(options: RayOptions) -> RayHandle:
    """Connect to a Ray cluster, or start a local one on 127.0.0.1 with token authentication on."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Ctrl-C interrupts the job at once (it stays resumable)
    import ray

    if ray.is_initialized():
        return RayHandle(ray, None, False)
    kwargs: dict[str, Any] = {"log_to_driver": not options.quiet, "logging_level": logging.ERROR}
    if options.address:
        context = ray.init(address=options.address, **kwargs)
        token = "RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else os.environ.get("RAY_AUTH_TOKEN_PATH")
        reaper = None
    else:
        os.environ["RAY_AUTH_MODE"] = "token"
        if os.environ.get("RAY_AUTH_TOKEN"):
            token = "$RAY_AUTH_TOKEN"
        else:
            os.environ["RAY_AUTH_TOKEN_PATH"] = token = str(ensure_ray_token(ray_token_path()))
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")  # Ray caches its config at import: make it see token mode (as Ray's own setup does)
        AuthenticationTokenLoader.instance().reset_cache()
        context = ray.init(num_cpus=options.workers, include_dashboard=options.dashboard,
                           dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1", **kwargs)
        from nas import reaper as reaper_module

        reaper = reaper_module.spawn(ray._private.worker._global_node.get_session_dir_path())
    url = getattr(context, "dashboard_url", None)
    url = f"http://{url}" if url and not url.startswith("http") else url
    return RayHandle(ray, url, not options.address, token, reaper)


@dataclass(frozen=True)
class SearchOutcome:
    """Every distinct candidate of the search (stored ones included), and how the search ended."""

    results: list[CandidateResult]
    evaluated: int  # candidates evaluated by this run (the others were read from the store)
    stopped_early: bool  # no new arch in many batches: the engine or the space is spent


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
    on_dashboard: Callable[[RayHandle], None] | None = None,
    stored: dict[str, CandidateResult] | None = None,
) -> SearchOutcome:
    """Search `space` until `candidates` distinct archs have results; `payload` holds what workers need (see
    `_build_scorer`), `stored` the results an interrupted run of the same job already stored (not re-evaluated)."""
    engine = engine or spec.search.engine
    budget = candidates or spec.search.candidates
    problem = Problem.from_spec(spec, targets)
    sampler = make_sampler(engine, spec.search.seed, spec.search.population)
    study = BatchedStudy(space, problem, sampler, spec.search.population, budget, stored)
    evaluated = 0

    def collect(candidate: CandidateResult) -> None:
        nonlocal evaluated
        on_result(candidate)
        evaluated += 1

    try:
        first = study.next_arch()  # a resumed search whose archs are all stored needs no cluster
    except StopIteration:
        return SearchOutcome(list(study.finished_results()), 0, study.stopped_early)
    if first is not None:
        study.requeue(first)
    searcher = StudySearcher(study, targets, collect)
    options = ray_options or RayOptions(workers=spec.search.workers)
    handle = start_ray(options)
    if on_dashboard:
        on_dashboard(handle)
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(_trainable, payload=payload), {"cpu": 1})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tuner = tune.Tuner(
                trainable,
                param_space={},
                tune_config=tune.TuneConfig(search_alg=searcher, num_samples=budget,
                                            max_concurrent_trials=options.workers, reuse_actors=True),
                run_config=tune.RunConfig(name="search", storage_path=str((run_dir / "tune").resolve()), verbose=0,
                                          failure_config=tune.FailureConfig(max_failures=2), log_to_file=True),
            )
            tuner.fit()
    finally:
        handle.shutdown()
    if searcher.error is not None:
        raise searcher.error
    if study.distinct < budget and not study.stopped_early:
        raise NASError(f"the search ended after {study.distinct} of {budget} candidates (see {run_dir / 'tune'})")
    return SearchOutcome(list(study.finished_results()), evaluated, study.stopped_early)
