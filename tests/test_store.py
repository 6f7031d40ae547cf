"""Contract suite of the SQL store, run against every backend.

Backends (the ``store_url`` fixture):

* ``sqlite``: a fresh file in ``tmp_path``; always runs.
* ``postgres``: runs when ``NAS_TEST_POSTGRES_URL`` is set, e.g.
  ``NAS_TEST_POSTGRES_URL=$(bash scripts/start_postgres.sh | tail -1) python -m pytest tests/test_store.py``.
  Isolation: every test gets a fresh schema (``CREATE SCHEMA nas_t_<random>``), reached by adding
  ``options=-csearch_path=<schema>`` to the URL, and dropped (CASCADE) afterwards. The store needs no
  test-only API, and concurrent test runs against one database do not see each other.
"""

from __future__ import annotations

import dataclasses
import json
import math
import socket
import threading
import time
from datetime import datetime

import pytest

from nas.errors import NASError, StoreError
from nas.store import CandidateRecord, JobRecord, Metric, Store, default_store_url


@pytest.fixture
def store(store_url):
    s = Store(store_url)
    yield s
    s.close()


SPEC = {"version": 1, "space": {"stages": [{"type": "conv", "depth": [1, 3]}]}}


def _job(store: Store, targets=("host", "pixel6"), name="quick") -> int:
    return store.create_job(name, SPEC, "spec-hash-1", list(targets), "/runs/quick")


def _cand(
    store: Store, job_id: int, i: int, acc: float, host_ms: float, pixel_ms: float | None = None
) -> int:
    metrics = [Metric("accuracy", acc), Metric("params", 1000.0 + i), Metric("latency_ms", host_ms, "host")]
    if pixel_ms is not None:
        metrics.append(Metric("latency_ms", pixel_ms, "pixel6"))
    return store.add_candidate(job_id, {"depth": [i, 1]}, f"arch-{i}", metrics)


def _one_line(msg: str) -> None:
    assert "\n" not in msg and msg.strip() == msg and msg


# ---------------------------------------------------------------------------------------------- jobs


def test_job_lifecycle(store):
    job_id = _job(store)
    rec = store.job(job_id)
    assert isinstance(rec, JobRecord)
    assert (rec.job_id, rec.name, rec.spec, rec.spec_hash) == (job_id, "quick", SPEC, "spec-hash-1")
    assert rec.targets == ("host", "pixel6") and rec.status == "running" and rec.finished_at is None
    assert rec.run_dir == "/runs/quick"
    assert isinstance(rec.created_at, datetime) and rec.created_at.tzinfo is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.status = "done"

    store.set_run_dir(job_id, "/runs/17")
    store.finish_job(job_id, "done")
    done = store.job(job_id)
    assert done.run_dir == "/runs/17" and done.status == "done"
    assert done.finished_at is not None and done.finished_at >= done.created_at
    assert rec.status == "running"  # a record already returned does not change

    second = _job(store, name="second")
    store.finish_job(second, "failed")
    assert [j.job_id for j in store.jobs()] == [second, job_id]  # newest first
    assert store.job(second).status == "failed"

    with pytest.raises(StoreError, match="status of job .* must be one of done, interrupted, failed"):
        store.finish_job(job_id, "running")


def test_job_validation(store):
    with pytest.raises(StoreError, match="targets of job 'x' must be a non-empty list"):
        store.create_job("x", SPEC, "h", [], "/r")
    with pytest.raises(StoreError, match="must be a non-empty list"):
        store.create_job("x", SPEC, "h", "host", "/r")  # a bare string is not a list of targets
    with pytest.raises(StoreError, match="must not repeat a target"):
        store.create_job("x", SPEC, "h", ["host", "host"], "/r")
    with pytest.raises(StoreError, match="spec of job 'x' must be JSON-serialisable"):
        store.create_job("x", {"lr": float("nan")}, "h", ["host"], "/r")
    assert store.jobs() == []


def test_reopen_keeps_data(store_url):
    with Store(store_url) as first:
        job_id = _job(first)
        cid = _cand(first, job_id, 1, 0.8, 5.0)
    with Store(store_url) as again:  # create_all on existing tables is a no-op
        assert again.job(job_id).name == "quick"
        assert again.candidate(cid).metric("accuracy") == 0.8


