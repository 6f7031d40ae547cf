"""MPC latency targets: what a network costs under two-party secure computation, from pieces measured in SPU.

A table of cost model `mpc` (`mpc-lan`, `mpc-wan`) holds, per piece of the MPC cost decomposition
(`nas.mpc.pieces`: conv blocks whole; attention and FFN split into layernorm, linears, activation and one
attention core per attention kind), the communication rounds, the bytes the parties exchange and the local
compute time, each measured by running the piece alone in SPU's two-party simulator. A network's latency on
the table's network profile (bandwidth, round-trip time) is then

    ms = sum over its pieces of compute_ms + rounds * rtt_ms + bytes * 8 / (bandwidth_mbps * 1e6) * 1000

Rounds and bytes are counts of the protocol, not timings: the same on any machine and in both profiles, so
the two tables share their entries and differ only in `profile`. Validation runs whole random networks in
SPU and compares their counted rounds, bytes and compute time with the table's sums of pieces (building and
validating a table: `nas.latency.mpc_measure`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.blocks import Block
from nas.errors import LatencyError
from nas.latency.tables import quote
from nas.latency.targets import LatencyModel, register_target_kind

COST_MODEL = "mpc"


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


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_count(value: Any) -> bool:
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
    if not (is_count(parties) and parties >= 2):
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
                 for name in ("rounds", "bytes") if not is_count(value.get(name))]
        ms = value.get("compute_ms")
        if not (is_number(ms) and ms > 0):
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
    if not (is_number(bandwidth) and bandwidth > 0):
        problems.append(f"profile.bandwidth_mbps: must be a number > 0, got {quote(bandwidth)}")
    if not (is_number(rtt) and rtt >= 0):
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
