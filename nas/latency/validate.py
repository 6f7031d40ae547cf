"""Whole networks for measured tables: the calibration that makes block sums add up, and the validation.

A block table misses what only a whole network has: the network's own entry cost, blocks running with
colder caches than when timed alone (the slowdown differs by kind: small blocks suffer most), and a
runtime's per-call cost and cross-block graph fusions (ONNX Runtime runs conv blocks faster inside one
graph than alone). `fit_calibration` fits, on calibration networks timed in the same session as the
blocks, a per-network overhead and one factor per block kind:

    network ms = overhead_ms + sum over blocks of scale[kind] * block ms

by non-negative least squares on relative error, with a ridge term pulling each kind's factor toward the
common factor (kinds are collinear across random networks of one space; the ridge keeps the factors
physical).

Validation times N *other* random networks end to end with the table's runtime, threads and clock and
stores how far the finished table's predictions fall from them, under one of two protocols:

* same session (`nas latency measure --validate N`): the networks are timed interleaved with the blocks and
  the calibration networks, so all three see the same machine. This measures the model.
* later session (`nas latency validate`): the networks are timed against the stored table; the calibration
  networks are re-timed alongside to report how far the machine itself has moved since (`drift_pct`; on a
  shared machine its speed moves by up to ~20% with other tenants' load), with figures without that drift.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nas import static_model
from nas.blocks import BLOCK_KINDS, Block
from nas.errors import LatencyError
from nas.latency import host
from nas.latency.fitted import nnls
from nas.latency.tables import read_table, store_validation
from nas.space import ArchConfig, SearchSpace, network_blocks

CALIBRATION_SEED = 1
VALIDATION_SEED = 2
RIDGE = 0.1
CALIBRATION_FORM = "ms = overhead_ms + sum_blocks scale[kind] * entry_ms"


def sample_archs(spaces: Sequence[SearchSpace], n: int, seed: int,
                 exclude: set[str] | frozenset[str] = frozenset()) -> list[tuple[SearchSpace, ArchConfig]]:
    """`n` distinct random archs drawn round-robin from `spaces` with `random.Random(seed)`, none of whose
    hashes is in `exclude`; fewer when the spaces are too small (bounded attempts, never an endless loop)."""
    if not spaces:
        raise LatencyError("name at least one spec whose networks to time (--spec)")
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[tuple[SearchSpace, ArchConfig]] = []
    attempts = 0
    while len(out) < n and attempts < 50 * n + 100:
        space = spaces[attempts % len(spaces)]
        attempts += 1
        arch = space.sample(rng)
        key = f"{id(space)}:{arch.arch_hash()}"
        if key in seen or arch.arch_hash() in exclude:
            continue
        seen.add(key)
        out.append((space, arch))
    return out


def deploy_description(space: SearchSpace, arch: ArchConfig) -> dict[str, Any]:
    """The network of `arch` as deployed: built at the deploy side, so it runs without resizing its input."""
    description = space.describe(arch)
    description["resolution"] = space.deploy_resolution_for(arch)
    return description


def random_networks(spaces: Sequence[SearchSpace], n: int, seed: int, spec_names: Sequence[str] = (),
                    exclude: set[str] | frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """`n` random networks of `spaces` (none of whose arch hashes is in `exclude`), each as
    {"arch_hash", "spec", "seed", "description" (at the deploy side)}: what calibration and validation time."""
    names = {id(space): name for space, name in zip(spaces, spec_names, strict=False)}
    return [{"arch_hash": arch.arch_hash(), "spec": names.get(id(space), ""), "seed": seed,
             "description": deploy_description(space, arch)}
            for space, arch in sample_archs(spaces, n, seed, exclude)]


def calibration_networks(spaces: Sequence[SearchSpace], n: int, seed: int = CALIBRATION_SEED,
                         spec_names: Sequence[str] = ()) -> list[dict[str, Any]]:
    """`n` random networks of `spaces` to calibrate a measured table with (what `measure_host_table` takes)."""
    return random_networks(spaces, n, seed, spec_names)


def build_network(description: dict[str, Any]) -> tuple[nn.Module, torch.Tensor]:
    """A freshly initialised network (weights do not change latency) and an input at its own side."""
    side = description["resolution"]
    return static_model.build(description), torch.randn(1, description["in_channels"], side, side)


def description_blocks(description: dict[str, Any]) -> list[Block]:
    return network_blocks(description, description["resolution"])


def kind_sums(blocks: Sequence[Block], entries: dict[str, dict[str, float]]) -> dict[str, float]:
    """Block-table milliseconds of a network, summed per block kind."""
    sums = dict.fromkeys(BLOCK_KINDS, 0.0)
    for block in blocks:
        sums[block.kind] += float(entries[block.key()]["ms"])
    return sums


def predict_from_sums(calibration: dict[str, Any] | None, sums: dict[str, float]) -> float:
    if not calibration:
        return sum(sums.values())
    scale = calibration["scale"]
    return float(calibration["overhead_ms"]) + sum(scale.get(kind, 1.0) * ms for kind, ms in sums.items())


def fit_calibration(sums: Sequence[dict[str, float]], measured: Sequence[float], ridge: float = RIDGE) -> dict:
    """Fit `CALIBRATION_FORM` to networks (their per-kind block sums and measured ms); see the module doc."""
    if len(sums) < 3:
        raise LatencyError(f"calibration needs at least 3 networks, got {len(sums)}")
    y = np.asarray(measured, dtype=float)
    per_kind = np.array([[s[k] for k in BLOCK_KINDS] for s in sums])
    total = per_kind.sum(axis=1)
    common, _ = nnls(np.column_stack([total, np.ones_like(y)]) / y[:, None], np.ones_like(y))
    rows = np.column_stack([per_kind, np.ones_like(y)]) / y[:, None]
    penalty = np.hstack([np.sqrt(ridge) * np.eye(len(BLOCK_KINDS)), np.zeros((len(BLOCK_KINDS), 1))])
    coef = nnls(np.vstack([rows, penalty]), np.concatenate([np.ones_like(y), np.full(len(BLOCK_KINDS),
                                                                                    np.sqrt(ridge) * common)]))
    calibration = {
        "form": CALIBRATION_FORM,
        "overhead_ms": round(float(coef[-1]), 6),
        "scale": {kind: round(float(v), 6) for kind, v in zip(BLOCK_KINDS, coef[:-1], strict=True)},
        "common_scale": round(float(common), 6),
        "ridge": ridge,
        "n": len(y),
    }
    predicted = [predict_from_sums(calibration, s) for s in sums]
    calibration["in_sample"] = error_stats(predicted, list(y))
    calibration["plain_sum_in_sample"] = error_stats([sum(s.values()) for s in sums], list(y))
    return calibration


def error_stats(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, Any]:
    """Share within +-5% / +-10%, mean, p95 and max absolute and mean signed percent error."""
    p = np.asarray(predicted, dtype=float)
    m = np.asarray(measured, dtype=float)
    if p.size == 0:
        return {"n": 0}
    err = p / m - 1.0
    return {
        "n": int(err.size),
        "within_5pct": float(np.mean(np.abs(err) <= 0.05)),
        "within_10pct": float(np.mean(np.abs(err) <= 0.10)),
        "mean_abs_pct_err": float(100 * np.mean(np.abs(err))),
        "p95_abs_pct_err": float(100 * np.percentile(np.abs(err), 95)),
        "max_abs_pct_err": float(100 * np.max(np.abs(err))),
        "mean_signed_pct_err": float(100 * np.mean(err)),
    }


def check_measured(table: dict[str, Any], path: Path) -> None:
    """Only tables measured here can be validated here."""
    if table["provenance"] != "measured":
        raise LatencyError(f"{path}: only measured tables are validated on this machine; a "
                           f"{table['provenance']} table carries the validation of its fit (see `nas targets`)")


def runtime_of(table: dict[str, Any]) -> str:
    """The `--runtime` name of a measured table (`torch` or `onnxruntime`)."""
    for name, label in host.RUNTIME_LABELS.items():
        if table.get("runtime") == label:
            return name
    raise LatencyError(f"runtime: a measured table's runtime must be one of "
                       f"{', '.join(host.RUNTIME_LABELS.values())}, got {table.get('runtime')!r}")


def validation_record(model: Any, networks: Sequence[dict[str, Any]], timings: Sequence[host.Timing],
                      protocol: str, seed: int | None, spec_names: Sequence[str] = (),
                      drift_factor: float | None = None) -> dict[str, Any]:
    """The validation figures of a measured table's `model` on `networks` timed as `timings`."""
    table = model.table
    blocks = [description_blocks(net["description"]) for net in networks]
    # The figures are computed from the values as stored (rounded to 10 ns), so that each follows exactly from the
    # stored pairs (a network on the edge of +-10% must not count one way in the figures and the other in the pairs).
    measured = [round(t.ms, 5) for t in timings]
    predicted = [round(model.predict(b).ms, 5) for b in blocks]
    plain = [sum(kind_sums(b, table["entries"]).values()) for b in blocks]
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "protocol": protocol,
        "runtime": table["runtime"],
        "threads": table["threads"],
        "clock": table.get("clock", host.clock_for(int(table["threads"]))),
        "seed": seed,
        "specs": list(spec_names),
        "networks_excluded": "the table's calibration networks",
        **error_stats(predicted, measured),
        "plain_sum": error_stats(plain, measured),
        "drift_pct": 100 * (drift_factor - 1) if drift_factor else None,
        "drift_adjusted": error_stats(predicted, [m / drift_factor for m in measured]) if drift_factor else None,
        "measured_ms_min": min(measured),
        "measured_ms_max": max(measured),
        "networks": [{"arch_hash": net["arch_hash"], "spec": net.get("spec", ""), "blocks": len(b),
                      "predicted_ms": p, "measured_ms": m, "spread_ms": round(t.spread_ms, 5)}
                     for net, b, p, m, t in zip(networks, blocks, predicted, measured, timings, strict=True)],
    }


