"""Latency targets: a `LatencyModel` per device, loaded from its table file.

Lifecycle: `load_target(name)` reads `latency_tables/<name>.json` and picks the model class registered for
the table's `cost_model` when it names one (`mpc`: `nas.latency.mpc`), else for its provenance (`measured`,
`fitted`, `imported`); `check_covers(blocks)` is called once before a
search (a measured table must hold every block of the space); `predict(blocks)` is called per candidate and
must be cheap (microseconds). A prediction outside what a model knows is flagged, not refused: the flag
(`Prediction.flag`) is stored with the candidate's latency metric.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path
from typing import Any

from nas.blocks import BLOCK_KINDS, Block
from nas.errors import LatencyError
from nas.latency.tables import quote, read_table, table_path, tables_dir

OUT_OF_RANGE = "out_of_range"  # some block lies outside the range a fitted model was fitted on
ESTIMATED = "estimated"  # an imported table had no entry for some block: the fallback fit predicted it


@dataclass(frozen=True)
class Prediction:
    ms: float
    flag: str = ""  # "", ESTIMATED or OUT_OF_RANGE


def elasticvit_head(block: Block) -> Block:
    """Our head (1x1 conv cin -> C, pool, [linear C -> F + hard-swish], linear -> classes, `expand` 0) as the
    measured ElasticViT head (1x1 conv cin -> expand * cin, pool, linear -> 1984): C is mapped to the nearest
    expand ratio, and the final width F (1984 when our head has no final layer) to the measured one."""
    if block.kind == "head" and block.expand == 0:
        return replace(block, expand=max(1, round(block.cout / block.cin)), cout=block.final or 1984, num_classes=0,
                       final=0)
    return block


def measured_form(block: Block) -> Block:
    """A block of our spaces in the form the phone tables (nn-Meter keys) describe it.

    nn-Meter's keys name none of the options of ElasticViT's build, which its blocks all have: the avg-pool +
    1x1 conv shortcut and the depthwise-separable expand-1 block (mbconv, transds), squeeze-excite in the
    transformer downsample (whose depthwise kernel is fixed at 3, so its key has no kernel), the depthwise conv
    on V, relative position bias, hard-swish before the projection and bias-free q/k/v (attn), the final 1984
    layer (head, see `elasticvit_head`). Our format-2 fields for them are dropped here: a block built with
    ElasticViT's options is then exactly a measured block. A block built without them (the defaults) maps to
    the same form, i.e. is priced as ElasticViT's block, as before those options existed."""
    if block.kind in ("mbconv", "transds"):
        block = replace(block, shortcut="none", expand_conv=True)
        if block.kind == "transds":
            block = replace(block, se=False, kernel=0 if block.kernel == 3 else block.kernel)
        return block
    if block.kind == "attn":
        return replace(block, v_dwconv=False, rel_pos_bias=False, proj_act=False, qkv_bias=True)
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

    def _section(self, parent: dict[str, Any], key: str, where: str) -> dict[str, Any]:
        """`parent[key]` as an object ({} when absent or null); anything else names the file and field."""
        value = parent.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise LatencyError(f"{self.path}: {where}: must be an object or null, got {quote(value)}")
        return value

    def _figures(self, section: dict[str, Any], where: str, required: Sequence[str],
                 optional: Sequence[str] = ()) -> dict[str, float]:
        """The named figures of a validation `section` (at `where` in the table), each a finite number >= 0."""
        out = {}
        for key in (*required, *optional):
            if key not in section or (key in optional and section[key] is None):
                if key in required:
                    raise LatencyError(f"{self.path}: {where}.{key}: missing (the table's validation figures are "
                                       "incomplete)")
                continue
            value, signed = section[key], key == "drift_pct"  # the machine's drift may be either way
            if not (_is_number(value) and (signed or value >= 0)):
                rule = "a finite number" if signed else "a finite number >= 0"
                raise LatencyError(f"{self.path}: {where}.{key}: must be {rule}, got {quote(value)}")
            out[key] = value
        return out

    def summary(self) -> dict[str, Any]:
        keys = ("target", "device", "cpu", "runtime", "runtime_version", "threads", "clock", "date", "method",
                "provenance", "source")
        info = {key: self.table[key] for key in keys if key in self.table}
        info["path"] = str(self.path)
        info["entries"] = len(self.table.get("entries", {}))
        info["headline"] = self.headline()
        info["validation"] = self.table.get("validation")
        return info


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_MODEL_KINDS: dict[str, type[LatencyModel]] = {}


