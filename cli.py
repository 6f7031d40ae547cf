"""`nas`: the command line. It wires the package's use cases together and holds no logic of its own.

Every user error is one line on stderr and exit code 2; `--json` prints one JSON object for scripts.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any

import click

from nas.engines import ENGINES
from nas.errors import NASError

STORE_HELP = "SQLAlchemy URL of the store (default: $NAS_STORE or sqlite:///nas.db in this folder)."
MAX_ID = 2**31 - 1  # job and candidate ids are SQL INTEGERs (4 bytes on PostgreSQL)


class _BadId(click.ClickException):
    """A job or candidate id that cannot exist: one `error:` line and exit code 2, like a NASError."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


class _Id(click.ParamType):
    """A job or candidate id: an integer from 1 to 2^31-1 (refused before the store is opened)."""

    name = "id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            number = value if isinstance(value, int) and not isinstance(value, bool) else int(str(value).strip())
        except ValueError:  # not an integer, or one of more than 4300 digits
            number = None
        if number is None or not 1 <= number <= MAX_ID:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            name = param.name if param is not None and param.name else "id"
            raise _BadId(f"{name}: must be an integer id from 1 to {MAX_ID} (2^31-1), but got {shown}")
        return number


ID = _Id()


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
            options = [name for name in ("downsample_se", "v_dwconv", "rel_pos_bias", "proj_act")
                       if getattr(stage, name)] + ([] if stage.qkv_bias else ["no qkv_bias"])
            extra = (f"head_dim {stage.head_dim} mlp_ratio {stage.mlp_ratio} v_scale {stage.v_scale}"
                     + "".join(f" {name}" for name in options))
        if stage.shortcut != "none":
            extra += f" shortcut {stage.shortcut}"
        click.echo(f"  stage {i}: {stage.type:<11} depth {stage.depth.min}-{stage.depth.max} "
                   f"channels {stage.channels} stride {stage.stride} {extra}")
    head = space.head
    width = f"channels {head.channels}" if head.channels is not None else f"expand {head.expand} x last width"
    final = f", final {head.final_channels}" if head.final_channels else ""
    click.echo(f"  head {width}{final}; deploy resolution {spec.deploy.resolution or 'as trained'}")
    click.echo(f"  data {spec.data.dataset} (val {spec.data.val_fraction}); train {spec.train.epochs} epochs, "
               f"{spec.train.sampler}; search {spec.search.engine}, {spec.search.candidates} candidates")
    click.echo(f"  architectures in the space: {count:,}")
    if spec.presets:
        click.echo(f"  presets (members of the space): {', '.join(spec.presets)}")


@main.command("arch")
@click.argument("spec_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--preset", help="Name of one of the spec's `presets:` (e.g. S1 in search_spaces/elasticvit.yaml).")
@click.option("--arch", "arch_json", metavar="JSON|FILE",
              help="An arch as JSON (ArchConfig.to_dict(), e.g. an export's arch.json), inline or in a file.")
@click.option("--target", "targets", multiple=True, help="Latency target to price it on (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: params, flops, latency_ms, flags.")
@user_errors
def arch(spec_path: Path, preset: str | None, arch_json: str | None, targets: tuple[str, ...], as_json: bool) -> None:
    """Price one arch of a space without searching: parameters, multiply-accumulates (`flops`, at the arch's
    resolution) and per target the latency (at the deploy resolution) with its flag (`out_of_range` when some
    block lies outside what the target's model knows). The arch must be a member of the space. Input channels
    and classes come from the spec's data.channels / data.classes, else from loading the data."""
    from nas.pricing import price_arch

    result = price_arch(spec_path, targets, preset=preset, arch=arch_json)
    if as_json:
        _echo_json(result)
        return
    click.echo(f"{result['preset'] or 'arch'} {result['arch_hash']}: {result['params']:,} params, "
               f"{result['flops'] / 1e6:.1f} M multiply-accumulates at {result['resolution']} px")
    for target, ms in result["latency_ms"].items():
        flag = result["flags"][target]
        click.echo(f"  {target}: {ms:.3f} ms at {result['deploy_resolution']} px{f' ({flag})' if flag else ''}")


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


