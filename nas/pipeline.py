"""The service's use cases, each a function the CLI calls: train, search, measure latency, export.

Data flows one way: spec -> space -> supernet -> evaluation + latency -> search -> store -> export.
Nothing here prints; progress and messages go through the `log` callback the caller passes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from nas.constraints import check_feasible, check_size
from nas.data import Splits, check_source, data_hash, load
from nas.errors import NASError
from nas.evaluate import Evaluator, accuracy, make_evaluator
from nas.export import load_export, plan_export, write_export
from nas.files import exclusive_lock
from nas.finetune import FinetuneResult, Recipe, finetune_candidate, finetune_front, finetuned_weights
from nas.latency.targets import LatencyModel, load_target
from nas.lifecycle import Heartbeat, owner_gone, this_host
from nas.problem import CandidateResult, Problem
from nas.sampling import check_train
from nas.search import RayHandle, RayOptions, run_search
from nas.space import ArchConfig, SearchSpace
from nas.spec import Spec, load_spec, parse_spec
from nas.store import CandidateRecord, Metric, Store
from nas.supernet import Supernet
from nas.train import FINAL_NAME, load_supernet, train_supernet

Log = Callable[[str], None]
SUPERNET_ARTIFACT = "supernet"


def runs_dir() -> Path:
    """Where run directories live: `NAS_RUNS`, else `./runs`."""
    return Path(os.environ.get("NAS_RUNS", "runs"))


@dataclass
class Context:
    """A validated spec with its data and space."""

    spec: Spec
    splits: Splits
    space: SearchSpace

    @cached_property
    def supernet_key(self) -> str:
        """Spec (space, data, training) and data content; computed once (hashing a large folder's listing)."""
        return f"{self.spec.training_hash()}-{data_hash(self.spec.data)}"


def load_checked(spec_path: str | Path) -> Spec:
    """A spec that passed every check that needs no data: schema, sampler buckets, teacher file, data files."""
    spec, _ = validate(spec_path)
    return spec


def load_context(spec: Spec) -> Context:
    splits = load(spec.data)
    for name, declared, found in (("channels", spec.data.channels, splits.in_channels),
                                  ("classes", spec.data.classes, splits.num_classes)):
        if declared is not None and declared != found:
            raise NASError(f"data.{name}: the spec declares {declared}, but the data has {found}")
    return Context(spec, splits, SearchSpace.from_spec(spec, splits.in_channels, splits.num_classes))


def validate(spec_path: str | Path) -> tuple[Spec, int]:
    """Validate a spec (including that its data set exists); returns it and the size of its space.

    The space is counted without loading the data (input channels and classes do not change the count); it
    must hold at least `search.candidates` archs, and every constraint must be within reach of some arch.
    """
    spec = load_spec(spec_path)
    space = SearchSpace(spec.space, 1, 2, spec.deploy.resolution)
    count = space.count()
    check_size(spec, count, str(spec_path))
    check_feasible(spec, str(spec_path))
    check_train(spec, space, str(spec_path))
    check_source(spec.data, where=f"{spec_path}: data")
    return spec, count


def ensure_supernet(ctx: Context, store: Store, log: Log, resume: bool = False, retrain: bool = False,
                    progress: bool = True) -> Supernet:
    """The trained supernet for this spec and data: reused from the store when one exists, else trained.

    Finding, training and storing hold an exclusive lock on `runs/supernets/<key>.lock`: a second process
    wanting the same supernet waits for the first, then finds and reuses what it stored (never trains twice,
    never shares its checkpoint folder with a concurrent run).
    """
    key = ctx.supernet_key
    lock = runs_dir() / "supernets" / f"{key}.lock"
    waited: list[float] = []

    def on_wait() -> None:
        waited.append(time.perf_counter())
        log(f"another process is training supernet {key}; waiting for it (lock {lock})")

    with exclusive_lock(lock, on_wait):
        if waited:
            log(f"waited {time.perf_counter() - waited[0]:.0f} s for supernet {key}; checking the store again")
        found = store.find_artifact(SUPERNET_ARTIFACT, key)
        if found and Path(found).exists() and not retrain and not resume:
            log(f"reusing trained supernet {found}")
            return load_supernet(ctx.space, Path(found))
        run_dir = runs_dir() / "supernets" / key
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "spec.json").write_text(json.dumps(ctx.spec.to_dict(), indent=1))
        log(f"training supernet ({ctx.spec.train.epochs} epochs, sampler {ctx.spec.train.sampler}) in {run_dir}")
        result = train_supernet(ctx.spec, ctx.space, ctx.splits, run_dir, resume=resume, progress=progress)
        log(f"trained {result.steps} steps in {result.seconds:.0f} s (last loss {result.last_loss:.3f})")
        store.put_artifact(SUPERNET_ARTIFACT, key, str(result.checkpoint.resolve()))
    return load_supernet(ctx.space, result.checkpoint)


