"""Our own latency harness for the `host` target: torch eager, batch 1, fixed threads.

Each distinct block is built from `nas.static_model`, run on a random input of its shape after a warm-up,
and timed as the median of repeats (the spread between the 25th and 75th percentile is recorded too).
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone

import torch
from torch import nn

from nas import static_model
from nas.blocks import Block


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def block_module(block: Block) -> tuple[nn.Module, torch.Tensor]:
    """A module computing `block` and an input of the right shape."""
    b = block
    image = torch.randn(1, b.cin, b.hw, b.hw)
    tokens = torch.randn(1, b.hw * b.hw, b.cin)
    if b.kind == "stem":
        return static_model.ConvBNAct(b.cin, b.cout, b.kernel, b.stride), image
    if b.kind in ("mbconv", "transds"):
        return static_model.MBConv(b.cin, b.cout, b.expand, b.kernel, b.stride, b.se), image
    if b.kind == "attn":
        return static_model.Attention(b.cin, b.head_dim, b.v_scale), tokens
    if b.kind == "ffn":
        return static_model.FeedForward(b.cin, b.mlp_ratio), tokens
    if b.kind == "head":
        return static_model.Head(b.cin, b.cout, b.num_classes), image
    raise ValueError(f"unknown block kind {b.kind!r}")


def time_call(fn: Callable[[], object], warmup: int = 3, repeats: int = 15,
              min_seconds: float = 0.02) -> tuple[float, float]:
    """Median and inter-quartile spread (ms) of `fn`, repeating until `repeats` runs and `min_seconds` passed."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < repeats or (time.perf_counter() - started < min_seconds and len(samples) < 200):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000.0)
    quartiles = statistics.quantiles(samples, n=4)
    return statistics.median(samples), quartiles[2] - quartiles[0]


@torch.inference_mode()
def measure_block(block: Block, threads: int) -> tuple[float, float]:
    torch.set_num_threads(threads)
    module, inputs = block_module(block)
    module.eval()
    return time_call(lambda: module(inputs))


@torch.inference_mode()
def measure_network(model: nn.Module, resolution: int, in_channels: int, threads: int) -> tuple[float, float]:
    """End-to-end latency of a whole network at batch 1."""
    torch.set_num_threads(threads)
    model.eval()
    inputs = torch.randn(1, in_channels, resolution, resolution)
    return time_call(lambda: model(inputs), warmup=3, repeats=15)


def provenance(threads: int) -> dict[str, object]:
    return {
        "format_version": 1,
        "target": "host",
        "device": f"{platform.node()} ({platform.machine()})",
        "cpu": cpu_model(),
        "runtime": "torch-eager",
        "runtime_version": torch.__version__,
        "threads": threads,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "method": "nas.latency.host: batch 1, inference_mode, 3 warm-up runs, median of >=15 repeats",
        "provenance": "measured",
    }


def measure_blocks(blocks: Iterable[Block], threads: int,
                   progress: Callable[[Block], None] | None = None) -> dict[str, dict[str, float]]:
    """Measure each block; returns key -> {"ms", "spread_ms"}."""
    entries = {}
    for block in blocks:
        median, spread = measure_block(block, threads)
        entries[block.key()] = {"ms": round(median, 5), "spread_ms": round(spread, 5)}
        if progress:
            progress(block)
    return entries
