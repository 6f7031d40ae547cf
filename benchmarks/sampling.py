"""Benchmark: which supernet-training sampler makes every subnet good (issues 3 and 8), on Fashion-MNIST.

    python benchmarks/sampling.py               # full: 10k images, 3 epochs, 3 seeds (~30 min on 2 shared cores)
    python benchmarks/sampling.py --quick       # 4k images, 1 epoch, 1 seed (<= 3 minutes; checks the pipeline)
    python benchmarks/sampling.py --stats-only  # only the sampler statistics (no training, ~75 s; quick ~5 s)

Training panel. Per seed, four supernets are trained on the space of `benchmarks/spaces/sampling.yaml` with the
same data, epochs and number of subnets per step (four), differing only in the sampler:

- uniform: `[random x3, min]`, the min learning from the mean of the random subnets (ElasticViT's step); the
  baseline a user would pick, which the McNemar tests compare against;
- sandwich: `[max, random x2, min]`, in-place KL distillation from the largest (BigNAS / OFA);
- complexity_aware: as uniform, with the sampler's defaults since issue 8 (ElasticViT's complexity-aware
  sampling): 8 automatic FLOPs bands with gaps between them, a balanced walk that moves at most one band per
  step, every random slot drawn from the step's band and `min` the band's smallest arch; no performance bank;
- complexity_performance_aware: the sampler's full defaults, i.e. complexity_aware plus the performance bank
  (8 per band, re-scored on the step's batch every 20 steps, the width-over-depth pick among 5 candidates,
  bank probability 0.2 + 0.15 per epoch).

The old complexity_aware (8 quantile buckets, the global smallest arch, banks never re-scored) is not trained
(it does not fit the time budget); `sampler_stats` still compares it with the bands. Equal subnets per step
is not equal compute: the bands spread the subnets evenly over 0.45-8.5 MFLOPs (~4.1-4.5 MFLOPs on average),
where uniform samples average ~1.9, so a complexity-aware step costs 2x a uniform one (`trained_mflops`,
`timing`).

Modes. Full: 10,000 images (9,000 training, 1,000 validation), 3 epochs of batch 128 (210 steps), seeds 0, 1
and 2. Quick: 4,000 images (3,600 / 400), 1 epoch (28 steps), seed 0 only (the McNemar code then pools one
seed). The seed is `train.seed`: the supernet's initialisation, the sampler's randomness and the data order;
the validation images (`data.seed` 0) and the panel archs are the same for every seed.

Measured per sampler and seed: a fixed panel of archs spread over the FLOPs range (smallest, FLOPs quartiles
of a seeded sample, largest) is scored on the validation images with inherited weights (BatchNorm
re-calibrated), keeping each image's correctness; the mean cosine similarity of consecutive steps' gradients
(a training diagnostic); for seed 0 only, the hypervolume of the (accuracy, FLOPs) front of 40 fixed random
archs (accuracy on the first 1,000 validation images against FLOPs as a fraction of the largest arch's,
reference point (0.5, 1.0); seed 0 only because these evaluations, each with its own BatchNorm calibration on
2,000 images, cost as much as the training of a uniform supernet here). Against uniform, every other sampler
gets an exact McNemar test on the per-image correctness pooled over the 5 panel archs and the seeds (b = pairs
the sampler gets right and uniform wrong, c = the reverse; two-sided binomial test of b in b + c at 1/2;
`accuracy_delta_pts` = 100 (b - c) / pairs, the pooled accuracy difference). The test treats the pairs as
independent, which they are not (each image recurs per arch and seed, and a supernet's archs share weights):
its p-values are optimistic; read them with the per-seed panel means and their sd over seeds. Three panel
archs are also trained from scratch with the same recipe, seed 0 only (scratch gap = scratch minus inherited
accuracy averaged over seeds, in points, over those archs and the four samplers). Before training, the cost
of one training step on the supernet is timed against the same step on the extracted static model,
interleaved, for each panel arch (`overhead_ratio`).

Gradient-conflict probe (quick and full; it needs trained supernets, so not in `--stats-only`). After each
supernet's training, one arch per FLOPs band of the complexity_aware sampler's default plan on this space (8
bands; per band a seeded member of the band's pool, the same archs for every supernet) gets its gradient of
the cross-entropy with the labels on the same fixed training images (the first 256; quick: 128; BatchNorm on
batch statistics as in training, its running statistics restored afterwards) with respect to every supernet
parameter. For every pair of bands (i, j) the cosine similarity of the two gradients is taken on the
intersection: the weights both subnets use (both gradients non-zero; the supernet slices its weights, so a
weight outside a subnet's slices gets exactly zero gradient), the rule of the training diagnostic
`grad_cosine`. `grad_conflict_spearman` is Spearman's rho between the band distance |i - j| and that cosine
over the 28 pairs, on the uniform supernet of seed 0; ElasticViT's argument (subnets far apart in FLOPs have
conflicting gradients) predicts rho < 0. `grad_conflict` holds that probe's details: band bounds and the
archs' MFLOPs, every pair's cosine, `spearman_zero_filled` (the cosines over the whole parameter vector,
unused weights as zeros: there less overlap alone pulls far pairs toward 0) and `permutation_p`, a one-sided
p-value for rho from 2,000 random relabellings of the archs' bands (the pairs share archs, so they are not
independent). `grad_conflict_spearman_by_sampler` lists rho for every sampler and seed.

Training runs in worker processes with one intra-op thread each: with two threads per process, any other load
on a 2-core machine makes OpenMP threads spin-wait on each other (measured here: BatchNorm 100x slower).

Budget (CPU seconds, one thread, measured in quick mode): a training step costs 0.30 (uniform), 0.48
(sandwich) and 0.65 (complexity_aware, complexity_performance_aware); scoring an arch ~1.2 (2,000 calibration
+ 1,000 validation images); a probe ~4. Full mode needs ~1,850 CPU seconds: 12 supernets x 210 steps ~1,350,
scratch runs ~90, evaluation ~260, probes ~60, sampler_stats ~75, overhead timing ~15. That is ~17 minutes on
an idle 2-core machine and ~30 minutes when other jobs share it (the issue-3 version, one seed at 14k images x
5 epochs, ~1,250 CPU seconds, took 19 minutes at load 2-4). Quick mode: ~165 CPU seconds, 2.4-2.8 minutes at
load 2-4.

Before training, `sampler_stats` (seconds, no training; `--stats-only` runs just these): each sampler of
`STATS_SAMPLERS` is stepped on `search_spaces/quickstart.yaml` with a synthetic loss, and reports `in_band`
(fraction of random slots inside their band; for uniform and sandwich, inside any band of the paper-default
bands), `max_transition` (largest band jump between consecutive steps; uniform/sandwich: of the reference band
nearest each step's first random slot), `step_spread_p50` (median over steps of max/min FLOPs within a step,
`min` and `max` slots included), `bank_oracle_top10` (with a synthetic loss that ignores FLOPs, the fraction of
the final banks' entries that are in their band's oracle top 10%; None without a bank) and `mean_mflops`.

Last line: one JSON object with
- overhead_ratio, overhead (per panel arch);
- panel_mflops; panel_accuracy (per sampler and panel arch, mean over seeds), panel_accuracy_by_seed,
  panel_mean_by_seed, panel_mean ({mean, sd} over seeds; sd None with one seed);
- mcnemar: per sampler but uniform {b, c, pairs, p_value, accuracy_delta_pts, vs};
- grad_cosine (mean over epochs and seeds), grad_cosine_by_epoch (mean over seeds);
- hypervolume (mean over the seeds with a front: seed 0), hypervolume_by_seed;
- grad_conflict_spearman (float), grad_conflict (details), grad_conflict_spearman_by_sampler;
- scratch_accuracy, scratch_gap, scratch_gap_by_sampler;
- trained_mflops and train_s (means over seeds), timing (per sampler, mean over seeds: wall and CPU seconds of
  training, evaluation and probe; on a shared machine the CPU seconds are the comparable ones),
  scratch_timing, phases (wall seconds of sampler_stats, overhead and training);
- steps, seeds, epochs, images, val_images, sampler_stats, wall_s and the machine.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import multiprocessing
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
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
from nas.spec import SamplerSpec, Spec, load_spec, parse_spec  # noqa: E402
from nas.supernet import Supernet  # noqa: E402
from nas.train import load_supernet, make_optimizer, make_schedule, shared_cosine, train_supernet  # noqa: E402

SPACE = ROOT / "benchmarks" / "spaces" / "sampling.yaml"
STEP = ["random", "random", "random", "min"]
RANDOM_MEAN = {"teacher": "random_mean"}
SAMPLERS: dict[str, dict[str, Any]] = {
    "uniform": {"sampler": {"name": "uniform", "step": STEP}, "distill": RANDOM_MEAN},
    "sandwich": {"sampler": {"name": "sandwich", "step": ["max", "random", "random", "min"]}, "distill": "inplace"},
    # the sampler's defaults since issue 8 (bands, balanced walk, per-band min), without the performance bank
    "complexity_aware": {"sampler": {"name": "complexity_aware", "step": STEP, "performance": False},
                         "distill": RANDOM_MEAN},
    # the sampler's defaults, performance bank included (re-scored every 20 steps, width-over-depth pick)
    "complexity_performance_aware": {"sampler": {"name": "complexity_aware", "step": STEP}, "distill": RANDOM_MEAN},
}
BASELINE = "uniform"  # what the McNemar tests compare every other sampler with
# Training CPU seconds per step relative to uniform's (measured in quick mode: 0.30, 0.48, 0.65, 0.67 s), so the
# pool starts the longest jobs first.
JOB_COST = {"uniform": 1.0, "sandwich": 1.6, "complexity_aware": 2.2, "complexity_performance_aware": 2.2}
MODES: dict[str, dict[str, Any]] = {
    "full": {"limit": 10000, "epochs": 3, "warmup_steps": 20, "seeds": (0, 1, 2), "front_archs": 40,
             "front_seeds": (0,), "front_val": 1000, "overhead_repeats": 7, "probe_images": 256},
    "quick": {"limit": 4000, "epochs": 1, "warmup_steps": 5, "seeds": (0,), "front_archs": 12, "front_seeds": (0,),
              "front_val": 400, "overhead_repeats": 3, "probe_images": 128},
}
HV_REFERENCE = (0.5, 1.0)  # (accuracy, FLOPs / FLOPs of the largest arch)
PROBE_SAMPLER: dict[str, Any] = {"name": "complexity_aware"}  # the default plan: 8 automatic FLOPs bands
PROBE_PERMUTATIONS = 2000

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


def bench_spec(mode: str, overrides: dict[str, Any] | None = None, seed: int = 0) -> Spec:
    """The benchmark space with the mode's data and epochs, training seed `seed` and one sampler's `train`
    overrides (the data seed stays 0: every seed sees the same validation images)."""
    raw = load_spec(SPACE).to_dict()
    raw["data"]["limit"] = MODES[mode]["limit"]
    raw["train"]["epochs"] = MODES[mode]["epochs"]
    raw["train"]["warmup_steps"] = MODES[mode]["warmup_steps"]
    raw["train"]["grad_cosine"] = True
    raw["train"]["seed"] = seed
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


# ---- paired statistics -----------------------------------------------------------------------------------
def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, tied values sharing the mean of their ranks (what Spearman's rho needs)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            out[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's correlation of the (tie-averaged) ranks; NaN when either side is constant or
    there are fewer than two points (as scipy.stats.spearmanr)."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} x values but {len(y)} y values")
    if len(x) < 2:
        return math.nan
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: the binomial test of b successes in n = b + c discordant pairs at
    probability 1/2, i.e. twice the smaller tail, capped at 1 (1.0 when there is no discordant pair)."""
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar_exact: counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)  # exact integers; int / int is correctly rounded even for large n


Correctness = Sequence[Sequence[Sequence[bool]]]  # [seed][panel arch][validation image]


def pool_pairs(baseline: Correctness, other: Correctness) -> dict[str, int]:
    """Pair every (seed, panel arch, image) of `other` with the same one of `baseline` and count: `b` pairs
    `other` gets right and `baseline` wrong, `c` the reverse, `pairs` all of them (shapes must match)."""
    b = c = pairs = 0
    for base_seed, other_seed in zip(baseline, other, strict=True):
        for base_arch, other_arch in zip(base_seed, other_seed, strict=True):
            for x, y in zip(base_arch, other_arch, strict=True):
                pairs += 1
                b += bool(y) and not x
                c += bool(x) and not y
    return {"b": b, "c": c, "pairs": pairs}


def mcnemar_report(correct: dict[str, Correctness], baseline: str = BASELINE) -> dict[str, dict[str, Any]]:
    """Per sampler but `baseline`: the pooled discordant counts, the exact McNemar p-value and the accuracy
    difference in points ((b - c) / pairs: the sampler's pooled accuracy minus the baseline's)."""
    out = {}
    for name, rows in correct.items():
        if name == baseline:
            continue
        counts = pool_pairs(correct[baseline], rows)
        delta = 100 * (counts["b"] - counts["c"]) / counts["pairs"] if counts["pairs"] else 0.0
        out[name] = {**counts, "p_value": float(f"{mcnemar_exact(counts['b'], counts['c']):.4g}"),
                     "accuracy_delta_pts": round(delta, 3), "vs": baseline}
    return out