def load_targets(names: Sequence[str], space: SearchSpace, spec_path: str | Path) -> dict[str, LatencyModel]:
    if not names:
        raise NASError("--target: name at least one latency target (e.g. --target host)")
    models = {}
    blocks = space.distinct_blocks()
    for name in dict.fromkeys(names):
        model = load_target(name)
        model.check_covers(blocks, hint=f" --spec {spec_path}")
        models[name] = model
    return models


def candidate_metrics(result: CandidateResult) -> list[Metric]:
    metrics = [Metric("accuracy", result.accuracy), Metric("params", float(result.params)),
               Metric("flops", float(result.flops))]
    metrics += [Metric("latency_ms", ms, target, result.latency_flags.get(target, ""))
                for target, ms in result.latency_ms.items()]
    return metrics


def _with_overrides(spec: Spec, engine: str | None, candidates: int | None) -> Spec:
    """The spec the job really runs (command-line overrides folded in), stored with the job so that
    `nas resume` continues exactly that search."""
    updates = {k: v for k, v in (("engine", engine), ("candidates", candidates)) if v is not None}
    if not updates:
        return spec
    where = "command line (--engine/--candidates)"
    spec = parse_spec(spec.model_copy(update={"search": spec.search.model_copy(update=updates)}).to_dict(), where)
    check_size(spec, SearchSpace(spec.space, 1, 2, spec.deploy.resolution).count(), where)
    return spec


def search_job(spec_path: str | Path, targets: Sequence[str], store: Store, log: Log, engine: str | None = None,
               candidates: int | None = None, export: bool = True, progress: bool = True,
               ray_options: RayOptions | None = None) -> tuple[int, list[CandidateRecord]]:
    """The whole run: validate, train or reuse the supernet, search, store, test the front, export it."""
    spec = _with_overrides(load_checked(spec_path), engine, candidates)
    ctx = load_context(spec)
    models = load_targets(targets, ctx.space, spec_path)  # fail before anything is stored
    supernet = ensure_supernet(ctx, store, log, progress=progress)
    job_id = store.create_job(spec.name or Path(spec_path).stem, spec.to_dict(), spec.spec_hash(), list(models), "",
                              pid=os.getpid(), host=this_host())
    return job_id, _run_job(job_id, ctx, supernet, models, store, log, {}, export, progress, ray_options)


def resume_job(job_id: int, store: Store, log: Log, export: bool = True, progress: bool = True,
               ray_options: RayOptions | None = None) -> tuple[int, list[CandidateRecord]]:
    """Continue an interrupted (or failed) job: its stored candidates are told to the engine without being
    evaluated again, the rest of the budget is searched, then the front is tested and exported.

    The job is claimed atomically first: a second `nas resume` of the same job, or a resume of a job whose
    process is still alive, is refused."""
    claimed = store.claim_job(job_id, os.getpid(), this_host(), owner_gone)
    status = "failed"
    try:
        spec = parse_spec(claimed.spec, f"job {job_id} spec")
        ctx = load_context(spec)
        models = load_targets(list(claimed.targets), ctx.space, f"(job {job_id})")
        supernet = ensure_supernet(ctx, store, log, progress=progress)
        stored = {r.arch_hash: result for r in store.candidates(job_id)
                  if (result := stored_result(r, claimed.targets)) is not None}
        log(f"resuming job {job_id}: {len(stored)} of {spec.search.candidates} candidates already stored")
        status = "running"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        if status != "running":
            store.finish_job(job_id, status)
    return job_id, _run_job(job_id, ctx, supernet, models, store, log, stored, export, progress, ray_options)


