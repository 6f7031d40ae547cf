"""Benchmark: which supernet-training sampler makes every subnet good (issue 3), on Fashion-MNIST.

    python benchmarks/sampling.py            # full: 14k images, 5 epochs per sampler (~15-20 minutes on 2 cores)
    python benchmarks/sampling.py --quick    # 4k images, 1 epoch (<= 3 minutes)

Four supernets are trained on the space of `benchmarks/spaces/sampling.yaml` with the same data, epochs, seed
and number of subnets per step (four), differing only in the sampler:

- uniform: `[random x3, min]`, the min learning from the mean of the random subnets (ElasticViT's step);
- sandwich: `[max, random x2, min]`, in-place KL distillation from the largest (BigNAS / OFA);
- complexity_aware: as uniform, the random subnets drawn from a FLOPs bucket that moves by at most one
  bucket per step (8 quantile buckets, the default balanced walk);
- complexity_performance_aware: as complexity_aware, plus per-bucket banks of the best (arch, loss).

Each supernet is scored by the validation accuracy (inherited weights, BatchNorm re-calibrated) of a fixed panel
of archs spread over the FLOPs range (smallest, FLOPs quartiles, largest), the mean cosine similarity of
consecutive steps' gradients, and the hypervolume of the (accuracy, FLOPs) front of a fixed random sample of
archs (accuracy against FLOPs as a fraction of the largest arch's, reference point (0.5, 1.0)). Three panel
archs are also trained from scratch with the same recipe (scratch gap = scratch minus inherited accuracy, in
points, averaged over those archs and the four samplers). Before training, the cost of one training step on the
supernet is timed against the same step on the extracted static model, interleaved, for each panel arch.

Training runs in worker processes with one intra-op thread each: with two threads per process, any other load
on a 2-core machine makes OpenMP threads spin-wait on each other (measured here: BatchNorm 100x slower).

Before training, `sampler_stats` (seconds, no training; `--stats-only` runs just these): each sampler of
`STATS_SAMPLERS` is stepped on `search_spaces/quickstart.yaml` with a synthetic loss, and reports `in_band`
(fraction of random slots inside their band; for uniform and sandwich, inside any band of the paper-default
bands), `max_transition` (largest band jump between consecutive steps; uniform/sandwich: of the reference band
nearest each step's first random slot), `step_spread_p50` (median over steps of max/min FLOPs within a step,
`min` and `max` slots included), `bank_oracle_top10` (with a synthetic loss that ignores FLOPs, the fraction of
the final banks' entries that are in their band's oracle top 10%; None without a bank) and `mean_mflops`.

Last line: one JSON object with overhead_ratio, panel_accuracy, grad_cosine, hypervolume, scratch_gap,
sampler_stats and the machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, machine  # noqa: E402
from nas import static_model  # noqa: E402
from nas.data import Splits, load  # noqa: E402
from nas.evaluate import accuracy, make_evaluator  # noqa: E402
from nas.pareto import hypervolume_2d  # noqa: E402
from nas.space import ArchConfig, SearchSpace  # noqa: E402
from nas.spec import Spec, load_spec, parse_spec  # noqa: E402
from nas.supernet import Supernet  # noqa: E402
from nas.train import load_supernet, make_optimizer, make_schedule, train_supernet  # noqa: E402

SPACE = ROOT / "benchmarks" / "spaces" / "sampling.yaml"
BUCKETS = {"name": "complexity_aware", "buckets": 8, "max_bucket_step": 1,
           "step": ["random", "random", "random", "min"], "performance": False}
SAMPLERS: dict[str, dict[str, Any]] = {
    "uniform": {"sampler": {"name": "uniform", "step": ["random", "random", "random", "min"]},
                "distill": {"teacher": "random_mean"}},
    "sandwich": {"sampler": {"name": "sandwich", "step": ["max", "random", "random", "min"]},
                 "distill": "inplace"},
    "complexity_aware": {"sampler": BUCKETS, "distill": {"teacher": "random_mean"}},
    "complexity_performance_aware": {
        "sampler": {**BUCKETS, "performance": {"bank_size": 8, "candidates": 3, "temperature": 1.0,
                                               "probability": {"start": 0.2, "step": 0.15, "every_epochs": 1}}},
        "distill": {"teacher": "random_mean"}},
}
MODES = {
    "full": {"limit": 14000, "epochs": 5, "warmup_steps": 30, "front_archs": 40, "overhead_repeats": 7},
    "quick": {"limit": 4000, "epochs": 1, "warmup_steps": 5, "front_archs": 12, "overhead_repeats": 3},
}
HV_REFERENCE = (0.5, 1.0)  # (accuracy, FLOPs / FLOPs of the largest arch)

STATS_SPACE = ROOT / "search_spaces" / "quickstart.yaml"
STATS_STEP = ["random", "random", "random", "min"]
STATS_SAMPLERS: dict[str, dict[str, Any]] = {
    "uniform": {"name": "uniform", "step": STATS_STEP},
    "sandwich": {"name": "sandwich", "step": ["max", "random", "random", "min"]},
    # complexity_aware before issue 8: quantile buckets, the global smallest arch, banks of insertion-time
    # losses never re-scored, the candidate nearest the band's best entry.
    "complexity_aware_quantiles": {"name": "complexity_aware", "buckets": 8, "min_arch": "global", "step": STATS_STEP,
                                   "performance": {"candidates": 3, "rescore_every": 0, "pick": "nearest"}},
    # ElasticViT as the defaults now do it: 8 automatic bands with gaps, per-band smallest arch, re-scored banks,
    # the width-over-depth pick among 5 candidates.
    "complexity_aware_bands": {"name": "complexity_aware", "step": STATS_STEP},
}
STATS_MODES = {"full": {"steps": 2000, "oracle": 400}, "quick": {"steps": 300, "oracle": 100}}


def bench_spec(mode: str, overrides: dict[str, Any] | None = None) -> Spec:
    """The benchmark space with the mode's data and epochs and one sampler's `train` overrides."""
    raw = load_spec(SPACE).to_dict()
    raw["data"]["limit"] = MODES[mode]["limit"]
    raw["train"]["epochs"] = MODES[mode]["epochs"]
    raw["train"]["warmup_steps"] = MODES[mode]["warmup_steps"]
    raw["train"]["grad_cosine"] = True
    raw["train"].update(overrides or {})
    return parse_spec(raw, str(SPACE))


def panel_archs(space: SearchSpace, seed: int = 0) -> list[ArchConfig]:
    """Smallest, the sampled archs nearest the FLOPs quartiles of a seeded sample, largest (FLOPs ascending)."""
    rng = random.Random(seed)
    sample = sorted((space.sample(rng) for _ in range(2000)), key=space.flops)
    quartiles = [sample[len(sample) * q // 4] for q in (1, 2, 3)]
    return [space.smallest(), *quartiles, space.largest()]


def front_archs(space: SearchSpace, count: int, seed: int = 123) -> list[ArchConfig]:
    rng = random.Random(seed)
    return [space.sample(rng) for _ in range(count)]


# ---- throughput: supernet step vs static step ------------------------------------------------------------
def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                labels: torch.Tensor, arch: ArchConfig | None) -> float:
    """One step as the trainer takes it for a single subnet (set_active, forward, backward, clip, AdamW)."""
    started = time.perf_counter()
    if arch is not None:
        model.set_active(arch)  # type: ignore[operator]
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), labels).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()
    return time.perf_counter() - started


def measure_overhead(spec: Spec, space: SearchSpace, splits: Splits, archs: list[ArchConfig],
                     repeats: int) -> dict[str, Any]:
    """Median step time of each arch on the supernet and on its extracted static model, interleaved."""
    torch.manual_seed(0)
    batch = spec.data.batch_size
    images = splits.x_train[:batch].contiguous(memory_format=torch.channels_last)
    labels = splits.y_train[:batch]
    supernet = Supernet(space).to(memory_format=torch.channels_last).train()
    super_opt = make_optimizer(spec, supernet)
    rows, super_total, static_total = [], 0.0, 0.0
    for arch in archs:
        static = supernet.extract(arch).to(memory_format=torch.channels_last).train()
        static_opt = make_optimizer(spec, static)
        for _ in range(2):  # warm-up: allocator and oneDNN primitive caches
            _train_step(supernet, super_opt, images, labels, arch)
            _train_step(static, static_opt, images, labels, None)
        super_times, static_times = [], []
        for _ in range(repeats):
            super_times.append(_train_step(supernet, super_opt, images, labels, arch))
            static_times.append(_train_step(static, static_opt, images, labels, None))
        s, t = statistics.median(super_times), statistics.median(static_times)
        super_total, static_total = super_total + s, static_total + t
        rows.append({"mflops": round(space.flops(arch) / 1e6, 3), "supernet_images_per_s": round(batch / s, 1),
                     "static_images_per_s": round(batch / t, 1), "ratio": round(s / t, 3)})
    return {"overhead_ratio": round(super_total / static_total, 3), "per_arch": rows}


# ---- sampler statistics: no training -----------------------------------------------------------------------
def synthetic_quality(arch: ArchConfig, seed: int = 0) -> float:
    """A loss that ignores FLOPs: the mean over the arch's active choices (resolution, stem, head, per stage
    width and depth, per layer its choices) of a seeded uniform score per (dimension, value), so no choice is
    better for being larger."""
    keys = [("resolution", arch.resolution), ("stem", arch.stem), ("head", arch.head)]
    for i, stage in enumerate(arch.stages):
        keys += [(f"s{i}.channels", stage.channels), (f"s{i}.depth", stage.depth)]
        keys += [(f"s{i}.l{j}.{name}", value) for j, layer in enumerate(stage.layers)
                 for name, value in vars(layer).items()]
    return statistics.fmean(_score(seed, name, value) for name, value in keys)


@functools.cache
def _score(seed: int, name: str, value: int) -> float:
    return random.Random(f"{seed}:{name}:{value}").random()


def _nearest_band(plan: Any, cost: float) -> int:
    return min(range(plan.num_buckets), key=lambda b: max(plan.bounds[b][0] - cost, cost - plan.bounds[b][1], 0.0))


def sampler_stats(mode: str, seed: int = 0) -> dict[str, Any]:
    """The no-training statistics of every sampler of STATS_SAMPLERS (see the module docstring)."""
    from nas.sampling import ComplexityAwareSampler, make_sampler, plan_buckets

    steps, oracle_draws = STATS_MODES[mode]["steps"], STATS_MODES[mode]["oracle"]
    spec = load_spec(STATS_SPACE)
    space = SearchSpace.from_spec(spec, 1, 10)
    reference = plan_buckets(space, parse_spec({**spec.to_dict(), "train": {"sampler": "complexity_aware"}},
                                               str(STATS_SPACE)).train.sampler, spec.train.seed)
    out: dict[str, Any] = {"space": str(STATS_SPACE.relative_to(ROOT)), "steps": steps,
                           "reference_bands_mflops": [[round(v / 1e6, 3) for v in b] for b in reference.bounds]}
    for name, options in STATS_SAMPLERS.items():
        started = time.perf_counter()
        raw = spec.to_dict()
        raw["train"] = {**raw.get("train", {}), "sampler": options, "seed": seed}
        raw["train"].pop("distill", None)
        train = parse_spec(raw, str(STATS_SPACE)).train
        sampler = make_sampler(space, train)
        bucketed = isinstance(sampler, ComplexityAwareSampler)
        plan = sampler.plan if bucketed else reference  # type: ignore[attr-defined]
        rng, noise = random.Random(seed), random.Random(seed + 1)
        in_band, slots, spreads, flops, previous, jump = 0, 0, [], [], None, 0
        for step in range(steps):
            if step % max(1, steps // 3) == 0:
                sampler.on_epoch_start(step // max(1, steps // 3))
            archs = sampler.step(rng)
            costs = [float(space.flops(arch)) for arch in archs]
            randoms = [c for c, slot in zip(costs, sampler.slots, strict=True) if slot == "random"]
            if bucketed:
                band = sampler.bucket  # type: ignore[attr-defined]
                in_band += sum(plan.bucket_of(c) == band for c in randoms)
            else:
                band = _nearest_band(plan, randoms[0])
                in_band += sum(plan.bucket_of(c) is not None for c in randoms)
            slots += len(randoms)
            jump = max(jump, abs(band - previous)) if previous is not None else jump
            previous = band
            spreads.append(max(costs) / min(costs))
            flops += costs
            if sampler.rescore_every and step % sampler.rescore_every == 0:
                sampler.rescore(lambda arch, noise=noise: synthetic_quality(arch) + noise.gauss(0.0, 0.02))
            for arch in archs:
                sampler.observe(arch, synthetic_quality(arch) + noise.gauss(0.0, 0.02))
        oracle = None
        bank = getattr(sampler, "bank", None)
        if bucketed and sampler.performance is not None and bank is not None:  # type: ignore[attr-defined]
            hits = total = 0
            draw_rng = random.Random(seed + 2)
            for band, entries in enumerate(bank.entries):
                population = {a for a in plan.pools[band]}
                population |= {sampler._draw(draw_rng, band) for _ in range(oracle_draws)}  # type: ignore[attr-defined]
                qualities = sorted(synthetic_quality(a) for a in population)
                threshold = qualities[max(0, len(qualities) // 10 - 1)]
                hits += sum(synthetic_quality(arch) <= threshold for arch, _ in entries)
                total += len(entries)
            oracle = round(hits / total, 3) if total else None
        out[name] = {"in_band": round(in_band / slots, 4), "max_transition": jump,
                     "step_spread_p50": round(statistics.median(spreads), 3), "bank_oracle_top10": oracle,
                     "mean_mflops": round(statistics.mean(flops) / 1e6, 3),
                     "seconds": round(time.perf_counter() - started, 1)}
        print(f"  sampler stats {name}: {out[name]}", file=sys.stderr)
    return out


# ---- jobs run in worker processes ------------------------------------------------------------------------
def _init_worker() -> None:
    torch.set_num_threads(1)


def _supernet_job(mode: str, name: str, work: str) -> dict[str, Any]:
    spec = bench_spec(mode, SAMPLERS[name])
    splits = load(spec.data)
    space = SearchSpace.from_spec(spec, splits.in_channels, splits.num_classes)
    started = time.perf_counter()
    result = train_supernet(spec, space, splits, Path(work) / name, progress=False)
    train_s = time.perf_counter() - started
    evaluator = make_evaluator(load_supernet(space, result.checkpoint), splits.x_train, splits.x_val, splits.y_val)
    panel = [evaluator.val_accuracy(arch) for arch in panel_archs(space)]
    largest = space.flops(space.largest())
    points = [(evaluator.val_accuracy(arch), space.flops(arch) / largest)
              for arch in front_archs(space, MODES[mode]["front_archs"])]
    return {"kind": "supernet", "name": name, "panel": panel, "grad_cosine": result.grad_cosine,
            "subnet_mflops": statistics.mean(e["mean_subnet_mflops"] for e in result.epoch_metrics),
            "hypervolume": hypervolume_2d(points, [True, False], HV_REFERENCE), "train_s": round(train_s, 1),
            "steps": result.steps, "epochs": list(result.epoch_metrics)}


def _scratch_job(mode: str, index: int) -> dict[str, Any]:
    """A panel arch trained alone with the supernets' recipe (optimiser, schedule, data order, epochs)."""
    spec = bench_spec(mode)
    splits = load(spec.data)
    space = SearchSpace.from_spec(spec, splits.in_channels, splits.num_classes)
    arch = panel_archs(space)[index]
    torch.manual_seed(spec.train.seed)
    model = static_model.build(space.describe(arch)).to(memory_format=torch.channels_last).train()
    batch = spec.data.batch_size
    steps_per_epoch = max(1, len(splits.y_train) // batch)
    optimizer = make_optimizer(spec, model)
    schedule = make_schedule(spec, optimizer, steps_per_epoch * spec.train.epochs)
    started = time.perf_counter()
    for epoch in range(spec.train.epochs):
        order = torch.randperm(len(splits.y_train), generator=torch.Generator().manual_seed(spec.train.seed + epoch))
        for i in range(steps_per_epoch):
            idx = order[i * batch:(i + 1) * batch]
            images = splits.x_train[idx].contiguous(memory_format=torch.channels_last)
            _train_step(model, optimizer, images, splits.y_train[idx], None)
            schedule.step()
    return {"kind": "scratch", "index": index, "accuracy": accuracy(model.eval(), splits.x_val, splits.y_val),
            "train_s": round(time.perf_counter() - started, 1)}


def _run(job: tuple[Any, ...]) -> dict[str, Any]:
    kind, *args = job
    return _supernet_job(*args) if kind == "supernet" else _scratch_job(*args)


# ---- report ----------------------------------------------------------------------------------------------
SCRATCH_PANEL = (0, 2, 4)  # smallest, median, largest


def summarise(mode: str, results: list[dict[str, Any]], overhead: dict[str, Any], panel_mflops: list[float],
              val_images: int, wall_s: float) -> dict[str, Any]:
    supernets = {r["name"]: r for r in results if r["kind"] == "supernet"}
    scratch = {r["index"]: r["accuracy"] for r in results if r["kind"] == "scratch"}
    gaps = {name: statistics.mean(100 * (scratch[i] - r["panel"][i]) for i in SCRATCH_PANEL)
            for name, r in supernets.items()}
    return {
        "benchmark": "sampling",
        "mode": mode,
        "overhead_ratio": overhead["overhead_ratio"],
        "panel_mflops": panel_mflops,
        "panel_accuracy": {name: [round(a, 4) for a in supernets[name]["panel"]] for name in SAMPLERS},
        "grad_cosine": {name: round(statistics.mean(supernets[name]["grad_cosine"]), 4) for name in SAMPLERS},
        "hypervolume": {name: round(supernets[name]["hypervolume"], 4) for name in SAMPLERS},
        "scratch_accuracy": {str(panel_mflops[i]): round(scratch[i], 4) for i in SCRATCH_PANEL},
        "scratch_gap": round(statistics.mean(gaps.values()), 2),
        "scratch_gap_by_sampler": {name: round(gap, 2) for name, gap in gaps.items()},
        "grad_cosine_by_epoch": {name: [round(c, 4) for c in supernets[name]["grad_cosine"]] for name in SAMPLERS},
        "trained_mflops": {name: round(supernets[name]["subnet_mflops"], 3) for name in SAMPLERS},
        "train_s": {name: supernets[name]["train_s"] for name in SAMPLERS},
        "overhead": overhead["per_arch"],
        "epochs": MODES[mode]["epochs"],
        "images": MODES[mode]["limit"],
        "val_images": val_images,
        "wall_s": round(wall_s, 1),
        "machine": machine(),
    }


def print_table(summary: dict[str, Any]) -> None:
    """A human-readable table on stderr (the JSON line on stdout is for scripts)."""
    out = sys.stderr
    header = " / ".join(f"{m:.2f}" for m in summary["panel_mflops"])
    print(f"\n| sampler | panel accuracy % ({header} MFLOPs) | mean | grad cosine | hypervolume | "
          "scratch gap (pts) | mean trained MFLOPs | train s |", file=out)
    print("| --- | --- | --- | --- | --- | --- | --- | --- |", file=out)
    for name in SAMPLERS:
        panel = summary["panel_accuracy"][name]
        print(f"| {name} | {' / '.join(f'{100 * a:.1f}' for a in panel)} | {100 * statistics.mean(panel):.2f} | "
              f"{summary['grad_cosine'][name]:.3f} | {summary['hypervolume'][name]:.4f} | "
              f"{summary['scratch_gap_by_sampler'][name]:+.2f} | {summary['trained_mflops'][name]:.2f} | "
              f"{summary['train_s'][name]:.0f} |", file=out)
    mean_acc = statistics.mean(a for panel in summary["panel_accuracy"].values() for a in panel)
    se = 100 * (mean_acc * (1 - mean_acc) / summary["val_images"]) ** 0.5
    print(f"\none arch's accuracy on {summary['val_images']} validation images: standard error ~{se:.1f} points",
          file=out)
    print(f"overhead ratio (supernet step / static step): {summary['overhead_ratio']}", file=out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller run (at most 3 minutes)")
    parser.add_argument("--workers", type=int, default=2, help="training processes, one thread each (default 2)")
    parser.add_argument("--stats-only", action="store_true", help="only the sampler statistics (seconds, no training)")
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    started = time.perf_counter()
    torch.set_num_threads(1)
    stats = sampler_stats(mode)
    if args.stats_only:
        print(json.dumps({"benchmark": "sampling", "mode": mode, "sampler_stats": stats,
                          "wall_s": round(time.perf_counter() - started, 1), "machine": machine()}))
        return
    spec = bench_spec(mode)
    splits = load(spec.data)
    space = SearchSpace.from_spec(spec, splits.in_channels, splits.num_classes)
    panel = panel_archs(space)
    print(f"sampling benchmark ({mode}): {len(splits.y_train)} training images, {spec.train.epochs} epochs, "
          f"panel {[round(space.flops(a) / 1e6, 2) for a in panel]} MFLOPs", file=sys.stderr)
    overhead = measure_overhead(spec, space, splits, panel, MODES[mode]["overhead_repeats"])
    print(f"overhead: {overhead}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="nas-bench-sampling-") as work:
        jobs: list[tuple[Any, ...]] = [("supernet", mode, name, work) for name in SAMPLERS]
        jobs += [("scratch", mode, i) for i in SCRATCH_PANEL]
        context = multiprocessing.get_context("spawn")  # no fork of a process whose OpenMP pool is running
        results = []
        with context.Pool(args.workers, initializer=_init_worker) as pool:
            for result in pool.imap_unordered(_run, jobs):
                label = result.get("name", f"scratch {result.get('index')}")
                print(f"  done: {label} ({result['train_s']} s)", file=sys.stderr)
                results.append(result)
    summary = summarise(mode, results, overhead, [round(space.flops(a) / 1e6, 3) for a in panel],
                        len(splits.y_val), time.perf_counter() - started)
    summary["sampler_stats"] = stats
    print_table(summary)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