def test_default_store_url(monkeypatch):
    monkeypatch.delenv("NAS_STORE", raising=False)
    assert default_store_url() == "sqlite:///nas.db"
    monkeypatch.setenv("NAS_STORE", "")
    assert default_store_url() == "sqlite:///nas.db"
    monkeypatch.setenv("NAS_STORE", "postgresql+psycopg://u@h/db")
    assert default_store_url() == "postgresql+psycopg://u@h/db"


# -------------------------------------------------------------------------------- candidates, metrics


def test_candidate_round_trip(store):
    job_id = _job(store)
    arch = {"resolution": 224, "stages": [{"depth": 2, "channels": 24}], "attn": ("softmax", "relu")}
    metrics = [
        Metric("accuracy", 0.71),
        Metric("test_accuracy", 0.7),
        Metric("params", 1_234_567),
        Metric("flops", 3.5e8),
        Metric("latency_ms", 12.5, "host"),
        Metric("latency_ms", 40.25, "pixel6", flag="out_of_range"),
    ]
    cid = store.add_candidate(job_id, arch, "h-1", metrics)
    rec = store.candidate(cid)
    assert isinstance(rec, CandidateRecord)
    assert rec == store.candidates(job_id)[0]
    assert (rec.candidate_id, rec.job_id, rec.arch_hash) == (cid, job_id, "h-1")
    assert rec.arch == {**arch, "attn": ["softmax", "relu"]}  # stored as JSON
    assert rec.created_at.tzinfo is not None
    assert len(rec.metrics) == 6 and all(isinstance(m, Metric) for m in rec.metrics)
    assert rec.metric("accuracy") == pytest.approx(0.71)
    assert rec.metric("latency_ms", "pixel6") == pytest.approx(40.25)
    assert rec.metric("latency_ms") is None and rec.metric("bops") is None
    assert rec.pareto_targets == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.arch_hash = "other"
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.metrics[0].value = 1.0

    out = rec.to_json()
    json.dumps(out)  # JSON-ready
    assert {
        "candidate_id",
        "job_id",
        "arch",
        "arch_hash",
        "accuracy",
        "test_accuracy",
        "params",
        "flops",
        "latency_ms",
        "flags",
        "pareto",
    } <= set(out)
    assert out["candidate_id"] == cid and out["job_id"] == job_id and out["arch_hash"] == "h-1"
    assert out["accuracy"] == pytest.approx(0.71) and out["test_accuracy"] == pytest.approx(0.7)
    assert out["params"] == 1_234_567 and out["flops"] == pytest.approx(3.5e8)
    assert out["latency_ms"] == {"host": 12.5, "pixel6": 40.25}
    assert out["flags"] == {"pixel6": "out_of_range"}  # only non-empty flags
    assert out["pareto"] == []

    bare = store.candidate(store.add_candidate(job_id, {"d": 1}, "h-2", []))
    assert (
        bare.metrics == () and bare.to_json()["test_accuracy"] is None and bare.to_json()["latency_ms"] == {}
    )


def test_duplicate_arch_returns_same_id_and_upserts(store):
    job_id = _job(store)
    first = store.add_candidate(job_id, {"d": 1}, "same", [Metric("accuracy", 0.5), Metric("params", 10)])
    again = store.add_candidate(job_id, {"d": 1}, "same", [Metric("accuracy", 0.6), Metric("flops", 99)])
    assert again == first
    rec = store.candidate(first)
    assert len(store.candidates(job_id)) == 1
    assert (rec.metric("accuracy"), rec.metric("params"), rec.metric("flops")) == (0.6, 10, 99)

    store.add_metrics(first, [Metric("latency_ms", 3.0, "host", "out_of_range"), Metric("params", 11)])
    store.add_metrics(first, [Metric("latency_ms", 2.5, "host")])  # overwrite value and clear the flag
    rec = store.candidate(first)
    assert rec.metric("latency_ms", "host") == 2.5 and rec.metric("params") == 11
    assert [m for m in rec.metrics if m.name == "latency_ms"] == [Metric("latency_ms", 2.5, "host", "")]
    assert len(rec.metrics) == 4

    other_job = _job(store)
    assert store.add_candidate(other_job, {"d": 1}, "same", []) != first  # unique per job, not globally


