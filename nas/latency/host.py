"""Our own latency harness for the `host` target: batch 1, fixed threads, torch eager or ONNX Runtime.

What it controls, and why (each was measured on the 2-core development machine):

* **Allocator.** glibc returns large freed blocks to the kernel and page-faults them back in on the next
  call, so the same attention block took 2.1 ms or 5.7 ms depending on the heap's history. The harness pins
  glibc's mmap and trim thresholds (`pin_allocator`) so activations are reused without page faults; a deployment
  gets the same with the environment variables in `ALLOCATOR_ENV`. ONNX Runtime has its own arena.
* **Clock.** With one thread the runtime computes on the calling thread, so its CPU time equals its latency on
  an idle machine and is not inflated when another process takes the core for a while; the harness times
  one-thread runs with the thread's CPU clock and multi-thread runs with the wall clock (`clock_for`).
* **Layout.** A block is timed with the input layout it sees in the network: attention and FFN get the
  channel-major token view that `TransformerStage` makes with `flatten(2).transpose(1, 2)` (residual adds
  keep that layout through the stage), not a contiguous copy (FFN runs ~20% slower on the view).
* **Cache state.** Inside a torch eager network a block runs after other blocks, on freshly allocated
  tensors, with its weights evicted: timed back to back on its own, a block ran ~20% faster than inside a
  network, and by how much varied from network to network (per-network spread of sum/network +-7%). torch
  blocks are therefore timed in the `sequence` schedule: each round runs every block and network of the
  session once, in a fresh random order, so every sample starts from another block's cache state (sums then
  came within -3% of the networks, spread +-3%). ONNX Runtime plans a network's buffers once and reuses them
  hot, so its blocks are timed in the `burst` schedule (a warm-up, then a few runs back to back, per round);
  the sequence schedule made its blocks 45% slower than inside a network.
* **Noise.** Blocks and networks are timed in interleaved rounds spread over the whole session, so a burst
  of load from another process spreads over many entries instead of spoiling one; the median of all samples
  is kept with its inter-quartile spread.

What no block table sees (per-network entry, a runtime's per-call cost and cross-block fusions, what is left
of the cache effects) is fitted from whole calibration networks in `nas.latency.validate`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import math
import platform
import random
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import torch
from torch import nn

from nas import static_model
from nas.blocks import Block
from nas.errors import LatencyError, missing_extra

RUNTIMES = ("torch", "onnxruntime")
RUNTIME_LABELS = {"torch": "torch-eager", "onnxruntime": "onnxruntime-cpu"}
ONNX_OPSET = 17
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}
SCHEDULES = {"torch": "sequence", "onnxruntime": "burst"}  # see the module docstring
ROUNDS = {"sequence": 30, "burst": 10}  # interleaved passes over all blocks and networks of a session
BURST_REPEATS = 30  # burst schedule: timed runs per block or network, at least (spread over the rounds)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_allocator_note: str | None = None


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pin_allocator() -> str:
    """Stop glibc from returning (and page-faulting back) large activations; idempotent, process-wide.

    Returns a description of the allocator setting for the table's provenance.
    """
    global _allocator_note
    if _allocator_note is not None:
        return _allocator_note
    note = "default (not glibc)"
    name = ctypes.util.find_library("c")
    if platform.system() == "Linux" and name and platform.libc_ver()[0] == "glibc":
        libc = ctypes.CDLL(name)
        mmap_ok = any(libc.mallopt(_M_MMAP_THRESHOLD, value) for value in (1 << 30, 32 << 20))
        trim_ok = libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
        note = ("glibc, mmap and trim thresholds raised by the harness (as "
                + " ".join(f"{k}={v}" for k, v in ALLOCATOR_ENV.items()) + ")") if mmap_ok and trim_ok \
            else "glibc default (mallopt refused)"
    _allocator_note = note
    return note


def clock_for(threads: int) -> str:
    """`thread_cpu` for one thread (immune to time slices lost to other processes), else `wall`."""
    return "thread_cpu" if threads == 1 else "wall"


def _clock_fn(clock: str) -> Callable[[], float]:
    if clock == "thread_cpu":
        return time.thread_time
    if clock == "wall":
        return time.perf_counter
    raise LatencyError(f"clock must be thread_cpu or wall, got {clock!r}")


def check_runtime(runtime: str) -> None:
    """Raise a one-line error for an unknown runtime or a missing optional dependency."""
    if runtime not in RUNTIMES:
        raise LatencyError(f"--runtime: must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise missing_extra("onnxruntime", "onnx") from None


def runtime_version(runtime: str) -> str:
    if runtime == "onnxruntime":
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}, torch.onnx opset {ONNX_OPSET}"
    return f"torch {torch.__version__}"


def block_module(block: Block) -> tuple[nn.Module, torch.Tensor]:
    """A module computing `block` and an input of the shape and layout the block sees in a network."""
    b = block
    image = torch.randn(1, b.cin, b.hw, b.hw)
    if b.kind == "stem":
        return static_model.ConvBNAct(b.cin, b.cout, b.kernel, b.stride), image
    if b.kind in ("mbconv", "transds"):
        return static_model.MBConv(b.cin, b.cout, b.expand, b.kernel, b.stride, b.se, b.shortcut,
                                   b.expand_conv), image
    tokens = image.flatten(2).transpose(1, 2)  # TransformerStage's channel-major view
    if b.kind == "attn":
        return static_model.Attention(b.cin, b.head_dim, b.v_scale, b.hw, b.v_dwconv, b.rel_pos_bias, b.proj_act,
                                      b.qkv_bias), tokens
    if b.kind == "ffn":
        return static_model.FeedForward(b.cin, b.mlp_ratio), tokens
    if b.kind == "head":
        return static_model.Head(b.cin, b.cout, b.num_classes, b.final), image
    raise ValueError(f"unknown block kind {b.kind!r}")


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run with `threads` torch threads, restoring the caller's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def onnx_bytes(module: nn.Module, inputs: torch.Tensor) -> bytes:
    """`module` exported to ONNX (TorchScript exporter, opset `ONNX_OPSET`) as bytes."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (inputs.contiguous(),), buffer, dynamo=False, input_names=["input"],
                          output_names=["output"], opset_version=ONNX_OPSET)
    return buffer.getvalue()


