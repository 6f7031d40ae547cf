"""Fit the shipped `pixel6` latency model to nn-Meter's public Pixel 6 block measurements.

    python -m nas.latency.fit_pixel6 --data ../shared/latency_data/pixel6_lut_ln_v3.json \
        --out latency_tables/pixel6.json

The written table holds fitted coefficients and validation figures only: no measured latency and no
nn-Meter key is copied into it (the measurements are third-party data that may be fitted, not shipped).
Validation is two-fold: blocks held out of an 80% fit, and whole networks of an ElasticViT-shaped space
(`network_check`), where the fitted sum is compared with the sum of measured entries.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from nas.blocks import Block
from nas.errors import NASError
from nas.latency.fitted import FittedLatencyModel, fit_report, load_nnmeter_json
from nas.latency.tables import write_table

# Strings that would betray a copied nn-Meter key; a repo hook greps latency_tables/ for them.
FORBIDDEN_IN_TABLE = ("transattn_", "transffn_", "firstconv_", "transds_", "mbpool_", "hard_swish")

METHOD = (
    "Per block kind: latency = (w . f) * exp(clip(g . poly2(clip(z)))). f = analytic cost terms of the "
    "block's sub-operations (MACs per conv/matmul, elementwise work, activation and weight sizes); w >= 0 "
    "by non-negative least squares on relative error. z = log shape terms and 0/1 flags (stride 2, odd "
    "side, kernel 5, SE, cin == cout); g = ridge fit (lambda 0.1, standardised degree-2 terms) of the log "
    "residual; z clipped to its fitted range, the log correction to the range it took in the fit. stem and "
    "head: cost terms only. Validation: stratified random 80/20 split by kind, then refit on 100%."
)


@dataclass(frozen=True)
class StageSpec:
    """One stage of the ElasticViT-shaped check space (DESIGN.md)."""

    kind: str  # "C" (MBConv) or "T" (transformer)
    stride: int
    se: bool
    depth: tuple[int, int]
    channels: tuple[int, int]
    step: int


ELASTICVIT_STAGES = (
    StageSpec("C", 2, False, (2, 5), (16, 32), 8),
    StageSpec("C", 2, True, (2, 6), (16, 48), 8),
    StageSpec("T", 2, False, (1, 5), (48, 96), 16),
    StageSpec("T", 1, False, (1, 6), (80, 160), 16),
    StageSpec("T", 2, False, (1, 6), (144, 288), 16),
    StageSpec("T", 2, False, (1, 6), (160, 320), 16),
)
CONV_EXPAND = (3, 4, 5, 6)
CONV_KERNEL = (3, 5)
MLP_RATIO = (2, 3, 4, 5)
V_SCALE = (2, 3, 4)
DS_EXPAND = (4, 6)
HEAD_CHANNELS = 1984
HEAD_EXPAND = 6

SAMPLING = (
    "Random archs of the ElasticViT space at the given resolution, composed only of measured blocks: "
    "stem (3x3 stride 2, 16 or 24 channels) -> ElasticViT's fixed first block (expand 1, stride 1, no SE, "
    "kernel 3/5, 16 or 24 channels) -> stages C,C,T,T,T,T (strides 2,2,2,1,2,2; SE on the two conv "
    "stages; depths 2-5,2-6,1-5,1-6,1-6,1-6; channels 16-32,16-48 step 8 and 48-96,80-160,144-288,160-320 "
    "step 16) -> head (1x1 expand x6, pool, 1984). Feature-map side after a stride-2 stage is hw // 2 "
    "(nn-Meter's convention). Per stage: depth uniform; width uniform among widths for which every layer "
    "has at least one measured choice; per layer: conv (expand in 3-6, kernel in 3/5), transformer (mlp "
    "ratio 2-5, v scale 2-4) uniform among the choices present in the measured table; the downsample that "
    "opens a transformer stage has expand 4 or 6. An arch with no measured choice at some step is redrawn."
)


def _pick(rng: random.Random, options: list[Any]) -> Any:
    return options[rng.randrange(len(options))] if options else None


def _conv_options(measured: set[Block], hw: int, cin: int, cout: int, stride: int, se: bool) -> list[Block]:
    return [b for b in (Block("mbconv", hw, cin, cout, stride=stride, kernel=k, expand=e, se=se)
                        for e in CONV_EXPAND for k in CONV_KERNEL) if b in measured]


def _ds_options(measured: set[Block], hw: int, cin: int, cout: int, stride: int) -> list[Block]:
    return [b for b in (Block("transds", hw, cin, cout, stride=stride, expand=e) for e in DS_EXPAND)
            if b in measured]


def _layer_options(measured: set[Block], hw: int, c: int) -> tuple[list[Block], list[Block]]:
    attn = [b for b in (Block("attn", hw, c, c, v_scale=v) for v in V_SCALE) if b in measured]
    ffn = [b for b in (Block("ffn", hw, c, c, mlp_ratio=r) for r in MLP_RATIO) if b in measured]
    return attn, ffn


def sample_network(rng: random.Random, measured: set[Block], resolution: int = 224) -> list[Block] | None:
    """One random arch of the check space as its blocks, every one of them in `measured`; None when some
    step has no measured choice (the caller redraws)."""
    blocks: list[Block] = []
    stem = _pick(rng, [b for b in (Block("stem", resolution, 3, c, stride=2, kernel=3) for c in (16, 24))
                       if b in measured])
    if stem is None:
        return None
    hw = resolution // 2
    first = _pick(rng, [b for b in (Block("mbconv", hw, stem.cout, c, stride=1, kernel=k, expand=1)
                                    for c in (16, 24) for k in CONV_KERNEL) if b in measured])
    if first is None:
        return None
    blocks += [stem, first]
    cin = first.cout
    for stage in ELASTICVIT_STAGES:
        depth = rng.randint(*stage.depth)
        hw_out = hw // stage.stride
        widths = range(stage.channels[0], stage.channels[1] + 1, stage.step)
        if stage.kind == "C":
            feasible = [c for c in widths if _conv_options(measured, hw, cin, c, stage.stride, stage.se)
                        and (depth == 1 or _conv_options(measured, hw_out, c, c, 1, stage.se))]
            width = _pick(rng, feasible)
            if width is None:
                return None
            blocks.append(_pick(rng, _conv_options(measured, hw, cin, width, stage.stride, stage.se)))
            repeat = _conv_options(measured, hw_out, width, width, 1, stage.se)
            blocks.extend(_pick(rng, repeat) for _ in range(depth - 1))
        else:
            feasible = [c for c in widths if _ds_options(measured, hw, cin, c, stage.stride)
                        and all(_layer_options(measured, hw_out, c))]
            width = _pick(rng, feasible)
            if width is None:
                return None
            blocks.append(_pick(rng, _ds_options(measured, hw, cin, width, stage.stride)))
            attn, ffn = _layer_options(measured, hw_out, width)
            for _ in range(depth):
                blocks.extend((_pick(rng, attn), _pick(rng, ffn)))
        hw, cin = hw_out, width
    head = Block("head", hw, cin, HEAD_CHANNELS, expand=HEAD_EXPAND)
    if head not in measured:
        return None
    blocks.append(head)
    return blocks


def network_check(model: FittedLatencyModel, entries: Mapping[Block, float], n: int = 200, seed: int = 0,
                  resolution: int = 224) -> dict[str, Any]:
    """Whole-network accuracy: for `n` random archs (see `SAMPLING`) built only from measured blocks, the
    share whose fitted sum lies within +-10% of the sum of measured entries, and the percent errors."""
    rng = random.Random(seed)
    measured = set(entries)
    errors: list[float] = []
    totals: list[float] = []
    sizes: list[int] = []
    redrawn = 0
    all_in_range = 0
    while len(errors) < n:
        blocks = sample_network(rng, measured, resolution)
        if blocks is None:
            redrawn += 1
            if redrawn > 100 * n:
                raise ValueError(f"cannot compose networks at {resolution} px from the measured blocks")
            continue
        truth = sum(entries[b] for b in blocks)
        fitted, ok = model.predict_sum(blocks)
        errors.append(fitted / truth - 1.0)
        totals.append(truth)
        sizes.append(len(blocks))
        all_in_range += ok
    err = np.array(errors)
    return {
        "n": n,
        "seed": seed,
        "resolution": resolution,
        "within_10pct": float(np.mean(np.abs(err) <= 0.10)),
        "within_5pct": float(np.mean(np.abs(err) <= 0.05)),
        "mean_abs_pct_err": float(100 * np.mean(np.abs(err))),
        "mean_signed_pct_err": float(100 * np.mean(err)),
        "max_abs_pct_err": float(100 * np.max(np.abs(err))),
        "measured_ms_min": float(min(totals)),
        "measured_ms_mean": float(np.mean(totals)),
        "measured_ms_max": float(max(totals)),
        "blocks_per_network_mean": float(np.mean(sizes)),
        "all_blocks_in_range_share": all_in_range / n,
        "redrawn": redrawn,
        "sampling": SAMPLING,
    }


def build_table(data_path: Path, seed: int = 0, networks: int = 200) -> dict[str, Any]:
    """The full `pixel6` table: provenance, fitted model and validation (block and network level)."""
    entries = load_nnmeter_json(data_path)
    report = fit_report(entries, seed=seed)
    model_dict = report.pop("model")
    full = FittedLatencyModel.from_dict(model_dict)
    split = FittedLatencyModel.from_dict(report["heldout_model"])
    report["network_check"] = {
        "full_fit": network_check(full, entries, n=networks, seed=seed),
        "heldout_fit": network_check(split, entries, n=networks, seed=seed),
    }
    report["data"] = {
        "file": data_path.name,
        "sha256": hashlib.sha256(data_path.read_bytes()).hexdigest(),
        "entries": len(entries),
    }
    return {
        "format_version": 1,
        "target": "pixel6",
        "device": "Google Pixel 6 (Tensor G1)",
        "runtime": "TFLite (nn-Meter measurements)",
        "threads": 1,
        "date": datetime.now(timezone.utc).date().isoformat(),
        "method": METHOD,
        "provenance": "fitted",
        "source": "nn-Meter dev/hybrid-transformer LUT (MIT), fitted coefficients only",
        "model": model_dict,
        "validation": report,
    }


def write_json_atomic(data: Mapping[str, Any], path: Path) -> None:
    """Refuse any nn-Meter key text, then write atomically with `tables.write_table`."""
    text = json.dumps(data, indent=1, sort_keys=True)
    leaked = [s for s in FORBIDDEN_IN_TABLE if s in text]
    if leaked:
        raise NASError(f"refusing to write {path}: it would contain nn-Meter key text {leaked}")
    write_table(dict(data), path)


def _summary(table: Mapping[str, Any]) -> str:
    val = table["validation"]
    lines = ["held-out blocks within +-10% (mean abs % err):"]
    for kind, stats in val["heldout"]["per_kind"].items():
        lines.append(f"  {kind:8s} n={stats['n']:5d}  {100 * stats['within_10pct']:6.2f}%  "
                     f"({stats['mean_abs_pct_err']:.2f}%)")
    overall = val["heldout"]["overall"]
    lines.append(f"  {'overall':8s} n={overall['n']:5d}  {100 * overall['within_10pct']:6.2f}%  "
                 f"({overall['mean_abs_pct_err']:.2f}%)")
    baseline = val["baseline_plain_lstsq_heldout"]["overall_within_10pct"]
    lines.append(f"plain least-squares baseline, held out: {100 * baseline:.2f}% within +-10%")
    for name, check in val["network_check"].items():
        lines.append(f"networks ({name}, n={check['n']}): {100 * check['within_10pct']:.2f}% within +-10%, "
                     f"mean abs {check['mean_abs_pct_err']:.2f}%, max {check['max_abs_pct_err']:.2f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nas.latency.fit_pixel6",
        description="Fit the pixel6 latency model to nn-Meter's Pixel 6 block LUT and write the table "
                    "(coefficients and validation only, no measured data).")
    parser.add_argument("--data", type=Path, required=True,
                        help="nn-Meter LUT JSON, e.g. ../shared/latency_data/pixel6_lut_ln_v3.json")
    parser.add_argument("--out", type=Path, default=Path("latency_tables/pixel6.json"),
                        help="table to write (atomically); default latency_tables/pixel6.json")
    parser.add_argument("--seed", type=int, default=0, help="seed of the 80/20 split and network sampling")
    parser.add_argument("--networks", type=int, default=200, help="random networks in the network check")
    parser.add_argument("--json", action="store_true", help="print the validation as JSON")
    args = parser.parse_args(argv)
    try:
        table = build_table(args.data, seed=args.seed, networks=args.networks)
        write_json_atomic(table, args.out)
    except NASError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(table["validation"], indent=1, sort_keys=True))
    else:
        print(_summary(table))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
