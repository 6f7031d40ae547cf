"""Latency targets: a `LatencyModel` per device, loaded from its table file.

Lifecycle: `load_target(name)` reads `latency_tables/<name>.json`; `check_covers(blocks)` is called once
before a search (a measured table must hold every block of the space); `predict(blocks)` is called per
candidate and must be cheap (microseconds). A network's latency is the sum of its blocks' latencies plus the
table's per-network overhead; a prediction outside what a model was fitted on is flagged, not refused.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nas.blocks import Block
from nas.errors import LatencyError
from nas.latency.tables import read_table, table_path, tables_dir

OUT_OF_RANGE = "out_of_range"


@dataclass(frozen=True)
class Prediction:
    ms: float
    flag: str = ""  # "" or OUT_OF_RANGE


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

    def summary(self) -> dict[str, Any]:
        keys = ("target", "device", "cpu", "runtime", "runtime_version", "threads", "date", "method", "provenance")
        info = {key: self.table[key] for key in keys if key in self.table}
        info["path"] = str(self.path)
        info["entries"] = len(self.table.get("entries", {}))
        info["validation"] = self.table.get("validation")
        return info


_MODEL_KINDS: dict[str, type[LatencyModel]] = {}


def register_target_kind(provenance: str) -> Callable[[type[LatencyModel]], type[LatencyModel]]:
    def wrap(cls: type[LatencyModel]) -> type[LatencyModel]:
        _MODEL_KINDS[provenance] = cls
        return cls

    return wrap


@register_target_kind("measured")
class MeasuredTableModel(LatencyModel):
    """Exact look-ups in a table measured by our own harness; every block must be present."""

    def __init__(self, name: str, table: dict[str, Any], path: Path):
        super().__init__(name, table, path)
        self.entries = {key: float(value["ms"]) for key, value in table["entries"].items()}

    def predict_block(self, block: Block) -> tuple[float, bool]:
        try:
            return self.entries[block.key()], True
        except KeyError:
            raise LatencyError(f"{self.path}: no entry for block {block.key()}") from None

    def check_covers(self, blocks: Sequence[Block], hint: str = "") -> None:
        missing = [b for b in blocks if b.key() not in self.entries]
        if missing:
            raise LatencyError(
                f"target {self.name}: table {self.path} lacks {len(missing)} of the space's {len(blocks)} blocks "
                f"(e.g. {missing[0].key()}); build them with `nas latency measure --target {self.name}{hint}`"
            )


def available_targets(directory: Path | None = None) -> list[str]:
    folder = directory or tables_dir()
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def load_target(name: str, directory: Path | None = None) -> LatencyModel:
    """The latency model of target `name`; a missing table says how to build it."""
    path = table_path(name, directory)
    if not path.exists():
        known = available_targets(directory)
        how = " build it with `nas latency measure --target host`;" if name == "host" else ""
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


@register_target_kind("fitted")
class FittedTableModel(LatencyModel):
    """A model fitted per block kind to a device's measurements; blocks outside the fitted range are flagged."""

    def __init__(self, name: str, table: dict[str, Any], path: Path):
        super().__init__(name, table, path)
        from nas.latency.fitted import FittedLatencyModel

        try:
            self.model = FittedLatencyModel.from_dict(table["model"])
        except (KeyError, TypeError, ValueError) as exc:
            raise LatencyError(f"{path}: model: cannot read the fitted coefficients ({exc})") from None

    def predict_block(self, block: Block) -> tuple[float, bool]:
        if block.kind == "head" and block.expand == 0:
            # Our head is 1x1 conv cin -> C, pool, linear C -> classes; the measured (ElasticViT) head is
            # 1x1 conv cin -> expand*cin, pool, linear -> 1984. Map C to the nearest expand ratio.
            block = replace(block, expand=max(1, round(block.cout / block.cin)), cout=1984, num_classes=0)
        return self.model.predict(block)