def _run_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options of every command that runs a search (`search`, `resume`)."""
    for option in reversed([
        click.option("--workers", type=click.IntRange(min=1), help="Concurrent Ray trials (default search.workers)."),
        click.option("--ray-address", help="Join an existing Ray cluster instead of starting a local one."),
        click.option("--no-export", is_flag=True, help="Do not export the Pareto front into the job's run directory."),
        click.option("--no-progress", is_flag=True, help="Hide progress bars."),
        click.option("--json", "as_json", is_flag=True,
                     help="End with one JSON object: job_id and the Pareto records."),
    ]):
        command = option(command)
    return command


class _Stopped(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that a job ends `interrupted` either way."""


@contextmanager
def _interruptible_job(store: Any, what: str) -> Iterator[None]:
    """Run a search or resume so that Ctrl-C (exit 130) and SIGTERM (exit 143) leave the job `interrupted`, with
    everything evaluated so far stored, and say how to continue it."""

    def on_term(signum: int, frame: Any) -> None:
        raise _Stopped()

    previous = signal.signal(signal.SIGTERM, on_term)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    try:
        yield
    except KeyboardInterrupt as exc:
        code = 143 if isinstance(exc, _Stopped) else 130
        jobs = [j for j in store.jobs() if j.status == "interrupted" and j.pid == os.getpid()]
        if jobs:
            job = jobs[0]
            kept = len(store.candidates(job.job_id))
            _log(f"interrupted: job {job.job_id} kept {kept} of {job.spec['search']['candidates']} candidates; "
                 f"continue it with `nas resume {job.job_id}`")
        else:
            _log(f"interrupted before the {what} job was created; nothing was stored")
        sys.exit(code)
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


@main.command()
@click.argument("spec_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--target", "targets", multiple=True, required=True,
              help="Latency target (repeatable), e.g. host or pixel6; see `nas targets`.")
@click.option("--store", "store_url", help=STORE_HELP)
@click.option("--engine", type=click.Choice(sorted(ENGINES)), help="Override search.engine.")
@click.option("--candidates", type=click.IntRange(min=1), help="Override search.candidates.")
@_run_options
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
    with _store(store_url) as store, _interruptible_job(store, "search"):
        job_id, front = search_job(spec_path, targets, store, _log, engine=engine, candidates=candidates,
                                   export=not no_export, progress=not no_progress, ray_options=options)
    _print_front(job_id, front, list(dict.fromkeys(targets)), as_json)


@main.command()
@click.argument("job_id", type=ID)
@click.option("--store", "store_url", help=STORE_HELP)
@_run_options
@user_errors
def resume(job_id: int, store_url: str | None, workers: int | None, ray_address: str | None, no_export: bool,
           no_progress: bool, as_json: bool) -> None:
    """Continue an interrupted or failed search job: stored candidates are not evaluated again, the rest of the
    budget is searched (the same candidates an uninterrupted run would have found), then the front is written."""
    from nas.pipeline import resume_job
    from nas.search import RayOptions

    with _store(store_url) as store:
        job = store.job(job_id)
        options = RayOptions(workers=workers or job.spec.get("search", {}).get("workers", 2), address=ray_address)
        with _interruptible_job(store, "resumed"):
            job_id, front = resume_job(job_id, store, _log, export=not no_export, progress=not no_progress,
                                       ray_options=options)
    _print_front(job_id, front, list(job.targets), as_json)


def _print_front(job_id: int, front: list[Any], targets: list[str], as_json: bool) -> None:
    if as_json:
        _echo_json({"job_id": job_id, "pareto": [r.to_json() for r in front]})
    else:
        click.echo(f"job {job_id}: Pareto front")
        _print_records([r.to_json() for r in front], targets)


