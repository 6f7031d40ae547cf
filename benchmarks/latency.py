"""Benchmark: how far the latency targets can be trusted, measured.

    python benchmarks/latency.py            # host (torch and ONNX Runtime), both protocols, + pixel6 (~7 minutes)
    python benchmarks/latency.py --quick    # host (torch), same-session protocol, + pixel6 (<= 3 minutes)

host: `nas latency measure --validate 50` builds a fresh host table of search_spaces/quickstart.yaml (its
blocks at the deploy resolution, 16 calibration networks) in a private latency_tables folder and times 50
other random subnets in the same interleaved session (the same-session protocol: the machine's speed, which
moves by up to ~20% with other tenants' load here, is the same for the table and the networks). Full mode then
runs `nas latency validate --n 50` (the later-session protocol: 50 networks timed against the stored table,
with the machine's drift since the table was measured reported and divided out in `drift_adjusted`), and both
protocols again for ONNX Runtime. The cost of a prediction is timed in-process over 2,000 random archs
(decomposition into blocks + prediction, as the search calls it).
pixel6: the held-out and whole-network figures stored with the shipped fitted table.

Last line: one JSON object with host_within_10pct, host_within_5pct, host_mean_abs_err_pct (same-session
protocol, torch), pixel6_heldout_within_10pct, pixel6_network_within_10pct, predict_us_per_arch, the machine,
and the supporting figures (host_later_session_*, host_drift_pct, onnxruntime_*).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, machine, run_nas, workspace_env  # noqa: E402

SPEC = ROOT / "search_spaces" / "quickstart.yaml"
N_NETWORKS = 50


def _host(work: Path, env: dict[str, str], runtime: str, later_session: bool) -> dict[str, Any]:
    """Measure a fresh table with `runtime` and validate it in the same session (and in a later one)."""
    target = "host" if runtime == "torch" else f"host-{runtime}"
    spec = ["--spec", str(SPEC)]
    started = time.perf_counter()
    measured, measure_s = run_nas(["latency", "measure", "--target", target, "--runtime", runtime, *spec, "--refresh",
                                   "--validate", str(N_NETWORKS), "--no-progress"], work, env)
    later, validate_s = None, 0.0
    if later_session:
        later, validate_s = run_nas(["latency", "validate", "--target", target, *spec, "--n", str(N_NETWORKS),
                                     "--no-progress"], work, env)
    assert isinstance(measured, dict)
    table = json.loads((Path(env["NAS_LATENCY_TABLES"]) / f"{target}.json").read_text())
    return {
        "target": target,
        "runtime": runtime,
        "blocks": measured["measured"],
        "calibration": {k: table["calibration"][k] for k in ("n", "overhead_ms", "scale", "in_sample")},
        "same_session": measured["validation"],
        "later_session": later,
        "measure_s": round(measure_s, 1),
        "validate_s": round(validate_s, 1),
        "wall_s": round(time.perf_counter() - started, 1),
    }


def _predict_cost(tables: Path, n: int = 2000) -> dict[str, float]:
    """Microseconds per arch to decompose it into blocks and predict it, per target."""
    os.environ["NAS_LATENCY_TABLES"] = str(tables)
    import yaml

    from nas.latency.targets import load_target
    from nas.space import SearchSpace
    from nas.spec import parse_spec

    space = SearchSpace.from_spec(parse_spec(yaml.safe_load(SPEC.read_text()), "quickstart"), 1, 10)
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(n)]
    out = {}
    for name in ("host", "pixel6"):
        model = load_target(name, tables)
        for arch in archs[:50]:
            model.predict(space.blocks(arch))  # warm caches
        started = time.perf_counter()
        for arch in archs:
            model.predict(space.blocks(arch))
        out[name] = round((time.perf_counter() - started) / n * 1e6, 1)
    return out


def _pixel6(tables: Path) -> dict[str, Any]:
    validation = json.loads((tables / "pixel6.json").read_text())["validation"]
    heldout = validation["heldout"]
    networks = validation["network_check"]
    return {
        "heldout_within_10pct": heldout["overall"]["within_10pct"],
        "heldout_n": heldout["overall"]["n"],
        "heldout_per_kind_within_10pct": {k: v["within_10pct"] for k, v in heldout["per_kind"].items()},
        "heldout_per_kind_n": {k: v["n"] for k, v in heldout["per_kind"].items()},
        "plain_lstsq_heldout_within_10pct": validation["baseline_plain_lstsq_heldout"]["overall_within_10pct"],
        "network_within_10pct": networks["full_fit"]["within_10pct"],
        "network_mean_abs_pct_err": networks["full_fit"]["mean_abs_pct_err"],
        "network_heldout_fit_within_10pct": networks["heldout_fit"]["within_10pct"],
        "networks": networks["full_fit"]["n"],
    }


def _line(name: str, stats: dict[str, Any] | None) -> str:
    if not stats:
        return f"  {name}: -"
    text = (f"  {name}: {100 * stats['within_10pct']:.1f}% within +-10%, {100 * stats['within_5pct']:.1f}% within "
            f"+-5%, mean abs {stats['mean_abs_pct_err']:.2f}%, max {stats['max_abs_pct_err']:.2f}%")
    if stats.get("drift_pct") is not None:
        adjusted = stats["drift_adjusted"]
        text += (f"; machine drift {stats['drift_pct']:+.2f}% (without it {100 * adjusted['within_10pct']:.1f}% "
                 f"within +-10%, mean abs {adjusted['mean_abs_pct_err']:.2f}%)")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="torch only, later-session validation (<= 3 minutes)")
    args = parser.parse_args()
    started = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="nas-bench-latency-") as tmp:
        work = Path(tmp)
        env = workspace_env(work)  # a private latency_tables with the shipped tables copied in
        runs = [_host(work, env, "torch", later_session=not args.quick)]
        if not args.quick:
            runs.append(_host(work, env, "onnxruntime", later_session=True))
        cost = _predict_cost(Path(env["NAS_LATENCY_TABLES"]))
        pixel6 = _pixel6(Path(env["NAS_LATENCY_TABLES"]))
    torch_run = runs[0]
    same = torch_run["same_session"]
    later = torch_run["later_session"] or {}
    print(f"host on {SPEC.name} at its deploy resolution, {N_NETWORKS} random subnets per validation:",
          file=sys.stderr)
    for run in runs:
        print(f" {run['target']} ({run['runtime']}): {run['blocks']} blocks; calibration {run['calibration']}",
              file=sys.stderr)
        print(_line("same session ", run["same_session"]), file=sys.stderr)
        print(_line("later session", run["later_session"]), file=sys.stderr)
        print(_line("plain sum (same session)", run["same_session"]["plain_sum"]), file=sys.stderr)
    print(f"prediction cost (us/arch): {cost}", file=sys.stderr)
    print(f"pixel6: held-out {100 * pixel6['heldout_within_10pct']:.2f}% within +-10% "
          f"({pixel6['heldout_per_kind_within_10pct']}), networks {100 * pixel6['network_within_10pct']:.1f}%",
          file=sys.stderr)
    summary = {
        "benchmark": "latency",
        "mode": "quick" if args.quick else "full",
        "host_within_10pct": same["within_10pct"],
        "host_within_5pct": same["within_5pct"],
        "host_mean_abs_err_pct": round(same["mean_abs_pct_err"], 3),
        "host_max_abs_err_pct": round(same["max_abs_pct_err"], 3),
        "host_plain_sum_within_10pct": same["plain_sum"]["within_10pct"],
        "host_later_session_within_10pct": later.get("within_10pct"),
        "host_later_session_within_5pct": later.get("within_5pct"),
        "host_later_session_mean_abs_err_pct": later.get("mean_abs_pct_err"),
        "host_drift_pct": later.get("drift_pct"),
        "host_later_session_drift_adjusted_within_10pct": (later.get("drift_adjusted") or {}).get("within_10pct"),
        "onnxruntime_within_10pct": runs[1]["same_session"]["within_10pct"] if len(runs) > 1 else None,
        "onnxruntime_mean_abs_err_pct": runs[1]["same_session"]["mean_abs_pct_err"] if len(runs) > 1 else None,
        "onnxruntime_later_session_within_10pct": runs[1]["later_session"]["within_10pct"] if len(runs) > 1
        else None,
        "onnxruntime_drift_pct": runs[1]["later_session"]["drift_pct"] if len(runs) > 1 else None,
        "pixel6_heldout_within_10pct": pixel6["heldout_within_10pct"],
        "pixel6_network_within_10pct": pixel6["network_within_10pct"],
        "predict_us_per_arch": cost["host"],
        "predict_us_per_arch_by_target": cost,
        "host_runs": runs,
        "pixel6": pixel6,
        "wall_s": round(time.perf_counter() - started, 1),
        "load_avg_before": [round(x, 2) for x in load_before],  # other processes' load disturbs the timings
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "machine": machine(),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
