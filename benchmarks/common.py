"""Helpers shared by the benchmark scripts: the machine record and running `nas` in a fresh workspace."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    from nas.latency.host import cpu_model

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def workspace_env(path: Path) -> dict[str, str]:
    """A private store, runs folder and latency tables (the shipped ones copied in) under `path`."""
    tables = path / "latency_tables"
    if not tables.exists():
        shutil.copytree(ROOT / "latency_tables", tables, ignore=shutil.ignore_patterns("host.json"))
    env = dict(os.environ)
    env.update({
        "NAS_LATENCY_TABLES": str(tables),
        "NAS_STORE": f"sqlite:///{path / 'nas.db'}",
        "NAS_RUNS": str(path / "runs"),
    })
    return env


def run_nas(args: list[str], path: Path, env: dict[str, str] | None = None) -> tuple[dict[str, Any] | list, float]:
    """Run `nas ARGS --json` in `path`; returns (last-line JSON, wall seconds). Progress goes to our stderr."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args, "--json"], cwd=path,
                          env=env or workspace_env(path), stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"nas {' '.join(args)} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall
