"""Where job records live: the state machine once (`JobStore`), over SQLite (one machine) or Redis (many nodes).

Every state change is a read-modify-write of one record done atomically by the backend (`_mutate`), so two nodes
can never both finish a job: only the run named in `worker` may move it out of `processing`.
"""

from __future__ import annotations

import abc
import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stt_engine.config import Settings
from stt_engine.errors import STTError
from stt_engine.jobs.models import FINISHED, Job, JobStatus

Mutation = Callable[[Job], bool]  # changes the job in place; False = leave it as it is


class JobsUnavailable(STTError):
    """The job store cannot be reached (Redis down, disk full): retry later."""

    status = 503
    code = "jobs_unavailable"
    error_type = "server_error"


class JobStore(abc.ABC):
    """The job state machine over a backend that can atomically mutate one record."""

    # --- backend primitives ---------------------------------------------------------------------
    @abc.abstractmethod
    async def insert(self, job: Job) -> tuple[Job, bool]:
        """Store a new job; with an idempotency key already used by this owner, return that job and False."""

    @abc.abstractmethod
    async def get(self, job_id: str) -> Job | None: ...

    @abc.abstractmethod
    async def by_idempotency_key(self, owner: str, key: str) -> Job | None: ...

    @abc.abstractmethod
    async def _mutate(self, job_id: str, change: Mutation) -> Job | None:
        """Apply `change` atomically; the job as it is afterwards (None when missing or `change` said no)."""

    @abc.abstractmethod
    async def list(self, owner: str, status: str | None, limit: int, after: str | None) -> list[Job]:
        """Newest first; `after` is the id of the last job of the previous page."""

    @abc.abstractmethod
    async def delete(self, job_id: str) -> None: ...

    @abc.abstractmethod
    async def counts(self) -> dict[str, int]: ...

    @abc.abstractmethod
    async def oldest_queued_at(self) -> float | None: ...

    @abc.abstractmethod
    async def finished_before(self, when: float, limit: int = 100) -> list[Job]: ...

    @abc.abstractmethod
    async def ids_with_status(self, status: str, limit: int = 100) -> list[str]: ...

    async def close(self) -> None:
        return None

    # --- the state machine ----------------------------------------------------------------------
    async def claim(self, job_id: str, worker: str, max_attempts: int) -> Job | None:
        """Take a queued job, or one whose previous run died (`processing`); None when finished or cancelled.

        The attempt is counted in the same write that takes the job, before any of its work starts, so a run that
        kills the process has still used its attempt. A job whose attempts are used up is failed here instead
        (status `failed`, webhook pending): a file that crashes the process runs at most `max_attempts` times."""

        def change(job: Job) -> bool:
            if job.status not in (JobStatus.queued.value, JobStatus.processing.value):
                return False
            if job.attempts >= max_attempts:
                job.worker = None
                job.error = exhausted_error(job, max_attempts)
                job.status, job.finished_at = JobStatus.failed.value, time.time()
                if job.webhook_url:
                    job.webhook_status = "pending"
                return True
            job.status, job.worker = JobStatus.processing.value, worker
            job.attempts += 1
            job.started_at = job.started_at or time.time()
            job.progress_seconds = 0.0
            return True

        return await self._mutate(job_id, change)

    async def retry(self, job_id: str) -> Job | None:
        """Put a failed or cancelled job back in the queue with its attempts reset (a person decided to try again);
        None when it is not failed or cancelled."""

        def change(job: Job) -> bool:
            if job.status not in (JobStatus.failed.value, JobStatus.cancelled.value):
                return False
            job.status, job.worker, job.attempts, job.error = JobStatus.queued.value, None, 0, None
            job.started_at = job.finished_at = None
            job.progress_seconds, job.result, job.postprocess_result = 0.0, None, None
            job.webhook_status, job.webhook_attempts = None, 0
            return True

        return await self._mutate(job_id, change)

    async def update(self, job_id: str, worker: str, **fields: Any) -> bool:
        """Change fields of a job this run still owns (False: cancelled, or taken over by another run)."""

        def change(job: Job) -> bool:
            if job.worker != worker or job.status != JobStatus.processing.value:
                return False
            for name, value in fields.items():
                setattr(job, name, value)
            return True

        return await self._mutate(job_id, change) is not None

    async def finish(self, job_id: str, worker: str, status: JobStatus, **fields: Any) -> Job | None:
        return await self._finish(job_id, worker, status, **fields)

    async def _finish(self, job_id: str, worker: str | None, status: JobStatus, **fields: Any) -> Job | None:
        def change(job: Job) -> bool:
            if job.status not in (JobStatus.queued.value, JobStatus.processing.value):
                return False
            if worker is not None and job.worker != worker:
                return False
            for name, value in fields.items():
                setattr(job, name, value)
            job.status, job.finished_at = status.value, time.time()
            if job.webhook_url and status in (JobStatus.completed, JobStatus.failed):
                job.webhook_status = "pending"
            return True

        return await self._mutate(job_id, change)

    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or running job (the run notices and drops its queued work)."""
        return await self._finish(job_id, None, JobStatus.cancelled)

    async def requeue(self, job_id: str, worker: str) -> bool:
        """Give a job back to the queue (the node is stopping, or its scheduler is full)."""

        def change(job: Job) -> bool:
            if job.worker != worker or not back_to_queue(job):
                return False
            job.attempts = max(0, job.attempts - 1)  # handed back in good order: not a failed start
            return True

        return await self._mutate(job_id, change) is not None

    async def requeue_orphan(self, job_id: str) -> bool:
        """Give back a job left `processing` by a process that died; its attempt counts (that run did not end in
        good order)."""
        return await self._mutate(job_id, back_to_queue) is not None

    async def webhook_state(self, job_id: str, status: str, attempts: int) -> None:
        def change(job: Job) -> bool:
            job.webhook_status, job.webhook_attempts = status, attempts
            return True

        await self._mutate(job_id, change)


def back_to_queue(job: Job) -> bool:
    """A `processing` job made `queued` again, its run forgotten; False (unchanged) in any other state."""
    if job.status != JobStatus.processing.value:
        return False
    job.status, job.worker, job.progress_seconds = JobStatus.queued.value, None, 0.0
    return True


def exhausted_error(job: Job, max_attempts: int) -> dict[str, Any]:
    """The error a job ends with when its attempts are used up: its last recorded error, else
    `job_attempts_exhausted` (each start ended with the process dying, or the job never finishing)."""
    if job.error:
        return {**job.error, "attempts": job.attempts}
    return {
        "code": "job_attempts_exhausted",
        "message": f"The job was started {job.attempts} times (JOBS_MAX_ATTEMPTS={max_attempts}) and no run "
                   "finished it: the process running it stopped each time (crashed or was killed). It will not be "
                   f"started again; POST /v1/jobs/{job.id}/retry runs it again.",
        "attempts": job.attempts,
    }


def sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///").removeprefix("sqlite://"))


class SQLiteJobStore(JobStore):
    """One file, one process: calls run in a thread, serialised by a lock; WAL keeps readers off writers' way."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS jobs (
                id TEXT PRIMARY KEY, owner TEXT NOT NULL, status TEXT NOT NULL, created_at REAL NOT NULL,
                finished_at REAL, idempotency_key TEXT, data TEXT NOT NULL);
            CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, created_at);
            CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner, id);
            CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(finished_at);
            CREATE UNIQUE INDEX IF NOT EXISTS jobs_idem ON jobs(owner, idempotency_key)
                WHERE idempotency_key IS NOT NULL;
            """
        )

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        def locked() -> Any:
            with self._lock:
                return fn(*args)

        try:
            return await asyncio.to_thread(locked)
        except sqlite3.Error as exc:
            raise JobsUnavailable(f"The job database failed: {exc}") from exc

    @staticmethod
    def _row(job: Job) -> tuple[Any, ...]:
        return (job.id, job.owner, job.status, job.created_at, job.finished_at, job.idempotency_key,
                json.dumps(job.to_dict()))

    def _load_sync(self, job_id: str) -> Job | None:
        row = self._db.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_dict(json.loads(row[0])) if row else None

    async def insert(self, job: Job) -> tuple[Job, bool]:
        def run() -> tuple[Job, bool]:
            if job.idempotency_key:
                row = self._db.execute(
                    "SELECT data FROM jobs WHERE owner = ? AND idempotency_key = ?", (job.owner, job.idempotency_key)
                ).fetchone()
                if row:
                    return Job.from_dict(json.loads(row[0])), False
            try:
                self._db.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?)", self._row(job))
            except sqlite3.IntegrityError:  # the same key, submitted twice at the same moment: the first one wins
                row = self._db.execute(
                    "SELECT data FROM jobs WHERE owner = ? AND idempotency_key = ?", (job.owner, job.idempotency_key)
                ).fetchone()
                if row is None:
                    raise
                return Job.from_dict(json.loads(row[0])), False
            return job, True

        return await self._run(run)

    async def get(self, job_id: str) -> Job | None:
        return await self._run(self._load_sync, job_id)

    async def by_idempotency_key(self, owner: str, key: str) -> Job | None:
        row = await self._run(lambda: self._db.execute(
            "SELECT data FROM jobs WHERE owner = ? AND idempotency_key = ?", (owner, key)
        ).fetchone())
        return Job.from_dict(json.loads(row[0])) if row else None

    async def _mutate(self, job_id: str, change: Mutation) -> Job | None:
        def run() -> Job | None:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                job = self._load_sync(job_id)
                if job is None or not change(job):
                    self._db.execute("ROLLBACK")
                    return None
                self._db.execute(
                    "UPDATE jobs SET status = ?, finished_at = ?, data = ? WHERE id = ?",
                    (job.status, job.finished_at, json.dumps(job.to_dict()), job.id),
                )
                self._db.execute("COMMIT")
                return job
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

        return await self._run(run)

    async def list(self, owner: str, status: str | None, limit: int, after: str | None) -> list[Job]:
        sql, args = "SELECT data FROM jobs WHERE owner = ?", [owner]
        if status:
            sql, args = sql + " AND status = ?", [*args, status]
        if after:
            sql, args = sql + " AND id < ?", [*args, after]
        sql += " ORDER BY id DESC LIMIT ?"
        rows = await self._run(lambda: self._db.execute(sql, (*args, limit)).fetchall())
        return [Job.from_dict(json.loads(r[0])) for r in rows]

    async def delete(self, job_id: str) -> None:
        await self._run(lambda: self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)))

    async def counts(self) -> dict[str, int]:
        rows = await self._run(lambda: self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
        return {s.value: 0 for s in JobStatus} | {status: n for status, n in rows}

    async def oldest_queued_at(self) -> float | None:
        row = await self._run(
            lambda: self._db.execute("SELECT MIN(created_at) FROM jobs WHERE status = 'queued'").fetchone()
        )
        return row[0] if row else None

    async def finished_before(self, when: float, limit: int = 100) -> list[Job]:
        rows = await self._run(lambda: self._db.execute(
            "SELECT data FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ? LIMIT ?", (when, limit)
        ).fetchall())
        return [Job.from_dict(json.loads(r[0])) for r in rows]

    async def ids_with_status(self, status: str, limit: int = 100) -> list[str]:
        rows = await self._run(lambda: self._db.execute(
            "SELECT id FROM jobs WHERE status = ? ORDER BY created_at LIMIT ?", (status, limit)
        ).fetchall())
        return [r[0] for r in rows]

    async def close(self) -> None:
        await self._run(self._db.close)


def jobs_url(settings: Settings) -> str:
    return settings.jobs_url or f"sqlite:///{(settings.data_dir / 'jobs.sqlite3').resolve()}"


def storage_dir(settings: Settings) -> Path:
    return settings.jobs_storage_dir or settings.data_dir / "jobs"


def is_redis(settings: Settings) -> bool:
    return jobs_url(settings).startswith(("redis://", "rediss://", "unix://"))


__all__ = ["FINISHED", "exhausted_error", "JobStore", "JobsUnavailable", "SQLiteJobStore", "jobs_url", "storage_dir"]
