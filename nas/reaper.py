"""A watchdog that stops the processes of an embedded Ray session once the driver that started it is gone.

`ray.init()` starts a local cluster (GCS, raylet, dashboard, their agents). When the driver exits normally it
shuts them down; when it is killed (kill -9), Ray's DashboardAgent and RuntimeEnvAgent outlive it. The driver
starts this watchdog (`python -m nas.reaper DRIVER_PID SESSION_DIR`) in its own session; it keeps a list of the
processes of that Ray session (a process whose command line or open files name the session directory, and
their descendants), and when the driver is gone it sends them SIGTERM, then SIGKILL to any left after a grace
period. It only ever signals those processes (checked by pid and start time, so a recycled pid is spared).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

POLL_S = 1.0
GRACE_S = 5.0

Proc = tuple[int, int]  # (pid, start time in clock ticks since boot)


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])  # field 22 of stat; fields here start at field 3


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _names_session(pid: int, session_dir: str) -> bool:
    try:
        if session_dir in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            return True
        for fd in os.scandir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(fd.path).startswith(session_dir):
                    return True
            except OSError:
                continue
    except OSError:
        return False
    return False


def session_processes(session_dir: str, exclude: set[int]) -> set[Proc]:
    """The live processes of a Ray session: those naming its directory, and all their descendants."""
    pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    parents = {pid: _parent(pid) for pid in pids}
    found = {pid for pid in pids if pid not in exclude and _names_session(pid, session_dir)}
    grew = True
    while grew:
        children = {pid for pid, ppid in parents.items() if ppid in found and pid not in found and pid not in exclude}
        grew = bool(children)
        found |= children
    out = set()
    for pid in found:
        start = _start_time(pid)
        if start is not None:
            out.add((pid, start))
    return out


def _alive(proc: Proc) -> bool:
    return _start_time(proc[0]) == proc[1]


def _signal(procs: set[Proc], sig: int) -> None:
    for proc in procs:
        if _alive(proc):
            try:
                os.kill(proc[0], sig)
            except (ProcessLookupError, PermissionError):
                pass


def stop(procs: set[Proc], grace: float = GRACE_S) -> set[Proc]:
    """SIGTERM `procs`, then SIGKILL those still alive after `grace` seconds; returns those that were killed."""
    _signal(procs, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in procs):
        time.sleep(0.2)
    left = {p for p in procs if _alive(p)}
    _signal(left, signal.SIGKILL)
    return left


def watch(driver: Proc, session_dir: str, stop_requested: threading.Event) -> None:
    """Track the session's processes while `driver` lives; stop them once it is gone, or when asked to (the
    driver asks after its own `ray.shutdown()`, so that nothing of the session outlives it). The driver itself
    is never signalled."""
    spare = {os.getpid(), driver[0]}
    known: set[Proc] = set()
    while _alive(driver) and not stop_requested.is_set():
        known = {p for p in known if _alive(p)} | session_processes(session_dir, spare)
        stop_requested.wait(POLL_S)
    stop({p for p in known if _alive(p) and p[0] not in spare} | session_processes(session_dir, spare))


def spawn(session_dir: str) -> subprocess.Popen[bytes] | None:
    """Start the watchdog for this process's Ray session (no-op where there is no /proc)."""
    if not Path("/proc/self/stat").exists():
        return None
    return subprocess.Popen([sys.executable, "-m", "nas.reaper", str(os.getpid()), session_dir],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[0].isdigit() or not argv[1].startswith("/"):
        print("usage: python -m nas.reaper DRIVER_PID SESSION_DIR", file=sys.stderr)
        return 2
    pid = int(argv[0])
    start = _start_time(pid)
    if start is None:
        return 0
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the driver's terminal is not for us
    stop_requested = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.set())
    watch((pid, start), argv[1].rstrip("/"), stop_requested)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
