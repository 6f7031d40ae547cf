"""Use case: import a device's measured block table as a latency target.

    nas latency import pixel4_lut.json --format nnmeter-lut --target pixel4

The imported target predicts a block exactly where the file measured it, and with a model fitted (as for
`pixel6`, `nas.latency.fitted`) to the same measurements where it did not; such predictions are flagged. The
table goes to the user's latency-table folder (`NAS_LATENCY_TABLES` or `./latency_tables`), written
atomically only after the file was read and fitted, so a failed import never touches an existing table.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nas.blocks import BLOCK_KINDS
from nas.errors import LatencyError
from nas.latency.fitted import FittedLatencyModel, fit_report, load_nnmeter_json
from nas.latency.tables import SHIPPED_TARGETS, check_target_name, table_path, table_problems, write_table

FORMATS = ("nnmeter-lut",)
MIN_ENTRIES_FOR_HELDOUT = 10


def import_table(source: Path, target: str, fmt: str = "nnmeter-lut", force: bool = False,
                 directory: Path | None = None, device: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Read `source` (format `fmt`) into the table of target `target`; returns (table path, summary).

    Refused unless `force`: a target name the project ships (`SHIPPED_TARGETS`) or one that already has a
    table. The fallback model is fitted to every entry; its held-out error (fit on a random 80% per block
    kind, tested on the rest) is stored as the table's validation.
    """
    if fmt not in FORMATS:
        raise LatencyError(f"--format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
    check_target_name(target)
    path = table_path(target, directory)
    if not force:
        if target in SHIPPED_TARGETS:
            raise LatencyError(f"--target: {target!r} is a target nas ships; import under another name, or pass "
                               f"--force to replace {path}")
        if path.exists():
            raise LatencyError(f"--target: a table for {target!r} already exists at {path}; pass --force to "
                               "replace it")
    entries = load_nnmeter_json(source)
    if not entries:
        raise LatencyError(f"{source}: no block entries (an nn-Meter LUT maps block keys to milliseconds)")
    counts = Counter(block.kind for block in entries)
    try:
        model = FittedLatencyModel().fit(entries)
        report: dict[str, Any] = {}
        if len(entries) >= MIN_ENTRIES_FOR_HELDOUT:
            report = fit_report(entries, seed=0)
            for key in ("model", "heldout_model"):
                report.pop(key)
    except (ValueError, ArithmeticError) as exc:
        raise LatencyError(f"{source}: cannot fit the fallback model to its entries ({exc})") from None
    source_bytes = source.read_bytes()
    table = {
        "format_version": 1,
        "target": target,
        "device": device or f"imported from {source.name}",
        "runtime": "as measured in the imported file",
        "threads": 1,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "method": ("imported block measurements (nn-Meter LUT): exact look-up where a block was measured; "
                   "else the per-kind fitted model of nas.latency.fitted (flagged `estimated`, or `out_of_range` "
                   "outside the fitted range); a network is the sum of its blocks"),
        "provenance": "imported",
        "source": {"file": str(source.resolve()), "format": fmt,
                   "sha256": hashlib.sha256(source_bytes).hexdigest()},
        "entries": {block.key(): {"ms": ms} for block, ms in sorted(entries.items())},
        "model": model.to_dict(),
        "validation": {"entries_per_kind": {k: counts[k] for k in BLOCK_KINDS if counts[k]}, **report},
    }
    problems = table_problems(table)
    if problems:  # never expected: checked before anything is written
        raise LatencyError(f"{source}: the imported table would be invalid: {'; '.join(problems)}")
    write_table(table, path)
    return path, {"target": target, "path": str(path), "entries": len(entries),
                  "entries_per_kind": table["validation"]["entries_per_kind"],
                  "fallback_heldout": (report.get("heldout") or {}).get("overall")}