def stored_result(record: CandidateRecord, targets: Sequence[str]) -> CandidateResult | None:
    """A stored candidate as the search engine saw it (None when a metric the search needs is missing)."""
    values = {name: record.metric(name) for name in ("accuracy", "params", "flops")}
    latency = {t: record.metric("latency_ms", t) for t in targets}
    if any(v is None for v in values.values()) or any(v is None for v in latency.values()):
        return None
    flags = record.to_json()["flags"]
    return CandidateResult(arch=ArchConfig.from_dict(record.arch), accuracy=float(values["accuracy"]),
                           params=int(values["params"]), flops=int(values["flops"]),
                           latency_ms={t: float(v) for t, v in latency.items() if v is not None},
                           latency_flags={t: flags[t] for t in targets if t in flags})


def _run_job(job_id: int, ctx: Context, supernet: Supernet, models: dict[str, LatencyModel], store: Store, log: Log,
             stored: dict[str, CandidateResult], export: bool, progress: bool,
             ray_options: RayOptions | None) -> list[CandidateRecord]:
    """Search, store each candidate as it finishes, then the fronts, test accuracies and exports. The job ends
    `done`, `interrupted` (Ctrl-C / SIGTERM: its candidates are kept, nothing pretends to be final) or `failed`."""
    spec, names = ctx.spec, list(models)
    run_dir = runs_dir() / f"job_{job_id}"
    run_dir.mkdir(parents=True, exist_ok=True)
    store.set_run_dir(job_id, str(run_dir.resolve()))
    (run_dir / "spec.json").write_text(json.dumps(spec.to_dict(), indent=1))
    status = "failed"
    try:
        with Heartbeat(store, job_id, os.getpid()):
            evaluator = make_evaluator(supernet, ctx.splits.x_train, ctx.splits.x_val, ctx.splits.y_val,
                                       spec.search.val_images, spec.search.calibration_images)
            payload: dict[str, Any] = {
                "key": f"{ctx.supernet_key}-{job_id}",
                "space": spec.space.model_dump(mode="json"),
                "in_channels": ctx.space.in_channels,
                "num_classes": ctx.space.num_classes,
                "deploy_resolution": ctx.space.deploy_resolution,
                "state_dict": supernet.state_dict(),
                "calibration": evaluator.calibration,
                "x_val": evaluator.x_val,
                "y_val": evaluator.y_val,
                "latency": models,
            }
            ids = {r.arch_hash: r.candidate_id for r in store.candidates(job_id)}
            budget = spec.search.candidates
            bar = _progress_bar(budget, f"search ({spec.search.engine})", progress, initial=min(len(stored), budget))

            def on_result(result: CandidateResult) -> None:
                arch_hash = result.arch.arch_hash()
                ids[arch_hash] = store.add_candidate(job_id, result.arch.to_dict(), arch_hash,
                                                     candidate_metrics(result))
                bar.update(1)
                bar.set_postfix(acc=f"{result.accuracy:.3f}")

            def on_dashboard(ray: RayHandle) -> None:
                if ray.dashboard_url:
                    log(f"Ray dashboard: {ray.dashboard_url}" + (f" (token: {ray.token})" if ray.token else ""))

            outcome = run_search(spec, ctx.space, payload, names, run_dir, on_result, ray_options=ray_options,
                                 on_dashboard=on_dashboard, stored=stored)
            bar.close()
            if outcome.stopped_early:
                log(f"job {job_id}: the engine proposed no new arch in many batches; stopped at "
                    f"{len(outcome.results)} of {budget} candidates")
            # Candidates an earlier run stored that this replay did not ask for again still count.
            seen = {r.arch.arch_hash() for r in outcome.results}
            results = outcome.results + [r for h, r in stored.items() if h not in seen]
            if spec.search.mpcvit is not None:
                results += _head_search(ctx, supernet, evaluator, models, results, on_result, log)
            if not results:
                raise NASError(f"job {job_id}: the search produced no candidates (see {run_dir / 'tune'})")
            _store_fronts(job_id, ctx, evaluator, results, ids, names, store, log, run_dir if export else None)
        status = "done"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        store.finish_job(job_id, status)
    front_records = {r.candidate_id: r for t in names for r in store.pareto(job_id, t)}
    return sorted(front_records.values(), key=lambda r: r.metric("latency_ms", names[0]) or 0.0)


