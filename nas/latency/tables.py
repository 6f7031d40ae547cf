"""Latency table files: one versioned JSON file per target under `latency_tables/`.

Every table says how it was obtained (`provenance`: measured / fitted / imported, device, runtime and
version, threads, date, method) and carries its validation figures (`validation`, null until validated).
What else a table holds depends on its provenance:

    measured   entries (our block key -> {"ms", "spread_ms"}), calibration (fitted on whole networks)
    fitted     model (coefficients per block kind)
    imported   entries (our block key -> {"ms"}) and model (the fit used where a block has no entry)

A table may also name a `cost_model` other than plain milliseconds per block; its model is then picked by it:

    mpc        measured in SPU: protocol, field, parties, profile (bandwidth_mbps, rtt_ms) and entries (piece
               key -> {"rounds", "bytes", "compute_ms"}); see `nas.latency.mpc`

Writes go to a temporary file that is then renamed, so a failed measurement or import never leaves a
half-written or lost table.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from nas.errors import LatencyError

TABLE_VERSION = 1
PROVENANCES = ("measured", "fitted", "imported")
REQUIRED_FIELDS = ("format_version", "target", "device", "runtime", "threads", "date", "method", "provenance")
COST_MODELS = ("mpc",)
# Names the project defines; an import may not take them without --force.
SHIPPED_TARGETS = ("host", "pixel6", "mpc-lan", "mpc-wan")
TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def tables_dir() -> Path:
    """`NAS_LATENCY_TABLES`, else `./latency_tables` when present, else the project's own folder."""
    env = os.environ.get("NAS_LATENCY_TABLES")
    if env:
        return Path(env)
    local = Path.cwd() / "latency_tables"
    if local.is_dir():
        return local
    return Path(__file__).resolve().parents[2] / "latency_tables"


def check_target_name(name: str) -> str:
    """A target name is a file stem: letters, digits, `.`, `_`, `-`, at most 64 characters."""
    if not isinstance(name, str) or not TARGET_NAME.fullmatch(name):
        raise LatencyError(f"--target: a target name must be 1-64 letters, digits, '.', '_' or '-' and start "
                           f"with a letter or digit, got {name!r}")
    return name


def table_path(target: str, directory: Path | None = None) -> Path:
    return (directory or tables_dir()) / f"{check_target_name(target)}.json"


def quote(value: Any, limit: int = 200) -> str:
    """`repr(value)` cut to about `limit` characters: a corrupt table must not flood a message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_positive_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value > 0)


def table_problems(data: dict[str, Any]) -> list[str]:
    """Every field of a (version-checked) table that is missing or wrong, as `field: rule, got value`."""
    missing = [name for name in REQUIRED_FIELDS if name not in data]
    problems = [f"missing field(s) {', '.join(missing)}"] if missing else []
    text_fields = ("target", "device", "runtime", "date", "method")
    problems += [f"{name}: must be a non-empty string, got {quote(data[name])}" for name in text_fields
                 if name in data and not (isinstance(data[name], str) and data[name])]
    threads = data.get("threads")
    if "threads" in data and not (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1):
        problems.append(f"threads: must be an integer >= 1, got {quote(threads)}")
    provenance = data.get("provenance")
    if "provenance" in data and provenance not in PROVENANCES:
        problems.append(f"provenance: must be one of {', '.join(PROVENANCES)}, got {quote(provenance)}")
    if "overhead_ms" in data and not (isinstance(data["overhead_ms"], (int, float))
                                      and not isinstance(data["overhead_ms"], bool)
                                      and math.isfinite(data["overhead_ms"]) and data["overhead_ms"] >= 0):
        problems.append(f"overhead_ms: must be a number >= 0, got {quote(data['overhead_ms'])}")
    validation = data.get("validation")
    if validation is not None and not isinstance(validation, dict):
        problems.append(f"validation: must be an object or null, got {type(validation).__name__}")
    cost_model = data.get("cost_model")
    if cost_model is not None:
        if cost_model not in COST_MODELS:
            return [*problems, f"cost_model: must be one of {', '.join(COST_MODELS)} (or absent), got "
                               f"{quote(cost_model)}"]
        from nas.latency.mpc import mpc_problems

        return problems + mpc_problems(data)
    if provenance in ("measured", "imported"):
        entries = data.get("entries")
        if not isinstance(entries, dict):
            problems.append(f"entries: a {provenance} table needs an `entries` object")
        else:
            bad = [key for key, value in entries.items()
                   if not (isinstance(value, dict) and _is_positive_number(value.get("ms")))]
            if bad:
                key = bad[0] if len(bad[0]) <= 80 else quote(bad[0], 80)
                problems.append(f"entries.{key}.ms: must be a positive number of ms"
                                + (f" ({len(bad)} entries are wrong)" if len(bad) > 1 else ""))
    if provenance in ("fitted", "imported") and not isinstance(data.get("model"), dict):
        problems.append(f"model: a {provenance} table needs a `model` object")
    calibration = data.get("calibration")
    if provenance == "measured" and calibration is not None:
        if not isinstance(calibration, dict) or not isinstance(calibration.get("scale"), dict):
            problems.append("calibration: must be an object with a `scale` object (block kind -> factor)")
        else:
            bad_scale = {k: v for k, v in calibration["scale"].items()
                         if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                 and v >= 0)}
            if bad_scale:
                problems.append(f"calibration.scale: factors must be numbers >= 0, got {quote(bad_scale)}")
    return problems


def read_table(path: Path) -> dict[str, Any]:
    """Load and check a table file; errors name the file and every broken field."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise LatencyError(f"{path}: latency table not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LatencyError(f"{path}: corrupt or truncated latency table ({quote(str(exc))[1:-1]})") from None
    except RecursionError:
        raise LatencyError(f"{path}: corrupt latency table (nested too deep)") from None
    except OSError as exc:
        raise LatencyError(f"{path}: cannot read the latency table ({exc.strerror})") from None
    if not isinstance(data, dict):
        raise LatencyError(f"{path}: a latency table must be a JSON object")
    version = data.get("format_version")
    if version != TABLE_VERSION:
        raise LatencyError(f"{path}: format_version: this nas reads version {TABLE_VERSION}, but got {quote(version)}")
    problems = table_problems(data)
    if problems:
        raise LatencyError(f"{path}: " + "; ".join(problems))
    return data


def store_validation(path: Path, table: dict[str, Any], validation: dict[str, Any], during: str) -> None:
    """Write `validation` into the table at `path`, read as `table` before its networks ran, unless the file
    changed meanwhile (`during` says what ran, for the error): a validation always describes the entries it
    sits beside."""
    current = read_table(path)
    if {k: v for k, v in current.items() if k != "validation"} != {k: v for k, v in table.items() if k != "validation"}:
        raise LatencyError(f"{path}: the table changed while its networks {during}; validation not stored, run "
                           "`nas latency validate` again")
    write_table({**table, "validation": validation}, path)


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
