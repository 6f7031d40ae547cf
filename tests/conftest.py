"""Shared fixtures: the tiny digits spec, and a workspace where the `nas` CLI runs as a user would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
TINY_SPEC = Path(__file__).resolve().parent / "specs" / "tiny.yaml"


@pytest.fixture(scope="module")
def one_thread():
    """One torch intra-op thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): its tensors
    are tiny, and on a loaded 2-core machine two threads spin-wait on each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_spec_path() -> Path:
    return TINY_SPEC


@dataclass
class Workspace:
    """A folder with its own store, runs and latency tables, where `nas` commands run in subprocesses."""

    path: Path

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["NAS_LATENCY_TABLES"] = str(self.path / "latency_tables")
        env["NAS_STORE"] = f"sqlite:///{self.path / 'nas.db'}"
        env["NAS_RUNS"] = str(self.path / "runs")
        # One intra-op thread per process: on 2 cores shared with Ray workers (or another job), torch's spinning
        # thread pool makes training 10-25x slower than one thread.
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=self.path, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"nas {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        return proc

    def run_json(self, *args: str) -> object:
        return json.loads(self.run(*args, "--json").stdout.strip().splitlines()[-1])


def make_workspace(path: Path) -> Workspace:
    """A workspace whose latency tables hold the shipped ones (not this machine's host table)."""
    tables = path / "latency_tables"
    tables.mkdir(parents=True, exist_ok=True)
    for shipped in (ROOT / "latency_tables").glob("*.json"):
        if shipped.name != "host.json":
            shutil.copy(shipped, tables / shipped.name)
    return Workspace(path)


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path)


@pytest.fixture(scope="session")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, dict]:
    """One end-to-end run on the tiny space: measure host latency, then search (trains the supernet)."""
    ws = make_workspace(tmp_path_factory.mktemp("e2e"))
    ws.run("latency", "measure", "--target", "host", "--spec", str(TINY_SPEC), "--no-progress")
    result = ws.run_json("search", str(TINY_SPEC), "--target", "host", "--no-progress")
    assert isinstance(result, dict)
    return ws, result


# ---- store backends: SQLite always, PostgreSQL when NAS_TEST_POSTGRES_URL is set (scripts/test.sh starts one)
PG_ENV = "NAS_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def pg_admin():
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(
            f"{PG_ENV} is not set; start a server with "
            f"`export {PG_ENV}=$(bash scripts/start_postgres.sh | tail -1)`"
        )
    engine = create_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'nas.db'}"
        return
    admin = request.getfixturevalue("pg_admin")
    schema = f"nas_t_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = make_url(os.environ[PG_ENV]).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(scope="session")
def spu() -> None:
    """SPU for the MPC tests: CI creates its venv (scripts/setup.sh), so there a missing SPU fails the tests;
    elsewhere they are skipped with the way to install it."""
    from nas.mpc import runner

    if os.environ.get("CI", "").lower() != "true" and not runner.spu_available():
        pytest.skip("SPU is not installed: bash scripts/setup_mpc.sh")