def make_runner(module: nn.Module, inputs: torch.Tensor, runtime: str, threads: int) -> Callable[[], object]:
    """A no-argument callable running `module` on `inputs` once with `runtime` and `threads`."""
    module.eval()
    if runtime == "torch":

        def run_torch() -> object:
            with torch.inference_mode():
                return module(inputs)

        return run_torch
    if runtime == "onnxruntime":
        check_runtime(runtime)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        session = ort.InferenceSession(onnx_bytes(module, inputs), options, providers=["CPUExecutionProvider"])
        with torch.inference_mode():
            out_shape = tuple(module(inputs).shape)
        # Bound input and output buffers: no numpy conversion or copy per run, as inside a network's graph.
        binding = session.io_binding()
        binding.bind_ortvalue_input("input", ort.OrtValue.ortvalue_from_numpy(inputs.detach().contiguous().numpy()))
        binding.bind_ortvalue_output("output", ort.OrtValue.ortvalue_from_shape_and_type(out_shape, "float32"))
        return lambda: session.run_with_iobinding(binding)
    raise LatencyError(f"--runtime: must be one of {', '.join(RUNTIMES)}, got {runtime!r}")


@dataclass(frozen=True)
class Timing:
    """Median and inter-quartile spread (ms) of the samples of one block or network."""

    ms: float
    spread_ms: float
    samples: int


def _summarise(samples: list[float]) -> Timing:
    if len(samples) >= 2:
        quartiles = statistics.quantiles(samples, n=4)
        spread = quartiles[2] - quartiles[0]
    else:
        spread = 0.0
    return Timing(statistics.median(samples), spread, len(samples))


def session_rounds(runtime: str) -> int:
    """How many interleaved rounds a measurement session with `runtime` makes."""
    return ROUNDS[SCHEDULES[runtime]]


def time_interleaved(runners: Sequence[Callable[[], object]], clock: str, schedule: str = "burst",
                     rounds: int | None = None, repeats: int = BURST_REPEATS, warmup: int = 3,
                     min_seconds: float = 0.02, max_samples: int = 400, seed: int = 0,
                     on_round: Callable[[], None] | None = None) -> list[Timing]:
    """Time every runner in `rounds` interleaved passes; returns the median and spread of each one's samples.

    sequence: after `warmup` calls each, every pass runs each runner once, timed, in a fresh order drawn
        with `random.Random(seed)`: each sample starts from the cache state another runner left.
    burst: every pass runs each runner `warmup` times (once after the first pass) and then times it at least
        `repeats / rounds` times back to back, and for `min_seconds / rounds` at least (`max_samples` at most).
    """
    if schedule not in ROUNDS:
        raise LatencyError(f"schedule must be one of {', '.join(ROUNDS)}, got {schedule!r}")
    rounds = rounds or ROUNDS[schedule]
    now = _clock_fn(clock)
    samples: list[list[float]] = [[] for _ in runners]
    if schedule == "sequence":
        for runner in runners:
            for _ in range(warmup):
                runner()
        order = list(range(len(runners)))
        rng = random.Random(seed)
        for _ in range(rounds):
            rng.shuffle(order)
            for i in order:
                t0 = now()
                runners[i]()
                samples[i].append((now() - t0) * 1000.0)
            if on_round:
                on_round()
        return [_summarise(s) for s in samples]
    per_round = max(1, math.ceil(repeats / rounds))
    budget = min_seconds / rounds
    for round_index in range(rounds):
        for runner, out in zip(runners, samples, strict=True):
            for _ in range(warmup if round_index == 0 else 1):
                runner()
            started, taken = time.perf_counter(), 0
            while taken < per_round or (time.perf_counter() - started < budget and len(out) < max_samples):
                t0 = now()
                runner()
                out.append((now() - t0) * 1000.0)
                taken += 1
        if on_round:
            on_round()
    return [_summarise(s) for s in samples]


