"""Job records in Redis, readable by every API node and worker.

One JSON string per job, plus sorted-set indexes (by status, by owner, by finish time) changed in the same
MULTI/EXEC as the record. Changes are optimistic transactions (WATCH): a concurrent change retries.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from stt_engine.jobs.models import FINISHED, Job, JobStatus
from stt_engine.jobs.store import JobStore, JobsUnavailable, Mutation

T = TypeVar("T")
PREFIX = "stt:"


def redis_client(url: str) -> aioredis.Redis:
    """A client that retries briefly on its own; longer outages surface as `JobsUnavailable` (503)."""
    return aioredis.Redis.from_url(
        url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2, health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


class RedisJobStore(JobStore):
    def __init__(self, url: str) -> None:
        self.redis = redis_client(url)

    @staticmethod
    def _key(job_id: str) -> str:
        return f"{PREFIX}job:{job_id}"

    @staticmethod
    def _owner_key(owner: str) -> str:
        return f"{PREFIX}jobs:owner:{owner}"

    @staticmethod
    def _status_key(status: str) -> str:
        return f"{PREFIX}jobs:status:{status}"

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except RedisError as exc:
            raise JobsUnavailable(
                f"The job store (Redis) is unreachable: {exc}. Retry shortly.", headers={"Retry-After": "2"}
            ) from exc

    def _index(self, pipe: Any, job: Job, old: Job | None) -> None:
        if old is not None and old.status != job.status:
            pipe.zrem(self._status_key(old.status), job.id)
        pipe.zadd(self._status_key(job.status), {job.id: job.created_at})
        if job.status in FINISHED and job.finished_at:
            pipe.zadd(f"{PREFIX}jobs:finished", {job.id: job.finished_at})

    async def insert(self, job: Job) -> tuple[Job, bool]:
        async def run() -> tuple[Job, bool]:
            if job.idempotency_key:
                idem = f"{PREFIX}idem:{job.owner}:{job.idempotency_key}"
                if not await self.redis.set(idem, job.id, nx=True):
                    existing_id = await self.redis.get(idem)
                    existing = await self.get(existing_id) if existing_id else None
                    if existing is not None:
                        return existing, False
                    await self.redis.set(idem, job.id)
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(self._key(job.id), json.dumps(job.to_dict()))
                pipe.zadd(self._owner_key(job.owner), {job.id: 0})
                self._index(pipe, job, None)
                await pipe.execute()
            return job, True

        return await self._call(run)

    async def get(self, job_id: str) -> Job | None:
        raw = await self._call(lambda: self.redis.get(self._key(job_id)))
        return Job.from_dict(json.loads(raw)) if raw else None

    async def by_idempotency_key(self, owner: str, key: str) -> Job | None:
        job_id = await self._call(lambda: self.redis.get(f"{PREFIX}idem:{owner}:{key}"))
        return await self.get(job_id) if job_id else None

    async def _mutate(self, job_id: str, change: Mutation) -> Job | None:
        key = self._key(job_id)

        async def run() -> Job | None:
            async with self.redis.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(key)
                        raw = await pipe.get(key)
                        if not raw:
                            return None
                        old = Job.from_dict(json.loads(raw))
                        job = Job.from_dict(json.loads(raw))
                        if not change(job):
                            return None
                        pipe.multi()
                        pipe.set(key, json.dumps(job.to_dict()))
                        self._index(pipe, job, old)
                        await pipe.execute()
                        return job
                    except WatchError:
                        continue

        return await self._call(run)

    async def list(self, owner: str, status: str | None, limit: int, after: str | None) -> list[Job]:
        async def run() -> list[Job]:
            out: list[Job] = []
            cursor = f"({after}" if after else "+"
            while len(out) < limit:
                ids = await self.redis.zrange(
                    self._owner_key(owner), cursor, "-", desc=True, bylex=True, offset=0, num=max(limit, 50)
                )
                if not ids:
                    break
                raws = await self.redis.mget([self._key(i) for i in ids])
                for raw in raws:
                    if raw:
                        job = Job.from_dict(json.loads(raw))
                        if status is None or job.status == status:
                            out.append(job)
                cursor = f"({ids[-1]}"
            return out[:limit]

        return await self._call(run)

    async def delete(self, job_id: str) -> None:
        job = await self.get(job_id)
        if job is None:
            return

        async def run() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._key(job_id))
                pipe.zrem(self._owner_key(job.owner), job_id)
                pipe.zrem(self._status_key(job.status), job_id)
                pipe.zrem(f"{PREFIX}jobs:finished", job_id)
                if job.idempotency_key:
                    pipe.delete(f"{PREFIX}idem:{job.owner}:{job.idempotency_key}")
                await pipe.execute()

        await self._call(run)

    async def counts(self) -> dict[str, int]:
        async def run() -> dict[str, int]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for s in JobStatus:
                    pipe.zcard(self._status_key(s.value))
                values = await pipe.execute()
            return {s.value: int(n) for s, n in zip(JobStatus, values)}

        return await self._call(run)

    async def oldest_queued_at(self) -> float | None:
        rows = await self._call(lambda: self.redis.zrange(self._status_key("queued"), 0, 0, withscores=True))
        return float(rows[0][1]) if rows else None

    async def finished_before(self, when: float, limit: int = 100) -> list[Job]:
        ids = await self._call(
            lambda: self.redis.zrangebyscore(f"{PREFIX}jobs:finished", 0, when, start=0, num=limit)
        )
        jobs = [await self.get(i) for i in ids]
        stale = [i for i, j in zip(ids, jobs) if j is None]
        if stale:  # deleted by another node meanwhile: drop them from the index too
            await self._call(lambda: self.redis.zrem(f"{PREFIX}jobs:finished", *stale))
        return [j for j in jobs if j is not None]

    async def ids_with_status(self, status: str, limit: int = 100) -> list[str]:
        return list(await self._call(lambda: self.redis.zrange(self._status_key(status), 0, limit - 1)))

    async def close(self) -> None:
        await self.redis.aclose()