@torch.no_grad()
def correctness(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 250) -> list[bool]:
    """Per image, whether the model's top-1 class is the label (the per-image record behind `accuracy`)."""
    model.eval()
    out: list[bool] = []
    for start in range(0, len(labels), batch):
        out += (model(images[start:start + batch]).argmax(-1) == labels[start:start + batch]).tolist()
    return out


# ---- gradient-conflict probe -----------------------------------------------------------------------------
def probe_archs(space: SearchSpace, options: dict[str, Any] | None = None, seed: int = 0
                ) -> tuple[list[ArchConfig], list[tuple[float, float]]]:
    """One arch per FLOPs band of the complexity_aware plan on `space` (`options`: the sampler's; default
    PROBE_SAMPLER, its 8 automatic bands), a member of the band's pool drawn with `random.Random(seed)`, and
    the bands' (low, high) FLOPs. Seeded, so every supernet is probed with the same archs."""
    from nas.sampling import plan_buckets

    plan = plan_buckets(space, SamplerSpec.model_validate(options or PROBE_SAMPLER), seed)
    rng = random.Random(seed)
    return [rng.choice(pool) for pool in plan.pools], list(plan.bounds)


def subnet_gradients(model: Supernet, archs: Sequence[ArchConfig], images: torch.Tensor, labels: torch.Tensor,
                     batch: int) -> list[torch.Tensor]:
    """Per arch, the gradient of its mean cross-entropy with the labels over `images` (in chunks of `batch`,
    BatchNorm on batch statistics as in training) with respect to every supernet parameter, flattened in
    float64; a weight outside the subnet's slices, or a layer it skips, has gradient zero. The model's buffers
    (BatchNorm running statistics), mode and gradients are restored: the probe leaves no trace."""
    params = list(model.parameters())
    saved = [buffer.clone() for buffer in model.buffers()]
    was_training = model.training
    model.train()
    grads = []
    try:
        for arch in archs:
            model.zero_grad(set_to_none=True)
            model.set_active(arch)
            for start in range(0, len(labels), batch):
                chunk = labels[start:start + batch]
                loss = F.cross_entropy(model(images[start:start + batch]), chunk) * (len(chunk) / len(labels))
                loss.backward()
            grads.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1)
                                    for p in params]).double())
    finally:
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buffer, value in zip(model.buffers(), saved, strict=True):
                buffer.copy_(value)
        model.train(was_training)
    return grads