def test_failed_add_candidate_leaves_nothing(store, monkeypatch):
    job_id = _job(store)
    for bad in (float("nan"), math.inf, "0.5", True):
        with pytest.raises(StoreError, match="metric 'accuracy' of candidate 'h' of job") as err:
            store.add_candidate(job_id, {"d": 1}, "h", [Metric("params", 5), Metric("accuracy", bad)])
        _one_line(str(err.value))
    with pytest.raises(StoreError, match="given twice"):
        store.add_candidate(job_id, {"d": 1}, "h", [Metric("latency_ms", 1, "host")] * 2)
    with pytest.raises(StoreError, match="arch of candidate 'h' of job .* JSON-serialisable"):
        store.add_candidate(job_id, {"d": object()}, "h", [])
    assert store.candidates(job_id) == []

    # A failure after the candidate row was written rolls the whole transaction back.
    def broken(self, s, candidate_id, rows):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Store, "_upsert_metrics", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        store.add_candidate(job_id, {"d": 1}, "h", [Metric("params", 5)])
    monkeypatch.undo()
    assert store.candidates(job_id) == []

    cid = store.add_candidate(job_id, {"d": 1}, "h", [Metric("params", 5)])
    with pytest.raises(StoreError, match=f"value of metric 'flops' of candidate {cid} must be finite"):
        store.add_metrics(cid, [Metric("accuracy", 0.9), Metric("flops", -math.inf)])
    assert store.candidate(cid).metrics == (Metric("params", 5.0),)


# ---------------------------------------------------------------------------------------------- pareto


def test_pareto_replace_filters_and_order(store):
    job_id = _job(store)
    c1 = _cand(store, job_id, 1, acc=0.80, host_ms=9.0, pixel_ms=30.0)
    c2 = _cand(store, job_id, 2, acc=0.70, host_ms=3.0, pixel_ms=12.0)
    c3 = _cand(store, job_id, 3, acc=0.75, host_ms=5.0, pixel_ms=20.0)
    c4 = _cand(store, job_id, 4, acc=0.60, host_ms=1.0)

    store.set_pareto(job_id, "host", [c1, c3, c2, c2])  # order and repeats of the input do not matter
    store.set_pareto(job_id, "pixel6", [c1, c2])
    assert [r.candidate_id for r in store.pareto(job_id, "host")] == [c2, c3, c1]  # latency ascending
    assert [r.candidate_id for r in store.pareto(job_id, "pixel6")] == [c2, c1]
    assert [r.candidate_id for r in store.pareto(job_id, "host", max_latency_ms=5.0)] == [c2, c3]
    assert [r.candidate_id for r in store.pareto(job_id, "host", min_accuracy=0.75)] == [c3, c1]
    assert [r.candidate_id for r in store.pareto(job_id, "host", max_latency_ms=8, min_accuracy=0.72)] == [c3]
    assert store.pareto(job_id, "host", max_latency_ms=0.5) == []
    assert store.candidate(c1).pareto_targets == ("host", "pixel6")
    assert store.candidate(c3).pareto_targets == ("host",)
    assert store.candidate(c1).to_json()["pareto"] == ["host", "pixel6"]

    store.set_pareto(job_id, "host", [c4])  # replaces the host front only
    assert [r.candidate_id for r in store.pareto(job_id, "host")] == [c4]
    assert [r.candidate_id for r in store.pareto(job_id, "pixel6")] == [c2, c1]
    assert store.candidate(c3).pareto_targets == ()
    # c4 has no pixel6 latency: it sorts last, and a latency bound excludes it
    store.set_pareto(job_id, "pixel6", [c4, c1])
    assert [r.candidate_id for r in store.pareto(job_id, "pixel6")] == [c1, c4]
    assert [r.candidate_id for r in store.pareto(job_id, "pixel6", max_latency_ms=100)] == [c1]

    other = _job(store)
    foreign = _cand(store, other, 9, acc=0.9, host_ms=0.1)
    with pytest.raises(StoreError, match=f"candidate {foreign} belongs to job {other}, not job {job_id}"):
        store.set_pareto(job_id, "host", [c1, foreign])
    with pytest.raises(StoreError, match="candidate 987654 does not exist"):
        store.set_pareto(job_id, "host", [c1, 987654])
    assert [r.candidate_id for r in store.pareto(job_id, "host")] == [
        c4
    ]  # failed replacements changed nothing
    store.set_pareto(job_id, "host", [])
    assert store.pareto(job_id, "host") == [] and store.pareto(other, "host") == []


def test_pareto_unknown_target(store):
    job_id = _job(store, targets=("host", "pixel6"))
    with pytest.raises(StoreError) as err:
        store.pareto(job_id, "jetson")
    msg = str(err.value)
    _one_line(msg)
    assert f"job {job_id}" in msg and "'jetson'" in msg and "host, pixel6" in msg
    with pytest.raises(StoreError, match="did not search target 'jetson'; its targets are: host, pixel6"):
        store.set_pareto(job_id, "jetson", [])


# ---------------------------------------------------------------------------------------------- errors


def test_missing_job_and_candidate(store):
    calls = {
        "job": lambda: store.job(4711),
        "candidates": lambda: store.candidates(4711),
        "finish_job": lambda: store.finish_job(4711, "done"),
        "set_run_dir": lambda: store.set_run_dir(4711, "/r"),
        "add_candidate": lambda: store.add_candidate(4711, {}, "h", []),
        "set_pareto": lambda: store.set_pareto(4711, "host", []),
        "pareto": lambda: store.pareto(4711, "host"),
    }
    for what, call in calls.items():
        with pytest.raises(StoreError) as err:
            call()
        msg = str(err.value)
        _one_line(msg)
        assert msg.startswith("job 4711 does not exist in "), (what, msg)
        assert store.url in msg
    for call in (lambda: store.candidate(4712), lambda: store.add_metrics(4712, [Metric("params", 1)])):
        with pytest.raises(StoreError, match=r"^candidate 4712 does not exist in "):
            call()
    assert isinstance(StoreError("x"), NASError)


def test_unreachable_url_is_one_line_without_password():
    with socket.socket() as sock:  # a loopback port that is certainly closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(StoreError) as err:
        Store(f"postgresql+psycopg://nas:s3cret-pw@127.0.0.1:{port}/nas")
    elapsed = time.perf_counter() - start
    msg = str(err.value)
    _one_line(msg)
    assert msg.startswith(f"cannot reach store postgresql+psycopg://nas@127.0.0.1:{port}/nas: ")
    assert "s3cret" not in msg and elapsed < 5.0


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("not a url", "not a database URL"),
        ("", "must be a non-empty string"),
        ("mysql://root:hunter2@db/nas", "unsupported backend 'mysql'"),
        ("sqlite:////nonexistent-nas-dir/sub/nas.db", "directory /nonexistent-nas-dir/sub does not exist"),
    ],
)
def test_bad_url(url, match):
    with pytest.raises(StoreError, match=match) as err:
        Store(url)
    _one_line(str(err.value))
    assert "hunter2" not in str(err.value)


# ------------------------------------------------------------------------------------------- artifacts


def test_artifacts_upsert(store):
    assert store.find_artifact("supernet", "abc") is None
    store.put_artifact("supernet", "abc", "/ckpt/1.pt")
    assert store.find_artifact("supernet", "abc") == "/ckpt/1.pt"
    store.put_artifact("supernet", "abc", "/ckpt/2.pt")
    assert store.find_artifact("supernet", "abc") == "/ckpt/2.pt"
    store.put_artifact("latency_table", "abc", "/tables/pixel6.json")  # same key, other kind
    assert store.find_artifact("supernet", "abc") == "/ckpt/2.pt"
    assert store.find_artifact("latency_table", "abc") == "/tables/pixel6.json"
    with pytest.raises(StoreError, match="artifact kind must be a non-empty string"):
        store.put_artifact("", "abc", "/p")


# ----------------------------------------------------------------------------------------- concurrency


