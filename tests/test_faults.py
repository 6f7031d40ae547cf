"""Real faults on the real CLI: Ctrl-C and kill -9 of `nas search`, then `nas resume`.

A job interrupted either way keeps what it evaluated, is listed as `interrupted`, leaves no Ray process behind,
and `nas resume` completes it to exactly the candidates an uninterrupted run finds (same spec and seed), with
nothing evaluated or stored twice. While a search runs, its Ray dashboard refuses unauthenticated job
submissions, and a second `nas resume` of a job being resumed is refused.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_SPEC, Workspace, make_workspace

BUDGET = 40


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = make_workspace(tmp_path_factory.mktemp("faults"))
    raw = yaml.safe_load(TINY_SPEC.read_text())
    raw["search"].update(candidates=BUDGET, population=8)
    (ws.path / "long.yaml").write_text(yaml.safe_dump(raw))
    ws.run("train", "long.yaml", "--no-progress")
    ws.reference = {}  # type: ignore[attr-defined]
    return ws


class Search:
    """`nas search` (or resume) in a subprocess, its stderr collected as it comes."""

    def __init__(self, ws: Workspace, *args: str):
        self.ws = ws
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args, "--no-progress"], cwd=ws.path,
                                     env=ws.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stderr.readline, "")), daemon=True).start()

    def job(self) -> tuple[int, int] | None:
        """(job id, stored candidates) of the job this process owns, once it exists."""
        with sqlite3.connect(self.ws.path / "nas.db") as db:
            row = db.execute("SELECT j.id, COUNT(c.id) FROM jobs j LEFT JOIN candidates c ON c.job_id = j.id "
                             "WHERE j.pid = ? AND j.status = 'running' GROUP BY j.id", (self.proc.pid,)).fetchone()
        return tuple(row) if row else None

    def wait_for_candidates(self, n: int, timeout: float = 240) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited early ({self.proc.returncode}): {''.join(self.lines)[-2000:]}")
            if (found := self.job()) and found[1] >= n:
                return found[0]
            time.sleep(0.2)
        raise AssertionError(f"no {n} candidates within {timeout} s: {''.join(self.lines)[-2000:]}")

    def line(self, prefix: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if line.startswith(prefix):
                    return line
            time.sleep(0.1)
        raise AssertionError(f"no line starting {prefix!r}: {''.join(self.lines)[-2000:]}")


def job_json(ws: Workspace, job_id: int) -> dict:
    jobs = ws.run_json("jobs")
    assert isinstance(jobs, list)
    return next(j for j in jobs if j["job_id"] == job_id)


def archs(ws: Workspace, job_id: int) -> list[str]:
    with sqlite3.connect(ws.path / "nas.db") as db:
        return [h for (h,) in db.execute("SELECT arch_hash FROM candidates WHERE job_id = ?", (job_id,))]


def descendants(pid: int) -> set[tuple[int, str]]:
    """Every process below `pid`, as (pid, start time) so that a recycled pid is not mistaken for it."""
    parents, starts = {}, {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(name)], starts[int(name)] = int(fields[1]), fields[19]
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        found.update((c, starts[c]) for c in children)
        todo.extend(children)
    return found


def alive(proc: tuple[int, str]) -> bool:
    try:
        return Path(f"/proc/{proc[0]}/stat").read_text().rsplit(")", 1)[1].split()[19] == proc[1]
    except OSError:
        return False


def resume_to_done(ws: Workspace, job_id: int) -> list[str]:
    done = ws.run("resume", str(job_id), "--no-progress", "--json", timeout=600)
    assert json.loads(done.stdout.strip().splitlines()[-1])["job_id"] == job_id
    record = job_json(ws, job_id)
    assert record["status"] == "done" and record["candidates"] == BUDGET
    stored = archs(ws, job_id)
    assert len(stored) == len(set(stored)) == BUDGET
    assert (Path(record["run_dir"]) / "exports").is_dir()
    return stored


def test_ctrl_c_keeps_candidates_and_resume_completes(ws: Workspace) -> None:
    search = Search(ws, "search", "long.yaml", "--target", "pixel6")
    dashboard = search.line("Ray dashboard:")
    assert "token: " in dashboard
    url = dashboard.split()[2]
    # An unauthenticated job submission (what any local user could POST) is refused while the search runs.
    request = urllib.request.Request(f"{url}/api/jobs/", data=json.dumps({"entrypoint": "true"}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code in (401, 403)
    job_id = search.wait_for_candidates(3)
    search.proc.send_signal(signal.SIGINT)
    assert search.proc.wait(timeout=120) == 130
    record = job_json(ws, job_id)
    assert record["status"] == "interrupted" and 3 <= record["candidates"] < BUDGET
    assert not (Path(record["run_dir"]) / "exports").exists()  # nothing pretends to be a final front
    assert any(f"nas resume {job_id}" in line for line in search.lines)
    kept = set(archs(ws, job_id))
    final = resume_to_done(ws, job_id)
    assert kept <= set(final)
    ws.reference["archs"] = set(final)  # type: ignore[attr-defined]


def test_kill_9_leaves_no_ray_process_and_resume_refuses_a_second_resumer(ws: Workspace) -> None:
    search = Search(ws, "search", "long.yaml", "--target", "pixel6")
    job_id = search.wait_for_candidates(3)
    ray_processes = descendants(search.proc.pid)
    assert ray_processes  # the embedded Ray cluster
    search.proc.kill()
    search.proc.wait()
    killed_at = time.monotonic()
    record = job_json(ws, job_id)
    assert record["status"] == "interrupted" and record["candidates"] >= 3
    while time.monotonic() - killed_at < 60 and any(alive(p) for p in ray_processes):
        time.sleep(1)
    assert not [p for p in ray_processes if alive(p)], "Ray processes outlived the killed driver by 60 s"

    first = Search(ws, "resume", str(job_id))
    deadline = time.monotonic() + 120
    while first.job() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.job() is not None, "".join(first.lines)
    second = ws.run("resume", str(job_id), "--no-progress", check=False)
    assert second.returncode == 2 and "cannot be resumed while its process is alive" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert first.proc.wait(timeout=600) == 0, "".join(first.lines)[-2000:]
    record = job_json(ws, job_id)
    assert record["status"] == "done" and record["candidates"] == BUDGET
    stored = archs(ws, job_id)
    assert len(set(stored)) == BUDGET
    if "archs" in ws.reference:  # type: ignore[attr-defined]
        assert set(stored) == ws.reference["archs"]  # type: ignore[attr-defined]


def test_resume_of_a_done_or_missing_job_is_one_line(ws: Workspace) -> None:
    missing = ws.run("resume", "999999", check=False)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "does not exist" in missing.stderr
