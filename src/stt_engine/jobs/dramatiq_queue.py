"""Many nodes: jobs travel through Redis on Dramatiq; any worker node (or serving node) runs them.

Why Dramatiq (see the README): its Redis broker tracks each worker by heartbeat and gives a dead worker's unacked
messages back to the queue, so a killed node's job is redelivered within a bounded time; its time limit is a
middleware we simply leave out (jobs may run for hours); one worker runs as many messages at once as it has worker
threads, and here every thread only waits on this node's scheduler, so concurrent jobs batch on the GPU.

The message carries only the job id: the record (Redis) and the audio (JOBS_STORAGE_DIR) hold the rest.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from stt_engine.config import Settings
from stt_engine.jobs.store import JobsUnavailable, jobs_url

log = logging.getLogger(__name__)

QUEUE_NAME = "stt-jobs"
ACTOR_NAME = "stt_transcribe_job"


class DramatiqQueue:
    """The broker, the one actor, and (on nodes that run jobs) an in-process Dramatiq worker."""

    def __init__(self, settings: Settings) -> None:
        heartbeat_ms = int(settings.jobs_heartbeat_timeout_s * 1000)
        self.heartbeat_s = settings.jobs_heartbeat_timeout_s
        # Maintenance (requeueing a dead worker's messages) runs on a random ~5% of the broker calls that every idle
        # or heartbeating worker makes about once a second: redelivery follows the heartbeat timeout within seconds.
        self.broker = RedisBroker(
            client=redis.Redis.from_url(
                jobs_url(settings), socket_timeout=10, socket_connect_timeout=5, health_check_interval=10
            ),
            middleware=[], heartbeat_timeout=heartbeat_ms, maintenance_chance=50_000,
        )
        self.actor = dramatiq.actor(
            self._perform, broker=self.broker, actor_name=ACTOR_NAME, queue_name=QUEUE_NAME
        )
        self._runner: Callable[[str], Coroutine[Any, Any, None]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: dramatiq.Worker | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    async def enqueue(self, job_id: str) -> None:
        try:
            await asyncio.to_thread(self.actor.send, job_id)
        except Exception as exc:  # redis errors come wrapped in several ways
            raise JobsUnavailable(f"Could not queue the job (Redis unreachable: {exc}).",
                                  headers={"Retry-After": "2"}) from exc

    def _perform(self, job_id: str) -> None:
        """A Dramatiq worker thread: run the job on this node's event loop and wait for it."""
        assert self._runner is not None and self._loop is not None, "no local worker on this node"
        try:
            asyncio.run_coroutine_threadsafe(self._runner(job_id), self._loop).result()
        except concurrent.futures.CancelledError:
            pass  # this node is stopping; the run has handed the job back to the queue

    def start_worker(
        self, runner: Callable[[str], Coroutine[Any, Any, None]], loop: asyncio.AbstractEventLoop, threads: int
    ) -> None:
        self._runner, self._loop = runner, loop
        worker = dramatiq.Worker(self.broker, queues={QUEUE_NAME}, worker_threads=threads, worker_timeout=1000)
        worker.queue_prefetch = threads  # take only what we can start now; other nodes get the rest
        worker.start()
        self._worker = worker
        self._heartbeat = threading.Thread(target=self._beat, name="stt-jobs-heartbeat", daemon=True)
        self._heartbeat.start()
        log.info("jobs worker: %d jobs at once from %s", threads, QUEUE_NAME)

    def _beat(self) -> None:
        """Dramatiq refreshes a worker's heartbeat only when it fetches; with every thread busy on a long job it
        does not fetch, and would be declared dead. Any broker call counts as a heartbeat: make a cheap one."""
        while not self._stop.wait(max(1.0, self.heartbeat_s / 6)):
            try:
                self.broker.do_qsize(QUEUE_NAME)
            except Exception as exc:
                log.warning("jobs heartbeat failed: %s", exc)

    def stop_worker(self, timeout_s: float) -> None:
        """Stop consuming; messages this node held but did not start go back to the queue."""
        self._stop.set()
        if self._worker is not None:
            self._worker.stop(timeout=int(timeout_s * 1000))
            self._worker = None

    def close(self) -> None:
        self.stop_worker(0)
        self.broker.close()
