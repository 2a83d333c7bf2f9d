"""Which `JobStore` a `JOBS_URL` names. Apart from both stores, so the Redis store (built on the store's base
class) and the SQLite store never import each other."""

from __future__ import annotations

from stt_engine.config import Settings
from stt_engine.jobs.store import JobStore, SQLiteJobStore, is_redis, jobs_url, sqlite_path


def open_store(settings: Settings) -> JobStore:
    url = jobs_url(settings)
    if is_redis(settings):
        from stt_engine.jobs.redis_store import RedisJobStore  # redis is imported only when it is used

        return RedisJobStore(url)
    if url.startswith("sqlite:"):
        return SQLiteJobStore(sqlite_path(url))
    raise ValueError(f"JOBS_URL must be sqlite:///path or redis://host:port/db, got {url!r}")