def gradient_cosine(a: torch.Tensor, b: torch.Tensor, shared: bool = True) -> float:
    """Cosine similarity of two flattened gradients: on the weights both use (both non-zero) when `shared`,
    else over the whole vectors (unused weights count as zeros); NaN when a side is all zero."""
    if shared:
        cosine = shared_cosine(a, b)  # the training diagnostic's rule (`train.grad_cosine`)
        return math.nan if cosine is None else cosine
    norm = float(a.norm() * b.norm())
    return float(a @ b) / norm if norm > 0 else math.nan


def _conflict_rho(pairs: Sequence[tuple[int, int]], labels: Sequence[int], cosines: Sequence[float]) -> float:
    """Spearman's rho of band distance (`labels` give each arch's band) against cosine, finite cosines only."""
    kept = [(abs(labels[i] - labels[j]), c) for (i, j), c in zip(pairs, cosines, strict=True) if math.isfinite(c)]
    return spearman([d for d, _ in kept], [c for _, c in kept])


def grad_conflict(model: Supernet, space: SearchSpace, images: torch.Tensor, labels: torch.Tensor, batch: int,
                  options: dict[str, Any] | None = None, seed: int = 0,
                  permutations: int = PROBE_PERMUTATIONS) -> dict[str, Any]:
    """The gradient-conflict probe (see the module docstring): one arch per band (`probe_archs`), their
    gradients on the same images (`subnet_gradients`), every pair's cosine on the shared weights and over the
    zero-filled vectors, Spearman's rho of band distance against each, and a one-sided permutation p-value
    for the first (the fraction of `permutations` random relabellings of the archs' bands whose rho is at
    most the observed one, counting the observed labelling)."""
    archs, bounds = probe_archs(space, options, seed)
    grads = subnet_gradients(model, archs, images, labels, batch)
    pairs = list(itertools.combinations(range(len(archs)), 2))
    shared = [gradient_cosine(grads[i], grads[j]) for i, j in pairs]
    full = [gradient_cosine(grads[i], grads[j], shared=False) for i, j in pairs]
    bands = list(range(len(archs)))
    rho = _conflict_rho(pairs, bands, shared)
    rng, hits = random.Random(seed), 0
    for _ in range(permutations):
        labels_ = bands[:]
        rng.shuffle(labels_)
        hits += _conflict_rho(pairs, labels_, shared) <= rho + 1e-12
    return {
        "spearman": _finite(rho), "spearman_zero_filled": _finite(_conflict_rho(pairs, bands, full)),
        "permutation_p": round((hits + 1) / (permutations + 1), 4) if math.isfinite(rho) else None,
        "band_mflops": [[round(low / 1e6, 3), round(high / 1e6, 3)] for low, high in bounds],
        "arch_mflops": [round(space.flops(arch) / 1e6, 3) for arch in archs],
        "images": len(labels),
        "pairs": [{"bands": [i, j], "distance": j - i, "cosine": _finite(s), "cosine_zero_filled": _finite(f)}
                  for (i, j), s, f in zip(pairs, shared, full, strict=True)],
    }


