"""Job ownership in the store: heartbeats, telling a dead owner from a live one, atomic claims for resume, and
the additive migration of stores made before these columns existed."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from nas.errors import StoreError
from nas.lifecycle import STALE_S, Heartbeat, effective_status, owner_gone, pid_alive, settle, this_host
from nas.store import Store


@pytest.fixture
def store(store_url: str) -> Store:
    with Store(store_url) as s:
        yield s


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def new_job(store: Store, pid: int | None, host: str | None = None) -> int:
    return store.create_job("j", {"search": {"candidates": 3}}, "h", ["host"], "", pid=pid, host=host or this_host())


def test_a_dead_owner_on_this_host_means_interrupted(store: Store) -> None:
    import os

    alive = store.job(new_job(store, os.getpid()))
    dead = store.job(new_job(store, dead_pid()))
    assert pid_alive(os.getpid()) and not owner_gone(alive) and effective_status(alive) == "running"
    assert owner_gone(dead) and effective_status(dead) == "interrupted"
    settled = {j.job_id: j.status for j in settle(store, store.jobs())}
    assert settled == {alive.job_id: "running", dead.job_id: "interrupted"}
    assert store.job(dead.job_id).status == "interrupted"  # stored, not only shown


def test_a_stale_heartbeat_elsewhere_means_interrupted(store: Store) -> None:
    job = store.job(new_job(store, 12345, host="another-host"))
    assert not owner_gone(job)  # another host's live pid cannot be checked: trust the fresh heartbeat
    later = job.heartbeat_at + timedelta(seconds=STALE_S + 1)
    assert owner_gone(job, now=later)
    assert not owner_gone(replace(job, status="done"), now=later)


def test_heartbeat_thread_beats_and_stops_for_a_new_owner(store: Store) -> None:
    import os

    job_id = new_job(store, os.getpid())
    first = store.job(job_id).heartbeat_at
    with Heartbeat(store, job_id, os.getpid(), interval=0.05):
        time.sleep(0.3)
    assert store.job(job_id).heartbeat_at > first
    assert not store.beat(job_id, os.getpid() + 1)  # not the owner: nothing recorded


def test_claim_is_atomic_and_refuses_live_or_done_jobs(store: Store) -> None:
    import os

    job_id = new_job(store, dead_pid())
    claimed = store.claim_job(job_id, os.getpid(), this_host(), owner_gone)
    assert claimed.status == "running" and claimed.pid == os.getpid()
    with pytest.raises(StoreError, match="cannot be resumed while its process is alive"):
        store.claim_job(job_id, os.getpid() + 1, this_host(), owner_gone)
    store.finish_job(job_id, "done")
    with pytest.raises(StoreError, match="already done"):
        store.claim_job(job_id, os.getpid(), this_host(), owner_gone)
    for status in ("interrupted", "failed"):
        store.finish_job(job_id, status)
        assert store.claim_job(job_id, os.getpid(), this_host(), owner_gone).status == "running"


def test_mark_interrupted_leaves_a_job_that_came_back_alone(store: Store) -> None:
    job = store.job(new_job(store, dead_pid()))
    store.beat(job.job_id, job.pid)  # a newer heartbeat than the one judged stale
    assert not store.mark_interrupted(job.job_id, job.pid, job.heartbeat_at)
    assert store.job(job.job_id).status == "running"


def test_statuses_are_checked() -> None:
    with Store("sqlite://") as s:
        job_id = new_job(s, None)
        with pytest.raises(StoreError, match="must be one of"):
            s.finish_job(job_id, "paused")


def test_an_old_store_gains_the_owner_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the jobs table as the first release created it
        db.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, name VARCHAR, spec JSON, spec_hash VARCHAR, "
                   "targets JSON, status VARCHAR(16), created_at DATETIME, finished_at DATETIME, run_dir VARCHAR)")
        db.execute("INSERT INTO jobs VALUES (1, 'old', '{}', 'h', '[\"host\"]', 'done', ?, NULL, '')",
                   (datetime.now(timezone.utc).isoformat(" "),))
    with Store(f"sqlite:///{path}") as s:
        old = s.job(1)
        assert (old.name, old.status, old.pid, old.heartbeat_at) == ("old", "done", None, None)
        assert s.job(new_job(s, 7)).pid == 7
    with Store(f"sqlite:///{path}") as s:  # idempotent
        assert len(s.jobs()) == 2