def _print_records(records: list[dict[str, Any]], targets: list[str]) -> None:
    rows = []
    tuned = any(r.get("finetuned_accuracy") is not None for r in records)
    for r in records:
        row = {"candidate": r["candidate_id"], "accuracy": _fmt(r["accuracy"]),
               "test_acc": _fmt(r.get("test_accuracy"))}
        if tuned:  # fine-tuned accuracies beside the inherited ones
            row.update(ft_acc=_fmt(r.get("finetuned_accuracy")), ft_test_acc=_fmt(r.get("finetuned_test_accuracy")))
        row.update(params=r["params"] and int(r["params"]),
                   MFLOPs=_fmt(r["flops"] / 1e6, 2) if r["flops"] is not None else "")
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
    """List search jobs, newest first. A `running` job whose process is gone is stored as `interrupted`."""
    from nas.lifecycle import settle

    with _store(store_url) as store:
        records = settle(store, store.jobs())
        counts = {j.job_id: len(store.candidates(j.job_id)) for j in records}
    payload = [{"job_id": j.job_id, "name": j.name, "status": j.status, "targets": list(j.targets),
                "candidates": counts[j.job_id], "budget": j.spec.get("search", {}).get("candidates"),
                "spec_hash": j.spec_hash, "created_at": j.created_at, "finished_at": j.finished_at,
                "run_dir": j.run_dir, "pid": j.pid, "host": j.host, "heartbeat_at": j.heartbeat_at}
               for j in records]
    if as_json:
        _echo_json(payload)
        return
    _table([{**p, "targets": ",".join(p["targets"]), "created_at": str(p["created_at"])[:19]} for p in payload],
           ["job_id", "name", "status", "targets", "candidates", "budget", "created_at"])


@main.command()
@click.argument("job_id", type=ID)
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
@click.argument("candidate_id", type=ID)
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
    if record.get("finetuned_accuracy") is not None:
        epochs = next((m["value"] for m in record["metrics"] if m["name"] == "finetune_epochs"), None)
        click.echo(f"{'finetuned':>14}: accuracy {_fmt(record['finetuned_accuracy'])}, test accuracy "
                   f"{_fmt(record.get('finetuned_test_accuracy'))}" + (f" ({epochs:.0f} epochs)" if epochs else ""))
    for target, ms in record["latency_ms"].items():
        flag = record.get("flags", {}).get(target)
        click.echo(f"{'latency_ms':>14}: {target} {ms:.3f}{' (' + flag + ')' if flag else ''}")
    click.echo(f"{'pareto':>14}: {', '.join(record['pareto']) or '-'}")
    for line in _layer_lines(record["arch"]):
        click.echo(f"{'':>14}  {line}")
    click.echo(f"{'arch':>14}: {json.dumps(record['arch'])}")


def _layer_lines(arch: dict[str, Any]) -> list[str]:
    """One line per transformer layer: its attention (per head where the heads differ) and FFN activation."""
    lines = []
    for i, stage in enumerate(arch.get("stages", [])):
        for j, layer in enumerate(stage.get("layers", [])):
            if "mlp_ratio" not in layer:
                continue
            attention = layer.get("attention", "softmax")
            kinds = [attention] if isinstance(attention, str) else list(attention)
            shown = kinds[0] if len(set(kinds)) == 1 else " ".join(f"h{h}={k}" for h, k in enumerate(kinds))
            lines.append(f"stage {i} layer {j}: attention {shown}; ffn {layer.get('act', 'hswish')} "
                         f"x{layer['mlp_ratio']}")
    return lines


@main.command()
@click.argument("candidate_id", type=ID)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: exported/c<CANDIDATE_ID>).")
@click.option("--format", "formats", type=click.Choice(["pytorch", "torchscript", "onnx"]), multiple=True,
              help="Extra formats besides the PyTorch module + state dict (repeatable).")
@click.option("--force", is_flag=True,
              help="Export into a non-empty folder, replacing only the files of a previous export there "
                   "(those its export_manifest.json lists); nothing else in it is touched.")
