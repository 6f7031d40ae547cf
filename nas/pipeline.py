"""The service's use cases, each a function the CLI calls: train, search, measure latency, export.

Data flows one way: spec -> space -> supernet -> evaluation + latency -> search -> store -> export.
Nothing here prints; progress and messages go through the `log` callback the caller passes.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nas import static_model
from nas.data import Splits, check_source, data_hash, load
from nas.errors import NASError
from nas.evaluate import Evaluator, accuracy, make_evaluator
from nas.latency.targets import LatencyModel, load_target
from nas.sampling import check_train
from nas.search import CandidateResult, Problem, RayOptions, run_search
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

    @property
    def supernet_key(self) -> str:
        return f"{self.spec.training_hash()}-{data_hash(self.spec.data)}"


def load_checked(spec_path: str | Path) -> Spec:
    """A spec that passed every check that needs no data: schema, sampler buckets, teacher file, data files."""
    spec, _ = validate(spec_path)
    return spec


def load_context(spec: Spec) -> Context:
    splits = load(spec.data)
    return Context(spec, splits, SearchSpace.from_spec(spec, splits.in_channels, splits.num_classes))


def validate(spec_path: str | Path) -> tuple[Spec, int]:
    """Validate a spec (including that its data set exists); returns it and the size of its space.

    The space is counted without loading the data (input channels and classes do not change the count).
    """
    spec = load_spec(spec_path)
    space = SearchSpace(spec.space, 1, 2, spec.deploy.resolution)
    check_train(spec, space, str(spec_path))
    check_source(spec.data, where=f"{spec_path}: data")
    return spec, space.count()


def ensure_supernet(ctx: Context, store: Store, log: Log, resume: bool = False, retrain: bool = False,
                    progress: bool = True) -> Supernet:
    """The trained supernet for this spec and data: reused from the store when one exists, else trained."""
    key = ctx.supernet_key
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


def search_job(spec_path: str | Path, targets: Sequence[str], store: Store, log: Log, engine: str | None = None,
               candidates: int | None = None, export: bool = True, progress: bool = True,
               ray_options: RayOptions | None = None) -> tuple[int, list[CandidateRecord]]:
    """The whole run: validate, train or reuse the supernet, search, store, test the front, export it."""
    spec = load_checked(spec_path)
    ctx = load_context(spec)
    models = load_targets(targets, ctx.space, spec_path)  # fail before anything is stored
    names = list(models)
    supernet = ensure_supernet(ctx, store, log, progress=progress)
    job_id = store.create_job(spec.name or Path(spec_path).stem, spec.to_dict(), spec.spec_hash(), names, "")
    run_dir = runs_dir() / f"job_{job_id}"
    run_dir.mkdir(parents=True, exist_ok=True)
    store.set_run_dir(job_id, str(run_dir.resolve()))
    (run_dir / "spec.json").write_text(json.dumps(spec.to_dict(), indent=1))
    try:
        evaluator = make_evaluator(supernet, ctx.splits.x_train, ctx.splits.x_val, ctx.splits.y_val,
                                   spec.search.val_images)
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
        ids: dict[str, int] = {}
        budget = candidates or spec.search.candidates
        bar = _progress_bar(budget, f"search ({engine or spec.search.engine})", progress)

        def on_result(result: CandidateResult) -> None:
            arch_hash = result.arch.arch_hash()
            ids[arch_hash] = store.add_candidate(job_id, result.arch.to_dict(), arch_hash, candidate_metrics(result))
            bar.update(1)
            bar.set_postfix(acc=f"{result.accuracy:.3f}")

        results = run_search(spec, ctx.space, payload, names, run_dir, on_result, engine=engine, candidates=budget,
                             ray_options=ray_options, on_dashboard=lambda url: log(f"Ray dashboard: {url}"))
        bar.close()
        if not results:
            raise NASError(f"job {job_id}: the search produced no candidates (see {run_dir / 'tune'})")
        unique = list({r.arch.arch_hash(): r for r in results}.values())
        problem = Problem.from_spec(spec, names)
        members: set[int] = set()
        for target in names:
            front = problem.front(unique, target)
            front_ids = [ids[unique[i].arch.arch_hash()] for i in front]
            store.set_pareto(job_id, target, front_ids)
            members.update(front)
        for i in sorted(members):
            arch = unique[i].arch
            test = accuracy(evaluator.subnet(arch), ctx.splits.x_test, ctx.splits.y_test)
            store.add_metrics(ids[arch.arch_hash()], [Metric("test_accuracy", test)])
        log(f"job {job_id}: {len(unique)} candidates, {len(members)} on the Pareto front(s)")
        if export:
            for i in sorted(members):
                candidate_id = ids[unique[i].arch.arch_hash()]
                write_export(store.candidate(candidate_id), ctx, evaluator, run_dir / "exports" / f"c{candidate_id}")
            log(f"exported the front to {run_dir / 'exports'}")
        store.finish_job(job_id, "done")
    except BaseException:
        store.finish_job(job_id, "failed")
        raise
    front_records = {r.candidate_id: r for t in names for r in store.pareto(job_id, t)}
    return job_id, sorted(front_records.values(), key=lambda r: r.metric("latency_ms", names[0]) or 0.0)


def _progress_bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, unit="cand")


# ---- export ----------------------------------------------------------------------------------------------
EXPORT_README = """# Exported subnet {candidate_id} (job {job_id})

