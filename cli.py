"""`nas`: the command line. It wires the package's use cases together and holds no logic of its own.

Every user error is one line on stderr and exit code 2; `--json` prints one JSON object for scripts.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click

from nas.errors import NASError

STORE_HELP = "SQLAlchemy URL of the store (default: $NAS_STORE or sqlite:///nas.db in this folder)."


def _log(message: str) -> None:
    click.echo(message, err=True)


def _fail(message: str) -> None:
    for line in message.splitlines() or [""]:
        click.echo(f"error: {line}", err=True)
    sys.exit(2)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a NASError into its message and exit code 2 (never a traceback)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NASError as exc:
            _fail(str(exc))

    return wrapper


def _store(url: str | None) -> Any:
    from nas.store import Store, default_store_url

    return Store(url or default_store_url())


def _echo_json(payload: Any) -> None:
    click.echo(json.dumps(payload, default=str, sort_keys=True))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns}
    click.echo("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        click.echo("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def _fmt(value: Any, digits: int = 4) -> str:
    return "" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nas")
def main() -> None:
    """nas: declarative, hardware-aware architecture search for vision transformers.

    Typical run: `nas validate SPEC`, `nas latency measure --target host --spec SPEC`,
    `nas search SPEC --target host`, then `nas pareto JOB --target host` and `nas export CANDIDATE`.
    """


@main.command()
@click.argument("spec_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the normalised spec and count as one JSON object.")
@user_errors
def validate(spec_path: Path, as_json: bool) -> None:
    """Check a search-space spec; print its normalised summary and the number of architectures."""
    from nas.pipeline import validate as run_validate

    spec, count = run_validate(spec_path)
    if as_json:
        _echo_json({"spec": spec.to_dict(), "architectures": count, "spec_hash": spec.spec_hash()})
        return
    click.echo(f"{spec_path}: valid (spec version {spec.version}, hash {spec.spec_hash()})")
    space = spec.space
    click.echo(f"  resolution {space.resolution}, stem {space.stem.channels} stride {space.stem.stride}")
    for i, stage in enumerate(space.stages):
        if stage.type == "conv":
            extra = f"expand {stage.expand} kernel {stage.kernel}{' se' if stage.se else ''}"
        else:
            extra = f"head_dim {stage.head_dim} mlp_ratio {stage.mlp_ratio} v_scale {stage.v_scale}"
        click.echo(f"  stage {i}: {stage.type:<11} depth {stage.depth.min}-{stage.depth.max} "
                   f"channels {stage.channels} stride {stage.stride} {extra}")
    click.echo(f"  head {space.head.channels}; deploy resolution {spec.deploy.resolution or 'as trained'}")
    click.echo(f"  data {spec.data.dataset} (val {spec.data.val_fraction}); train {spec.train.epochs} epochs, "
               f"{spec.train.sampler}; search {spec.search.engine}, {spec.search.candidates} candidates")
    click.echo(f"  architectures in the space: {count:,}")


@main.command()
@click.argument("spec_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--store", "store_url", help=STORE_HELP)
@click.option("--resume", is_flag=True, help="Continue the interrupted training of this spec from its last epoch.")
@click.option("--retrain", is_flag=True, help="Train again even when a trained supernet is stored.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@user_errors
def train(spec_path: Path, store_url: str | None, resume: bool, retrain: bool, no_progress: bool) -> None:
    """Train (or reuse) the supernet of a spec; later searches of the same spec and data reuse it."""
    from nas.pipeline import train_only

    with _store(store_url) as store:
        checkpoint = train_only(spec_path, store, _log, resume=resume, retrain=retrain, progress=not no_progress)
    click.echo(checkpoint)


@main.command()
@click.argument("spec_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--target", "targets", multiple=True, required=True,
              help="Latency target (repeatable), e.g. host or pixel6; see `nas targets`.")
@click.option("--store", "store_url", help=STORE_HELP)
@click.option("--engine", type=click.Choice(["nsga2", "random", "tpe"]), help="Override search.engine.")
@click.option("--candidates", type=click.IntRange(min=1), help="Override search.candidates.")
@click.option("--workers", type=click.IntRange(min=1), help="Concurrent Ray trials (default search.workers).")
@click.option("--ray-address", help="Join an existing Ray cluster instead of starting a local one.")
@click.option("--no-export", is_flag=True, help="Do not export the Pareto front into the job's run directory.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@click.option("--json", "as_json", is_flag=True, help="End with one JSON object: job_id and the Pareto records.")
@user_errors
def search(spec_path: Path, targets: tuple[str, ...], store_url: str | None, engine: str | None,
           candidates: int | None, workers: int | None, ray_address: str | None, no_export: bool,
           no_progress: bool, as_json: bool) -> None:
    """Train or reuse the supernet, search the space, store every candidate and the Pareto front."""
    from nas.pipeline import search_job
    from nas.search import RayOptions
    from nas.spec import load_spec

    spec = load_spec(spec_path)
    options = RayOptions(workers=workers or spec.search.workers, address=ray_address)
    with _store(store_url) as store:
        job_id, front = search_job(spec_path, targets, store, _log, engine=engine, candidates=candidates,
                                   export=not no_export, progress=not no_progress, ray_options=options)
    if as_json:
        _echo_json({"job_id": job_id, "pareto": [r.to_json() for r in front]})
    else:
        click.echo(f"job {job_id}: Pareto front")
        _print_records([r.to_json() for r in front], list(dict.fromkeys(targets)))


def _print_records(records: list[dict[str, Any]], targets: list[str]) -> None:
    rows = []
    for r in records:
        row = {"candidate": r["candidate_id"], "accuracy": _fmt(r["accuracy"]),
               "test_acc": _fmt(r.get("test_accuracy")), "params": r["params"] and int(r["params"]),
               "MFLOPs": _fmt(r["flops"] / 1e6, 2) if r["flops"] is not None else ""}
        for t in targets:
            ms = r["latency_ms"].get(t)
            row[f"{t}_ms"] = _fmt(ms, 3) + ("*" if t in r.get("flags", {}) else "")
        rows.append(row)
    _table(rows, list(rows[0]) if rows else ["candidate", "accuracy"])


@main.command()
@click.option("--store", "store_url", help=STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@user_errors
def jobs(store_url: str | None, as_json: bool) -> None:
    """List search jobs, newest first."""
    with _store(store_url) as store:
        records = store.jobs()
        counts = {j.job_id: len(store.candidates(j.job_id)) for j in records}
    payload = [{"job_id": j.job_id, "name": j.name, "status": j.status, "targets": list(j.targets),
                "candidates": counts[j.job_id], "spec_hash": j.spec_hash, "created_at": j.created_at,
                "finished_at": j.finished_at, "run_dir": j.run_dir} for j in records]
    if as_json:
        _echo_json(payload)
        return
    _table([{**p, "targets": ",".join(p["targets"]), "created_at": str(p["created_at"])[:19]} for p in payload],
           ["job_id", "name", "status", "targets", "candidates", "created_at"])


@main.command()
@click.argument("job_id", type=int)
@click.option("--target", required=True, help="The latency target whose front to show.")
@click.option("--max-latency-ms", type=float, help="Only candidates at most this slow on the target.")
@click.option("--min-accuracy", type=float, help="Only candidates at least this accurate (validation, 0-1).")
@click.option("--store", "store_url", help=STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of records.")
@user_errors
def pareto(job_id: int, target: str, max_latency_ms: float | None, min_accuracy: float | None,
           store_url: str | None, as_json: bool) -> None:
    """The Pareto front of a job on one target, fastest first."""
    with _store(store_url) as store:
        records = [r.to_json() for r in store.pareto(job_id, target, max_latency_ms, min_accuracy)]
    if as_json:
        _echo_json(records)
    elif records:
        _print_records(records, [target])
    else:
        click.echo(f"job {job_id}: no Pareto member on {target} meets the filters")


@main.command()
@click.argument("candidate_id", type=int)
@click.option("--store", "store_url", help=STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON record.")
@user_errors
def show(candidate_id: int, store_url: str | None, as_json: bool) -> None:
    """One candidate: its arch, metrics and Pareto membership."""
    with _store(store_url) as store:
        record = store.candidate(candidate_id).to_json()
    if as_json:
        _echo_json(record)
        return
    for key in ("candidate_id", "job_id", "arch_hash", "accuracy", "test_accuracy", "params", "flops"):
        click.echo(f"{key:>14}: {_fmt(record.get(key))}")
    for target, ms in record["latency_ms"].items():
        flag = record.get("flags", {}).get(target)
        click.echo(f"{'latency_ms':>14}: {target} {ms:.3f}{' (' + flag + ')' if flag else ''}")
    click.echo(f"{'pareto':>14}: {', '.join(record['pareto']) or '-'}")
    click.echo(f"{'arch':>14}: {json.dumps(record['arch'])}")


@main.command()
@click.argument("candidate_id", type=int)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: exported/c<CANDIDATE_ID>).")
@click.option("--format", "formats", type=click.Choice(["pytorch", "torchscript", "onnx"]), multiple=True,
              help="Extra formats besides the PyTorch module + state dict (repeatable).")
@click.option("--store", "store_url", help=STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print what was written as one JSON object.")
@user_errors
def export(candidate_id: int, out_dir: Path | None, formats: tuple[str, ...], store_url: str | None,
           as_json: bool) -> None:
    """Write a standalone model of a candidate (module code, state dict, arch JSON, README)."""
    from nas.pipeline import export_candidate

    out_dir = out_dir or Path("exported") / f"c{candidate_id}"
    with _store(store_url) as store:
        info = export_candidate(store, candidate_id, out_dir, _log, ("pytorch", *formats))
    if as_json:
        _echo_json(info)
    else:
        click.echo(f"wrote {', '.join(info['files'])} to {info['out']}")
        click.echo(f"test accuracy of the exported model: {info['test_accuracy']:.4f} "
                   f"(stored: {_fmt(info['stored_test_accuracy'])})")


@main.group()
def latency() -> None:
    """Build and inspect per-device latency tables."""


def _spec_paths(specs: tuple[Path, ...]) -> list[Path]:
    if specs:
        return list(specs)
    found = sorted(Path("search_spaces").glob("*.yaml"))
    if not found:
        raise NASError("--spec: name a spec whose blocks to measure (no search_spaces/*.yaml here)")
    return found


@latency.command("measure")
@click.option("--target", default="host", show_default=True, help="Only `host` can be measured here.")
@click.option("--spec", "specs", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Spec(s) whose blocks to measure (default: every search_spaces/*.yaml).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="torch threads.")
@click.option("--refresh", is_flag=True, help="Re-measure every block, not just the missing ones.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the table path and counts as one JSON object.")
@user_errors
def latency_measure(target: str, specs: tuple[Path, ...], threads: int, refresh: bool, no_progress: bool,
                    as_json: bool) -> None:
    """Time every distinct block of the spaces on this machine into latency_tables/host.json."""
    from tqdm import tqdm

    from nas.latency.measure import measure_host_table
    from nas.pipeline import load_context
    from nas.spec import load_spec

    if target != "host":
        raise NASError(f"--target: only `host` is measured on this machine, not {target!r}; import a device's "
                       "measurements with `nas latency import`")
    blocks = set()
    for path in _spec_paths(specs):
        ctx = load_context(load_spec(path))
        blocks.update(ctx.space.distinct_blocks())
    bar = tqdm(total=len(blocks), desc="measure host blocks", disable=no_progress, unit="block")
    table, measured = measure_host_table(sorted(blocks), threads, refresh, progress=lambda _b: bar.update(1))
    bar.close()
    if as_json:
        _echo_json({"table": str(table), "measured": measured, "present": len(blocks) - measured})
    else:
        click.echo(f"{table}: measured {measured} block(s); {len(blocks) - measured} already present")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@user_errors
def targets(as_json: bool) -> None:
    """List latency targets with their provenance and validation figures."""
    from nas.latency.targets import available_targets, load_target

    infos = [load_target(name).summary() for name in available_targets()]
    if as_json:
        _echo_json(infos)
        return
    if not infos:
        click.echo("no latency tables yet: build one with `nas latency measure --target host`")
    for info in infos:
        click.echo(f"{info['target']}: {info.get('provenance')} on {info.get('device')} "
                   f"({info.get('runtime')}, {info.get('threads')} thread(s), {info.get('date')}); {info['path']}")
        if info.get("validation"):
            click.echo(f"  validation: {json.dumps(info['validation'])[:300]}")


@main.command()
@click.option("--store", "store_url", help=STORE_HELP)
def doctor(store_url: str | None) -> None:
    """Check this environment: packages, the Fashion-MNIST files, latency tables, the store."""
    import importlib

    from nas.data import FASHION_MNIST_DIR
    from nas.latency.tables import tables_dir
    from nas.latency.targets import available_targets

    problems = 0

    def report(ok: bool, what: str, detail: str) -> None:
        nonlocal problems
        problems += not ok
        click.echo(f"{'ok ' if ok else 'BAD'} {what}: {detail}")

    for module in ("torch", "ray", "optuna", "sqlalchemy", "onnx", "psycopg", "spu"):
        try:
            version = getattr(importlib.import_module(module), "__version__", "installed")
            report(True, module, str(version))
        except ImportError:
            optional = module in ("psycopg", "spu")
            click.echo(f"{'-- ' if optional else 'BAD'} {module}: not installed"
                       + (" (optional extra)" if optional else ""))
            problems += not optional
    fashion = FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz"
    report(fashion.exists(), "fashion-mnist", str(fashion.parent) if fashion.exists()
           else "missing: `apt-get install dataset-fashion-mnist`")
    names = available_targets()
    report(bool(names), "latency targets", f"{', '.join(names) or 'none'} in {tables_dir()}")
    try:
        with _store(store_url) as store:
            report(True, "store", f"{store.url} ({len(store.jobs())} jobs)")
    except NASError as exc:
        report(False, "store", str(exc))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
