"""Building and validating MPC latency tables (`nas latency measure|validate --target mpc-*`): every piece of
the spaces' blocks run in SPU's two-party simulator (`nas.mpc.runner`), and whole small networks run there to
check the table's sums of pieces. The cost model that reads the tables is `nas.latency.mpc`."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

from nas.blocks import Block
from nas.errors import LatencyError
from nas.latency.mpc import (
    COST_MODEL,
    PROFILES,
    TARGET_PROFILES,
    Cost,
    MPCTableModel,
    Profile,
    is_count,
    is_number,
    pieces_of,
    table_profile,
)
from nas.latency.tables import quote, read_table, store_validation, table_path, write_table
from nas.space import SearchSpace, network_blocks

RUNTIME = "spu"
SETUP = "bash scripts/setup_mpc.sh"
VALIDATION_SEED = 2
VALIDATION_N = 10
REPEATS = 3  # runs per piece and network: compute_ms is their median (rounds and bytes must agree)
SAME_RUN = ("protocol", "field", "parties", "runtime", "runtime_version", "cpu")  # entries add up only if equal
FORMULA = "ms = sum over pieces of compute_ms + rounds * rtt_ms + bytes * 8 / (bandwidth_mbps * 1e6) * 1000"



def runner_module() -> ModuleType:
    """`nas.mpc.runner`, once SPU is installed (else one line saying how to install it)."""
    try:
        from nas.mpc import runner
    except ImportError as exc:
        raise LatencyError(f"the MPC runner cannot be loaded ({exc}); install SPU with `{SETUP}`") from None
    if not runner.spu_available():
        raise LatencyError(f"SPU is not installed (the .venv-mpc environment): run `{SETUP}`")
    return runner


def resolve_profile(target: str, name: str | None = None, bandwidth_mbps: float | None = None,
                    rtt_ms: float | None = None, path: Path | None = None) -> Profile | None:
    """The profile to measure `target` for, or None when it is not an MPC target.

    Base: `name` (`--mpc-profile`), else the profile of the target's existing MPC table, else the target name's
    (`mpc-lan`, `mpc-wan`); a bandwidth or round-trip time given replaces the base's and makes it `custom`."""
    if name is not None and name not in PROFILES:
        raise LatencyError(f"--mpc-profile: must be one of {', '.join(PROFILES)}, got {name!r}")
    base = PROFILES.get(name or "") or _stored_profile(path or table_path(target)) or PROFILES.get(
        TARGET_PROFILES.get(target, ""))
    if base is None and bandwidth_mbps is None and rtt_ms is None:
        return None
    if base is None and (bandwidth_mbps is None or rtt_ms is None):
        raise LatencyError("--bandwidth-mbps, --rtt-ms: a custom MPC profile needs both (or --mpc-profile lan|wan "
                           "as the base)")
    bandwidth = bandwidth_mbps if bandwidth_mbps is not None else base.bandwidth_mbps  # type: ignore[union-attr]
    rtt = rtt_ms if rtt_ms is not None else base.rtt_ms  # type: ignore[union-attr]
    if not (is_number(bandwidth) and bandwidth > 0):
        raise LatencyError(f"--bandwidth-mbps: must be a number > 0, got {quote(bandwidth)}")
    if not (is_number(rtt) and rtt >= 0):
        raise LatencyError(f"--rtt-ms: must be a number >= 0, got {quote(rtt)}")
    if base is not None and (bandwidth, rtt) == (base.bandwidth_mbps, base.rtt_ms):
        return base
    return Profile("custom", bandwidth, rtt, "given on the command line (--bandwidth-mbps, --rtt-ms)")


def stored_specs(target: str, path: Path | None = None) -> list[str]:
    """The specs an MPC table was measured for (`specs`): the default of `--spec` for an MPC target, since
    measuring every spec of search_spaces/ in SPU would take hours."""
    path = path or table_path(target)
    try:
        table = read_table(path) if path.exists() else {}
    except LatencyError:
        table = {}
    specs = table.get("specs") if table.get("cost_model") == COST_MODEL else None
    if not (isinstance(specs, list) and specs and all(isinstance(s, str) for s in specs)):
        raise LatencyError(f"--spec: name the spec(s) whose blocks to run in SPU for target {target} (e.g. "
                           "search_spaces/mpc_vit.yaml)")
    return specs


def _stored_profile(path: Path) -> Profile | None:
    """The profile of the MPC table at `path`, if there is a readable one."""
    try:
        table = read_table(path) if path.exists() else {}
    except LatencyError:
        return None
    return table_profile(table) if table.get("cost_model") == COST_MODEL else None


