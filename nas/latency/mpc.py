"""MPC latency targets: what a network costs under two-party secure computation, from pieces measured in SPU.

A table of cost model `mpc` (`mpc-lan`, `mpc-wan`) holds, per piece of the MPC cost decomposition
(`nas.mpc.pieces`: conv blocks whole; attention and FFN split into layernorm, linears, activation and one
attention core per attention kind), the communication rounds, the bytes the parties exchange and the local
compute time, each measured by running the piece alone in SPU's two-party simulator. A network's latency on
the table's network profile (bandwidth, round-trip time) is then

    ms = sum over its pieces of compute_ms + rounds * rtt_ms + bytes * 8 / (bandwidth_mbps * 1e6) * 1000

Rounds and bytes are counts of the protocol, not timings: the same on any machine and in both profiles, so
the two tables share their entries and differ only in `profile`. Validation runs whole random networks in
SPU and compares their counted rounds, bytes and compute time with the table's sums of pieces.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

from nas.blocks import Block
from nas.errors import LatencyError
from nas.latency.tables import quote, read_table, table_path, write_table
from nas.latency.targets import LatencyModel, register_target_kind
from nas.space import SearchSpace, network_blocks

COST_MODEL = "mpc"
RUNTIME = "spu"
SETUP = "bash scripts/setup_mpc.sh"
VALIDATION_SEED = 2
VALIDATION_N = 10
REPEATS = 3  # runs per piece and network: compute_ms is their median (rounds and bytes must agree)
SAME_RUN = ("protocol", "field", "parties", "runtime", "runtime_version", "cpu")  # entries add up only if equal
FORMULA = "ms = sum over pieces of compute_ms + rounds * rtt_ms + bytes * 8 / (bandwidth_mbps * 1e6) * 1000"


@dataclass(frozen=True)
class Profile:
    """The network between the two parties."""

    name: str
    bandwidth_mbps: float
    rtt_ms: float
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bandwidth_mbps": self.bandwidth_mbps, "rtt_ms": self.rtt_ms, "source": self.source}

    def ms(self, rounds: float, nbytes: float, compute_ms: float) -> float:
        """Latency of `rounds` round trips, `nbytes` sent and `compute_ms` of local work on this network."""
        return compute_ms + rounds * self.rtt_ms + nbytes * 8 / (self.bandwidth_mbps * 1e6) * 1000


PROFILES = {
    "lan": Profile("lan", 1000, 0.5, "chosen: a 1 Gbit/s link with 0.5 ms round trips, two servers in one data "
                                     "centre (the LAN setting of two-party inference evaluations)"),
    "wan": Profile("wan", 100, 40, "chosen: a 100 Mbit/s link with 40 ms round trips, two parties in different "
                                   "regions (the WAN setting of two-party inference evaluations)"),
}
TARGET_PROFILES = {"mpc-lan": "lan", "mpc-wan": "wan"}


@dataclass(frozen=True)
class Cost:
    """Rounds, bytes and compute milliseconds of one piece, block or network."""

    rounds: int
    bytes: int
    compute_ms: float

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.rounds + other.rounds, self.bytes + other.bytes, self.compute_ms + other.compute_ms)

    def to_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "bytes": self.bytes, "compute_ms": round(self.compute_ms, 6)}


ZERO = Cost(0, 0, 0.0)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _where(key: str) -> str:
    return key if len(key) <= 80 else quote(key, 80)


def mpc_problems(data: dict[str, Any]) -> list[str]:
    """Every MPC field of a table (cost_model `mpc`) that is missing or wrong, as `field: rule, got value`
    (`nas.latency.tables.table_problems` adds them to the common ones)."""
    from nas.mpc.pieces import Piece

    problems = []
    if data.get("provenance") != "measured":
        problems.append(f"provenance: an mpc table is measured, got {quote(data.get('provenance'))}")
    for name in ("protocol", "field", "runtime_version"):
        if not (isinstance(data.get(name), str) and data[name]):
            problems.append(f"{name}: an mpc table needs a non-empty string, got {quote(data.get(name))}")
    parties = data.get("parties")
    if not (_count(parties) and parties >= 2):
        problems.append(f"parties: must be an integer >= 2, got {quote(parties)}")
    problems += profile_problems(data.get("profile"), "profile" in data)
    entries = data.get("entries")
    if not isinstance(entries, dict):
        return [*problems, "entries: an mpc table needs an `entries` object (piece key -> rounds, bytes, compute_ms)"]
    bad = []
    for key, value in entries.items():
        if not isinstance(value, dict):
            bad.append(f"entries.{_where(key)}: must be an object with rounds, bytes and compute_ms, got "
                       f"{quote(value, 60)}")
            continue
        wrong = [f"entries.{_where(key)}.{name}: must be an integer >= 0, got {quote(value.get(name), 60)}"
                 for name in ("rounds", "bytes") if not _count(value.get(name))]
        ms = value.get("compute_ms")
        if not (_number(ms) and ms > 0):
            wrong.append(f"entries.{_where(key)}.compute_ms: must be a number > 0, got {quote(ms, 60)}")
        if not wrong:
            try:
                Piece.from_key(key)
            except (ValueError, TypeError, KeyError) as exc:
                wrong.append(f"entries.{_where(key)}: not a piece key ({quote(str(exc), 120)[1:-1]})")
        bad += wrong
    if bad:
        problems.append(bad[0] + (f" ({len(bad)} entry fields are wrong)" if len(bad) > 1 else ""))
    return problems


def profile_problems(profile: Any, present: bool = True) -> list[str]:
    """What is wrong with a table's `profile` (the network between the parties)."""
    if not present or profile is None:
        return ["profile: missing (an mpc table names its network: name, bandwidth_mbps, rtt_ms, source)"]
    if not isinstance(profile, dict):
        return [f"profile: must be an object (name, bandwidth_mbps, rtt_ms, source), got {quote(profile)}"]
    problems = [f"profile.{name}: must be a non-empty string, got {quote(profile.get(name))}"
                for name in ("name", "source") if not (isinstance(profile.get(name), str) and profile[name])]
    bandwidth, rtt = profile.get("bandwidth_mbps"), profile.get("rtt_ms")
    if not (_number(bandwidth) and bandwidth > 0):
        problems.append(f"profile.bandwidth_mbps: must be a number > 0, got {quote(bandwidth)}")
    if not (_number(rtt) and rtt >= 0):
        problems.append(f"profile.rtt_ms: must be a number >= 0, got {quote(rtt)}")
    return problems