def _head_search(ctx: Context, supernet: Supernet, evaluator: Evaluator, models: dict[str, LatencyModel],
                 results: list[CandidateResult], on_result: Callable[[CandidateResult], None],
                 log: Log) -> list[CandidateResult]:
    """`search.mpcvit`: MPCViT's head search on the first target; its archs not yet among `results`, scored
    and stored as candidates (returned)."""
    from nas.mpcvit import search_heads
    from nas.search import CandidateScorer

    spec = ctx.spec
    mpcvit = spec.search.mpcvit
    assert mpcvit is not None
    base = (ctx.space.largest() if mpcvit.arch == "largest" else
            ArchConfig.from_dict((spec.presets or {})[mpcvit.arch].arch_dict()))
    target = next(iter(models))
    found = search_heads(supernet, evaluator, base, mpcvit, models[target], ctx.splits.x_train, spec.search.seed, log)
    known = {r.arch.arch_hash() for r in results}
    scorer = CandidateScorer(ctx.space, evaluator, models)
    new = []
    for arch in found.archs:
        if arch.arch_hash() in known:
            continue
        result = scorer.score(arch)
        on_result(result)
        new.append(result)
    log(f"mpcvit: {len(new)} new candidate(s) from the head search on {target}")
    return new


def _store_fronts(job_id: int, ctx: Context, evaluator: Evaluator, results: list[CandidateResult],
                  ids: dict[str, int], names: list[str], store: Store, log: Log, export_to: Path | None) -> None:
    """Per target, the feasible Pareto front; the members' test accuracy; their exports (when `export_to`)."""
    problem = Problem.from_spec(ctx.spec, names)
    members: set[int] = set()
    for target in names:
        front = problem.front(results, target)
        store.set_pareto(job_id, target, [ids[results[i].arch.arch_hash()] for i in front])
        members.update(front)
        if not front:
            from nas.constraints import explain_empty_front

            log(f"job {job_id}: empty front on {target}: {explain_empty_front(problem, results)}")
    for i in sorted(members):
        arch = results[i].arch
        test = accuracy(evaluator.subnet(arch), ctx.splits.x_test, ctx.splits.y_test)
        store.add_metrics(ids[arch.arch_hash()], [Metric("test_accuracy", test)])
    log(f"job {job_id}: {len(results)} candidates, {len(members)} on the Pareto front(s)")
    # search.finetune: the most accurate members of all the fronts together, before they are exported.
    finetune_front(store, ctx, evaluator, [ids[results[i].arch.arch_hash()] for i in sorted(members)],
                   Path(store.job(job_id).run_dir or runs_dir() / f"job_{job_id}"), log)
    if export_to is not None and members:
        for i in sorted(members):
            candidate_id = ids[results[i].arch.arch_hash()]
            record = store.candidate(candidate_id)
            write_export(record, ctx, evaluator, export_to / "exports" / f"c{candidate_id}", owned=True,
                         finetuned=finetuned_weights(store, record))
        log(f"exported the front to {export_to / 'exports'}")