def _finite(value: float, digits: int = 4) -> float | None:
    """`value` rounded, or None when it is NaN (JSON has no NaN)."""
    return round(value, digits) if math.isfinite(value) else None


# ---- jobs run in worker processes ------------------------------------------------------------------------
def _init_worker() -> None:
    torch.set_num_threads(1)


def _supernet_job(mode: str, name: str, seed: int, work: str) -> dict[str, Any]:
    """Train one sampler's supernet with one seed, score the panel (per image) and the front, run the probe."""
    spec = bench_spec(mode, SAMPLERS[name], seed)
    splits = load(spec.data)
    space = SearchSpace.from_spec(spec, splits.in_channels, splits.num_classes)
    clock = _Clock()
    result = train_supernet(spec, space, splits, Path(work) / f"{name}-{seed}", progress=False)
    clock.lap("train")
    supernet = load_supernet(space, result.checkpoint)
    evaluator = make_evaluator(supernet, splits.x_train, splits.x_val, splits.y_val)
    correct = [correctness(evaluator.subnet(arch), splits.x_val, splits.y_val) for arch in panel_archs(space)]
    hypervolume = None
    if seed in MODES[mode]["front_seeds"]:
        front = make_evaluator(supernet, splits.x_train, splits.x_val, splits.y_val, MODES[mode]["front_val"])
        largest = space.flops(space.largest())
        points = [(front.val_accuracy(arch), space.flops(arch) / largest)
                  for arch in front_archs(space, MODES[mode]["front_archs"])]
        hypervolume = hypervolume_2d(points, [True, False], HV_REFERENCE)
    clock.lap("eval")
    count = MODES[mode]["probe_images"]
    probe = grad_conflict(supernet, space, splits.x_train[:count].contiguous(memory_format=torch.channels_last),
                          splits.y_train[:count], spec.data.batch_size)
    clock.lap("probe")
    return {"kind": "supernet", "name": name, "seed": seed, "correct": correct,
            "panel": [sum(c) / len(c) for c in correct], "grad_cosine": result.grad_cosine,
            "subnet_mflops": statistics.mean(e["mean_subnet_mflops"] for e in result.epoch_metrics),
            "hypervolume": hypervolume, "train_s": clock.times["train_s"],
            "timing": clock.times, "probe": probe, "steps": result.steps, "epochs": list(result.epoch_metrics)}


