"""Benchmark: search engines at an equal candidate budget, compared by the hypervolume of their fronts.

One supernet is trained (once) for the quickstart space; then each engine searches it with the same budget
and seed(s), through the same Ray Tune machinery. The hypervolume of the (validation accuracy up, pixel6
latency down) front of every engine's feasible candidates is computed against one reference point: accuracy
0 and 1.05 x the predicted latency of the space's largest arch.

    python benchmarks/search.py            # 200 candidates per engine, seeds 0 and 1
    python benchmarks/search.py --quick    # 1 epoch on 10k images, 24 candidates, seed 0 (<= 3 minutes)

Last line: one JSON object with `hypervolume` (engine -> mean over seeds) and the per-seed figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, machine, run_nas, workspace_env  # noqa: E402
from nas.latency.targets import load_target  # noqa: E402
from nas.pareto import hypervolume_2d  # noqa: E402
from nas.space import SearchSpace  # noqa: E402
from nas.spec import load_spec  # noqa: E402
from nas.store import Store  # noqa: E402

TARGET = "pixel6"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller run (at most 3 minutes)")
    parser.add_argument("--engines", default="nsga2,random", help="comma-separated engines")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per engine (default 2, quick 1)")
    args = parser.parse_args()
    engines = args.engines.split(",")
    seeds = args.seeds or (1 if args.quick else 2)
    raw = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    raw["constraints"] = []  # compare the engines on the whole trade-off
    if args.quick:
        raw["train"]["epochs"] = 1
        raw["data"]["limit"] = 10000
        raw["search"].update(candidates=24, population=8)
    budget = raw["search"]["candidates"]
    per_seed: dict[str, list[float]] = {engine: [] for engine in engines}
    walls: dict[str, list[float]] = {engine: [] for engine in engines}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nas-bench-search-") as tmp:
        work = Path(tmp)
        env = workspace_env(work)
        base_spec = work / "space.yaml"
        base_spec.write_text(yaml.safe_dump(raw, sort_keys=False))
        spec = load_spec(base_spec)
        space = SearchSpace.from_spec(spec, in_channels=1, num_classes=10)
        model = load_target(TARGET, Path(env["NAS_LATENCY_TABLES"]))
        reference = (0.0, 1.05 * model.predict(space.blocks(space.largest())).ms)
        for seed in range(seeds):
            for engine in engines:
                raw["search"]["seed"] = seed
                seeded = work / f"space_seed{seed}.yaml"
                seeded.write_text(yaml.safe_dump(raw, sort_keys=False))  # same training hash: supernet reused
                result, wall = run_nas(["search", str(seeded), "--target", TARGET, "--engine", engine,
                                        "--no-progress", "--no-export"], work, env)
                assert isinstance(result, dict)
                with Store(env["NAS_STORE"]) as store:
                    records = store.candidates(result["job_id"])
                points = [(r.metric("accuracy"), r.metric("latency_ms", TARGET)) for r in records]
                per_seed[engine].append(hypervolume_2d(points, [True, False], reference))
                walls[engine].append(wall)
                print(f"seed {seed} {engine}: {len(records)} candidates, hypervolume {per_seed[engine][-1]:.4f}, "
                      f"{wall:.0f} s", file=sys.stderr)
    summary = {
        "benchmark": "search",
        "mode": "quick" if args.quick else "full",
        "budget": budget,
        "seeds": seeds,
        "target": TARGET,
        "reference_point": {"accuracy": reference[0], "latency_ms": round(reference[1], 3)},
        "hypervolume": {e: round(statistics.mean(v), 5) for e, v in per_seed.items()},
        "hypervolume_per_seed": {e: [round(x, 5) for x in v] for e, v in per_seed.items()},
        "search_wall_s": {e: [round(x, 1) for x in v] for e, v in walls.items()},
        "total_wall_s": round(time.perf_counter() - started, 1),
        "machine": machine(),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