def _progress_bar(total: int, desc: str, enabled: bool, initial: int = 0) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, unit="cand", initial=initial)


# ---- export ----------------------------------------------------------------------------------------------
def export_candidate(store: Store, candidate_id: int, out_dir: Path, log: Log,
                     formats: Sequence[str] = ("pytorch",), force: bool = False) -> dict[str, Any]:
    """Export a stored candidate; re-measures its test accuracy to show the export reproduces it.

    A fine-tuned candidate (`nas finetune`, `search.finetune`) is exported with its fine-tuned weights, and its
    re-measured test accuracy is compared with `finetuned_test_accuracy`. A non-empty `out_dir` is refused
    unless `force`, which replaces only a previous export's files there.
    """
    out_dir = plan_export(out_dir, formats, force).out  # refuse before loading anything
    record = store.candidate(candidate_id)
    ctx, evaluator = _candidate_context(store, record)
    tuned = finetuned_weights(store, record)
    if tuned is None and record.metric("finetuned_accuracy") is not None:
        log(f"candidate {candidate_id}: its fine-tuned weights are gone; exporting the inherited weights")
    info = write_export(record, ctx, evaluator, out_dir, formats, force=force, finetuned=tuned)
    loaded = load_export(out_dir)
    info["test_accuracy"] = accuracy(loaded, ctx.splits.x_test, ctx.splits.y_test)
    info["stored_test_accuracy"] = record.metric("finetuned_test_accuracy" if tuned else "test_accuracy")
    log(f"exported candidate {candidate_id} to {out_dir}" + (" (fine-tuned weights)" if tuned else ""))
    return info


def _candidate_context(store: Store, record: CandidateRecord) -> tuple[Context, Evaluator]:
    """A stored candidate's job context and an evaluator on the job's trained supernet."""
    job = store.job(record.job_id)
    spec = parse_spec(job.spec, f"job {job.job_id} spec")
    ctx = load_context(spec)
    found = store.find_artifact(SUPERNET_ARTIFACT, ctx.supernet_key)
    if not found or not Path(found).exists():
        raise NASError(f"candidate {record.candidate_id}: the supernet of job {job.job_id} is gone "
                       f"({found or 'never stored'}); retrain it with `nas train` on the job's spec")
    supernet = load_supernet(ctx.space, Path(found))
    return ctx, make_evaluator(supernet, ctx.splits.x_train, ctx.splits.x_val, ctx.splits.y_val,
                               spec.search.val_images, spec.search.calibration_images)


def finetune_stored(store: Store, candidate_id: int, log: Log, epochs: int | None = None, lr: float | None = None,
                    label_smoothing: float | None = None, distill: float | None = None,
                    progress: bool = True) -> FinetuneResult:
    """`nas finetune`: fine-tune a stored candidate (the job's `search.finetune` recipe, or its defaults, with
    the given overrides); its weights go to the job's run directory, its metrics beside the inherited ones."""
    record = store.candidate(candidate_id)
    ctx, evaluator = _candidate_context(store, record)
    job = store.job(record.job_id)
    run_dir = Path(job.run_dir) if job.run_dir else runs_dir() / f"job_{job.job_id}"
    recipe = Recipe.from_spec(ctx.spec, epochs, lr, label_smoothing, distill)
    return finetune_candidate(store, record, ctx, evaluator, run_dir, recipe, progress=progress, log=log)


def train_only(spec_path: str | Path, store: Store, log: Log, resume: bool = False, retrain: bool = False,
               progress: bool = True) -> str:
    spec = load_checked(spec_path)
    ctx = load_context(spec)
    ensure_supernet(ctx, store, log, resume=resume, retrain=retrain, progress=progress)
    return str(runs_dir() / "supernets" / ctx.supernet_key / FINAL_NAME)


__all__ = ["Context", "export_candidate", "finetune_stored", "load_context", "resume_job", "search_job", "train_only",
           "validate", "Supernet"]