def test_concurrent_writers_agree_on_ids(store_url):
    """Several stores (separate connections) add overlapping archs at once: no errors, one id per arch."""
    with Store(store_url) as setup:
        job_id = _job(setup)
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            with Store(store_url) as s:
                ids = []
                for i in range(8):
                    ids.append(s.add_candidate(job_id, {"i": i}, f"shared-{i}", [Metric("params", w)]))
                    s.add_candidate(job_id, {"i": i, "w": w}, f"own-{w}-{i}", [Metric("params", i)])
                results[w] = ids
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not errors, errors
    assert len({tuple(ids) for ids in results.values()}) == 1 and len(results) == 4
    with Store(store_url) as check:
        cands = check.candidates(job_id)
    assert len(cands) == 8 + 4 * 8
    assert len({c.arch_hash for c in cands}) == len(cands)


# ------------------------------------------------------------------------------------- bounded input


def test_ids_that_cannot_fit_a_bigint_are_one_line(store):
    calls = {
        "job": lambda i: store.job(i),
        "candidates": lambda i: store.candidates(i),
        "candidate": lambda i: store.candidate(i),
        "pareto": lambda i: store.pareto(i, "host"),
        "add_metrics": lambda i: store.add_metrics(i, [Metric("params", 1)]),
    }
    for call in calls.values():
        for bad in (2**31, 2**63, 10**20, 0, -1):
            with pytest.raises(StoreError, match=r"_id must be an id from 1 to 2147483647 \(2\^31-1\), "
                                                 rf"but got {bad}$") as err:
                call(bad)
            _one_line(str(err.value))
        with pytest.raises(StoreError, match=r"but got a number of about 100001 digits$"):
            call(10**100_000)
        with pytest.raises(StoreError, match=r"does not exist in "):  # the largest id fits: it just is not there
            call(2**31 - 1)
    with pytest.raises(StoreError, match=r"must be an integer id, but got '1111111111.*\.\.\.$") as err:
        store.job("1" * 10_000)
    assert len(str(err.value)) < 300


@pytest.mark.parametrize(
    "url",
    [
        "bob:hunter2@host",  # no scheme
        "bob:hunter2@host:5432/nas",
        " bob:hunter2@db.example.org/nas\n",
        "postgresql:/bob:hunter2@host/nas",  # one slash
        "postgresql//bob:hunter2@host/nas",  # no colon
        "://bob:hunter2@host/nas",  # empty scheme
        "postgresql+psycopg://bob:hunter2@[::1/nas",  # a broken IPv6 host (ValueError in make_url)
        "postgresql+psycopg://bob:hunter2@host:port/nas",  # a port that is not a number
        "postgresql+psycopg://bob:hun@ter2@127.0.0.1:1/nas",  # an '@' in the password, not URL-encoded
        "postgresql+psycopg://bob:hun/ter2@host:port/nas",  # a '/' in the password
        "bob:hunter2@" + "h" * 5000,
        "not a url?password=hunter2&x=1",
    ],
)
def test_malformed_urls_never_show_the_password(url):
    with pytest.raises(StoreError, match=r"^cannot reach store ") as err:
        Store(url)
    msg = str(err.value)
    _one_line(msg)
    assert "hunter2" not in msg and "ter2" not in msg and len(msg) < 400, msg
    assert "Traceback" not in msg


def test_redacted_malformed_url_keeps_what_is_not_secret():
    with pytest.raises(StoreError) as err:
        Store("bob:hunter2@host:5432/nas")
    assert str(err.value).startswith("cannot reach store bob:***@host:5432/nas: not a database URL")
    with pytest.raises(StoreError) as err:
        Store("postgresql+psycopg://bob:hun@ter2@127.0.0.1:1/nas")
    assert str(err.value) == ("cannot reach store postgresql+psycopg://bob:***@127.0.0.1:1/nas: the user name or "
                              "password holds an '@' that is not URL-encoded (write it as %40)")


@pytest.mark.parametrize(("command", "value"), [("show", "100000000000000000000"), ("pareto", "0"),
                                                 ("export", "-5"), ("show", "abc")])
def test_cli_ids_that_cannot_exist_are_one_line(workspace, command, value):
    options = ["--target", "host"] if command == "pareto" else []
    proc = workspace.run(command, *options, "--", value, check=False)
    name = "job_id" if command == "pareto" else "candidate_id"
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [f"error: {name}: must be an integer id from 1 to 2147483647 "
                                        f"(2^31-1), but got '{value}'"]
    assert not (workspace.path / "nas.db").exists()  # refused before the store is opened