def existing_table(path: Path, refresh: bool) -> dict[str, Any]:
    """The MPC table at `path` ({} when there is none, or it is unreadable and `refresh`); another kind of table
    is never replaced."""
    if not path.exists():
        return {}
    try:
        table = read_table(path)
    except LatencyError as exc:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError):
            raw = None
        if isinstance(raw, dict) and raw.get("provenance") not in (None, "measured"):
            raise LatencyError(f"{path}: a {raw.get('provenance')} table, not an MPC one; measure into another "
                               "target name") from None
        if not refresh:
            raise LatencyError(f"{exc}; pass --refresh to measure a new table in its place") from None
        return {}
    if table.get("cost_model") != COST_MODEL:
        what = f"{table['provenance']} table" + (" (measured on this machine)" if table["provenance"] == "measured"
                                                 else "")
        raise LatencyError(f"target {table['target']}: {path} is a {what}, not an MPC one; measure into another "
                           "target name (e.g. --target mpc-wan)")
    return table


def provenance(runner: ModuleType, target: str, profile: Profile) -> dict[str, Any]:
    """The header fields of an MPC table measured now."""
    from nas.latency.host import cpu_model

    cpu = cpu_model()
    return {
        "format_version": 1,
        "target": target,
        "device": f"{runner.PARTIES}-party SPU simulator on {cpu}",
        "cpu": cpu,
        "runtime": RUNTIME,
        "runtime_version": runner.spu_version(),
        "threads": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "method": (f"nas.mpc.runner: each piece of the MPC cost decomposition (nas.mpc.pieces: conv blocks whole; "
                   "attention = layernorm, q/k and v linears, [depthwise conv on V], one attention core per group "
                   "of heads of one kind, [hard-swish], projection; FFN = layernorm, linear, activation, linear) "
                   f"run alone in SPU's {runner.PARTIES}-party simulator ({runner.PROTOCOL} over {runner.FIELD}) on "
                   f"secret-shared random inputs and weights, {REPEATS} times; rounds and bytes are party 0's send "
                   f"actions and bytes (the same in every run), compute_ms the median of the runs' execution time "
                   "on this CPU (both parties in one process, on the CPUs counted in `threads`; it moves with the "
                   f"machine's load). Latency on the profile: {FORMULA}"),
        "provenance": "measured",
        "repeats": REPEATS,
        "cost_model": COST_MODEL,
        "protocol": runner.PROTOCOL,
        "field": runner.FIELD,
        "parties": runner.PARTIES,
        "profile": profile.to_dict(),
    }


def _sibling_tables(path: Path, header: dict[str, Any], newer_than: str | None = None) -> list[dict[str, Any]]:
    """The other MPC tables beside `path` measured with the same SPU, protocol, field and CPU (their pieces and
    networks cost the same: only the profile differs), each measured after `newer_than` when given (what
    `--refresh` may reuse: a table whose entries were all measured after this one's)."""
    found = []
    for other in sorted(path.parent.glob("*.json")):
        if other.resolve() == path.resolve():
            continue
        try:
            table = read_table(other)
        except LatencyError:
            continue
        if table.get("cost_model") == COST_MODEL and all(table.get(k) == header[k] for k in SAME_RUN) and (
                newer_than is None or _when(entries_date(table)) > _when(newer_than)):
            found.append(table)
    return found


def entries_date(table: dict[str, Any]) -> str:
    """When the oldest of a table's entries was measured in SPU (`entries_date`; a copied entry keeps the date
    of its measurement), else the table's date."""
    return str(table.get("entries_date") or table.get("date") or "")


def _when(date: Any) -> datetime:
    try:
        when = datetime.fromisoformat(str(date))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _sibling_entries(tables: Sequence[dict[str, Any]]) -> dict[str, tuple[str, dict[str, Any]]]:
    """The entries of `tables` (from `_sibling_tables`) by piece key, with the target they come from."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for table in tables:
        for key, value in table["entries"].items():
            found.setdefault(key, (table["target"], value))
    return found


def _per_run(progress: Callable[[str], None] | None) -> Callable[[int, int], None] | None:
    """The runner's progress (runs done, runs in all) as one `progress("run")` per finished SPU run."""
    if progress is None:
        return None
    seen = [0]

    def report(done: int, _total: int) -> None:
        for _ in range(done - seen[0]):
            progress("run")
        seen[0] = max(seen[0], done)

    return report