def time_call(fn: Callable[[], object], clock: str = "wall", warmup: int = 3, repeats: int = 15,
              min_seconds: float = 0.02) -> tuple[float, float]:
    """Median and inter-quartile spread (ms) of one callable timed back to back (one burst round)."""
    timing = time_interleaved([fn], clock, "burst", rounds=1, repeats=repeats, warmup=warmup,
                              min_seconds=min_seconds)[0]
    return timing.ms, timing.spread_ms


def measure_block(block: Block, threads: int, runtime: str = "torch") -> tuple[float, float]:
    """Median and spread (ms) of one block on its own (for checks; tables use `measure_blocks`)."""
    pin_allocator()
    with torch_threads(threads):
        module, inputs = block_module(block)
        return time_call(make_runner(module, inputs, runtime, threads), clock_for(threads))


def _block_runners(blocks: Sequence[Block], runtime: str, threads: int,
                   progress: Callable[[str], None] | None) -> list[Callable[[], object]]:
    runners = []
    for block in blocks:
        runners.append(make_runner(*block_module(block), runtime, threads))
        if progress:
            progress("prepare")
    return runners


def measure_session(blocks: Sequence[Block], networks: Sequence[tuple[nn.Module, torch.Tensor]], threads: int,
                    runtime: str = "torch", progress: Callable[[str], None] | None = None,
                    rounds: int | None = None) -> tuple[dict[str, dict[str, float]], list[Timing]]:
    """Time blocks and whole networks together, every one of them in each round of the runtime's schedule
    (`SCHEDULES`).

    Interleaving spreads each entry's samples over the whole session, so slow drifts of the machine's speed
    (other processes, a neighbouring VM) average out instead of shifting a few entries, and blocks and
    networks timed in one session are comparable. Returns (key -> {"ms", "spread_ms"}, network timings).
    `progress` is called with "prepare" per block or network made ready, then "round" per pass.
    """
    check_runtime(runtime)
    pin_allocator()
    with torch_threads(threads):
        runners = _block_runners(blocks, runtime, threads, progress)
        for model, inputs in networks:
            runners.append(make_runner(model, inputs, runtime, threads))
            if progress:
                progress("prepare")
        timings = time_interleaved(runners, clock_for(threads), SCHEDULES[runtime], rounds=rounds,
                                   on_round=(lambda: progress("round")) if progress else None)
    entries = {block.key(): {"ms": round(t.ms, 5), "spread_ms": round(t.spread_ms, 5)}
               for block, t in zip(blocks, timings, strict=False)}
    return entries, timings[len(blocks):]


def measure_blocks(blocks: Sequence[Block], threads: int, runtime: str = "torch",
                   rounds: int | None = None) -> dict[str, dict[str, float]]:
    """Measure blocks in the runtime's interleaved schedule; returns key -> {"ms", "spread_ms"}."""
    return measure_session(blocks, [], threads, runtime, rounds=rounds)[0]


def measure_networks(networks: Sequence[tuple[nn.Module, torch.Tensor]], threads: int, runtime: str = "torch",
                     rounds: int | None = None) -> list[Timing]:
    """End-to-end latency of whole networks at batch 1, in the runtime's schedule and with its clock."""
    return measure_session([], networks, threads, runtime, rounds=rounds)[1]


def measure_network(model: nn.Module, resolution: int, in_channels: int, threads: int,
                    runtime: str = "torch") -> tuple[float, float]:
    """End-to-end latency (median, spread in ms) of one whole network at batch 1."""
    timing = measure_networks([(model, torch.randn(1, in_channels, resolution, resolution))], threads, runtime)[0]
    return timing.ms, timing.spread_ms


def provenance(threads: int, runtime: str = "torch", target: str = "host") -> dict[str, Any]:
    """The provenance fields of the table of `target` measured now with `runtime` and `threads`."""
    return {
        "format_version": 1,
        "target": target,
        "device": f"{platform.node()} ({platform.machine()})",
        "cpu": cpu_model(),
        "runtime": RUNTIME_LABELS[runtime],
        "runtime_version": runtime_version(runtime),
        "threads": threads,
        "clock": clock_for(threads),
        "schedule": SCHEDULES[runtime],
        "allocator": pin_allocator(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "method": (f"nas.latency.host: batch 1, {RUNTIME_LABELS[runtime]}"
                   + (" (torch.onnx.export dynamo=False, one InferenceSession per block)"
                      if runtime == "onnxruntime" else ", inference_mode")
                   + f", {threads} thread(s), {clock_for(threads)} clock; blocks and networks timed in the "
                     + (f"sequence schedule ({ROUNDS['sequence']} rounds, each running every block and network "
                        "once in a fresh random order)" if SCHEDULES[runtime] == "sequence" else
                        f"burst schedule ({ROUNDS['burst']} interleaved rounds of warm-up + back-to-back runs, "
                        f">={BURST_REPEATS} samples and >=20 ms each)")
                     + ", median and inter-quartile spread; "
                     "attention/FFN fed the network's channel-major token layout; network = overhead_ms + sum of "
                     "scale[kind] x block ms, fitted on calibration networks timed in the same session"),
        "provenance": "measured",
    }
