"""Benchmark: the README quickstart, end to end from an empty store (train, search, store, export the front).

    python benchmarks/quickstart.py            # the real quickstart spec (<= 10 minutes on 2 cores)
    python benchmarks/quickstart.py --quick    # 1 epoch on 10k images, 24 candidates (<= 3 minutes)

Last line: one JSON object with wall_s, candidates_per_s, best_test_accuracy (each front member's accuracy as
deployed: fine-tuned when `search.finetune` tuned it, else inherited), best_inherited_test_accuracy,
pareto_size, `front` ({candidate_id, macs, params, test_accuracy, finetuned}, by MACs) and the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, machine, run_nas  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller run (at most 3 minutes)")
    parser.add_argument("--target", action="append", help="latency target(s) (default: pixel6)")
    args = parser.parse_args()
    targets = args.target or ["pixel6"]
    raw = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    if args.quick:
        raw["train"]["epochs"] = 1
        raw["data"]["limit"] = 10000
        raw["search"].update(candidates=24, population=8)
    with tempfile.TemporaryDirectory(prefix="nas-bench-quickstart-") as tmp:
        work = Path(tmp)
        spec_path = work / "quickstart.yaml"
        spec_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        if "host" in targets:  # host wall time then includes measuring this machine's block latencies
            run_nas(["latency", "measure", "--target", "host", "--spec", str(spec_path), "--no-progress"], work)
        target_args = [a for t in targets for a in ("--target", t)]
        result, wall = run_nas(["search", str(spec_path), *target_args, "--no-progress"], work)
        assert isinstance(result, dict)
        jobs, _ = run_nas(["jobs"], work)
        candidates = jobs[0]["candidates"]
        exports = sorted(p.name for p in (Path(jobs[0]["run_dir"]) / "exports").iterdir())
    front = result["pareto"]
    deployed = [{"candidate_id": r["candidate_id"], "macs": r["flops"], "params": r["params"],
                 "test_accuracy": r.get("finetuned_test_accuracy") or r["test_accuracy"],
                 "finetuned": r.get("finetuned_test_accuracy") is not None}
                for r in sorted(front, key=lambda r: (r["flops"], r["candidate_id"]))]
    summary = {
        "benchmark": "quickstart",
        "mode": "quick" if args.quick else "full",
        "targets": targets,
        "wall_s": round(wall, 1),
        "candidates": candidates,
        "candidates_per_s": round(candidates / wall, 3),
        "best_test_accuracy": max(r["test_accuracy"] for r in deployed),
        "best_inherited_test_accuracy": max(r["test_accuracy"] for r in front),
        "pareto_size": len(front),
        "front": deployed,
        "exported": len(exports),
        "machine": machine(),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
