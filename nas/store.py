"""The SQL store: search jobs, candidates, their metrics, Pareto membership and reusable artifacts.

Backends: SQLite (the default, one file) and PostgreSQL (``postgresql+psycopg://``; a bare ``postgresql://``
or ``postgres://`` URL is read as psycopg 3). Other backends are refused with a :class:`StoreError`.

Lifecycle of a search, as the driver calls it::

    store = Store(default_store_url())             # creates the tables if missing
    job_id = store.create_job(name, spec, spec_hash, targets, run_dir)
    cid = store.add_candidate(job_id, arch, arch_hash, [Metric("accuracy", 0.71), ...])
    store.add_metrics(cid, [Metric("latency_ms", 12.5, target="pixel6")])   # upsert
    store.set_pareto(job_id, "pixel6", front_ids)  # replaces that job+target's front
    store.finish_job(job_id, "done")
    store.close()

Rules:

* Every public method runs in its own session and transaction: a write commits entirely or not at all.
* Reads return frozen records (:class:`JobRecord`, :class:`CandidateRecord`, :class:`Metric`), never live
  ORM rows; changing the database later does not change a record already returned.
* Inputs are validated before anything is written (finite metric values, JSON-serialisable spec/arch, ...).
* Every failure is a one-line :class:`StoreError` naming the id or URL (never the password), field and rule.

SQLite: foreign keys on, WAL journal, a busy timeout, and write transactions start with ``BEGIN IMMEDIATE``
so that several processes writing the same file wait for each other instead of failing with "database is
locked" half-way through a transaction.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    inspect,
    select,
)
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool

from nas.errors import StoreError

__all__ = ["CandidateRecord", "JobRecord", "Metric", "Store", "default_store_url", "JOB_STATUSES"]

JOB_STATUSES = ("running", "done", "interrupted", "failed")
_FINAL_STATUSES = ("done", "interrupted", "failed")
#: Statuses `claim_job` may take over (a `running` job only when its owner is gone: see `claim_job`).
_RESUMABLE_STATUSES = ("interrupted", "failed", "running")
_SQLITE_BUSY_TIMEOUT_S = 30.0
_PG_CONNECT_TIMEOUT_S = 10


def default_store_url() -> str:
    """``$NAS_STORE`` if set and non-empty, else ``sqlite:///nas.db`` (relative to the working directory)."""
    return os.environ.get("NAS_STORE") or "sqlite:///nas.db"


# --------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Metric:
    """One measured or predicted number of a candidate; unique per (candidate, name, target)."""

    name: str  # "accuracy", "test_accuracy", "params", "flops", "latency_ms", ...
    value: float
    target: str = ""  # "" for target-independent metrics, else a target name like "host", "pixel6"
    flag: str = ""  # e.g. "out_of_range" when a latency prediction left the fitted range


@dataclass(frozen=True)
class JobRecord:
    job_id: int
    name: str
    spec: dict
    spec_hash: str
    targets: tuple[str, ...]
    status: str  # "running" | "done" | "interrupted" | "failed" (as stored; see nas.lifecycle for liveness)
    created_at: datetime  # timezone-aware, UTC
    finished_at: datetime | None
    run_dir: str
    pid: int | None = None  # the process that runs (or last ran) the job
    host: str | None = None  # the host name of that process
    heartbeat_at: datetime | None = None  # its last sign of life, UTC


