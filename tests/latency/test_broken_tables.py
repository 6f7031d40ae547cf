"""Corrupt latency tables (missing fields, NaN, Infinity, negative latencies, wrong types): one line naming the
file and the field, when a target is loaded and in `nas targets` (exit code 2, the sound tables still listed)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nas.blocks import Block
from nas.errors import LatencyError
from nas.latency.targets import load_target

SHIPPED = Path(__file__).resolve().parents[2] / "latency_tables"
STEM = Block("stem", 28, 1, 16, stride=2, kernel=3)
ATTN = Block("attn", 14, 96, 96, v_scale=2, head_dim=16)


def _pixel6() -> dict[str, Any]:
    return json.loads((SHIPPED / "pixel6.json").read_text())


def _measured() -> dict[str, Any]:
    return {"format_version": 1, "target": "t", "device": "this machine", "runtime": "torch eager", "threads": 1,
            "date": "2025-01-01", "method": "median of 5", "provenance": "measured",
            "entries": {STEM.key(): {"ms": 0.5, "spread_ms": 0.01}}, "calibration": {"scale": {"stem": 1.0}},
            "validation": {"n": 10, "within_10pct": 0.9, "within_5pct": 0.5, "mean_abs_pct_err": 4.0,
                           "max_abs_pct_err": 12.0, "drift_pct": -1.5, "drift_adjusted": {"within_10pct": 0.95}}}


def _kind(table: dict[str, Any], kind: str = "attn") -> dict[str, Any]:
    return table["model"]["kinds"][kind]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(table: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = table
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        elif value is _DELETE:
            del node[last]
        else:
            node[last] = value

    return change


_DELETE = object()

FITTED_CASES = [
    ("model.kinds.attn.weights.1", float("nan"), "model.kinds.attn.weights[1]: must be a finite number, got nan"),
    ("model.kinds.attn.weights.1", float("inf"), "model.kinds.attn.weights[1]: must be a finite number, got inf"),
    ("model.kinds.attn.weights.1", -0.5, "model.kinds.attn.weights[1]: must be >= 0 (a latency is a non-negative"),
    ("model.kinds.attn.weights", "abc", "model.kinds.attn.weights: must be a list of finite numbers, got 'abc'"),
    ("model.kinds.attn.weights", _DELETE, "model.kinds.attn.weights: missing"),
    ("model.kinds.attn.degree", "2", "model.kinds.attn.degree: must be an integer >= 0, got '2'"),
    ("model.kinds.attn.degree", 7, "model.kinds.attn.degree: must be 0, 1 or 2, got 7"),
    ("model.kinds.attn.corr_scale.0", 0.0, "model.kinds.attn.corr_scale: must not hold 0 (it divides)"),
    ("model.kinds.attn.z_min", [0.0], "model.kinds.attn.z_min: must hold 3 numbers, got 1"),
    ("model.kinds.attn.feature_max", [], "model.kinds.attn.feature_max: must hold 9 numbers, got 0"),
    ("model.kinds.attn.log_corr_max", float("-inf"), "model.kinds.attn.log_corr_max: must be a finite number"),
    ("model.kinds.attn.field_min", {"hw": "x"}, "model.kinds.attn.field_min: must be an object of integers"),
    ("model.kinds.attn.field_min.colour", 1, "model.kinds.attn.field_min/field_max: must name the same block"),
    ("model.kinds.attn", [1, 2], "model.kinds.attn: must be an object, got [1, 2]"),
    ("model.kinds", "x", "model.kinds: must be a non-empty object (block kind -> coefficients), got 'x'"),
    ("model", _DELETE, "model: a fitted table needs a `model` object"),
    ("overhead_ms", float("nan"), "overhead_ms: must be a number >= 0, got nan"),
    ("threads", "4", "threads: must be an integer >= 1, got '4'"),
]


@pytest.mark.parametrize(("path", "value", "expected"), FITTED_CASES)
def test_a_corrupt_fitted_table_is_one_line_naming_file_and_field(tmp_path: Path, path: str, value: Any,
                                                                  expected: str) -> None:
    table = _pixel6()
    _set(path, value)(table)
    table["target"] = "broken"
    (tmp_path / "broken.json").write_text(json.dumps(table))
    with pytest.raises(LatencyError) as info:
        model = load_target("broken", tmp_path)
        model.predict([ATTN])  # today some of these load and then predict NaN or raise a TypeError
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'broken.json'}: ") and expected in message, message
    assert "\n" not in message and len(message) < 600


MEASURED_CASES = [
    (f"entries.{STEM.key()}.ms", float("nan"), f"entries.{STEM.key()}.ms: must be a positive number of ms"),
    (f"entries.{STEM.key()}.ms", -1.0, f"entries.{STEM.key()}.ms: must be a positive number of ms"),
    (f"entries.{STEM.key()}.ms", "0.5", f"entries.{STEM.key()}.ms: must be a positive number of ms"),
    ("calibration.scale.stem", float("inf"), "calibration.scale: factors must be numbers >= 0, got {'stem': inf}"),
    ("entries", [], "entries: a measured table needs an `entries` object"),
    ("date", None, "date: must be a non-empty string, got None"),
    ("provenance", "x" * 10_000, "provenance: must be one of measured, fitted, imported, got 'xxxx"),
]


@pytest.mark.parametrize(("path", "value", "expected"), MEASURED_CASES)
def test_a_corrupt_measured_table_is_one_line_naming_file_and_field(tmp_path: Path, path: str, value: Any,
                                                                    expected: str) -> None:
    table = _measured()
    _set(path, value)(table)
    (tmp_path / "t.json").write_text(json.dumps(table))
    with pytest.raises(LatencyError) as info:
        load_target("t", tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 't.json'}: ") and expected in message, message
    assert "\n" not in message and len(message) < 600


def test_a_sound_measured_table_loads_and_summarises(tmp_path: Path) -> None:
    (tmp_path / "t.json").write_text(json.dumps(_measured()))
    model = load_target("t", tmp_path)
    assert model.predict([STEM]).ms == pytest.approx(0.5)
    assert model.summary()["headline"]["drift_adjusted_within_10pct"] == 0.95


@pytest.mark.parametrize(
    ("make", "path", "value", "expected"),
    [
        (_measured, "validation.n", _DELETE, "validation.n: missing"),
        (_measured, "validation.within_5pct", float("nan"), "validation.within_5pct: must be a finite number >= 0"),
        (_measured, "validation.drift_pct", "fast", "validation.drift_pct: must be a finite number, got 'fast'"),
        (_measured, "validation.drift_adjusted", _DELETE, "validation.drift_adjusted.within_10pct: missing"),
        (_measured, "validation.drift_adjusted", 3, "validation.drift_adjusted: must be an object or null, got 3"),
        (_pixel6, "validation.heldout.overall.n", _DELETE, "validation.heldout.overall.n: missing"),
        (_pixel6, "validation.heldout.overall.mean_abs_pct_err", -1, "validation.heldout.overall.mean_abs_pct_err: "
                                                                     "must be a finite number >= 0, got -1"),
        (_pixel6, "validation.network_check", [], "validation.network_check: must be an object or null, got []"),
    ],
)
def test_broken_validation_figures_are_named_in_the_summary(tmp_path: Path, make: Callable[[], dict[str, Any]],
                                                            path: str, value: Any, expected: str) -> None:
    table = make()
    table["target"] = "t"
    _set(path, value)(table)
    (tmp_path / "t.json").write_text(json.dumps(table))
    with pytest.raises(LatencyError) as info:
        load_target("t", tmp_path).summary()
    assert str(info.value).startswith(f"{tmp_path / 't.json'}: {expected}"), str(info.value)


def test_a_deeply_nested_table_is_corrupt_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "t.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(LatencyError, match=r"t.json: corrupt latency table \(nested too deep\)"):
        load_target("t", tmp_path)


def test_the_shipped_tables_pass_every_check() -> None:
    for path in SHIPPED.glob("*.json"):
        load_target(path.stem, SHIPPED).summary()


def test_nas_targets_names_each_broken_table_and_lists_the_rest(workspace) -> None:
    tables = workspace.path / "latency_tables"
    nan_weights = _pixel6()
    nan_weights["target"] = "nanphone"
    _kind(nan_weights)["weights"][1] = float("nan")
    (tables / "nanphone.json").write_text(json.dumps(nan_weights))
    no_figures = copy.deepcopy(_measured())
    no_figures["target"] = "box"
    del no_figures["validation"]["n"]
    (tables / "box.json").write_text(json.dumps(no_figures))
    proc = workspace.run("targets", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "pixel6: fitted on" in proc.stdout  # the sound table is still listed
    assert proc.stderr.splitlines() == [
        f"error: {tables / 'box.json'}: validation.n: missing (the table's validation figures are incomplete)",
        f"error: {tables / 'nanphone.json'}: model.kinds.attn.weights[1]: must be a finite number, got nan",
    ]
