"""The jobs subsystem of one process: store, storage, queue, runner, webhooks and upkeep, started and stopped together.

`stt-engine serve` builds one in its lifespan (`run_jobs` unless `JOBS_LOCAL_WORKER=false` with Redis);
`stt-engine worker` builds one that only runs jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stt_engine.config import Settings
from stt_engine.errors import STTError
from stt_engine.jobs.backend import open_store
from stt_engine.jobs.models import Job, JobStatus
from stt_engine.jobs.runner import EmbeddedRunner, JobExecutor
from stt_engine.jobs.store import JobStore, is_redis, storage_dir
from stt_engine.jobs.webhooks import WebhookPolicy, WebhookSender

log = logging.getLogger(__name__)

METRICS_INTERVAL_S = 5.0
RETENTION_INTERVAL_S = 60.0


class JobService:
    def __init__(
        self,
        settings: Settings,
        *,
        get_scheduler: Callable[[], Any],
        get_postprocessor: Callable[[], Any],
        run_jobs: bool,
        registry: Any = None,
        models: Any = None,
    ) -> None:
        """`registry`: the Prometheus registry for the jobs gauges; `models`: the node's `ModelRegistry`, through
        which a job that names an extra model decodes with it (without one, every job uses `get_scheduler`'s)."""
        self.settings = settings
        self.store: JobStore = open_store(settings)
        self.storage: Path = storage_dir(settings)
        self.storage.mkdir(parents=True, exist_ok=True)
        self.distributed = is_redis(settings)
        self.run_jobs = run_jobs
        self.queue = None
        if self.distributed:
            from stt_engine.jobs.dramatiq_queue import DramatiqQueue

            self.queue = DramatiqQueue(settings)
        self.webhooks = WebhookSender(
            self.store, include_result=settings.webhook_include_result,
            max_attempts=settings.webhook_max_attempts, timeout_s=settings.webhook_timeout_s,
            policy=WebhookPolicy.from_settings(settings),
        )
        self.executor = JobExecutor(
            self.store, settings, self.storage, get_scheduler, get_postprocessor, self.webhooks,
            requeue_hook=self.queue.enqueue if self.queue is not None else None, models=models,
        )
        self.runner = None if self.distributed or not run_jobs else EmbeddedRunner(
            self.store, self.executor, settings.jobs_concurrency
        )
        self._upkeep: asyncio.Task[None] | None = None
        self._gauges = _JobGauges(registry) if registry is not None else None

    async def start(self, *, upkeep: bool = True) -> None:
        if self.runner is not None:
            await self.runner.start()
            await self._resume_webhooks()
        if self.queue is not None and self.run_jobs:
            self.queue.start_worker(self.executor.run, asyncio.get_running_loop(), self.settings.jobs_concurrency)
        if upkeep:
            self._upkeep = asyncio.get_running_loop().create_task(self._maintain(), name="jobs-upkeep")

    async def submit(self, job: Job) -> tuple[Job, bool]:
        """Record the job and hand it to whoever runs jobs; (the existing job, False) for a repeated key."""
        stored, created = await self.store.insert(job)
        if not created:
            return stored, False
        if self.queue is not None:
            try:
                await self.queue.enqueue(job.id)
            except STTError:
                with contextlib.suppress(Exception):
                    await self.store.delete(job.id)
                raise
        elif self.runner is not None:
            self.runner.wake()
        return stored, True

    async def retry(self, job_id: str) -> Job | None:
        """Run a failed or cancelled job again from the start, its attempts reset; None when it is in another state.
        The audio is still stored until the retention sweep removes the finished job."""
        before = await self.store.get(job_id)
        job = await self.store.retry(job_id)
        if job is None or before is None:
            return None
        if self.queue is not None:
            try:
                await self.queue.enqueue(job.id)
            except STTError:  # no message, no run: leave the job as it was, for a later retry

                def restore(current: Job) -> bool:
                    if current.status != JobStatus.queued.value or current.worker is not None:
                        return False
                    current.__dict__.update(before.__dict__)
                    return True

                with contextlib.suppress(Exception):
                    await self.store._mutate(job_id, restore)
                raise
        elif self.runner is not None:
            self.runner.wake()
        return job

    def job_dir(self, job_id: str) -> Path:
        return self.storage / job_id

    async def remove(self, job: Job) -> None:
        """Delete a job's record and its audio."""
        await self.store.delete(job.id)
        await asyncio.to_thread(shutil.rmtree, self.job_dir(job.id), True)

    async def _resume_webhooks(self) -> None:
        """Deliveries cut short by a restart carry on (one machine: this process is the only sender)."""
        for status in (JobStatus.completed.value, JobStatus.failed.value):
            for job_id in await self.store.ids_with_status(status, limit=10_000):
                job = await self.store.get(job_id)
                if job is not None and job.webhook_status == "pending":
                    self.webhooks.schedule(job)

    async def _maintain(self) -> None:
        last_retention = 0.0
        while True:
            try:
                if self._gauges is not None:
                    await self._gauges.refresh(self.store)
                if time.monotonic() - last_retention >= RETENTION_INTERVAL_S:
                    last_retention = time.monotonic()
                    await self.sweep()
            except STTError as exc:
                log.warning("jobs upkeep: %s", exc.message)
            except Exception:
                log.exception("jobs upkeep failed")
            await asyncio.sleep(METRICS_INTERVAL_S)

    async def sweep(self) -> int:
        """Delete finished jobs (and their audio) older than JOBS_RETENTION_HOURS; how many went."""
        cutoff = time.time() - self.settings.jobs_retention_hours * 3600
        removed = 0
        while batch := await self.store.finished_before(cutoff):
            for job in batch:
                await self.remove(job)
                removed += 1
        if removed:
            log.info("jobs retention: deleted %d finished jobs", removed)
        return removed

    async def stop(self, timeout_s: float = 10.0) -> None:
        if self._upkeep is not None:
            self._upkeep.cancel()
            await asyncio.gather(self._upkeep, return_exceptions=True)
        if self.queue is not None and self.run_jobs:
            self.executor.stopping = True
            running = list(self.executor.running.values())
            for task in running:  # each hands its job back (and queues a new message for it)
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            await asyncio.to_thread(self.queue.stop_worker, timeout_s)
        if self.runner is not None:
            await self.runner.stop()
        await self.webhooks.aclose()
        if self.queue is not None:
            await asyncio.to_thread(self.queue.close)
        await self.store.close()


class _JobGauges:
    """Jobs by status and the age of the oldest queued job, refreshed every few seconds from the store."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Gauge

        self.by_status = Gauge("stt_jobs", "Jobs in the store by status (all nodes).", ["status"], registry=registry)
        self.queue_age = Gauge(
            "stt_jobs_oldest_queued_age_seconds", "Age of the oldest job still queued (0 when none).", registry=registry
        )

    async def refresh(self, store: JobStore) -> None:
        for status, count in (await store.counts()).items():
            self.by_status.labels(status).set(count)
        oldest = await store.oldest_queued_at()
        self.queue_age.set(max(0.0, time.time() - oldest) if oldest else 0.0)


async def start_jobs(
    settings: Settings, *, get_scheduler: Callable[[], Any], get_postprocessor: Callable[[], Any], metrics: Any,
    models: Any = None,
) -> JobService:
    """The server's jobs subsystem (its lifespan calls this): runs jobs unless Redis mode says API-only. The
    scheduler and post-processor are looked up when a job runs (the model may still be loading at start)."""
    service = JobService(
        settings,
        get_scheduler=get_scheduler,
        get_postprocessor=get_postprocessor,
        run_jobs=not is_redis(settings) or settings.jobs_local_worker,
        registry=metrics.registry,
        models=models,
    )
    service.executor.metrics = metrics
    await service.start()
    return service