@dataclass(frozen=True)
class CandidateRecord:
    candidate_id: int
    job_id: int
    arch: dict
    arch_hash: str
    created_at: datetime  # timezone-aware, UTC
    metrics: tuple[Metric, ...]  # sorted by (name, target)
    pareto_targets: tuple[str, ...]  # targets on whose front this candidate sits, sorted

    def metric(self, name: str, target: str = "") -> float | None:
        """The value of metric ``name`` on ``target`` ("" = target-independent), or None if absent."""
        for m in self.metrics:
            if m.name == name and m.target == target:
                return m.value
        return None

    def to_json(self) -> dict:
        """A JSON-ready dict; absent scalar metrics are None, ``flags`` holds only non-empty flags."""
        latency = {m.target: m.value for m in self.metrics if m.name == "latency_ms" and m.target}
        flags: dict[str, str] = {}
        # A target's flag comes from its latency metric; another per-target metric's flag is used only
        # when the latency metric carries none.
        for m in sorted(self.metrics, key=lambda m: m.name != "latency_ms"):
            if m.target and m.flag and m.target not in flags:
                flags[m.target] = m.flag
        return {
            "candidate_id": self.candidate_id,
            "job_id": self.job_id,
            "arch": self.arch,
            "arch_hash": self.arch_hash,
            "accuracy": self.metric("accuracy"),
            "test_accuracy": self.metric("test_accuracy"),
            # After `nas finetune` / `search.finetune` (None otherwise): the fine-tuned subnet's accuracies.
            "finetuned_accuracy": self.metric("finetuned_accuracy"),
            "finetuned_test_accuracy": self.metric("finetuned_test_accuracy"),
            "params": self.metric("params"),
            "flops": self.metric("flops"),
            "latency_ms": latency,
            "flags": flags,
            "pareto": list(self.pareto_targets),
            "metrics": [asdict(m) for m in self.metrics],
        }


# ---------------------------------------------------------------------------------------------- schema


