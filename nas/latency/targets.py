"""Latency targets: a `LatencyModel` per device, loaded from its table file.

Lifecycle: `load_target(name)` reads `latency_tables/<name>.json` and picks the model class registered for
the table's provenance (`measured`, `fitted`, `imported`); `check_covers(blocks)` is called once before a
search (a measured table must hold every block of the space); `predict(blocks)` is called per candidate and
must be cheap (microseconds). A prediction outside what a model knows is flagged, not refused: the flag
(`Prediction.flag`) is stored with the candidate's latency metric.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nas.blocks import BLOCK_KINDS, Block
from nas.errors import LatencyError
from nas.latency.tables import read_table, table_path, tables_dir

OUT_OF_RANGE = "out_of_range"  # some block lies outside the range a fitted model was fitted on
ESTIMATED = "estimated"  # an imported table had no entry for some block: the fallback fit predicted it


@dataclass(frozen=True)
class Prediction:
    ms: float
    flag: str = ""  # "", ESTIMATED or OUT_OF_RANGE


def elasticvit_head(block: Block) -> Block:
    """Our head (1x1 conv cin -> C, pool, linear C -> classes, `expand` 0) as the measured ElasticViT head
    (1x1 conv cin -> expand * cin, pool, linear -> 1984): C is mapped to the nearest expand ratio."""
    if block.kind == "head" and block.expand == 0:
        return replace(block, expand=max(1, round(block.cout / block.cin)), cout=1984, num_classes=0)
    return block


def measured_form(block: Block) -> Block:
    """A block of our spaces in the form the phone tables (nn-Meter keys) describe it: our head as the
    ElasticViT head (`elasticvit_head`), and our transformer downsample, whose depthwise kernel is always 3,
    without the kernel field (nn-Meter's `transds` keys carry none: their kernel is fixed at 3)."""
    if block.kind == "transds" and block.kernel == 3:
        return replace(block, kernel=0)
    return elasticvit_head(block)


class LatencyModel(ABC):
    """Predicts a network's latency on one target from its blocks."""

    def __init__(self, name: str, table: dict[str, Any], path: Path):
        self.name = name
        self.table = table
        self.path = path
        self.overhead_ms = float(table.get("overhead_ms", 0.0))

    @abstractmethod
    def predict_block(self, block: Block) -> tuple[float, bool]:
        """(milliseconds, whether the block lies inside what the model knows)."""

    def check_covers(self, blocks: Sequence[Block], hint: str = "") -> None:
        """Raise when the model cannot predict some of `blocks` at all (default: it can)."""

    def predict(self, blocks: Sequence[Block]) -> Prediction:
        total, inside = self.overhead_ms, True
        for block in blocks:
            ms, ok = self.predict_block(block)
            total += ms
            inside = inside and ok
        return Prediction(total, "" if inside else OUT_OF_RANGE)

    def headline(self) -> dict[str, Any]:
        """The few validation figures worth a line in `nas targets` (empty when not validated)."""
        return {}

    def summary(self) -> dict[str, Any]:
        keys = ("target", "device", "cpu", "runtime", "runtime_version", "threads", "clock", "date", "method",
                "provenance", "source")
        info = {key: self.table[key] for key in keys if key in self.table}
        info["path"] = str(self.path)
        info["entries"] = len(self.table.get("entries", {}))
        info["headline"] = self.headline()
        info["validation"] = self.table.get("validation")
        return info


_MODEL_KINDS: dict[str, type[LatencyModel]] = {}


def register_target_kind(provenance: str) -> Callable[[type[LatencyModel]], type[LatencyModel]]:
    def wrap(cls: type[LatencyModel]) -> type[LatencyModel]:
        _MODEL_KINDS[provenance] = cls
        return cls

    return wrap


def _entries_by_block(path: Path, entries: dict[str, Any]) -> dict[Block, float]:
    out = {}
    for key, value in entries.items():
        try:
            out[Block.from_key(key)] = float(value["ms"])
        except (ValueError, TypeError) as exc:
            raise LatencyError(f"{path}: entries.{key}: not a block key ({exc})") from None
    return out


@register_target_kind("measured")
class MeasuredTableModel(LatencyModel):
    """Look-ups in a table measured by our own harness, with the table's calibration (see
    `nas.latency.validate`): overhead_ms + sum of scale[kind] * entry. Every block must be present."""

    def __init__(self, name: str, table: dict[str, Any], path: Path):
        super().__init__(name, table, path)
        self.entries = _entries_by_block(path, table["entries"])
        calibration = table.get("calibration") or {}
        scale = calibration.get("scale", {})
        self.scale = {kind: float(scale.get(kind, 1.0)) for kind in BLOCK_KINDS}
        self._scaled = {block: ms * self.scale.get(block.kind, 1.0) for block, ms in self.entries.items()}

    def predict_block(self, block: Block) -> tuple[float, bool]:
        try:
            return self._scaled[block], True
        except KeyError:
            raise LatencyError(f"{self.path}: no entry for block {block.key()}; measure it with "
                               f"`nas latency measure --target {self.name} --spec SPEC`") from None

    def predict(self, blocks: Sequence[Block]) -> Prediction:
        scaled = self._scaled
        try:
            return Prediction(self.overhead_ms + sum(scaled[b] for b in blocks))
        except KeyError:
            for block in blocks:
                self.predict_block(block)  # raises naming the missing block
            raise

    def check_covers(self, blocks: Sequence[Block], hint: str = "") -> None:
        missing = [b for b in blocks if b not in self.entries]
        if not missing:
            return
        how = f"build them with `nas latency measure --target {self.name}{hint}`"
        sides = sorted({b.hw for b in self.entries if b.kind == "stem"})
        unknown = sorted({b.hw for b in missing if b.kind == "stem"} - set(sides))
        if unknown and sides:
            raise LatencyError(
                f"target {self.name}: table {self.path} has no blocks at input resolution "
                f"{', '.join(map(str, unknown))} (it covers {', '.join(map(str, sides))}); {how}")
        raise LatencyError(f"target {self.name}: table {self.path} lacks {len(missing)} of the space's "
                           f"{len(blocks)} blocks (e.g. {missing[0].key()}); {how}")

    def headline(self) -> dict[str, Any]:
        validation = self.table.get("validation") or {}
        if "within_10pct" not in validation:
            return {}
        adjusted = validation.get("drift_adjusted") or {}
        return {"networks": validation["n"], "within_10pct": validation["within_10pct"],
                "within_5pct": validation["within_5pct"], "mean_abs_pct_err": validation["mean_abs_pct_err"],
                "max_abs_pct_err": validation["max_abs_pct_err"], "drift_pct": validation.get("drift_pct"),
                "drift_adjusted_within_10pct": adjusted.get("within_10pct"), "validated": validation.get("date"),
                "protocol": str(validation.get("protocol", "")).split(":")[0]}


def available_targets(directory: Path | None = None) -> list[str]:
    folder = directory or tables_dir()
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def load_target(name: str, directory: Path | None = None) -> LatencyModel:
    """The latency model of target `name`; a missing table says how to build it."""
    path = table_path(name, directory)
    if not path.exists():
        known = available_targets(directory)
        how = f" build it with `nas latency measure --target {name}`;" if name.startswith("host") else ""
        raise LatencyError(
            f"target {name}: no latency table at {path};{how} known targets: {', '.join(known) or '(none)'}"
        )
    table = read_table(path)
    if table["target"] != name:
        raise LatencyError(f"{path}: target: the file is for target {table['target']!r}, not {name!r}")
    kind = _MODEL_KINDS.get(table["provenance"])
    if kind is None:
        raise LatencyError(f"{path}: provenance {table['provenance']!r} has no model; known: {sorted(_MODEL_KINDS)}")
    return kind(name, table, path)


def _fitted_model(path: Path, data: Any) -> Any:
    from nas.latency.fitted import FittedLatencyModel

    try:
        return FittedLatencyModel.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise LatencyError(f"{path}: model: cannot read the fitted coefficients ({exc})") from None


@register_target_kind("fitted")
class FittedTableModel(LatencyModel):
    """A model fitted per block kind to a device's measurements; blocks outside the fitted range are flagged."""

    def __init__(self, name: str, table: dict[str, Any], path: Path):
        super().__init__(name, table, path)
        self.model = _fitted_model(path, table["model"])
        self._memo: dict[Block, tuple[float, bool]] = {}  # a space has finitely many distinct blocks

    def predict_block(self, block: Block) -> tuple[float, bool]:
        found = self._memo.get(block)
        if found is None:
            try:
                found = self._memo[block] = self.model.predict(measured_form(block))
            except ValueError as exc:
                raise LatencyError(f"target {self.name}: {exc}") from None
        return found

    def headline(self) -> dict[str, Any]:
        validation = self.table.get("validation") or {}
        heldout = (validation.get("heldout") or {}).get("overall", {})
        networks = (validation.get("network_check") or {}).get("full_fit", {})
        out: dict[str, Any] = {}
        if "within_10pct" in heldout:
            out.update(heldout_blocks=heldout["n"], heldout_within_10pct=heldout["within_10pct"],
                       heldout_mean_abs_pct_err=heldout["mean_abs_pct_err"])
        if "within_10pct" in networks:
            out.update(networks=networks["n"], network_within_10pct=networks["within_10pct"],
                       network_mean_abs_pct_err=networks["mean_abs_pct_err"])
        return out


@register_target_kind("imported")
class ImportedTableModel(LatencyModel):
    """A device's own block measurements (imported, e.g. from an nn-Meter LUT): exact look-ups where a block
    was measured, else the model fitted to the same measurements, flagged `estimated` (or `out_of_range`
    when the block also lies outside what the fit saw)."""

    def __init__(self, name: str, table: dict[str, Any], path: Path):
        super().__init__(name, table, path)
        self.entries = _entries_by_block(path, table["entries"])
        self.model = _fitted_model(path, table["model"])
        self._memo: dict[Block, tuple[float, str]] = {}

    def _predict(self, block: Block) -> tuple[float, str]:
        found = self._memo.get(block)
        if found is not None:
            return found
        form = measured_form(block)
        exact = self.entries.get(form)
        if exact is not None:
            found = (exact, "")
        else:
            try:
                ms, in_range = self.model.predict(form)
            except ValueError as exc:
                raise LatencyError(f"target {self.name}: {exc}") from None
            found = (ms, ESTIMATED if in_range else OUT_OF_RANGE)
        self._memo[block] = found
        return found

    def predict_block(self, block: Block) -> tuple[float, bool]:
        ms, flag = self._predict(block)
        return ms, not flag

    def predict(self, blocks: Sequence[Block]) -> Prediction:
        total, flags = self.overhead_ms, set()
        for block in blocks:
            ms, flag = self._predict(block)
            total += ms
            flags.add(flag)
        return Prediction(total, OUT_OF_RANGE if OUT_OF_RANGE in flags else ESTIMATED if ESTIMATED in flags else "")

    def headline(self) -> dict[str, Any]:
        validation = self.table.get("validation") or {}
        heldout = (validation.get("heldout") or {}).get("overall", {})
        out: dict[str, Any] = {"exact_entries": len(self.entries)}
        if "within_10pct" in heldout:
            out.update(fallback_heldout_blocks=heldout["n"], fallback_heldout_within_10pct=heldout["within_10pct"],
                       fallback_heldout_mean_abs_pct_err=heldout["mean_abs_pct_err"])
        return out
