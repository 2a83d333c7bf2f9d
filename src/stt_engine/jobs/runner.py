"""Running jobs: `JobExecutor` runs one job end to end; `EmbeddedRunner` decides when, on one machine (SQLite).

A run owns its job through a token stored in the record (`worker`). It watches the record while the model works,
so a DELETE from any node stops it within a second; and it only finishes the job if it still owns it, so a job
redelivered after a node died is never completed twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_incrementing

from stt_engine import channels as channels_mod
from stt_engine import decoder
from stt_engine import speakers as speakers_mod
from stt_engine.audio import DecodedAudio
from stt_engine.config import Settings
from stt_engine.errors import ModelMemoryExceeded, Overloaded, STTError
from stt_engine.jobs.models import Job, JobStatus, transcript_to_dict
from stt_engine.jobs.store import JobStore, JobsUnavailable
from stt_engine.jobs.webhooks import WebhookSender
from stt_engine.scheduler import Priority, Scheduler
from stt_engine.textproc import finish_transcript, text_options
from stt_engine.textproc.vocabulary import load_vocabulary

if TYPE_CHECKING:
    from stt_engine.model_registry import ModelRegistry

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 1.0
MODEL_WAIT_S = 5.0  # a job whose model does not fit the memory budget now tries to load it again this often
NODE = f"{socket.gethostname()}:{os.getpid()}"


@dataclass(eq=False)
class JobExecutor:
    """Runs one job through this node's scheduler: decode, transcribe, post-process, record, notify."""

    store: JobStore
    settings: Settings
    storage: Path
    get_scheduler: Callable[[], Scheduler | None]
    get_postprocessor: Callable[[], Any]
    webhooks: WebhookSender
    requeue_hook: Callable[[str], Awaitable[None]] | None = None  # the queue's, when there is one (Dramatiq)
    models: ModelRegistry | None = None  # the node's served models: a job naming an extra one decodes with it
    running: dict[str, asyncio.Task[Any]] = field(default_factory=dict, init=False)
    stopping: bool = field(default=False, init=False)
    metrics: Any | None = field(default=None, init=False)  # the server's Metrics, when it has them (dropped segments)

    async def _scheduler(self, model: str | None) -> Scheduler:
        """The scheduler of the job's model: an extra model's through the registry (loaded now if it is not; a
        model this node does not serve is a `model_not_found` failure), else the default model's, once loaded."""
        if model and self.models is not None and not self.models.lookup(model).default:
            return await self.models.scheduler_for(model)
        while (scheduler := self.get_scheduler()) is None:  # the model is still loading
            await asyncio.sleep(0.5)
        return scheduler

    async def run(self, job_id: str) -> None:
        """Run `job_id` if it is still queued (or its last run died). Never raises for the job's own failures."""
        if self.stopping:  # a message that reached this node as it stops: back to the queue, untouched
            if self.requeue_hook is not None:
                await self.requeue_hook(job_id)
            return
        token = f"{NODE}:{secrets.token_hex(4)}"
        job = await self._retrying(lambda: self.store.claim(job_id, token, self.settings.jobs_max_attempts))
        if job is None:
            return
        if job.status == JobStatus.failed.value:  # its attempts were used up: failed, never started again
            log.error("job %s failed: %s", job.id, (job.error or {}).get("message"))
            if job.webhook_url:
                self.webhooks.schedule(job)
            return
        log.info("job %s started (attempt %d, %.1f s of audio)", job.id, job.attempts, job.duration)
        task = asyncio.current_task()
        if task is not None:
            self.running[job.id] = task
        try:
            await self._run(job, token)
        except asyncio.CancelledError:
            # this node is stopping: hand the job back so that the next node (or this one, restarted) runs it
            with contextlib.suppress(Exception):
                if await asyncio.shield(self.store.requeue(job.id, token)) and self.requeue_hook is not None:
                    await asyncio.shield(self.requeue_hook(job.id))
            raise
        finally:
            self.running.pop(job.id, None)

    async def _run(self, job: Job, token: str) -> None:
        path, limit = self.storage / job.audio_path, self.settings.max_audio_seconds
        try:
            tracks: list[np.ndarray] = []  # channels=split: each channel of a multi-channel upload, as the routes decode them
            if job.channels == "split":
                decoded, tracks = await asyncio.to_thread(
                    decoder.decode_split, path, max_seconds=limit, max_channels=self.settings.max_split_channels
                )
            else:
                decoded = await asyncio.to_thread(decoder.decode, path, max_seconds=limit)
            wanted = speakers_mod.request_from_dict(job.diarize) if job.channels != "split" else None
            turns = speakers_mod.diarize(self.settings, decoded.samples, wanted) if wanted else None
            turns_found = None
            if turns is None:
                transcript = await self._transcribe(job, token, decoded, tracks)
            else:  # who spoke: diarized while it is transcribed
                transcript, turns_found = await speakers_mod.with_turns(
                    self._transcribe(job, token, decoded, tracks), turns)
        except STTError as exc:
            await self._finish(job, token, JobStatus.failed, error={"code": exc.code, "message": exc.message})
            return
        except FileNotFoundError:
            await self._finish(job, token, JobStatus.failed,
                               error={"code": "audio_missing", "message": "The job's audio is no longer stored."})
            return
        except Exception as exc:
            log.exception("job %s failed", job.id)
            await self._finish(job, token, JobStatus.failed,
                               error={"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"})
            return
        if transcript is None:
            log.info("job %s cancelled while running", job.id)
            return
        try:  # the job's text processing (filter, vocabulary, numbers, masking), as for a request
            text = text_options(self.settings, redact=job.redact, normalize=job.normalize)
            transcript = await asyncio.to_thread(finish_transcript, transcript, self.settings, text, self.metrics)
            if turns_found is not None and wanted is not None:
                transcript = speakers_mod.SpeakerAssigner(turns_found, wanted.names, job.include_words).transcript(
                    transcript)
        except STTError as exc:
            await self._finish(job, token, JobStatus.failed, error={"code": exc.code, "message": exc.message})
            return
        result = transcript_to_dict(transcript)
        # the transcript is stored before post-processing, so that a failing LLM can never cost it
        if not await self._retrying(
            lambda: self.store.update(job.id, token, result=result, progress_seconds=job.duration)
        ):
            return
        postprocess_result = None
        if job.postprocess:
            postprocessor = self.get_postprocessor()
            try:
                vocabulary = load_vocabulary(self.settings.vocabulary_file)
                prompt = vocabulary.llm_prompt(job.postprocess, job.postprocess_prompt)
                postprocess_result = await postprocessor.run(
                    transcript.text, job.postprocess, prompt, transcript.language
                )
            except Exception as exc:
                postprocess_result = {"task": job.postprocess, "text": None,
                                      "error": {"code": "postprocess_failed", "message": str(exc)}}
        await self._finish(job, token, JobStatus.completed, postprocess_result=postprocess_result)

    async def _transcribe(
        self, job: Job, token: str, decoded: DecodedAudio, tracks: list[np.ndarray]
    ) -> Any:
        """The transcript, or None when the job was cancelled (or taken over) meanwhile. With channels=split, each
        channel goes through the scheduler at job priority and the results are merged with speakers, as the routes
        do it (`channels.transcribe_split`)."""
        options = job.transcribe_options
        done_seconds = [0.0]

        def on_segments(segments: list[Any], language: str | None) -> None:  # a worker thread: record the figure
            if segments:  # with channels split, the furthest any channel has got
                done_seconds[0] = max(done_seconds[0], float(segments[-1].end))

        async def transcribe(audio: DecodedAudio) -> Any:
            # The scheduler is looked up for each call and used at once (nothing awaited in between once it is
            # loaded), so an extra model cannot be unloaded between the two. Behind live and interactive work;
            # bounded by JOBS_CONCURRENCY and the job store, not by the interactive queue's limits or its request
            # timeout (a job may take as long as it takes).
            scheduler = await self._scheduler(job.model)
            return await scheduler.transcribe(
                audio, options, priority=Priority.JOB, on_segments=on_segments, timed=False, bounded=False
            )

        async def attempt(wait_s: float) -> Any:
            await asyncio.sleep(wait_s)  # watched like the work: a DELETE still stops the job within a second
            if job.channels == "split":
                return await channels_mod.transcribe_split(
                    decoded, tracks, options, job.known_speaker_names, transcribe)
            return await transcribe(decoded)

        wait_s = 0.0
        while True:
            work = asyncio.ensure_future(attempt(wait_s))
            reported = 0.0
            try:
                while not work.done():
                    await asyncio.wait({work}, timeout=WATCH_INTERVAL_S)
                    if work.done():
                        break
                    try:
                        current = await self.store.get(job.id)
                        if current is None or current.status != JobStatus.processing.value or current.worker != token:
                            return None
                        if done_seconds[0] > reported:
                            reported = done_seconds[0]
                            await self.store.update(job.id, token, progress_seconds=reported)
                    except JobsUnavailable:
                        continue  # the store is down for a while: keep working, look again next second
                return work.result()
            except Overloaded:
                wait_s = 2.0  # the node is full of interactive work: wait our turn
            except ModelMemoryExceeded as exc:
                if not exc.retryable:  # the model never fits MODEL_MEMORY_MB: the job fails with that message
                    raise
                if not wait_s:
                    log.info("job %s waits for memory to load its model: %s", job.id, exc.message)
                wait_s = MODEL_WAIT_S  # the models holding the budget are busy: load once they go idle
            finally:
                if not work.done():
                    work.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await work

    async def _finish(self, job: Job, token: str, status: JobStatus, **fields: Any) -> None:
        finished = await self._retrying(lambda: self.store.finish(job.id, token, status, **fields))
        if finished is None:
            return
        log.info("job %s %s", job.id, status.value)
        if finished.webhook_url:
            self.webhooks.schedule(finished)

    async def _retrying(self, call: Callable[[], Awaitable[Any]], attempts: int = 60) -> Any:
        """Recording a finished job outlives a store outage of a few minutes: the work is not thrown away."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(JobsUnavailable), stop=stop_after_attempt(attempts),
            wait=wait_incrementing(start=0.5, increment=0.5, max=5.0), reraise=True,
            before_sleep=lambda state: log.warning(
                "job store unavailable (%s); retrying", getattr(state.outcome.exception(), "message", "?")
            ),
        )
        async for attempt in retrying:
            with attempt:
                return await call()
        return None  # not reached: the last failure is raised


class EmbeddedRunner:
    """One machine: take queued jobs oldest first, `JOBS_CONCURRENCY` at once, through the server's scheduler."""

    def __init__(self, store: JobStore, executor: JobExecutor, concurrency: int) -> None:
        self.store = store
        self.executor = executor
        self.concurrency = concurrency
        self._wake = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # A job still `processing` was being run by this server's previous process, which died: run it again.
        for job_id in await self.store.ids_with_status(JobStatus.processing.value, limit=10_000):
            await self.store.requeue_orphan(job_id)
        self._loop_task = asyncio.get_running_loop().create_task(self._loop(), name="jobs-runner")

    def wake(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                free = self.concurrency - len(self._tasks)
                if free > 0:
                    for job_id in await self.store.ids_with_status(JobStatus.queued.value, limit=free + len(self._tasks)):
                        if job_id in self._tasks or len(self._tasks) >= self.concurrency:
                            continue
                        task = asyncio.get_running_loop().create_task(self.executor.run(job_id), name=f"job-{job_id}")
                        self._tasks[job_id] = task
                        task.add_done_callback(self._done)
            except STTError as exc:
                log.warning("jobs runner: %s", exc.message)
            except Exception:
                log.exception("jobs runner: could not look for queued jobs")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            self._wake.clear()

    def _done(self, task: asyncio.Task[None]) -> None:
        for job_id, t in list(self._tasks.items()):
            if t is task:
                del self._tasks[job_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("job run crashed", exc_info=task.exception())
        self._wake.set()

    async def stop(self) -> None:
        tasks = [t for t in (self._loop_task, *self._tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