def _median(values: Sequence[Any], what: str) -> Cost:
    """One cost of repeated runs of `what`: their rounds and bytes (which must agree: SPU counts them
    deterministically) and the median compute time."""
    costs = [_as_cost(value, what) for value in values]
    if len({(c.rounds, c.bytes) for c in costs}) != 1:
        raise LatencyError(f"SPU counted different rounds or bytes for {what} in repeated runs "
                           f"({', '.join(f'{c.rounds} rounds, {c.bytes} bytes' for c in costs)}); nothing was written")
    return Cost(costs[0].rounds, costs[0].bytes, statistics.median(c.compute_ms for c in costs))


def _as_cost(value: Any, key: str) -> Cost:
    cost = Cost(int(value.rounds), int(value.bytes), float(value.compute_ms))
    if cost.rounds < 0 or cost.bytes < 0 or not (math.isfinite(cost.compute_ms) and cost.compute_ms > 0):
        raise LatencyError(f"SPU returned an impossible cost for piece {key}: {cost}")
    return cost


def measure_mpc_table(blocks: Sequence[Block], target: str, profile: Profile, refresh: bool = False,
                      path: Path | None = None, networks: Sequence[dict[str, Any]] = (),
                      spec_names: Sequence[str] = (), progress: Callable[[str], None] | None = None,
                      plan: Callable[[int], None] | None = None, runner: ModuleType | None = None) -> dict[str, Any]:
    """Measure in SPU every piece of `blocks` the table lacks (all with `refresh`) and write the table.

    Entries are kept when the table was measured with the same SPU version, protocol, field and CPU (else it is
    re-measured whole); pieces another MPC table beside it measured the same way are copied from it, since a
    piece's cost does not depend on the profile (with `refresh`, only from a table whose entries were all
    measured after this one's: `--refresh` of mpc-lan, then of mpc-wan, measures once). `networks` (from
    `small_networks`), when given, are run whole in SPU to validate the finished table (or taken from such a
    table's validation). `plan` is told the number of SPU runs ahead; `progress` is called once per run. The
    table is written once, atomically. Returns what was done."""
    started = time.perf_counter()
    path = path or table_path(target)
    table = existing_table(path, refresh)
    runner = runner or runner_module()
    header = provenance(runner, target, profile)
    same = all(table.get(key) == header[key] for key in SAME_RUN)
    entries: dict[str, dict[str, Any]] = {} if refresh or not same else dict(table.get("entries", {}))
    needed = sorted({piece.key() for block in blocks for piece in pieces_of(block)})
    siblings = _sibling_tables(path, header, newer_than=entries_date(table) if refresh else None)
    reusable = _sibling_entries(siblings)
    copied = {key: reusable[key] for key in needed if key not in entries and key in reusable}
    entries.update({key: value for key, (_, value) in copied.items()})
    todo = [key for key in needed if key not in entries]
    ran = _sibling_networks(siblings)
    new_nets = [net for net in networks if description_hash(net["description"]) not in ran]
    if plan:
        plan(REPEATS * (len(todo) + len(new_nets)))
    from nas.mpc.pieces import Piece

    piece_runs, net_runs = _interleaved(runner, [Piece.from_key(key) for key in todo], new_nets, progress)
    missing = [key for key in todo if any(key not in run for run in piece_runs)]
    if missing:
        raise LatencyError(f"the MPC runner returned no cost for piece {missing[0]}; nothing was written")
    entries.update({key: _median([run[key] for run in piece_runs], f"piece {key}").to_dict() for key in todo})
    unchanged = same and not refresh and not todo and not copied and table.get("profile") == header["profile"]
    specs = sorted(set(spec_names) | set(table.get("specs", []) if same and not refresh else []))
    dates = ([entries_date(table)] if len(entries) > len(todo) + len(copied) else []) + [header["date"]] * bool(todo)
    sources = {source for source, _ in copied.values()}
    dates += [entries_date(t) for t in siblings if t["target"] in sources]
    out = {**header, "specs": specs, "entries_date": min(dates, key=_when, default=header["date"]),
           "entries": dict(sorted(entries.items())),
           "validation": table.get("validation") if unchanged else None}
    if networks:
        model = MPCTableModel(target, out, path)
        out["validation"] = validation_record(model, networks, _network_costs(networks, ran, new_nets, net_runs),
                                              spec_names)
    write_table(out, path)
    return {"table": str(path), "target": target, "profile": profile.to_dict(), "pieces": len(needed),
            "measured": len(todo), "copied": len(copied), "copied_from": sorted(sources),
            "present": len(needed) - len(todo) - len(copied), "seconds": round(time.perf_counter() - started, 1),
            "validation": _validation_summary(out["validation"])}