@click.option("--store", "store_url", help=STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print what was written as one JSON object.")
@user_errors
def export(candidate_id: int, out_dir: Path | None, formats: tuple[str, ...], force: bool, store_url: str | None,
           as_json: bool) -> None:
    """Write a standalone model of a candidate (module code, state dict, arch JSON, README, manifest).

    A fine-tuned candidate (`nas finetune`) is exported with its fine-tuned weights. A non-empty --out folder is
    refused unless --force."""
    from nas.pipeline import export_candidate

    out_dir = out_dir or Path("exported") / f"c{candidate_id}"
    with _store(store_url) as store:
        info = export_candidate(store, candidate_id, out_dir, _log, ("pytorch", *formats), force=force)
    if as_json:
        _echo_json(info)
    else:
        click.echo(f"wrote {', '.join(info['files'])} to {info['out']}")
        tuned = info.get("weights") == "finetuned"
        click.echo(f"test accuracy of the exported model{' (fine-tuned weights)' if tuned else ''}: "
                   f"{info['test_accuracy']:.4f} (stored: {_fmt(info['stored_test_accuracy'])})")


@main.command()
@click.argument("candidate_id", type=ID)
@click.option("--epochs", type=click.IntRange(1, 100_000),
              help="Epochs of fine-tuning (default: the job's search.finetune.epochs, else 2).")
@click.option("--lr", type=click.FloatRange(0.0, 10.0, min_open=True),
              help="Peak learning rate of the one-cycle schedule (default: search.finetune.lr, else train's lr).")
@click.option("--label-smoothing", type=click.FloatRange(0.0, 0.5),
              help="Label smoothing (default: search.finetune.label_smoothing, else 0.1).")
@click.option("--distill", type=click.FloatRange(0.0, 1.0),
              help="Weight of distillation from the supernet's largest subnet (default: search.finetune.distill, "
                   "else 0).")
@click.option("--store", "store_url", help=STORE_HELP)
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@user_errors
def finetune(candidate_id: int, epochs: int | None, lr: float | None, label_smoothing: float | None,
             distill: float | None, store_url: str | None, no_progress: bool, as_json: bool) -> None:
    """Fine-tune a stored candidate's subnet alone, starting from its inherited weights (AdamW, one-cycle, label
    smoothing, the job's train.augment). Stores `finetuned_accuracy` (validation) and `finetuned_test_accuracy`
    beside the inherited accuracies, and the weights in the job's run directory; `nas export` then uses them."""
    from nas.pipeline import finetune_stored

    with _store(store_url) as store:
        result = finetune_stored(store, candidate_id, _log, epochs=epochs, lr=lr, label_smoothing=label_smoothing,
                                 distill=distill, progress=not no_progress)
    if as_json:
        _echo_json(result.to_json())
    else:
        click.echo(f"candidate {candidate_id}: fine-tuned {result.epochs} epoch(s) in {result.seconds:.0f} s")
        click.echo(f"  validation accuracy {_fmt(result.inherited_accuracy)} -> {result.val_accuracy:.4f}, "
                   f"test accuracy {_fmt(result.inherited_test_accuracy)} -> {result.test_accuracy:.4f}")
        click.echo(f"  weights: {result.weights}")


@main.group()
def latency() -> None:
    """Build, validate and import per-device latency tables (see `nas targets`)."""


def _spec_paths(specs: tuple[Path, ...]) -> list[Path]:
    if specs:
        return list(specs)
    found = sorted(Path("search_spaces").glob("*.yaml"))
    if not found:
        raise NASError("--spec: name a spec whose blocks to measure (no search_spaces/*.yaml here)")
    return found


def _spaces(specs: tuple[Path, ...]) -> tuple[list[Any], list[str]]:
    """The search spaces of the specs (default: every search_spaces/*.yaml) and their names."""
    from nas.pipeline import load_context
    from nas.spec import load_spec

    paths = _spec_paths(specs)
    return [load_context(load_spec(path)).space for path in paths], [str(path) for path in paths]


def _round_bar(total: int, runtime: str, desc: str, disabled: bool) -> tuple[Any, Callable[[str], None]]:
    """A progress bar over preparing `total` blocks/networks plus the timing rounds of `runtime`."""
    from tqdm import tqdm

    from nas.latency.host import session_rounds

    bar = tqdm(total=total + session_rounds(runtime), desc=desc, disable=disabled, unit="step")
    return bar, lambda _event: bar.update(1)


@latency.command("measure")
@click.option("--target", default="host", show_default=True,
              help="Name of the measured table to build (host, or e.g. host-onnxruntime to keep both).")
@click.option("--spec", "specs", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Spec(s) whose blocks to measure (repeatable; default: every search_spaces/*.yaml).")
@click.option("--runtime", type=click.Choice(["torch", "onnxruntime"]), default="torch", show_default=True,
              help="torch eager, or ONNX Runtime (CPU) on each block exported with torch.onnx.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Intra-op threads (one thread is timed with the thread's CPU clock, more with the wall clock).")
@click.option("--calibration", type=click.IntRange(min=0), default=16, show_default=True,
              help="Random networks of the specs timed with the blocks to fit the per-network terms (0: none).")
@click.option("--validate", "validate_n", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also time this many other random networks in the same session and store how well the "
                   "finished table predicts them.")
@click.option("--refresh", is_flag=True, help="Re-measure every block, not just the missing ones.")
@click.option("--mpc-profile", type=click.Choice(["lan", "wan"]),
              help="Measure an MPC table (two-party SPU) for this network profile; implied by --target mpc-lan / "
                   "mpc-wan or an existing MPC table.")
@click.option("--bandwidth-mbps", type=click.FloatRange(min=0, min_open=True),
              help="MPC: the profile's bandwidth in Mbit/s (with --rtt-ms: a custom profile).")
@click.option("--rtt-ms", type=click.FloatRange(min=0), help="MPC: the profile's round-trip time in ms.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the table path and counts as one JSON object.")
@user_errors
def latency_measure(target: str, specs: tuple[Path, ...], runtime: str, threads: int, calibration: int,
                    validate_n: int, refresh: bool, mpc_profile: str | None, bandwidth_mbps: float | None,
                    rtt_ms: float | None, no_progress: bool, as_json: bool) -> None:
    """Time every distinct block of the spaces on this machine, plus calibration networks, into
    latency_tables/TARGET.json; then `nas latency validate` measures how well it predicts other networks.

    MPC targets (mpc-lan, mpc-wan, or --mpc-profile): run every piece of the spaces' blocks in SPU's two-party
    simulator instead (--runtime, --threads and --calibration do not apply); --validate N runs N small random
    networks whole in SPU to check the table's sums."""
    from nas.blocks import Block
    from nas.latency.host import check_runtime
    from nas.latency.measure import measure_host_table
    from nas.latency.mpc_measure import resolve_profile
    from nas.latency.tables import check_target_name
    from nas.latency.validate import CALIBRATION_SEED, VALIDATION_SEED, random_networks

    check_target_name(target)
    profile = resolve_profile(target, mpc_profile, bandwidth_mbps, rtt_ms)
    if profile is not None:
        _measure_mpc(target, specs, profile, validate_n, refresh, no_progress, as_json)
        return
    check_runtime(runtime)
    spaces, names = _spaces(specs)
    blocks: set[Block] = set()
    for space in spaces:
        blocks.update(space.distinct_blocks())
    networks = random_networks(spaces, calibration, CALIBRATION_SEED, names) if calibration else []
    held_out = random_networks(spaces, validate_n, VALIDATION_SEED, names,
                               exclude={n["arch_hash"] for n in networks}) if validate_n else []
    bar, tick = _round_bar(len(blocks) + len(networks) + len(held_out), runtime, f"measure {target} ({runtime})",
                           no_progress)
    table, measured = measure_host_table(sorted(blocks), threads, refresh, progress=tick, runtime=runtime,
                                         calibration=networks, target=target, validation=held_out,
                                         spec_names=names)
    bar.close()
    from nas.latency.targets import load_target

    stored = load_target(target, table.parent).table
    fit = stored.get("calibration") or {}
    validation = stored.get("validation") or {}
    payload = {"table": str(table), "target": target, "runtime": runtime, "threads": threads, "measured": measured,
               "present": len(blocks) - measured, "calibration_networks": len(networks),
               "calibration_in_sample": fit.get("in_sample"),
               "validation": {k: v for k, v in validation.items() if k != "networks"} or None}
    if as_json:
        _echo_json(payload)
        return
    click.echo(f"{table}: measured {measured} block(s); {len(blocks) - measured} already present")
    if fit:
        click.echo(f"  calibrated on {fit['n']} networks: overhead {fit['overhead_ms']:.3f} ms, scale "
                   + ", ".join(f"{k} {v:.3f}" for k, v in fit["scale"].items())
                   + f"; in-sample {100 * fit['in_sample']['within_10pct']:.0f}% within +-10%")
    if validation:
        _echo_validation(target, validation)
    else:
        click.echo(f"  next: nas latency validate --target {target}" + "".join(f" --spec {n}" for n in names))


def _spu_bar(desc: str, disabled: bool) -> tuple[Any, Callable[[int], None], Callable[[str], None]]:
    """A progress bar over SPU runs: (bar, plan(total), tick(event))."""
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, disable=disabled, unit="run")

    def plan(total: int) -> None:
        bar.total = total
        bar.refresh()

    return bar, plan, lambda _event: bar.update(1)


def _measure_mpc(target: str, specs: tuple[Path, ...], profile: Any, validate_n: int, refresh: bool,
                 no_progress: bool, as_json: bool) -> None:
    from nas.latency.mpc_measure import measure_mpc, stored_specs

    spaces, names = _spaces(specs or tuple(Path(name) for name in stored_specs(target)))
    bar, plan, tick = _spu_bar(f"measure {target} (SPU)", no_progress)
    info = measure_mpc(target, spaces, profile, names, refresh, validate_n, progress=tick, plan=plan)
    bar.close()
    if as_json:
        _echo_json(info)
        return
    copied = f", {info['copied']} copied from {', '.join(info['copied_from'])}" if info["copied"] else ""
    click.echo(f"{info['table']}: {info['pieces']} pieces ({info['measured']} measured in SPU{copied}, "
               f"{info['present']} already present) in {info['seconds']:.0f} s; profile {profile.name} "
               f"({profile.bandwidth_mbps:g} Mbit/s, {profile.rtt_ms:g} ms round trip)")
    if info["validation"]:
        _echo_mpc_validation(target, info["validation"])
    else:
        click.echo(f"  next: nas latency validate --target {target}" + "".join(f" --spec {n}" for n in names))


def _echo_mpc_validation(target: str, result: dict[str, Any]) -> None:
    def err(name: str) -> str:
        return f"{result[name]['mean_abs']:.2f}% (max {result[name]['max_abs']:.2f}%)"

    click.echo(f"{target}: {result['n']} small networks run whole in SPU ({result['spu_version']}) vs the table's sums "
               f"of pieces, mean abs error: rounds {err('rounds_err_pct')}, bytes {err('bytes_err_pct')}, compute "
               f"{err('compute_err_pct')}")
    click.echo("  latency: " + ", ".join(f"{name} {v['mean_abs']:.2f}% (max {v['max_abs']:.2f}%)"
                                         for name, v in result["latency_err_pct"].items()))


def _echo_validation(target: str, result: dict[str, Any]) -> None:
    plain = result["plain_sum"]
    click.echo(f"{target}: {result['n']} held-out networks ({result['runtime']}, {result['threads']} thread(s), "
               f"{result['clock']} clock): {100 * result['within_10pct']:.1f}% within +-10%, "
               f"{100 * result['within_5pct']:.1f}% within +-5%, mean abs error {result['mean_abs_pct_err']:.2f}%, "
               f"max {result['max_abs_pct_err']:.2f}%  [{result['protocol'].split(':')[0]}]")
    click.echo(f"  plain sum of blocks: {100 * plain['within_10pct']:.1f}% within +-10%, mean abs error "
               f"{plain['mean_abs_pct_err']:.2f}% (signed {plain['mean_signed_pct_err']:+.2f}%)")
    if result.get("drift_pct") is not None:
        adjusted = result["drift_adjusted"]
        click.echo(f"  machine drift: the calibration networks now take {result['drift_pct']:+.2f}% vs when the "
                   f"table was measured; without it: {100 * adjusted['within_10pct']:.1f}% within +-10%, mean abs "
                   f"error {adjusted['mean_abs_pct_err']:.2f}%")
        if abs(result["drift_pct"]) > 3:
            click.echo("  the machine's speed moved by more than 3%: re-measure (--refresh) and validate when it "
                       "is quiet")


@latency.command("validate")
@click.option("--target", default="host", show_default=True, help="The measured table to validate.")
@click.option("--spec", "specs", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Spec(s) whose random subnets to time (repeatable; default: every search_spaces/*.yaml).")
@click.option("--n", "count", type=click.IntRange(min=1),
              help="Random subnets timed end to end (never the table's calibration networks) [default: 50; MPC "
                   "tables: 10 small ones run in SPU].")
@click.option("--seed", type=int, default=2, show_default=True, help="Seed of the random subnets.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the validation figures as one JSON object.")
@user_errors
def latency_validate(target: str, specs: tuple[Path, ...], count: int | None, seed: int, no_progress: bool,
                     as_json: bool) -> None:
    """Time N random subnets end to end with the table's runtime and threads, compare them with the table's
    predictions, and store the share within +-5% / +-10% and the mean and max error in the table.

    MPC tables: run N small random subnets whole in SPU and store how far the table's sums of pieces fall from
    their rounds, bytes, compute time and latency per profile."""
    from nas.latency.mpc import COST_MODEL
    from nas.latency.mpc_measure import VALIDATION_N, stored_specs, validate_mpc_table
    from nas.latency.tables import table_path
    from nas.latency.targets import load_target
    from nas.latency.validate import check_measured, runtime_of, validate_table

    model = load_target(target)  # a missing or broken table fails here, before anything is timed
    if model.table.get("cost_model") == COST_MODEL:
        spaces, names = _spaces(specs or tuple(Path(name) for name in stored_specs(target)))
        bar, plan, tick = _spu_bar(f"validate {target} (SPU)", no_progress)
        result = validate_mpc_table(model.path, spaces, count or VALIDATION_N, seed, progress=tick,
                                    spec_names=names, plan=plan)
        bar.close()
        if as_json:
            _echo_json({k: v for k, v in result.items() if k not in ("networks", "profiles")})
        else:
            _echo_mpc_validation(target, result)
        return
    count = count or 50
    check_measured(model.table, model.path)
    spaces, names = _spaces(specs)
    bar, tick = _round_bar(count + len((model.table.get("calibration") or {}).get("networks", [])),
                           runtime_of(model.table), f"validate {target}", no_progress)
    result = validate_table(table_path(target), spaces, count, seed, progress=tick, spec_names=names)
    bar.close()
    if as_json:
        _echo_json({k: v for k, v in result.items() if k != "networks"})
        return
    _echo_validation(target, result)


@latency.command("import")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["nnmeter-lut"]), required=True,
              help="Format of FILE: nnmeter-lut = nn-Meter's JSON of block key -> milliseconds.")
@click.option("--target", required=True, help="Name of the new target (refused if it clashes, unless --force).")
@click.option("--device", help="Device description stored in the table (default: the file name).")
@click.option("--force", is_flag=True, help="Replace an existing table or a shipped target of that name.")
@click.option("--json", "as_json", is_flag=True, help="Print what was imported as one JSON object.")
@user_errors
def latency_import(source: Path, fmt: str, target: str, device: str | None, force: bool, as_json: bool) -> None:
    """Import a device's measured block table as target NAME: exact look-ups where a block was measured, a
    model fitted to the same file where not (such predictions are flagged)."""
    from nas.latency.importer import import_table

    path, info = import_table(source, target, fmt, force=force, device=device)
    if as_json:
        _echo_json(info)
        return
    kinds = ", ".join(f"{k} {v}" for k, v in info["entries_per_kind"].items())
    click.echo(f"{path}: imported {info['entries']} blocks ({kinds}) as target {target}")
    if info["fallback_heldout"]:
        held = info["fallback_heldout"]
        click.echo(f"  fallback fit, held-out blocks: {100 * held['within_10pct']:.1f}% within +-10% "
                   f"(mean abs error {held['mean_abs_pct_err']:.2f}%)")


def _headline_text(info: dict[str, Any]) -> str:
    h = info.get("headline") or {}
    if "rounds_mean_abs_pct_err" in h:
        text = (f"validated in SPU on {h['networks']} whole networks: mean abs error rounds "
                f"{h['rounds_mean_abs_pct_err']:.2f}%, bytes {h['bytes_mean_abs_pct_err']:.2f}%, compute "
                f"{h['compute_mean_abs_pct_err']:.2f}%")
        if "latency_mean_abs_pct_err" in h:
            text += (f"; latency ({h['profile']}) {h['latency_mean_abs_pct_err']:.2f}% (max "
                     f"{h['latency_max_abs_pct_err']:.2f}%)")
        return text
    if "within_10pct" in h:
        text = (f"validated ({h['protocol']}) on {h['networks']} networks: {100 * h['within_10pct']:.1f}% within "
                f"+-10%, {100 * h['within_5pct']:.1f}% within +-5%, mean abs error {h['mean_abs_pct_err']:.2f}%")
        if h.get("drift_pct") is not None:
            text += (f" (machine drift {h['drift_pct']:+.1f}%; without it "
                     f"{100 * h['drift_adjusted_within_10pct']:.1f}% within +-10%)")
        return text
    if "heldout_within_10pct" in h:
        text = (f"fit: {100 * h['heldout_within_10pct']:.2f}% of {h['heldout_blocks']} held-out blocks within "
                f"+-10% (mean abs error {h['heldout_mean_abs_pct_err']:.2f}%)")
        if "network_within_10pct" in h:
            text += f"; {100 * h['network_within_10pct']:.1f}% of {h['networks']} networks within +-10%"
        return text
    if "exact_entries" in h:
        text = f"{h['exact_entries']} exact entries"
        if "fallback_heldout_within_10pct" in h:
            text += (f"; fallback fit: {100 * h['fallback_heldout_within_10pct']:.2f}% of "
                     f"{h['fallback_heldout_blocks']} held-out blocks within +-10%")
        return text
    return "not validated yet" + (f" (run `nas latency validate --target {info['target']}`)"
                                  if info.get("provenance") == "measured" else "")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (with the full validation figures).")
@user_errors
def targets(as_json: bool) -> None:
    """List latency targets with their provenance and validation figures."""
    from nas.errors import LatencyError
    from nas.latency.targets import available_targets, load_target

    infos, broken = [], []
    for name in available_targets():
        try:
            infos.append(load_target(name).summary())
        except LatencyError as exc:  # list the others, then fail with one line per broken table
            broken.append(str(exc))
    if as_json:
        _echo_json(infos)
    elif not infos and not broken:
        click.echo("no latency tables yet: build one with `nas latency measure --target host`")
    else:
        for info in infos:
            how = info.get("runtime")
            if info.get("cost_model") == "mpc":
                p = info["profile"]
                how = (f"{info.get('runtime_version')}, {info['protocol']}/{info['field']}, profile {p['name']}: "
                       f"{p['bandwidth_mbps']:g} Mbit/s, {p['rtt_ms']:g} ms round trip")
            elif info.get("threads") and info.get("provenance") == "measured":
                how = f"{how}, {info['threads']} thread(s)"
            click.echo(f"{info['target']}: {info.get('provenance')} on {info.get('device')} ({how}, "
                       f"{str(info.get('date'))[:10]}); {info['path']}")
            click.echo(f"  {_headline_text(info)}")
    if broken:
        _fail("\n".join(broken))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
