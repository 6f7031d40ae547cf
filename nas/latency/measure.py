"""Use case: build or refresh the `host` latency table for the blocks of one or more spaces."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from nas.blocks import Block
from nas.errors import LatencyError
from nas.latency import host
from nas.latency.tables import read_table, table_path, write_table


def measure_host_table(blocks: Sequence[Block], threads: int = 1, refresh: bool = False,
                       path: Path | None = None, progress: Callable[[Block], None] | None = None) -> tuple[Path, int]:
    """Measure the blocks the host table lacks (all of them with `refresh`); returns (path, blocks measured).

    Existing entries are kept unless refreshed; a table measured with other threads or another runtime
    version is re-measured whole, since its entries would not add up with new ones.
    """
    path = path or table_path("host")
    table: dict = {}
    if path.exists() and not refresh:
        try:
            table = read_table(path)
        except LatencyError:
            table = {}  # a corrupt table is replaced by a fresh measurement, written atomically
        fresh = host.provenance(threads)
        if table and (table.get("threads") != threads or table.get("runtime_version") != fresh["runtime_version"]
                      or table.get("cpu") != fresh["cpu"]):
            table = {}
    entries: dict = dict(table.get("entries", {}))
    todo = sorted({b for b in blocks if b.key() not in entries})
    entries.update(host.measure_blocks(todo, threads, progress))
    out = {**table, **host.provenance(threads), "entries": entries}
    if todo:
        out["validation"] = None  # new entries: the old validation no longer describes this table
    write_table(out, path)
    return path, len(todo)