def measure_mpc(target: str, spaces: Sequence[SearchSpace], profile: Profile, spec_names: Sequence[str] = (),
                refresh: bool = False, validate_n: int = 0, seed: int = VALIDATION_SEED,
                progress: Callable[[str], None] | None = None, plan: Callable[[int], None] | None = None,
                path: Path | None = None, runner: ModuleType | None = None) -> dict[str, Any]:
    """`nas latency measure` for an MPC target: the pieces of every distinct block of `spaces`, and with
    `validate_n` that many small random networks of them run whole to validate the table."""
    blocks = sorted({block for space in spaces for block in space.distinct_blocks()})
    networks = small_networks(spaces, validate_n, seed, spec_names) if validate_n else []
    return measure_mpc_table(blocks, target, profile, refresh, path, networks, spec_names, progress, plan, runner)


# ---- validating ----------------------------------------------------------------------------------------------


def description_hash(description: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]


def small_networks(spaces: Sequence[SearchSpace], n: int, seed: int = VALIDATION_SEED,
                   spec_names: Sequence[str] = ()) -> list[dict[str, Any]]:
    """`n` random small networks of `spaces`, round-robin: space `s` draws 2m distinct archs
    (`space.sample(random.Random(seed + i))`) and keeps the m with the fewest multiply-accumulates, since a
    whole network in SPU takes long. Each as {"arch_hash", "spec", "seed", "flops", "description"}."""
    if not spaces:
        raise LatencyError("name at least one spec whose networks to run in SPU (--spec)")
    if n < 1:
        raise LatencyError(f"--n: validate at least 1 network, got {n}")
    out = []
    for s, space in enumerate(spaces):
        share = n // len(spaces) + (1 if s < n % len(spaces) else 0)
        drawn: dict[str, Any] = {}
        for i in range(200 * share):
            if len(drawn) >= 2 * share:
                break
            arch = space.sample(random.Random(seed + i))
            drawn.setdefault(arch.arch_hash(), arch)
        smallest = sorted(drawn.values(), key=lambda a: (space.flops(a), a.arch_hash()))[:share]
        for arch in smallest:
            description = space.describe(arch)
            description["resolution"] = space.deploy_resolution_for(arch)
            out.append({"arch_hash": arch.arch_hash(), "spec": spec_names[s] if s < len(spec_names) else "",
                        "seed": seed, "flops": space.flops(arch), "description": description})
    return out


def _sibling_networks(tables: Sequence[dict[str, Any]]) -> dict[str, tuple[Cost, str]]:
    """The whole networks the validations of `tables` (from `_sibling_tables`) ran, by description hash, with the
    target that ran them: `mpc-wan` reuses the runs of `mpc-lan`."""
    done: dict[str, tuple[Cost, str]] = {}
    for table in tables:
        validation = table.get("validation")
        for net in validation.get("networks", []) if isinstance(validation, dict) else []:
            m = net.get("measured") if isinstance(net, dict) else None
            if (isinstance(m, dict) and isinstance(net.get("description_hash"), str) and is_count(m.get("rounds"))
                    and is_count(m.get("bytes")) and is_number(m.get("compute_ms")) and m["compute_ms"] > 0):
                done.setdefault(net["description_hash"], (Cost(m["rounds"], m["bytes"], m["compute_ms"]),
                                                          table["target"]))
    return done


def _interleaved(runner: ModuleType, pieces: Sequence[Any], networks: Sequence[dict[str, Any]],
                 progress: Callable[[str], None] | None) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    """`REPEATS` runs of every piece and network, alternating (all pieces, then all networks, and again), so
    that a change of the machine's load between them moves both alike: (runs of the pieces by key, runs of
    the networks in order)."""
    piece_runs: list[dict[str, Any]] = []
    net_runs: list[list[Any]] = []
    descriptions = [net["description"] for net in networks]
    for _ in range(REPEATS):
        if pieces:
            piece_runs.append(runner.measure_pieces(list(pieces), progress=_per_run(progress)))
        if descriptions:
            net_runs.append(runner.measure_networks(descriptions, progress=_per_run(progress)))
    return piece_runs, net_runs


def _network_costs(networks: Sequence[dict[str, Any]], ran: dict[str, tuple[Cost, str]],
                   new: Sequence[dict[str, Any]], runs: Sequence[Sequence[Any]]) -> list[tuple[Cost, str]]:
    """Each network's whole-network cost, with the target whose validation ran it ("": in `runs` of `new`)."""
    done = dict(ran)
    for i, net in enumerate(new):
        done[description_hash(net["description"])] = (_median([run[i] for run in runs], f"network "
                                                                                         f"{net['arch_hash']}"), "")
    return [done[description_hash(net["description"])] for net in networks]