class _Clock:
    """Wall and CPU seconds (this process: the job's, with one thread per worker) of consecutive phases."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self, phase: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.times[f"{phase}_s"] = round(wall - self.wall, 1)
        self.times[f"{phase}_cpu_s"] = round(cpu - self.cpu, 1)
        self.wall, self.cpu = wall, cpu


def _scratch_job(mode: str, index: int) -> dict[str, Any]:
    """A panel arch trained alone with the supernets' recipe (optimiser, schedule, data order, epochs; seed 0)."""
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
    clock = _Clock()
    for epoch in range(spec.train.epochs):
        order = torch.randperm(len(splits.y_train), generator=torch.Generator().manual_seed(spec.train.seed + epoch))
        for i in range(steps_per_epoch):
            idx = order[i * batch:(i + 1) * batch]
            images = splits.x_train[idx].contiguous(memory_format=torch.channels_last)
            _train_step(model, optimizer, images, splits.y_train[idx], None)
            schedule.step()
    clock.lap("train")
    return {"kind": "scratch", "index": index, "accuracy": accuracy(model.eval(), splits.x_val, splits.y_val),
            "train_s": clock.times["train_s"], "timing": clock.times}


def _run(job: tuple[Any, ...]) -> dict[str, Any]:
    kind, *args = job
    return _supernet_job(*args) if kind == "supernet" else _scratch_job(*args)


# ---- report ----------------------------------------------------------------------------------------------
SCRATCH_PANEL = (0, 2, 4)  # smallest, median, largest
SCRATCH_COST = {0: 0.1, 2: 0.3, 4: 0.95}  # relative to a uniform supernet's step (JOB_COST), for the job order


def jobs_for(mode: str, work: str) -> list[tuple[Any, ...]]:
    """Every training job of the mode, the longest first (the pool hands them out in this order)."""
    jobs = [(JOB_COST[name], ("supernet", mode, name, seed, work)) for seed in MODES[mode]["seeds"]
            for name in SAMPLERS]
    jobs += [(SCRATCH_COST[i], ("scratch", mode, i)) for i in SCRATCH_PANEL]
    return [job for _, job in sorted(jobs, key=lambda pair: -pair[0])]


