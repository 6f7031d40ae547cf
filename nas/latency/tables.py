"""Latency table files: one versioned JSON file per target under `latency_tables/`.

Every table says how it was obtained (`provenance`: measured / fitted / imported, device, runtime and
version, threads, date, method) and carries its validation figures. Writes go to a temporary file that is
then renamed, so a failed measurement or import never leaves a half-written or lost table.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from nas.errors import LatencyError

TABLE_VERSION = 1
PROVENANCES = ("measured", "fitted", "imported")
REQUIRED_FIELDS = ("format_version", "target", "device", "runtime", "threads", "date", "method", "provenance")


def tables_dir() -> Path:
    """`NAS_LATENCY_TABLES`, else `./latency_tables` when present, else the project's own folder."""
    env = os.environ.get("NAS_LATENCY_TABLES")
    if env:
        return Path(env)
    local = Path.cwd() / "latency_tables"
    if local.is_dir():
        return local
    return Path(__file__).resolve().parents[2] / "latency_tables"


def table_path(target: str, directory: Path | None = None) -> Path:
    return (directory or tables_dir()) / f"{target}.json"


def read_table(path: Path) -> dict[str, Any]:
    """Load and check a table file; errors name the file and the broken field."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise LatencyError(f"{path}: latency table not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LatencyError(f"{path}: corrupt or truncated latency table ({exc})") from None
    if not isinstance(data, dict):
        raise LatencyError(f"{path}: a latency table must be a JSON object")
    version = data.get("format_version")
    if version != TABLE_VERSION:
        raise LatencyError(f"{path}: format_version: this nas reads version {TABLE_VERSION}, but got {version!r}")
    missing = [name for name in REQUIRED_FIELDS if name not in data]
    if missing:
        raise LatencyError(f"{path}: missing field(s) {', '.join(missing)}")
    if data["provenance"] not in PROVENANCES:
        raise LatencyError(f"{path}: provenance: must be one of {', '.join(PROVENANCES)}, got {data['provenance']!r}")
    if data["provenance"] in ("measured", "imported") and not isinstance(data.get("entries"), dict):
        raise LatencyError(f"{path}: entries: a {data['provenance']} table needs an `entries` object")
    if data["provenance"] == "fitted" and not isinstance(data.get("model"), dict):
        raise LatencyError(f"{path}: model: a fitted table needs a `model` object")
    return data


def write_table(data: dict[str, Any], path: Path) -> None:
    """Write atomically: a temporary file in the same folder, then rename over the old table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(data, out, indent=1, sort_keys=True)
            out.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; a table is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