def _err(table: float, measured: float) -> float:
    return 100.0 * (table - measured) / measured if measured else (0.0 if table == measured else math.inf)


def _stats(errors: Sequence[float]) -> dict[str, float]:
    return {"mean_abs": round(sum(abs(e) for e in errors) / len(errors), 4),
            "max_abs": round(max(abs(e) for e in errors), 4),
            "mean_signed": round(sum(errors) / len(errors), 4)}


def validation_record(model: MPCTableModel, networks: Sequence[dict[str, Any]],
                      measured: Sequence[tuple[Cost, str]], spec_names: Sequence[str] = ()) -> dict[str, Any]:
    """How far the table's sums of pieces fall from the whole networks as SPU ran them."""
    profiles = {**PROFILES, model.profile.name: model.profile}
    rows, errors = [], {"rounds": [], "bytes": [], "compute": []}  # type: ignore[var-annotated]
    latency: dict[str, list[float]] = {name: [] for name in profiles}
    for net, (cost, origin) in zip(networks, measured, strict=True):
        blocks = network_blocks(net["description"], net["description"]["resolution"])
        rounds, nbytes, compute_ms = model.cost(blocks)
        summed = Cost(rounds, nbytes, compute_ms)
        errors["rounds"].append(_err(summed.rounds, cost.rounds))
        errors["bytes"].append(_err(summed.bytes, cost.bytes))
        errors["compute"].append(_err(summed.compute_ms, cost.compute_ms))
        for name, profile in profiles.items():
            latency[name].append(_err(profile.ms(summed.rounds, summed.bytes, summed.compute_ms),
                                      profile.ms(cost.rounds, cost.bytes, cost.compute_ms)))
        row = {"arch_hash": net["arch_hash"], "spec": net.get("spec", ""), "flops": net.get("flops"),
               "blocks": len(blocks), "description_hash": description_hash(net["description"]),
               "measured": cost.to_dict(), "table": summed.to_dict()}
        if origin:
            row["measured_by"] = origin
        rows.append(row)
    from nas.latency.host import cpu_model

    table = model.table
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n": len(rows),
        "spu_version": table["runtime_version"],
        "cpu": cpu_model(),
        "protocol": f"whole networks run in SPU ({table['protocol']}, {table['field']}) vs the table's sums of "
                    "pieces",
        "seed": networks[0].get("seed") if networks else None,
        "specs": list(spec_names),
        "networks_chosen": "the smaller half by multiply-accumulates of 2n random subnets",
        "rounds_err_pct": _stats(errors["rounds"]),
        "bytes_err_pct": _stats(errors["bytes"]),
        "compute_err_pct": _stats(errors["compute"]),
        "latency_err_pct": {name: _stats(values) for name, values in latency.items()},
        "profiles": {name: profile.to_dict() for name, profile in profiles.items()},
        "networks": rows,
    }


def _validation_summary(validation: dict[str, Any] | None) -> dict[str, Any] | None:
    return {k: v for k, v in validation.items() if k not in ("networks", "profiles")} if validation else None


def validate_mpc_table(path: Path, spaces: Sequence[SearchSpace], n: int = VALIDATION_N, seed: int = VALIDATION_SEED,
                       progress: Callable[[str], None] | None = None, spec_names: Sequence[str] = (),
                       plan: Callable[[int], None] | None = None, runner: ModuleType | None = None) -> dict[str, Any]:
    """Run `n` small random networks of `spaces` whole in SPU and store how well the table's sums of pieces
    match their rounds, bytes, compute and latency (`validation`). The table is rewritten atomically, only if
    it did not change meanwhile."""
    table = read_table(path)
    if table.get("cost_model") != COST_MODEL:
        raise LatencyError(f"{path}: not an MPC table (cost_model {table.get('cost_model')!r})")
    model = MPCTableModel(path.stem, table, path)
    networks = small_networks(spaces, n, seed, spec_names)
    for net in networks:
        model.check_covers(network_blocks(net["description"], net["description"]["resolution"]))
    runner = runner or runner_module()
    if runner.spu_version() != table["runtime_version"]:
        raise LatencyError(f"{path}: measured with {table['runtime_version']}, the SPU here is "
                           f"{runner.spu_version()}; re-measure it with `nas latency measure --target {path.stem} "
                           "--refresh`")
    if plan:
        plan(REPEATS * len(networks))
    _, runs = _interleaved(runner, [], networks, progress)
    validation = validation_record(model, networks, _network_costs(networks, {}, networks, runs), spec_names)
    store_validation(path, table, validation, "ran")
    return validation
