"""Use case: build or refresh a measured (`host`) latency table for the blocks of one or more spaces."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nas.blocks import Block
from nas.errors import LatencyError
from nas.latency import host
from nas.latency.tables import read_table, table_path, write_table
from nas.latency.validate import (
    SAME_SESSION,
    build_network,
    description_blocks,
    fit_calibration,
    kind_sums,
    validation_record,
)


def measure_host_table(blocks: Sequence[Block], threads: int = 1, refresh: bool = False,
                       path: Path | None = None, progress: Callable[[str], None] | None = None,
                       runtime: str = "torch", calibration: Sequence[dict[str, Any]] = (),
                       target: str = "host", validation: Sequence[dict[str, Any]] = (),
                       spec_names: Sequence[str] = ()) -> tuple[Path, int]:
    """Measure the blocks the table lacks (all of them with `refresh`), and time the `calibration` networks
    (from `nas.latency.validate.random_networks`) in the same interleaved session to fit the table's
    calibration. `validation` networks (never the calibration ones) are timed in that session too and
    validate the finished table (`validation.protocol` says so). `progress` is called once per block (with
    "present" for those already measured) and network, then per timing round. Returns (path, blocks measured).

    Existing entries are kept unless refreshed; a table measured with other threads, another runtime or
    version, timing schedule or allocator setting, or on another CPU is re-measured whole, since its entries
    would not add up with new ones. A
    table that cannot be read (corrupt, another format version) is replaced only with `refresh`; one of
    another provenance (a fitted or imported target) never. The table is written once, atomically, after
    everything was timed.
    """
    host.check_runtime(runtime)
    if 0 < len(calibration) < 3:
        raise LatencyError(f"--calibration: fit on at least 3 networks (or 0 for none), got {len(calibration)}")
    path = path or table_path(target)
    table: dict[str, Any] = {}
    if path.exists():
        try:
            table = read_table(path)
        except LatencyError as exc:
            if not refresh:  # never discard a table silently: it may be another nas version's
                raise LatencyError(f"{exc}; pass --refresh to measure a new table in its place") from None
            table = {}
            try:
                raw = json.loads(path.read_text())
                other = raw.get("provenance") if isinstance(raw, dict) else None
            except (OSError, ValueError):
                other = None
            if other not in (None, "measured"):
                raise LatencyError(f"{path}: a {other} table, not one measured here; measure into another "
                                   "target name") from None
        if table and table["provenance"] != "measured":
            raise LatencyError(f"target {table['target']}: {path} is a {table['provenance']} table, not one "
                               "measured here; measure into another target name (e.g. --target host)")
        fresh = host.provenance(threads, runtime, target)
        same = all(table.get(key) == fresh[key]
                   for key in ("threads", "runtime", "runtime_version", "cpu", "schedule", "allocator"))
        if refresh or not same:
            table = {}
    entries: dict[str, dict[str, float]] = dict(table.get("entries", {}))
    todo = sorted({b for b in blocks if b.key() not in entries})
    known = set(entries) | {b.key() for b in todo}
    for net in [*calibration, *validation]:
        missing = [b for b in description_blocks(net["description"]) if b.key() not in known]
        if missing:
            raise LatencyError(f"network {net['arch_hash']} has block {missing[0].key()}, which is not measured: "
                               "calibration and validation networks must come from the measured spaces")
    overlap = {c["arch_hash"] for c in calibration} & {v["arch_hash"] for v in validation}
    if overlap:
        raise LatencyError(f"validation networks must not be calibration networks (shared: {sorted(overlap)[0]})")
    if progress:
        for _ in range(len({b.key() for b in blocks}) - len(todo)):
            progress("present")  # blocks already in the table: nothing to time
    networks = [build_network(net["description"]) for net in [*calibration, *validation]]
    new_entries, all_timings = host.measure_session(todo, networks, threads, runtime, progress=progress)
    timings, validation_timings = all_timings[:len(calibration)], all_timings[len(calibration):]
    entries.update(new_entries)
    out = {**table, **host.provenance(threads, runtime, target), "entries": entries}
    out.pop("overhead_ms", None)
    if calibration:
        sums = [kind_sums(description_blocks(c["description"]), entries) for c in calibration]
        fit = fit_calibration(sums, [round(t.ms, 5) for t in timings])
        fit["seed"] = calibration[0].get("seed")
        fit["networks"] = [{"arch_hash": c["arch_hash"], "spec": c.get("spec", ""), "measured_ms": round(t.ms, 5),
                            "spread_ms": round(t.spread_ms, 5), "description": c["description"]}
                           for c, t in zip(calibration, timings, strict=True)]
        out["calibration"] = fit
        out["overhead_ms"] = fit["overhead_ms"]
    else:
        out.pop("calibration", None)
    out["validation"] = None  # the entries or the calibration changed: an old validation no longer applies
    if validation:
        from nas.latency.targets import MeasuredTableModel

        model = MeasuredTableModel(target, out, path)
        out["validation"] = validation_record(model, validation, validation_timings, SAME_SESSION,
                                              validation[0].get("seed"), spec_names)
    write_table(out, path)
    return path, len(todo)