def table_profile(table: dict[str, Any]) -> Profile:
    raw = table["profile"]
    return Profile(raw["name"], float(raw["bandwidth_mbps"]), float(raw["rtt_ms"]), raw["source"])


def pieces_of(block: Block) -> list[Any]:
    from nas.mpc.pieces import pieces_of as decompose

    return decompose(block)


@register_target_kind(COST_MODEL)
class MPCTableModel(LatencyModel):
    """Latency under two-party computation: the sum of the block's pieces' compute time, round trips and bytes
    on the table's network profile (see the module doc). Every piece of every block must be in the table."""

    def __init__(self, name: str, table: dict[str, Any], path: Path):
        super().__init__(name, table, path)
        self.profile = table_profile(table)
        self.entries = {key: Cost(int(v["rounds"]), int(v["bytes"]), float(v["compute_ms"]))
                        for key, v in table["entries"].items()}
        self._memo: dict[Block, tuple[Cost, float]] = {}

    def _missing(self, block: Block) -> list[str]:
        return [piece.key() for piece in pieces_of(block) if piece.key() not in self.entries]

    def block_cost(self, block: Block) -> tuple[Cost, float]:
        """(rounds, bytes, compute_ms) of `block` and its milliseconds on the profile; memoised."""
        found = self._memo.get(block)
        if found is None:
            cost = ZERO
            for piece in pieces_of(block):
                try:
                    cost = cost + self.entries[piece.key()]
                except KeyError:
                    raise LatencyError(f"target {self.name}: {self.path} has no entry for piece {piece.key()} of "
                                       f"block {block.key()}; {self._how()}") from None
            found = self._memo[block] = (cost, self.profile.ms(cost.rounds, cost.bytes, cost.compute_ms))
        return found

    def predict_block(self, block: Block) -> tuple[float, bool]:
        return self.block_cost(block)[1], True

    def cost(self, blocks: Sequence[Block]) -> tuple[int, int, float]:
        """(rounds, bytes, compute_ms) of a network of `blocks`: what reports show beside the latency."""
        total = ZERO
        for block in blocks:
            total = total + self.block_cost(block)[0]
        return total.rounds, total.bytes, total.compute_ms

    def _how(self, hint: str = "") -> str:
        return f"build them with `nas latency measure --target {self.name}{hint or ' --spec SPEC'}`"

    def check_covers(self, blocks: Sequence[Block], hint: str = "") -> None:
        for block in sorted(set(blocks)):
            missing = self._missing(block)
            if missing:
                raise LatencyError(f"target {self.name}: {self.path} has no entries for block kind {block.kind} "
                                   f"(e.g. {missing[0]}); {self._how(hint)}")

    def headline(self) -> dict[str, Any]:
        validation = self._section(self.table, "validation", "validation")
        if not validation:
            return {}
        n = self._figures(validation, "validation", ("n",))["n"]
        out: dict[str, Any] = {"networks": n, "validated": validation.get("date"), "profile": self.profile.name}
        for name in ("rounds", "bytes", "compute"):
            where = f"validation.{name}_err_pct"
            figures = self._figures(self._section(validation, f"{name}_err_pct", where), where,
                                    ("mean_abs", "max_abs"))
            out[f"{name}_mean_abs_pct_err"], out[f"{name}_max_abs_pct_err"] = figures["mean_abs"], figures["max_abs"]
        where = "validation.latency_err_pct"
        per_profile = self._section(validation, "latency_err_pct", where)
        if self.profile.name in per_profile:
            where = f"{where}.{self.profile.name}"
            figures = self._figures(self._section(per_profile, self.profile.name, where), where,
                                    ("mean_abs", "max_abs"))
            out["latency_mean_abs_pct_err"], out["latency_max_abs_pct_err"] = figures["mean_abs"], figures["max_abs"]
        return out

    def summary(self) -> dict[str, Any]:
        info = super().summary()
        info.update(cost_model=COST_MODEL, protocol=self.table["protocol"], field=self.table["field"],
                    parties=self.table["parties"], profile=self.profile.to_dict())
        return info


# ---- measuring -----------------------------------------------------------------------------------------------


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
    if not (_number(bandwidth) and bandwidth > 0):
        raise LatencyError(f"--bandwidth-mbps: must be a number > 0, got {quote(bandwidth)}")
    if not (_number(rtt) and rtt >= 0):
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
            if (isinstance(m, dict) and isinstance(net.get("description_hash"), str) and _count(m.get("rounds"))
                    and _count(m.get("bytes")) and _number(m.get("compute_ms")) and m["compute_ms"] > 0):
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
    current = read_table(path)
    if {k: v for k, v in current.items() if k != "validation"} != {k: v for k, v in table.items() if k != "validation"}:
        raise LatencyError(f"{path}: the table changed while its networks ran; validation not stored, run "
                           "`nas latency validate` again")
    write_table({**table, "validation": validation}, path)
    return validation