A standalone PyTorch model found by `nas`; it needs only `torch`.

```python
import json, torch
from model import build            # model.py in this folder
net = build(json.load(open("network.json")))
net.load_state_dict(torch.load("weights.pt"))
net.eval()
```

Inputs: float images N x {in_channels} x H x W, scaled to [0, 1] (pixels / 255) then normalised with
`preprocess.json` (`(x - mean) / std` per channel); the network resizes them to {resolution} x {resolution}.
Outputs: logits over {num_classes} classes.

| metric | value |
| --- | --- |
{metrics}
"""


def write_export(record: CandidateRecord, ctx: Context, evaluator: Evaluator, out_dir: Path,
                 formats: Sequence[str] = ("pytorch",)) -> dict[str, Any]:
    """Write a standalone model for `record` into `out_dir` (written to a temp folder, then renamed)."""
    arch = ArchConfig.from_dict(record.arch)
    model = evaluator.subnet(arch).eval()
    network = ctx.space.describe(arch)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copyfile(static_model.__file__, tmp / "model.py")
    (tmp / "network.json").write_text(json.dumps(network, indent=1))
    (tmp / "arch.json").write_text(json.dumps(record.arch, indent=1))
    (tmp / "preprocess.json").write_text(json.dumps({"scale": 1 / 255, "mean": ctx.splits.mean,
                                                     "std": ctx.splits.std}, indent=1))
    torch.save(model.state_dict(), tmp / "weights.pt")
    written = ["model.py", "network.json", "arch.json", "preprocess.json", "weights.pt"]
    example = torch.zeros(1, ctx.space.in_channels, arch.resolution, arch.resolution)
    if "torchscript" in formats:
        torch.jit.trace(model, example).save(str(tmp / "model.torchscript.pt"))
        written.append("model.torchscript.pt")
    if "onnx" in formats:
        torch.onnx.export(model, (example,), str(tmp / "model.onnx"), dynamo=False, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        written.append("model.onnx")
    info = record.to_json()
    rows = "\n".join(f"| {k} | {v} |" for k, v in info.items() if k not in ("arch", "flags", "arch_hash"))
    (tmp / "README.md").write_text(EXPORT_README.format(
        candidate_id=record.candidate_id, job_id=record.job_id, in_channels=ctx.space.in_channels,
        resolution=arch.resolution, num_classes=ctx.space.num_classes, metrics=rows))
    (tmp / "candidate.json").write_text(json.dumps(info, indent=1, default=str))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return {"out": str(out_dir), "files": written + ["README.md", "candidate.json"]}


def export_candidate(store: Store, candidate_id: int, out_dir: Path, log: Log,
                     formats: Sequence[str] = ("pytorch",)) -> dict[str, Any]:
    """Export a stored candidate; re-measures its test accuracy to show the export reproduces it."""
    record = store.candidate(candidate_id)
    job = store.job(record.job_id)
    spec = parse_spec(job.spec, f"job {job.job_id} spec")
    ctx = load_context(spec)
    found = store.find_artifact(SUPERNET_ARTIFACT, ctx.supernet_key)
    if not found or not Path(found).exists():
        raise NASError(f"candidate {candidate_id}: the supernet of job {job.job_id} is gone "
                       f"({found or 'never stored'}); retrain it with `nas train` on the job's spec")
    supernet = load_supernet(ctx.space, Path(found))
    evaluator = make_evaluator(supernet, ctx.splits.x_train, ctx.splits.x_val, ctx.splits.y_val)
    info = write_export(record, ctx, evaluator, out_dir, formats)
    loaded = load_export(out_dir)
    info["test_accuracy"] = accuracy(loaded, ctx.splits.x_test, ctx.splits.y_test)
    info["stored_test_accuracy"] = record.metric("test_accuracy")
    log(f"exported candidate {candidate_id} to {out_dir}")
    return info


def load_export(out_dir: Path) -> torch.nn.Module:
    """Load an exported model the way its README says, without the supernet (nor `nas.static_model`)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"nas_export_{abs(hash(str(out_dir)))}", out_dir / "model.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.build(json.loads((out_dir / "network.json").read_text()))
    net.load_state_dict(torch.load(out_dir / "weights.pt"))
    return net.eval()


def train_only(spec_path: str | Path, store: Store, log: Log, resume: bool = False, retrain: bool = False,
               progress: bool = True) -> str:
    spec = load_checked(spec_path)
    ctx = load_context(spec)
    ensure_supernet(ctx, store, log, resume=resume, retrain=retrain, progress=progress)
    return str(runs_dir() / "supernets" / ctx.supernet_key / FINAL_NAME)


__all__ = ["Context", "export_candidate", "load_context", "search_job", "train_only", "validate", "Supernet"]
