"""Use case: price one arch of a space without searching (`nas arch`): parameters, multiply-accumulates and the
latency on each target, with the targets' flags.

The arch is a preset of the spec (`presets:`) or one given as JSON (inline, or a file such as an export's
`arch.json`); either way it must be a member of the space. Input channels and classes come from the spec's
`data.channels` / `data.classes` when declared, else from loading the data.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from nas.errors import NASError
from nas.latency.targets import load_target
from nas.space import ArchConfig, SearchSpace
from nas.spec import ArchSpec, Spec, load_spec

MAX_ARCH_BYTES = 1_000_000


def parse_arch(text: str, where: str = "--arch") -> ArchConfig:
    """An arch from JSON text, or from the JSON file `text` names (`ArchConfig.to_dict()` form)."""
    source = text.strip()
    if not source.startswith("{"):
        path = Path(source).expanduser()
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_ARCH_BYTES + 1)
        except OSError as exc:
            raise NASError(f"{where}: neither JSON (it does not start with '{{') nor a readable file: {path} "
                           f"({exc.strerror or type(exc).__name__})") from None
        if len(data) > MAX_ARCH_BYTES:
            raise NASError(f"{where}: {path} is larger than {MAX_ARCH_BYTES:,} bytes; an arch is a small JSON file")
        where, source = f"{where} {path}", data.decode("utf-8", errors="replace")
    try:
        raw = json.loads(source)
    except json.JSONDecodeError as exc:
        raise NASError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    try:
        return ArchConfig.from_dict(ArchSpec.model_validate(raw).arch_dict())
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(part) for part in first["loc"] if part not in ("conv", "transformer")) or "(top level)"
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise NASError(f"{where}: {loc}: {first['msg']}{more}; an arch is the JSON of ArchConfig.to_dict(): "
                       '{"resolution", "stem", "stages": [{"channels", "layers"}], "head"[, "final"]}') from None


def resolve_arch(spec: Spec, preset: str | None, arch: str | None) -> tuple[str | None, ArchConfig]:
    """(preset name or None, arch): exactly one of `preset` (a name in `spec.presets`) and `arch` (JSON)."""
    if (preset is None) == (arch is None):
        raise NASError("give an arch: --preset NAME (from the spec's presets) or --arch JSON|FILE, not both")
    if arch is not None:
        return None, parse_arch(arch)
    presets = spec.presets or {}
    if preset not in presets:
        known = ", ".join(presets) or "none: the spec has no `presets:`"
        raise NASError(f"--preset: the spec has no preset {preset!r} (known: {known})")
    return preset, ArchConfig.from_dict(presets[preset].arch_dict())


def input_shape(spec: Spec) -> tuple[int, int]:
    """(input channels, classes): as declared in `data.channels` / `data.classes`, else from the data."""
    if spec.data.channels is not None and spec.data.classes is not None:
        return spec.data.channels, spec.data.classes
    from nas.pipeline import load_context

    try:
        ctx = load_context(spec)
    except NASError as exc:
        raise NASError(f"{exc} (declare `data.channels` and `data.classes` in the spec to price archs without "
                       "the data)") from None
    return ctx.space.in_channels, ctx.space.num_classes


def price(spec: Spec, arch: ArchConfig, targets: Sequence[str], in_channels: int, num_classes: int,
          where: str = "spec") -> dict[str, Any]:
    """Params, MACs (`flops`, at the arch's resolution) and per target the latency (at the deploy resolution),
    its flag ("" or e.g. `out_of_range`) and the keys of the blocks outside what the target's model was fitted on
    (`out_of_range_blocks`), of `arch`, a member of `spec`'s space."""
    space = SearchSpace.from_spec(spec, in_channels, num_classes)
    try:
        space.validate_arch(arch)
    except ValueError as exc:
        raise NASError(f"{where}: {exc}") from None
    blocks = space.blocks(arch)
    latency, flags, outside = {}, {}, {}
    for name in dict.fromkeys(targets):
        model = load_target(name)
        model.check_covers(blocks)
        prediction = model.predict(blocks)
        latency[name], flags[name] = prediction.ms, prediction.flag
        outside[name] = [block.key() for block in blocks if not model.predict_block(block)[1]]
    return {"arch": arch.to_dict(), "arch_hash": arch.arch_hash(), "resolution": arch.resolution,
            "deploy_resolution": space.deploy_resolution_for(arch), "in_channels": in_channels,
            "num_classes": num_classes, "params": space.params(arch), "flops": space.flops(arch),
            "latency_ms": latency, "flags": flags, "out_of_range_blocks": outside}


def price_arch(spec_path: str | Path, targets: Sequence[str], preset: str | None = None,
               arch: str | None = None) -> dict[str, Any]:
    """`nas arch`: the spec's preset `preset`, or the arch `arch` (JSON or a JSON file), priced (see `price`)."""
    spec = load_spec(spec_path)
    name, config = resolve_arch(spec, preset, arch)
    in_channels, num_classes = input_shape(spec)
    where = f"--preset {name}" if name is not None else "--arch"
    return {"spec": spec.name, "preset": name, **price(spec, config, targets, in_channels, num_classes, where)}