SAME_SESSION = "same session: held-out networks timed interleaved with the table's blocks"
LATER_SESSION = "later session: networks timed against the stored table, with its calibration networks re-timed"


def validate_table(path: Path, spaces: Sequence[SearchSpace], n: int = 50, seed: int = VALIDATION_SEED,
                   progress: Callable[[str], None] | None = None, spec_names: Sequence[str] = ()) -> dict[str, Any]:
    """Time `n` random networks of `spaces` end to end and store how well the table predicts them.

    The networks exclude the table's calibration networks; they run with the table's runtime, threads and
    clock. The headline figures compare the predictions with these measurements as they are. The table's
    calibration networks are re-timed in the same session: the median ratio of their times now to their
    times when the table was measured is the machine's drift (`drift_pct`; a shared machine's speed moves by
    several percent with its load), and `drift_adjusted` repeats the figures with that factor taken out of
    the measurements, which separates the model's error from the machine's. The table is rewritten
    (atomically) only after every network was timed.
    """
    from nas.latency.targets import MeasuredTableModel

    if n < 1:
        raise LatencyError(f"--n: validate at least 1 network, got {n}")
    table = read_table(path)
    check_measured(table, path)
    runtime, threads = runtime_of(table), int(table["threads"])
    if table.get("cpu") and table["cpu"] != host.cpu_model():
        raise LatencyError(f"{path}: the table was measured on {table['cpu']!r}, this machine is "
                           f"{host.cpu_model()!r}; measure it here with `nas latency measure --refresh`")
    model = MeasuredTableModel(path.stem, table, path)
    calibration_nets = [c for c in (table.get("calibration") or {}).get("networks", []) if "description" in c]
    networks = random_networks(spaces, n, seed, spec_names, exclude={c["arch_hash"] for c in calibration_nets})
    for net in networks:
        model.check_covers(description_blocks(net["description"]))
    built = [build_network(net["description"]) for net in networks + calibration_nets]
    _, timings = host.measure_session([], built, threads, runtime, progress=progress)
    drift = [t.ms / c["measured_ms"] for t, c in zip(timings[len(networks):], calibration_nets, strict=True)]
    validation = validation_record(model, networks, timings[:len(networks)], LATER_SESSION, seed, spec_names,
                                   statistics.median(drift) if drift else None)
    store_validation(path, table, validation, "were timed")
    return validation
