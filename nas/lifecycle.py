"""Job liveness: who owns a running job, its heartbeat, and telling a live job from one whose process is gone.

A search job is owned by one process (pid, host), which records a heartbeat in the store every
`HEARTBEAT_S` seconds. A `running` job whose owner is gone (on this host: its pid no longer exists; anywhere: no
heartbeat for `STALE_S` seconds) was killed without a chance to say so (kill -9, a power cut): it is shown,
and stored on the next look, as `interrupted`, and `nas resume` may take it over.
"""

from __future__ import annotations

import os
import socket
import threading
from datetime import datetime, timezone

from nas.store import JobRecord, Store

HEARTBEAT_S = 5.0
STALE_S = 60.0


def this_host() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """True when a process `pid` exists on this host (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc: trust kill(0)


def owner_gone(job: JobRecord, now: datetime | None = None) -> bool:
    """True when a `running` job's owning process is gone (see the module docstring)."""
    if job.status != "running":
        return False
    if job.pid is not None and job.host == this_host() and not pid_alive(job.pid):
        return True
    if job.heartbeat_at is None:
        return job.pid is not None  # an owner that never beat (or a pre-heartbeat store's row): judged by pid only
    now = now or datetime.now(timezone.utc)
    return (now - job.heartbeat_at).total_seconds() > STALE_S


def effective_status(job: JobRecord) -> str:
    """The status to show: a `running` job whose owner is gone is `interrupted`."""
    return "interrupted" if owner_gone(job) else job.status


def settle(store: Store, jobs: list[JobRecord]) -> list[JobRecord]:
    """Store `interrupted` for every `running` job whose owner is gone; returns the jobs as they now stand."""
    out = []
    for job in jobs:
        if owner_gone(job) and store.mark_interrupted(job.job_id, job.pid, job.heartbeat_at):
            job = store.job(job.job_id)
        out.append(job)
    return out


class Heartbeat:
    """A daemon thread recording a heartbeat for `job_id` every `interval` seconds while the block runs."""

    def __init__(self, store: Store, job_id: int, pid: int, interval: float = HEARTBEAT_S):
        self.store, self.job_id, self.pid, self.interval = store, job_id, pid, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"nas-heartbeat-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self.store.beat(self.job_id, self.pid):
                    return  # another process owns the job now
            except Exception:  # a store hiccup must not kill the search; the next beat retries
                continue

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