def _sd(values: Sequence[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def summarise(mode: str, results: list[dict[str, Any]], overhead: dict[str, Any], panel_mflops: list[float],
              val_images: int, wall_s: float) -> dict[str, Any]:
    """The JSON report (see the module docstring for the keys)."""
    seeds = MODES[mode]["seeds"]
    runs = {(r["name"], r["seed"]): r for r in results if r["kind"] == "supernet"}
    scratch = {r["index"]: r["accuracy"] for r in results if r["kind"] == "scratch"}

    def per_seed(name: str, key: str) -> list[Any]:
        return [runs[name, seed][key] for seed in seeds]

    by_seed = {name: per_seed(name, "panel") for name in SAMPLERS}
    panel = {name: [statistics.fmean(column) for column in zip(*rows, strict=True)] for name, rows in by_seed.items()}
    means = {name: [statistics.fmean(row) for row in rows] for name, rows in by_seed.items()}
    cosines = {name: [statistics.fmean(column) for column in zip(*per_seed(name, "grad_cosine"), strict=True)]
               for name in SAMPLERS}
    gaps = {name: statistics.mean(100 * (scratch[i] - panel[name][i]) for i in SCRATCH_PANEL) for name in SAMPLERS}
    fronts = MODES[mode]["front_seeds"]
    hv = {name: [runs[name, seed]["hypervolume"] for seed in fronts] for name in SAMPLERS}
    probe = runs[BASELINE, seeds[0]]["probe"]
    return {
        "benchmark": "sampling",
        "mode": mode,
        "overhead_ratio": overhead["overhead_ratio"],
        "panel_mflops": panel_mflops,
        "panel_accuracy": {name: [round(a, 4) for a in panel[name]] for name in SAMPLERS},
        "panel_accuracy_by_seed": {name: [[round(a, 4) for a in row] for row in rows]
                                   for name, rows in by_seed.items()},
        "panel_mean_by_seed": {name: [round(m, 4) for m in ms] for name, ms in means.items()},
        "panel_mean": {name: {"mean": round(statistics.fmean(ms), 4),
                              "sd": None if _sd(ms) is None else round(_sd(ms), 4)} for name, ms in means.items()},
        "mcnemar": mcnemar_report({name: per_seed(name, "correct") for name in SAMPLERS}),
        "grad_cosine": {name: round(statistics.fmean(cosines[name]), 4) for name in SAMPLERS},
        "grad_cosine_by_epoch": {name: [round(c, 4) for c in cosines[name]] for name in SAMPLERS},
        "hypervolume": {name: round(statistics.fmean(hv[name]), 4) for name in SAMPLERS},
        "hypervolume_by_seed": {name: {str(seed): round(v, 4) for seed, v in zip(fronts, hv[name], strict=True)}
                                for name in SAMPLERS},
        "grad_conflict_spearman": probe["spearman"],
        "grad_conflict": {"sampler": BASELINE, "seed": seeds[0], **probe},
        "grad_conflict_spearman_by_sampler": {name: [r["spearman"] for r in per_seed(name, "probe")]
                                              for name in SAMPLERS},
        "scratch_accuracy": {str(panel_mflops[i]): round(scratch[i], 4) for i in SCRATCH_PANEL},
        "scratch_gap": round(statistics.mean(gaps.values()), 2),
        "scratch_gap_by_sampler": {name: round(gap, 2) for name, gap in gaps.items()},
        "trained_mflops": {name: round(statistics.fmean(per_seed(name, "subnet_mflops")), 3) for name in SAMPLERS},
        "train_s": {name: round(statistics.fmean(per_seed(name, "train_s")), 1) for name in SAMPLERS},
        "timing": {name: {key: round(statistics.fmean(t[key] for t in per_seed(name, "timing")), 1)
                          for key in runs[name, seeds[0]]["timing"]} for name in SAMPLERS},
        "scratch_timing": {str(r["index"]): r["timing"] for r in results if r["kind"] == "scratch"},
        "steps": runs[BASELINE, seeds[0]]["steps"],
        "overhead": overhead["per_arch"],
        "seeds": list(seeds),
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
    seeds = len(summary["seeds"])
    print(f"\n| sampler | panel accuracy % ({header} MFLOPs; mean of {seeds} seeds) | panel mean +- sd | "
          f"vs uniform (pts, McNemar p) | grad cosine | hypervolume | scratch gap (pts) | mean trained MFLOPs | "
          "train s |", file=out)
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |", file=out)
    for name in SAMPLERS:
        panel, mean = summary["panel_accuracy"][name], summary["panel_mean"][name]
        sd = "" if mean["sd"] is None else f" +- {100 * mean['sd']:.2f}"
        test = summary["mcnemar"].get(name)
        versus = "-" if test is None else f"{test['accuracy_delta_pts']:+.2f} (p {test['p_value']:.3g})"
        print(f"| {name} | {' / '.join(f'{100 * a:.1f}' for a in panel)} | {100 * mean['mean']:.2f}{sd} | "
              f"{versus} | {summary['grad_cosine'][name]:.3f} | {summary['hypervolume'][name]:.4f} | "
              f"{summary['scratch_gap_by_sampler'][name]:+.2f} | {summary['trained_mflops'][name]:.2f} | "
              f"{summary['train_s'][name]:.0f} |", file=out)
    mean_acc = statistics.mean(a for panel in summary["panel_accuracy"].values() for a in panel)
    se = 100 * (mean_acc * (1 - mean_acc) / summary["val_images"]) ** 0.5
    print(f"\none arch's accuracy on {summary['val_images']} validation images: standard error ~{se:.1f} points",
          file=out)
    probe = summary["grad_conflict"]
    print(f"gradient conflict ({BASELINE}, seed {probe['seed']}): Spearman rho(band distance, cosine) = "
          f"{summary['grad_conflict_spearman']} (permutation p {probe['permutation_p']}; zero-filled "
          f"{probe['spearman_zero_filled']}); per sampler and seed {summary['grad_conflict_spearman_by_sampler']}",
          file=out)
    print(f"overhead ratio (supernet step / static step): {summary['overhead_ratio']}", file=out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller run, one seed (at most 3 minutes)")
    parser.add_argument("--workers", type=int, default=2, help="training processes, one thread each (default 2)")
    parser.add_argument("--stats-only", action="store_true", help="only the sampler statistics (seconds, no training)")
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    started = time.perf_counter()
    torch.set_num_threads(1)
    clock = _Clock()
    stats = sampler_stats(mode)
    clock.lap("sampler_stats")
    if args.stats_only:
        print(json.dumps({"benchmark": "sampling", "mode": mode, "sampler_stats": stats,
                          "wall_s": round(time.perf_counter() - started, 1), "machine": machine()}))
        return
    spec = bench_spec(mode)
    splits = load(spec.data)
    space = SearchSpace.from_spec(spec, splits.in_channels, splits.num_classes)
    panel = panel_archs(space)
    print(f"sampling benchmark ({mode}): {len(splits.y_train)} training images, {spec.train.epochs} epochs, seeds "
          f"{list(MODES[mode]['seeds'])}, panel {[round(space.flops(a) / 1e6, 2) for a in panel]} MFLOPs",
          file=sys.stderr)
    overhead = measure_overhead(spec, space, splits, panel, MODES[mode]["overhead_repeats"])
    print(f"overhead: {overhead}", file=sys.stderr)
    clock.lap("overhead")
    with tempfile.TemporaryDirectory(prefix="nas-bench-sampling-") as work:
        context = multiprocessing.get_context("spawn")  # no fork of a process whose OpenMP pool is running
        results = []
        with context.Pool(args.workers, initializer=_init_worker) as pool:
            for result in pool.imap_unordered(_run, jobs_for(mode, work)):
                label = (f"{result['name']} seed {result['seed']}" if result["kind"] == "supernet"
                         else f"scratch {result['index']}")
                print(f"  done: {label} ({result['train_s']} s, {time.perf_counter() - started:.0f} s in)",
                      file=sys.stderr)
                results.append(result)
    clock.lap("training")
    summary = summarise(mode, results, overhead, [round(space.flops(a) / 1e6, 3) for a in panel],
                        len(splits.y_val), time.perf_counter() - started)
    summary["phases"] = {key: value for key, value in clock.times.items() if not key.endswith("_cpu_s")}
    summary["sampler_stats"] = stats
    print_table(summary)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
