"""The main side of MPC cost measurement: runs `nas.mpc.spu_worker` under the MPC venv's python.

No jax here (the main environment has none): requests go to the worker as JSON, weights and images as .npz.
Each worker call pays ~2-4 s of jax/SPU import, so jobs are batched into one call. Costs are of one run of the
2-party SEMI2K protocol over FM64 in SPU's in-process simulator, all inputs secret: rounds (rank 0's send
actions), bytes (its send bytes) and compute_ms (SPU's execution time, which depends on the machine's load).
Rounds and bytes are deterministic, and a network's equal the sums of its pieces' (`nas.mpc.pieces`) exactly:
what lies between pieces (residual additions, reshapes, regrouping heads) is local. Compute times add up only
roughly. `measure_networks` measures whole networks, to check that.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nas.errors import LatencyError
from nas.mpc.pieces import Piece
from nas.mpc.spu_worker import FIELD, PARTIES, PROGRESS_TAG, PROTOCOL

__all__ = ["FIELD", "PARTIES", "PROTOCOL", "MPCCost", "measure_networks", "measure_pieces", "run_network",
           "run_networks", "spu_available", "spu_python", "spu_version"]
ROOT = Path(__file__).resolve().parents[2]
VENV_PYTHON = ROOT / ".venv-mpc" / "bin" / "python"
INSTALL_HINT = "install it with `bash scripts/setup_mpc.sh` (a venv .venv-mpc with spu==0.9.5)"
Progress = Callable[[int, int], None]  # (jobs done, jobs in all)


@dataclass(frozen=True)
class MPCCost:
    """One two-party run: communication rounds, bytes sent by one party, and SPU's compute time."""

    rounds: int
    bytes: int
    compute_ms: float


@functools.lru_cache(maxsize=1)
def _imports_spu(python: str) -> bool:
    proc = subprocess.run([python, "-c", "import spu"], capture_output=True, timeout=120)
    return proc.returncode == 0


def spu_python() -> str:
    """The interpreter that runs the worker: $NAS_SPU_PYTHON, else the repo's .venv-mpc, else this one when
    it can import spu; LatencyError saying how to install SPU otherwise."""
    configured = os.environ.get("NAS_SPU_PYTHON")
    if configured:
        if not os.access(configured, os.X_OK) or os.path.isdir(configured):
            raise LatencyError(f"NAS_SPU_PYTHON={configured} is not an executable python: point it at one that "
                               "imports spu, or unset it and run `bash scripts/setup_mpc.sh`")
        return configured
    if os.access(VENV_PYTHON, os.X_OK):
        return str(VENV_PYTHON)
    if _imports_spu(sys.executable):
        return sys.executable
    raise LatencyError(f"SPU is not installed (no {VENV_PYTHON}, and this python cannot import spu): {INSTALL_HINT}")


def spu_available() -> bool:
    """Whether `spu_python` finds an interpreter (it is not started: see `spu_version`)."""
    try:
        spu_python()
    except LatencyError:
        return False
    return True


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def spu_version() -> str:
    """The SPU version the worker runs (`spu 0.9.5, jax 0.4.34`)."""
    python = spu_python()
    proc = subprocess.run([python, "-m", "nas.mpc.spu_worker", "--version"], capture_output=True, text=True,
                          env=_worker_env(), timeout=300)
    if proc.returncode != 0:
        raise LatencyError(f"the SPU worker ({python}) failed: {_last_line(proc.stderr)}")
    versions = json.loads(_last_line(proc.stdout))
    return f"spu {versions['spu']}, jax {versions['jax']}"


def _run_worker(jobs: list[dict[str, Any]], seed: int, progress: Progress | None) -> list[dict[str, Any]]:
    """The worker's results for `jobs`, one call; LatencyError with its last stderr line when it fails."""
    python = spu_python()
    with tempfile.TemporaryDirectory(prefix="nas-mpc-") as tmp:
        request, result = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request.write_text(json.dumps({"jobs": jobs, "seed": seed}))
        try:
            proc = subprocess.Popen([python, "-m", "nas.mpc.spu_worker", str(request), str(result)],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True, env=_worker_env())
        except OSError as exc:
            raise LatencyError(f"cannot start the SPU worker {python}: {exc.strerror or exc}") from None
        tail: collections.deque[str] = collections.deque(maxlen=20)
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith(PROGRESS_TAG):
                if progress is not None:
                    state = json.loads(line[len(PROGRESS_TAG):])
                    progress(state["done"], state["total"])
            elif line.strip():
                tail.append(line.strip())
        code = proc.wait()
        if code != 0 or not result.exists():
            reason = tail[-1] if tail else f"exit code {code}"
            raise LatencyError(f"the SPU worker failed: {reason}")
        results = json.loads(result.read_text())["results"]
    if len(results) != len(jobs):
        raise LatencyError(f"the SPU worker returned {len(results)} results for {len(jobs)} jobs")
    return results


def _cost(result: dict[str, Any]) -> MPCCost:
    return MPCCost(int(result["rounds"]), int(result["bytes"]), float(result["compute_ms"]))


def measure_pieces(pieces: Iterable[Piece | str], progress: Progress | None = None, seed: int = 0
                   ) -> dict[str, MPCCost]:
    """The cost of each distinct piece (or piece key), by key, measured in one worker call."""
    keys = list(dict.fromkeys(p.key() if isinstance(p, Piece) else Piece.from_key(p).key() for p in pieces))
    if not keys:
        return {}
    results = _run_worker([{"piece": key} for key in keys], seed, progress)
    return {key: _cost(result) for key, result in zip(keys, results, strict=True)}


def measure_networks(descriptions: Iterable[dict[str, Any]], progress: Progress | None = None, seed: int = 0
                     ) -> list[MPCCost]:
    """The cost of whole networks (descriptions as `SearchSpace.describe` writes them), random weights."""
    jobs = [{"network": d, "params_npz": None, "images_npz": None, "plain": False} for d in descriptions]
    return [_cost(result) for result in _run_worker(jobs, seed, progress)] if jobs else []


def run_networks(items: Iterable[tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray]], seed: int = 0
                 ) -> list[dict[str, Any]]:
    """For each (description, state dict as numpy arrays, images B x C x H x W): {"plain": jax plaintext
    logits, "spu": SPU's logits (numpy), "cost": MPCCost}, all in one worker call."""
    jobs = []
    with tempfile.TemporaryDirectory(prefix="nas-mpc-") as tmp:
        for i, (description, params, images) in enumerate(items):
            params_path, images_path = Path(tmp) / f"params{i}.npz", Path(tmp) / f"images{i}.npz"
            np.savez(params_path, **params)
            np.savez(images_path, images=np.asarray(images, np.float32))
            jobs.append({"network": description, "params_npz": str(params_path), "images_npz": str(images_path),
                         "plain": True})
        results = _run_worker(jobs, seed, None) if jobs else []
    return [{"plain": np.array(r["plain"]), "spu": np.array(r["spu"]), "cost": _cost(r)} for r in results]


def run_network(description: dict[str, Any], params: dict[str, np.ndarray], images: np.ndarray) -> dict[str, Any]:
    """`run_networks` for one network."""
    return run_networks([(description, params, images)])[0]