def register_target_kind(kind: str) -> Callable[[type[LatencyModel]], type[LatencyModel]]:
    """Register the model class of tables whose `cost_model` (else `provenance`) is `kind`."""

    def wrap(cls: type[LatencyModel]) -> type[LatencyModel]:
        _MODEL_KINDS[kind] = cls
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
        validation = self._section(self.table, "validation", "validation")
        if "within_10pct" not in validation:
            return {}
        figures = self._figures(validation, "validation", ("n", "within_10pct", "within_5pct", "mean_abs_pct_err",
                                                           "max_abs_pct_err"), optional=("drift_pct",))
        adjusted = self._figures(self._section(validation, "drift_adjusted", "validation.drift_adjusted"),
                                 "validation.drift_adjusted", ("within_10pct",) if "drift_pct" in figures else ())
        return {"networks": figures["n"], "within_10pct": figures["within_10pct"],
                "within_5pct": figures["within_5pct"], "mean_abs_pct_err": figures["mean_abs_pct_err"],
                "max_abs_pct_err": figures["max_abs_pct_err"], "drift_pct": figures.get("drift_pct"),
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
        spec = " --spec SPEC" if name in mpc.TARGET_PROFILES else ""
        how = (f" build it with `nas latency measure --target {name}{spec}`;"
               if name.startswith("host") or spec else "")
        raise LatencyError(
            f"target {name}: no latency table at {path};{how} known targets: {', '.join(known) or '(none)'}"
        )
    table = read_table(path)
    if table["target"] != name:
        raise LatencyError(f"{path}: target: the file is for target {table['target']!r}, not {name!r}")
    field = "cost_model" if table.get("cost_model") is not None else "provenance"
    kind = _MODEL_KINDS.get(table[field])
    if kind is None:
        raise LatencyError(f"{path}: {field} {table[field]!r} has no model; known: {sorted(_MODEL_KINDS)}")
    return kind(name, table, path)


def fitted_problems(data: Any) -> list[str]:
    """Every field of a fitted model (the `model` of a fitted or imported table) that is missing, of the wrong
    type, not finite, or of a length its predictions cannot use, as `model.kinds.KIND.FIELD: rule, got value`.
    A model that passes predicts without raising (no NaN, no negative cost weights, no division by zero)."""
    from nas.latency.fitted import FEATURE_NAMES, SHAPE_TERMS, KindModel, _poly

    rules: dict[str, tuple[Callable[[Any], bool], str]] = {
        "str": (lambda v: isinstance(v, str), "a string"),
        "int": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
        "float": (_is_number, "a finite number"),
        "list[str]": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
        "list[float]": (lambda v: isinstance(v, list) and all(_is_number(x) for x in v), "a list of finite numbers"),
        "dict[str, int]": (lambda v: isinstance(v, dict) and all(isinstance(x, int) for x in v.values()),
                           "an object of integers"),
    }
    if not isinstance(data, dict):
        return [f"model: must be an object, got {quote(data)}"]
    kinds = data.get("kinds")
    if not isinstance(kinds, dict) or not kinds:
        return [f"model.kinds: must be a non-empty object (block kind -> coefficients), got {quote(kinds)}"]
    problems = []
    block_fields = {f.name for f in fields(Block)}
    for kind, raw in kinds.items():
        where = f"model.kinds.{quote(kind) if len(str(kind)) > 40 else kind}"
        if not isinstance(raw, dict):
            problems.append(f"{where}: must be an object, got {quote(raw)}")
            continue
        wrong = []
        for f in fields(KindModel):
            if f.name not in raw:
                if f.default is MISSING and f.default_factory is MISSING:
                    wrong.append(f"{where}.{f.name}: missing")
                continue
            value = raw[f.name]
            check, rule = rules.get(str(f.type), (lambda v: True, ""))
            if str(f.type) == "list[float]" and isinstance(value, list) and not check(value):
                i = next(i for i, x in enumerate(value) if not _is_number(x))
                wrong.append(f"{where}.{f.name}[{i}]: must be a finite number, got {quote(value[i])}")
            elif not check(value):
                wrong.append(f"{where}.{f.name}: must be {rule}, got {quote(value)}")
        problems += wrong
        if wrong or kind not in FEATURE_NAMES:
            continue  # an unknown kind is named by FittedLatencyModel.from_dict
        lengths = {"weights": len(FEATURE_NAMES[kind]), "feature_min": len(FEATURE_NAMES[kind]) - 1,
                   "feature_max": len(FEATURE_NAMES[kind]) - 1}
        if raw["degree"] > 2:
            problems.append(f"{where}.degree: must be 0, 1 or 2, got {raw['degree']}")
            continue
        if raw["degree"] > 0:
            cont, binary = SHAPE_TERMS[kind]
            terms = len(_poly([0.0] * len(cont), [0.0] * len(binary), raw["degree"]))
            lengths.update(corr_coef=terms, corr_center=terms, corr_scale=terms, z_min=len(cont), z_max=len(cont))
            if any(s == 0 for s in raw.get("corr_scale", [])):
                problems.append(f"{where}.corr_scale: must not hold 0 (it divides)")
            if raw.get("log_corr_min", 0.0) > raw.get("log_corr_max", 0.0):
                problems.append(f"{where}.log_corr_min: must be <= log_corr_max")
        problems += [f"{where}.{name}: must hold {n} numbers, got {len(raw.get(name, []))}"
                     for name, n in lengths.items() if len(raw.get(name, [])) != n]
        negative = [i for i, w in enumerate(raw["weights"]) if w < 0]
        if negative:
            problems.append(f"{where}.weights[{negative[0]}]: must be >= 0 (a latency is a non-negative sum of "
                            f"costs), got {raw['weights'][negative[0]]}")
        low, high = raw.get("field_min", {}), raw.get("field_max", {})
        if set(low) != set(high) or not set(low) <= block_fields:
            problems.append(f"{where}.field_min/field_max: must name the same block fields (of "
                            f"{', '.join(sorted(block_fields - {'kind'}))}), got {quote(sorted(low))} and "
                            f"{quote(sorted(high))}")
        elif any(low[name] > high[name] for name in low):
            problems.append(f"{where}.field_min: must be <= field_max")
    return problems


def _fitted_model(path: Path, data: Any) -> Any:
    from nas.latency.fitted import FittedLatencyModel

    problems = fitted_problems(data)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise LatencyError(f"{path}: " + "; ".join(problems[:3]) + more)
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
        validation = self._section(self.table, "validation", "validation")
        where = "validation.heldout"
        heldout = self._section(self._section(validation, "heldout", where), "overall", f"{where}.overall")
        where = "validation.network_check"
        networks = self._section(self._section(validation, "network_check", where), "full_fit", f"{where}.full_fit")
        out: dict[str, Any] = {}
        names = ("n", "within_10pct", "mean_abs_pct_err")
        if "within_10pct" in heldout:
            f = self._figures(heldout, "validation.heldout.overall", names)
            out.update(heldout_blocks=f["n"], heldout_within_10pct=f["within_10pct"],
                       heldout_mean_abs_pct_err=f["mean_abs_pct_err"])
        if "within_10pct" in networks:
            f = self._figures(networks, "validation.network_check.full_fit", names)
            out.update(networks=f["n"], network_within_10pct=f["within_10pct"],
                       network_mean_abs_pct_err=f["mean_abs_pct_err"])
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
        validation = self._section(self.table, "validation", "validation")
        where = "validation.heldout"
        heldout = self._section(self._section(validation, "heldout", where), "overall", f"{where}.overall")
        out: dict[str, Any] = {"exact_entries": len(self.entries)}
        if "within_10pct" in heldout:
            f = self._figures(heldout, "validation.heldout.overall", ("n", "within_10pct", "mean_abs_pct_err"))
            out.update(fallback_heldout_blocks=f["n"], fallback_heldout_within_10pct=f["within_10pct"],
                       fallback_heldout_mean_abs_pct_err=f["mean_abs_pct_err"])
        return out


from nas.latency import mpc  # noqa: E402, F401  (registers the `mpc` cost model; it imports this module)