class _Base(DeclarativeBase):
    pass


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class _Job(_Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String)
    spec: Mapped[dict] = mapped_column(JSON)
    spec_hash: Mapped[str] = mapped_column(String, index=True)
    targets: Mapped[list] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    run_dir: Mapped[str] = mapped_column(String)
    # Added after the first release; `_add_missing_columns` adds them to older stores.
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    host: Mapped[str | None] = mapped_column(String, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class _Candidate(_Base):
    __tablename__ = "candidates"
    __table_args__ = (UniqueConstraint("job_id", "arch_hash", name="uq_candidates_job_arch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    arch: Mapped[dict] = mapped_column(JSON)
    arch_hash: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _MetricRow(_Base):
    __tablename__ = "metrics"
    __table_args__ = (
        UniqueConstraint("candidate_id", "name", "target", name="uq_metrics_candidate_name_target"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String)
    target: Mapped[str] = mapped_column(String)
    value: Mapped[float] = mapped_column(Float)
    flag: Mapped[str] = mapped_column(String)


class _Pareto(_Base):
    __tablename__ = "pareto"
    __table_args__ = (
        UniqueConstraint("job_id", "target", "candidate_id", name="uq_pareto_job_target_candidate"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    target: Mapped[str] = mapped_column(String)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id", ondelete="CASCADE"), index=True)


class _Artifact(_Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("kind", "key", name="uq_artifacts_kind_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String)
    key: Mapped[str] = mapped_column(String)
    path: Mapped[str] = mapped_column(String)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# --------------------------------------------------------------------------------------------- helpers


_MAX_SHOWN = 200  # characters of a user's URL or value quoted in an error message
_MAX_ID = 2**31 - 1  # ids are SQL INTEGERs (4 bytes on PostgreSQL)


def _redact(url: str | URL) -> str:
    """The URL as one line of text without its password, also for strings that are not parseable URLs.

    A parsed URL drops its password (and a `password` query value). Any other text hides everything from the
    first `:` of its user info to the last `@` (`bob:secret@host` -> `bob:***@host`), whatever characters the
    password holds, and `password=` values: a malformed URL cannot say where its password ends, so more is
    hidden rather than less. At most about 200 characters are kept.
    """
    if isinstance(url, URL):
        if "@" in (url.host or ""):  # an unencoded '@' in the password: the parser split it in the wrong place
            return _redact(url.render_as_string(hide_password=False))
        query = {k: v for k, v in url.query.items() if k.lower() != "password"}
        # URL.set(password=None) would keep the password: None means "unchanged" there.
        text = url._replace(password=None).set(query=query).render_as_string(hide_password=False)
    else:
        text = " ".join(str(url).split())
        scheme, sep, rest = text.partition("://")
        if not sep:
            scheme, rest = "", text
        if "@" in rest:
            userinfo, _, host = rest.rpartition("@")
            user, colon, _ = userinfo.partition(":")
            rest = f"{user}{':***' if colon else ''}@{host}"
        text = re.sub(r"(?i)(password=)[^&]*", r"\1***", scheme + sep + rest)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _one_line(text: str) -> str:
    text = re.sub(r"\(Background on this error at: [^)]*\)", "", text)
    return " ".join(text.split())


def _reason(exc: BaseException, password: str | None = None) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = _one_line(str(orig)) or type(orig).__name__
    if password:
        text = text.replace(password, "***")
    return text


def _aware(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything is stored in UTC."""
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt


def _check_str(value: Any, what: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value):
        rule = "a string" if allow_empty else "a non-empty string"
        raise StoreError(f"{what} must be {rule}, but got {value!r}")
    return value


def _check_id(value: Any, what: str) -> int:
    """An id that fits the store's INTEGER ids: 1..2^31-1 (anything else cannot exist, and overflows SQL)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        shown = repr(value)
        shown = shown if len(shown) <= _MAX_SHOWN else shown[: _MAX_SHOWN - 3] + "..."
        raise StoreError(f"{what} must be an integer id, but got {shown}")
    number = int(value)
    if not 1 <= number <= _MAX_ID:
        digits = int(number.bit_length() * 0.30103) + 1
        shown = str(number) if digits < 80 else f"a number of about {digits} digits"
        raise StoreError(f"{what} must be an id from 1 to {_MAX_ID} (2^31-1), but got {shown}")
    return number


def _check_json(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise StoreError(f"{what} must be a dict, but got {type(value).__name__}")
    try:
        # Round-trip so that the record handed back equals what a later read returns (tuples -> lists).
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise StoreError(
            f"{what} must be JSON-serialisable with finite numbers: {_one_line(str(exc))}"
        ) from exc


def _check_number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise StoreError(f"{what} must be a number, but got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise StoreError(f"{what} must be finite, but got {number}")
    return number


def _check_metrics(metrics: Sequence[Metric], where: str) -> list[dict[str, Any]]:
    """Validated metric rows, before anything is written; a (name, target) given twice is refused."""
    if isinstance(metrics, (str, bytes, Metric)) or not isinstance(metrics, Sequence):
        raise StoreError(f"metrics of {where} must be a sequence of Metric, but got {type(metrics).__name__}")
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for i, m in enumerate(metrics):
        if not isinstance(m, Metric):
            raise StoreError(f"metrics[{i}] of {where} must be a Metric, but got {type(m).__name__}")
        name = _check_str(m.name, f"metrics[{i}].name of {where}")
        target = _check_str(m.target, f"metric {name!r}.target of {where}", allow_empty=True)
        label = f"metric {name!r}" + (f" on target {target!r}" if target else "")
        value = _check_number(m.value, f"value of {label} of {where}")
        flag = _check_str(m.flag, f"flag of {label} of {where}", allow_empty=True)
        if (name, target) in rows:
            raise StoreError(f"{label} of {where} is given twice; each (name, target) must appear once")
        rows[(name, target)] = {"name": name, "target": target, "value": value, "flag": flag}
    return list(rows.values())


# ----------------------------------------------------------------------------------------------- store


class Store:
    """A SQL store reached by a SQLAlchemy URL; see the module docstring for the lifecycle and rules."""

    def __init__(self, url: str) -> None:
        if isinstance(url, URL):
            url = url.render_as_string(hide_password=False)
        self._safe_url = _redact(url) if isinstance(url, str) else repr(url)
        if not isinstance(url, str) or not url.strip():
            raise StoreError(f"cannot reach store {self._safe_url}: the store URL must be a non-empty string")
        try:
            parsed = make_url(url.strip())
        except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number, a broken IPv6 host
            raise StoreError(
                f"cannot reach store {self._safe_url}: not a database URL "
                "(expected e.g. sqlite:///nas.db or postgresql+psycopg://user@host:5432/db)"
            ) from exc
        if "@" in (parsed.host or ""):
            raise StoreError(f"cannot reach store {_redact(parsed)}: the user name or password holds an '@' "
                             "that is not URL-encoded (write it as %40)")
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        self._safe_url = _redact(parsed)
        self._password = parsed.password if isinstance(parsed.password, str) else None
        backend = parsed.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise StoreError(
                f"cannot reach store {self._safe_url}: unsupported backend {backend!r} "
                f"(supported: sqlite, postgresql)"
            )
        self._backend = backend
        self._engine = self._make_engine(parsed)
        # Write transactions: BEGIN IMMEDIATE on SQLite (see _sqlite_events); the same engine on PostgreSQL.
        self._write_engine = self._engine.execution_options(nas_write=True)
        # Reads of several tables see one snapshot.
        self._read_engine = (
            self._engine.execution_options(isolation_level="REPEATABLE READ")
            if backend == "postgresql"
            else self._engine
        )
        try:
            self._create_tables()
        except SQLAlchemyError as exc:
            self._engine.dispose()
            raise StoreError(f"cannot reach store {self._safe_url}: {_reason(exc, self._password)}") from exc

    # -- engine ---------------------------------------------------------------------------------------

    def _make_engine(self, url: URL) -> Engine:
        try:
            if self._backend == "postgresql":
                return create_engine(
                    url, pool_pre_ping=True, connect_args={"connect_timeout": _PG_CONNECT_TIMEOUT_S}
                )
            database = url.database or ""
            memory = database in ("", ":memory:") or database.startswith("file::memory:")
            if memory:
                engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
            else:
                if url.query.get("uri") not in ("true", "1"):
                    parent = Path(database).absolute().parent
                    if not parent.is_dir():
                        raise StoreError(
                            f"cannot reach store {self._safe_url}: directory {parent} does not exist "
                            "(the parent directory of a SQLite file must exist)"
                        )
                engine = create_engine(url, connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_S})
            _sqlite_events(engine, wal=not memory)
            return engine
        except ImportError as exc:
            extra = (
                " (install the extra: pip install -e '.[postgres]')" if self._backend == "postgresql" else ""
            )
            raise StoreError(f"cannot reach store {self._safe_url}: {_one_line(str(exc))}{extra}") from exc
        except ArgumentError as exc:
            raise StoreError(f"cannot reach store {self._safe_url}: {_reason(exc, self._password)}") from exc

    def _create_tables(self) -> None:
        # Two processes opening a fresh PostgreSQL database at once can race on CREATE TABLE; the loser
        # retries once and then finds the tables there. (SQLite serialises it with BEGIN IMMEDIATE.)
        for attempt in range(2):
            try:
                _Base.metadata.create_all(self._write_engine)
                self._add_missing_columns()
                return
            except SQLAlchemyError as exc:
                if attempt == 1 or self._backend != "postgresql" or not _is_create_race(exc):
                    raise

    def _add_missing_columns(self) -> None:
        """Add the nullable job columns that stores created by an older nas lack (additive, idempotent)."""
        present = {c["name"] for c in inspect(self._engine).get_columns(_Job.__tablename__)}
        missing = [c for c in _Job.__table__.columns if c.name not in present]
        if not missing:
            return
        with self._write_engine.begin() as conn:
            for column in missing:
                kind = column.type.compile(dialect=self._engine.dialect)
                conn.exec_driver_sql(f"ALTER TABLE {_Job.__tablename__} ADD COLUMN {column.name} {kind}")

    @contextmanager
    def _tx(self, op: str, *, write: bool) -> Iterator[Session]:
        """One session and one transaction; database failures become a one-line StoreError."""
        engine = self._write_engine if write else self._read_engine
        try:
            with Session(engine, expire_on_commit=False) as session, session.begin():
                yield session
        except StoreError:
            raise
        except SQLAlchemyError as exc:
            raise StoreError(
                f"store {self._safe_url} failed to {op}: {_reason(exc, self._password)}"
            ) from exc

    def _insert(self, table: Any) -> Any:
        return (pg_dialect.insert if self._backend == "postgresql" else sqlite_dialect.insert)(table)

    # -- public ---------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The store URL without its password (safe to print)."""
        return self._safe_url

    def __repr__(self) -> str:
        return f"Store({self._safe_url!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close pooled connections; calling it twice is fine."""
        self._engine.dispose()

    # jobs

    def create_job(self, name: str, spec: dict, spec_hash: str, targets: Sequence[str], run_dir: str,
                   pid: int | None = None, host: str | None = None) -> int:
        """Insert a job with status "running", owned by process `pid` on `host` (heartbeat now); returns its id."""
        name = _check_str(name, "job name")
        spec = _check_json(spec, f"spec of job {name!r}")
        spec_hash = _check_str(spec_hash, f"spec_hash of job {name!r}")
        target_list = self._check_targets(targets, f"targets of job {name!r}")
        run_dir = _check_str(run_dir, f"run_dir of job {name!r}", allow_empty=True)
        with self._tx("create a job", write=True) as s:
            job = _Job(
                name=name,
                spec=spec,
                spec_hash=spec_hash,
                targets=target_list,
                status="running",
                created_at=_utcnow(),
                finished_at=None,
                run_dir=run_dir,
                pid=pid,
                host=host,
                heartbeat_at=_utcnow() if pid is not None else None,
            )
            s.add(job)
            s.flush()
            return job.id

    def set_run_dir(self, job_id: int, run_dir: str) -> None:
        job_id = _check_id(job_id, "job_id")
        run_dir = _check_str(run_dir, f"run_dir of job {job_id}", allow_empty=True)
        with self._tx(f"set run_dir of job {job_id}", write=True) as s:
            self._job_row(s, job_id).run_dir = run_dir

    def beat(self, job_id: int, pid: int) -> bool:
        """Record a sign of life of job `job_id`'s owner `pid`; False when another process owns the job now."""
        job_id = _check_id(job_id, "job_id")
        with self._tx(f"record a heartbeat of job {job_id}", write=True) as s:
            job = self._job_row(s, job_id)
            if job.pid != pid or job.status != "running":
                return False
            job.heartbeat_at = _utcnow()
            return True

    def claim_job(self, job_id: int, pid: int, host: str, owner_gone: Callable[[JobRecord], bool]) -> JobRecord:
        """Take over an interrupted or failed job (or a `running` one whose owner `owner_gone` says is gone) for
        process `pid` on `host`: status back to "running", a fresh heartbeat. Atomic (the job row is locked), so
        of two processes claiming one job at once exactly one succeeds; the other gets a StoreError."""
        job_id = _check_id(job_id, "job_id")
        with self._tx(f"claim job {job_id}", write=True) as s:
            job = self._job_row(s, job_id, for_update=True)
            record = _job_record(job)
            if job.status == "done":
                raise StoreError(f"job {job_id} is already done; nothing to resume")
            if job.status not in _RESUMABLE_STATUSES or (job.status == "running" and not owner_gone(record)):
                raise StoreError(
                    f"job {job_id} is running (pid {job.pid} on {job.host}, last heartbeat "
                    f"{_aware(job.heartbeat_at)}); it cannot be resumed while its process is alive"
                )
            job.status, job.pid, job.host = "running", pid, host
            job.heartbeat_at, job.finished_at = _utcnow(), None
            return _job_record(job)

    def mark_interrupted(self, job_id: int, pid: int | None, heartbeat_at: datetime | None) -> bool:
        """Set a `running` job whose owner is gone to "interrupted", only if it is still owned by `pid` with the
        heartbeat `heartbeat_at` that was judged stale (so a job that came back to life is left alone)."""
        job_id = _check_id(job_id, "job_id")
        with self._tx(f"mark job {job_id} interrupted", write=True) as s:
            job = self._job_row(s, job_id, for_update=True)
            if job.status != "running" or job.pid != pid or _aware(job.heartbeat_at) != heartbeat_at:
                return False
            job.status, job.finished_at = "interrupted", _utcnow()
            return True

    def finish_job(self, job_id: int, status: str) -> None:
        """Set the final status ("done", "interrupted" or "failed") and finished_at; finishing again overwrites
        both."""
        job_id = _check_id(job_id, "job_id")
        if status not in _FINAL_STATUSES:
            raise StoreError(
                f"status of job {job_id} must be one of {', '.join(_FINAL_STATUSES)}, but got {status!r}"
            )
        with self._tx(f"finish job {job_id}", write=True) as s:
            job = self._job_row(s, job_id)
            job.status = status
            job.finished_at = _utcnow()

    def jobs(self) -> list[JobRecord]:
        """All jobs, newest first."""
        with self._tx("list jobs", write=False) as s:
            rows = s.scalars(select(_Job).order_by(_Job.created_at.desc(), _Job.id.desc())).all()
            return [_job_record(j) for j in rows]

    def job(self, job_id: int) -> JobRecord:
        job_id = _check_id(job_id, "job_id")
        with self._tx(f"read job {job_id}", write=False) as s:
            return _job_record(self._job_row(s, job_id))

    # candidates and metrics

    def add_candidate(self, job_id: int, arch: dict, arch_hash: str, metrics: Sequence[Metric]) -> int:
        """Insert a candidate and its metrics in one transaction; returns its id.

        Unique per (job_id, arch_hash): adding the same arch_hash again returns the existing id (the stored
        arch is kept) and upserts the given metrics.
        """
        job_id = _check_id(job_id, "job_id")
        arch_hash = _check_str(arch_hash, f"arch_hash of a candidate of job {job_id}")
        where = f"candidate {arch_hash!r} of job {job_id}"
        arch = _check_json(arch, f"arch of {where}")
        rows = _check_metrics(metrics, where)
        with self._tx(f"add {where}", write=True) as s:
            self._job_row(s, job_id)
            s.execute(
                self._insert(_Candidate)
                .values(job_id=job_id, arch=arch, arch_hash=arch_hash, created_at=_utcnow())
                .on_conflict_do_nothing(index_elements=["job_id", "arch_hash"])
            )
            candidate_id = s.scalars(
                select(_Candidate.id).where(_Candidate.job_id == job_id, _Candidate.arch_hash == arch_hash)
            ).one()
            self._upsert_metrics(s, candidate_id, rows)
            return candidate_id

    def add_metrics(self, candidate_id: int, metrics: Sequence[Metric]) -> None:
        """Insert or overwrite metrics of a candidate, keyed by (name, target)."""
        candidate_id = _check_id(candidate_id, "candidate_id")
        rows = _check_metrics(metrics, f"candidate {candidate_id}")
        with self._tx(f"add metrics to candidate {candidate_id}", write=True) as s:
            self._candidate_row(s, candidate_id)
            self._upsert_metrics(s, candidate_id, rows)

    def candidates(self, job_id: int) -> list[CandidateRecord]:
        """All candidates of a job, in insertion order."""
        job_id = _check_id(job_id, "job_id")
        with self._tx(f"read candidates of job {job_id}", write=False) as s:
            self._job_row(s, job_id)
            return _load_candidates(s, _Candidate.job_id == job_id)

    def candidate(self, candidate_id: int) -> CandidateRecord:
        candidate_id = _check_id(candidate_id, "candidate_id")
        with self._tx(f"read candidate {candidate_id}", write=False) as s:
            records = _load_candidates(s, _Candidate.id == candidate_id)
            if not records:
                raise StoreError(f"candidate {candidate_id} does not exist in {self._safe_url}")
            return records[0]

    # pareto

    def set_pareto(self, job_id: int, target: str, candidate_ids: Sequence[int]) -> None:
        """Replace the job's front on ``target`` with ``candidate_ids`` (all of that job), atomically."""
        job_id = _check_id(job_id, "job_id")
        target = _check_str(target, f"pareto target of job {job_id}")
        if isinstance(candidate_ids, (str, bytes)) or not isinstance(candidate_ids, Sequence):
            raise StoreError(
                f"candidate_ids of the {target!r} front of job {job_id} must be a sequence of ids"
            )
        ids = list(
            dict.fromkeys(
                _check_id(c, f"candidate id in the {target!r} front of job {job_id}") for c in candidate_ids
            )
        )
        with self._tx(f"set the {target!r} front of job {job_id}", write=True) as s:
            # Lock the job row (PostgreSQL) so that concurrent replacements of a front serialise.
            job = self._job_row(s, job_id, for_update=True)
            self._check_target(job, target)
            if ids:
                found = dict(
                    s.execute(select(_Candidate.id, _Candidate.job_id).where(_Candidate.id.in_(ids))).all()
                )
                for cid in ids:
                    if cid not in found:
                        raise StoreError(
                            f"candidate {cid} does not exist in {self._safe_url} "
                            f"(given for the {target!r} front of job {job_id})"
                        )
                    if found[cid] != job_id:
                        raise StoreError(
                            f"candidate {cid} belongs to job {found[cid]}, not job {job_id}; "
                            f"a front may only hold candidates of its own job"
                        )
            s.execute(delete(_Pareto).where(_Pareto.job_id == job_id, _Pareto.target == target))
            if ids:
                s.execute(
                    _Pareto.__table__.insert(),
                    [{"job_id": job_id, "target": target, "candidate_id": cid} for cid in ids],
                )

    def pareto(
        self,
        job_id: int,
        target: str,
        max_latency_ms: float | None = None,
        min_accuracy: float | None = None,
    ) -> list[CandidateRecord]:
        """Members of the job's front on ``target``, filtered, by latency on ``target`` ascending.

        A member without a latency on ``target`` sorts last and fails a ``max_latency_ms`` filter; one
        without an accuracy fails a ``min_accuracy`` filter.
        """
        job_id = _check_id(job_id, "job_id")
        target = _check_str(target, f"pareto target of job {job_id}")
        if max_latency_ms is not None:
            max_latency_ms = _check_number(max_latency_ms, "max_latency_ms")
        if min_accuracy is not None:
            min_accuracy = _check_number(min_accuracy, "min_accuracy")
        with self._tx(f"read the {target!r} front of job {job_id}", write=False) as s:
            self._check_target(self._job_row(s, job_id), target)
            members = select(_Pareto.candidate_id).where(_Pareto.job_id == job_id, _Pareto.target == target)
            records = _load_candidates(s, _Candidate.job_id == job_id, _Candidate.id.in_(members))
        out = []
        for r in records:
            latency, accuracy = r.metric("latency_ms", target), r.metric("accuracy")
            if max_latency_ms is not None and (latency is None or latency > max_latency_ms):
                continue
            if min_accuracy is not None and (accuracy is None or accuracy < min_accuracy):
                continue
            out.append(r)
        out.sort(
            key=lambda r: (
                r.metric("latency_ms", target) is None,
                r.metric("latency_ms", target) or 0.0,
                r.candidate_id,
            )
        )
        return out

    # artifacts

    def find_artifact(self, kind: str, key: str) -> str | None:
        """The path stored for (kind, key), e.g. a supernet checkpoint keyed by spec+data hash; else None."""
        kind = _check_str(kind, "artifact kind")
        key = _check_str(key, f"key of a {kind!r} artifact")
        with self._tx(f"find {kind!r} artifact {key!r}", write=False) as s:
            return s.scalars(
                select(_Artifact.path).where(_Artifact.kind == kind, _Artifact.key == key)
            ).first()

    def put_artifact(self, kind: str, key: str, path: str) -> None:
        """Insert or overwrite the path stored for (kind, key)."""
        kind = _check_str(kind, "artifact kind")
        key = _check_str(key, f"key of a {kind!r} artifact")
        path = _check_str(path, f"path of {kind!r} artifact {key!r}")
        with self._tx(f"put {kind!r} artifact {key!r}", write=True) as s:
            stmt = self._insert(_Artifact).values(kind=kind, key=key, path=path, updated_at=_utcnow())
            s.execute(
                stmt.on_conflict_do_update(
                    index_elements=["kind", "key"],
                    set_={"path": stmt.excluded.path, "updated_at": stmt.excluded.updated_at},
                )
            )

    # -- internals ------------------------------------------------------------------------------------

    def _job_row(self, s: Session, job_id: int, *, for_update: bool = False) -> _Job:
        stmt = select(_Job).where(_Job.id == job_id)
        if for_update:
            # FOR NO KEY UPDATE: serialises front replacements without blocking candidate inserts (FK locks).
            stmt = stmt.with_for_update(key_share=True)
        job = s.scalars(stmt).first()
        if job is None:
            raise StoreError(f"job {job_id} does not exist in {self._safe_url}")
        return job

    def _candidate_row(self, s: Session, candidate_id: int) -> _Candidate:
        cand = s.get(_Candidate, candidate_id)
        if cand is None:
            raise StoreError(f"candidate {candidate_id} does not exist in {self._safe_url}")
        return cand

    @staticmethod
    def _check_targets(targets: Sequence[str], what: str) -> list[str]:
        if isinstance(targets, (str, bytes)) or not isinstance(targets, Sequence) or not targets:
            raise StoreError(f"{what} must be a non-empty list of target names, but got {targets!r}")
        out = [_check_str(t, f"a target name in {what}") for t in targets]
        if len(set(out)) != len(out):
            raise StoreError(f"{what} must not repeat a target, but got {out!r}")
        return out

    @staticmethod
    def _check_target(job: _Job, target: str) -> None:
        if target not in job.targets:
            raise StoreError(
                f"job {job.id} did not search target {target!r}; its targets are: {', '.join(job.targets)}"
            )

    def _upsert_metrics(self, s: Session, candidate_id: int, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        stmt = self._insert(_MetricRow)
        stmt = stmt.on_conflict_do_update(
            index_elements=["candidate_id", "name", "target"],
            set_={"value": stmt.excluded.value, "flag": stmt.excluded.flag},
        )
        s.execute(stmt, [{"candidate_id": candidate_id, **row} for row in rows])


# -------------------------------------------------------------------------------------- module helpers


def _is_create_race(exc: SQLAlchemyError) -> bool:
    text = str(exc).lower()
    return "already exists" in text or "duplicate key" in text or "pg_type_typname_nsp_index" in text


def _sqlite_events(engine: Engine, *, wal: bool) -> None:
    """Foreign keys, WAL, busy timeout, explicit BEGIN / BEGIN IMMEDIATE (the SQLAlchemy pysqlite recipe)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # pysqlite must not BEGIN on its own; _on_begin does
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(_SQLITE_BUSY_TIMEOUT_S * 1000)}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if wal:
                cursor.execute("PRAGMA journal_mode = WAL")
                # In WAL mode NORMAL never corrupts the file; a power cut may lose the last commits only.
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A write transaction takes the write lock up front: a deferred one that read first could not
        # upgrade once another process committed, and would fail with "database is locked" at once.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("nas_write") else "BEGIN")


def _job_record(job: _Job) -> JobRecord:
    return JobRecord(
        job_id=job.id,
        name=job.name,
        spec=job.spec,
        spec_hash=job.spec_hash,
        targets=tuple(job.targets),
        status=job.status,
        created_at=_aware(job.created_at),
        finished_at=_aware(job.finished_at),
        run_dir=job.run_dir,
        pid=job.pid,
        host=job.host,
        heartbeat_at=_aware(job.heartbeat_at),
    )


def _load_candidates(s: Session, *where: Any) -> list[CandidateRecord]:
    """Frozen records of the candidates matching ``where``, with their metrics and front membership."""
    cands = s.scalars(select(_Candidate).where(*where).order_by(_Candidate.id)).all()
    if not cands:
        return []
    metrics: dict[int, list[Metric]] = defaultdict(list)
    for m in s.scalars(
        select(_MetricRow).join(_Candidate, _MetricRow.candidate_id == _Candidate.id).where(*where)
    ):
        metrics[m.candidate_id].append(Metric(name=m.name, value=m.value, target=m.target, flag=m.flag))
    fronts: dict[int, list[str]] = defaultdict(list)
    for cid, target in s.execute(
        select(_Pareto.candidate_id, _Pareto.target)
        .join(_Candidate, _Pareto.candidate_id == _Candidate.id)
        .where(*where)
    ):
        fronts[cid].append(target)
    return [
        CandidateRecord(
            candidate_id=c.id,
            job_id=c.job_id,
            arch=c.arch,
            arch_hash=c.arch_hash,
            created_at=_aware(c.created_at),
            metrics=tuple(sorted(metrics[c.id], key=lambda m: (m.name, m.target))),
            pareto_targets=tuple(sorted(fronts[c.id])),
        )
        for c in cands
    ]
