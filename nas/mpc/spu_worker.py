"""Runs pieces and networks under SPU and records their cost: `python -m nas.mpc.spu_worker REQUEST RESULT`.

Run by the MPC venv's python (numpy + jax + spu; no torch), with the repo root on PYTHONPATH. The request is
{"jobs": [{"piece": key} | {"network": description, "params_npz": path | null, "images_npz": path | null,
"plain": bool}], "seed": int}; the result, written atomically, is {"results": [...]} with per job {"rounds",
"bytes", "compute_ms"} (rank 0's send actions, send bytes and SPU execution time x 1000 of one run), and for a
network with "plain": true its jax plaintext and SPU outputs. A job that fails stops the worker (exit 1, the
reason as the last stderr line). `--version` prints {"spu", "jax"} as JSON. Progress goes to stderr as
`PROGRESS_TAG {"done": i, "total": n}` lines.

SPU's C++ runtime prints its profile to file descriptor 1 (not Python's sys.stdout), so each run redirects
fd 1 to a temp file and parses it; a run whose lines are missing is an error, never a zero.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

PROTOCOL, FIELD, PARTIES = "SEMI2K", "FM64", 2
PROGRESS_TAG = "nas-mpc-progress"
_EXECUTION = re.compile(r"\[Profiling\] SPU execution .* execution took ([0-9.eE+-]+)s")
_LINK = re.compile(r"Link details: total send bytes (\d+), recv bytes \d+, send actions (\d+), recv actions \d+")


@contextlib.contextmanager
def captured_fd1() -> Iterator[list[str]]:
    """Redirect file descriptor 1 to a temp file; the yielded list holds its lines once the block ends."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    lines: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(1)
        os.dup2(tmp.fileno(), 1)
        try:
            yield lines
        finally:
            sys.stdout.flush()
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", "replace").splitlines())


def parse_profile(lines: list[str]) -> dict[str, Any]:
    """{"rounds", "bytes", "compute_ms"} from SPU's profile lines of one run; RuntimeError when missing."""
    text = "\n".join(lines)
    execution, link = _EXECUTION.findall(text), _LINK.findall(text)
    if len(execution) != 1 or len(link) != 1:
        raise RuntimeError(f"SPU printed {len(execution)} execution and {len(link)} link profile lines for one run "
                           "(expected one each)")
    send_bytes, send_actions = link[0]
    return {"rounds": int(send_actions), "bytes": int(send_bytes), "compute_ms": float(execution[0]) * 1000.0}


def run_spu(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, dict[str, Any]]:
    """fn(*args) in a fresh 2-party SEMI2K simulator, every argument secret: (outputs, cost)."""
    import spu.utils.simulation as simulation
    from spu import libspu

    config = libspu.RuntimeConfig(protocol=getattr(libspu.ProtocolKind, PROTOCOL),
                                  field=getattr(libspu.FieldType, FIELD))
    config.enable_pphlo_profile = True
    config.enable_hal_profile = True
    simulator = simulation.Simulator(PARTIES, config)
    with captured_fd1() as lines:
        out = simulation.sim_jax(simulator, fn)(*args)
    return out, parse_profile(lines)


def _load_npz(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


def run_job(job: dict[str, Any], seed: int) -> dict[str, Any]:
    """One job of a request (see the module docstring)."""
    from nas.mpc import jax_net
    from nas.mpc.pieces import Piece

    if "piece" in job:
        fn, args = jax_net.piece_function(Piece.from_key(job["piece"]), seed)
        _, cost = run_spu(fn, args)
        return cost
    network = job["network"]
    params = _load_npz(job["params_npz"]) if job.get("params_npz") else jax_net.random_params(network, seed)
    jax_net.check_params(network, params)
    if job.get("images_npz"):
        images = _load_npz(job["images_npz"])["images"].astype(np.float32)
    else:
        side = network["resolution"]
        images = np.random.default_rng(seed).standard_normal((1, network["in_channels"], side, side))
        images = images.astype(np.float32)
    weights = jax_net.fold_batch_norms(params)
    fn = jax_net.forward(network)
    out, cost = run_spu(fn, (weights, images))
    if job.get("plain"):
        import jax

        cost["plain"] = np.asarray(jax.jit(fn)(weights, images), np.float64).tolist()
        cost["spu"] = np.asarray(out, np.float64).tolist()
    return cost


def versions() -> dict[str, str]:
    import jax
    import spu

    return {"spu": spu.__version__, "jax": jax.__version__}


def write_atomically(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if argv == ["--version"]:
        print(json.dumps(versions()), flush=True)
        return 0
    if len(argv) != 2:
        print("usage: python -m nas.mpc.spu_worker REQUEST.json RESULT.json | --version", file=sys.stderr)
        return 2
    request = json.loads(Path(argv[0]).read_text())
    jobs, seed = request["jobs"], int(request.get("seed", 0))
    results = []
    for i, job in enumerate(jobs):
        try:
            results.append(run_job(job, seed))
        except Exception as exc:  # one line for the runner, which names the job
            what = job.get("piece") or "network"
            message = " ".join(f"{type(exc).__name__}: {exc}".split())
            print(f"job {i} ({what}) failed: {message}", file=sys.stderr, flush=True)
            return 1
        print(f"{PROGRESS_TAG} {json.dumps({'done': i + 1, 'total': len(jobs)})}", file=sys.stderr, flush=True)
    write_atomically(Path(argv[1]), {"results": results, "versions": versions()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
