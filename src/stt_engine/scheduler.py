"""Between the API and the model: admission control, and batching of chunks across concurrent requests.

Flow of one request: `submit()` checks the queue bounds (429 with Retry-After when full), VAD/features run in a
small prep pool, and the job's chunks enter one pending list. `workers` threads (one per CTranslate2 model
worker) each take the oldest pending chunk plus up to `batch_size - 1` compatible ones from *any* request,
waiting at most `batch_wait_ms` for company, and decode them together. When work is scarce a worker takes only
its share, so one long request still spreads over all workers. A job's first chunk runs before the others when
its language must be detected, so a request keeps one language throughout.

Nothing here runs on the event loop: results come back through `loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from stt_engine.audio import DecodedAudio
from stt_engine.engine import Chunk, Engine, Job, TranscribeOptions, Transcript
from stt_engine.errors import Overloaded, RequestTimeout, STTError

log = logging.getLogger(__name__)


@dataclass
class SchedulerStats:
    """Counters the metrics endpoint and tests read; plain ints, updated under the scheduler's lock."""

    submitted: int = 0
    completed: int = 0
    rejected: int = 0
    cancelled: int = 0
    failed: int = 0
    batches: int = 0
    batched_chunks: int = 0
    largest_batch: int = 0
    audio_seconds: float = 0.0
    busy_workers: int = 0
    queue_wait_seconds: list[float] = field(default_factory=list)


@dataclass
class _Ticket:
    """A job plus the future its request awaits."""

    job: Job
    future: asyncio.Future[Transcript]
    loop: asyncio.AbstractEventLoop
    seq: int
    admitted_seconds: float
    queue_wait: float | None = None  # admission to the first decoded chunk


class Scheduler:
    """Admission control and cross-request batching in front of one `Engine`."""

    def __init__(
        self,
        engine: Engine,
        *,
        batch_wait_ms: float = 5.0,
        max_queued_requests: int = 64,
        max_queue_seconds: float = 3600.0,
        timeout_base_s: float = 60.0,
        timeout_rtf: float = 2.0,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.engine = engine
        self.batch_size = engine.batch_size
        self.batch_wait = batch_wait_ms / 1000
        self.max_queued_requests = max_queued_requests
        self.max_queue_seconds = max_queue_seconds
        self.timeout_base_s = timeout_base_s
        self.timeout_rtf = timeout_rtf
        self.on_batch = on_batch
        self.stats = SchedulerStats()
        self._cond = threading.Condition()
        self._pending: list[Chunk] = []  # chunks ready to decode, oldest job first
        self._tickets: dict[int, _Ticket] = {}  # id(job) -> ticket, for every admitted, unfinished job
        self._queued_seconds = 0.0
        self._seq = itertools.count()
        self._stopping = False
        self._prep = ThreadPoolExecutor(max_workers=max(1, engine.workers), thread_name_prefix="stt-prep")
        self._threads = [
            threading.Thread(target=self._worker, name=f"stt-worker-{i}", daemon=True) for i in range(engine.workers)
        ]
        for thread in self._threads:
            thread.start()

    # --- public, called on the event loop ------------------------------------------------------------
    @property
    def queued_requests(self) -> int:
        return len(self._tickets)

    @property
    def queued_seconds(self) -> float:
        return self._queued_seconds

    def timeout_for(self, duration: float) -> float:
        return self.timeout_base_s + self.timeout_rtf * duration

    def admit(self, duration: float) -> None:
        """Raise `Overloaded` (429 + Retry-After) when this much more audio would overflow the queue."""
        with self._cond:
            full = len(self._tickets) >= self.max_queued_requests or (
                self._tickets and self._queued_seconds + duration > self.max_queue_seconds
            )
            if full or self._stopping:
                self.stats.rejected += 1
                retry = self._retry_after()
                reason = "shutting down" if self._stopping else (
                    f"{len(self._tickets)} requests / {self._queued_seconds:.0f} s of audio already queued"
                )
                raise Overloaded(
                    f"The server is busy ({reason}). Retry after {retry} s.",
                    headers={"Retry-After": str(retry)},
                    status=503 if self._stopping else None,
                )

    async def transcribe(self, audio: DecodedAudio, options: TranscribeOptions) -> Transcript:
        """Queue `audio`, wait for its transcript. Cancelling the awaiting task drops the queued work."""
        self.admit(audio.duration)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Transcript] = loop.create_future()
        with self._cond:
            self._queued_seconds += audio.duration
            self.stats.submitted += 1
            ticket = _Ticket(
                job=Job(options=options, duration=audio.duration, speech_chunks=[]),
                future=future, loop=loop, seq=next(self._seq), admitted_seconds=audio.duration,
            )
            self._tickets[id(ticket.job)] = ticket  # placeholder job: counts toward the bounds during prep
        try:
            job = await loop.run_in_executor(self._prep, self.engine.prepare, audio, options)
            self._enqueue(ticket, job)
            return await asyncio.wait_for(asyncio.shield(future), self.timeout_for(audio.duration))
        except asyncio.TimeoutError:
            self._drop(ticket, "timeout")
            raise RequestTimeout(
                f"Transcription did not finish within {self.timeout_for(audio.duration):.0f} s "
                f"(REQUEST_TIMEOUT_BASE_S + REQUEST_TIMEOUT_RTF x {audio.duration:.0f} s of audio)."
            ) from None
        except asyncio.CancelledError:
            self._drop(ticket, "cancelled")
            raise
        except BaseException:
            self._drop(ticket, "failed")
            raise

    def close(self, timeout: float | None = None) -> None:
        """Stop taking work; wait for queued jobs to finish (at most `timeout`), then stop the threads."""
        deadline = time.monotonic() + (timeout if timeout is not None else 0)
        with self._cond:
            self._stopping = True
            while self._tickets and (timeout is None or time.monotonic() < deadline):
                self._cond.wait(timeout=0.1 if timeout is None else max(0.01, min(0.1, deadline - time.monotonic())))
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=1)
        self._prep.shutdown(wait=False, cancel_futures=True)

    # --- internals ------------------------------------------------------------------------------------
    def _retry_after(self) -> int:
        """Seconds until the queue has likely drained somewhat: queued audio over a conservative speed."""
        return max(1, min(120, math.ceil(self._queued_seconds / (10.0 * max(1, self.engine.workers)))))

    def _enqueue(self, ticket: _Ticket, job: Job) -> None:
        with self._cond:
            old_key = id(ticket.job)
            ticket.job = job
            self._tickets.pop(old_key, None)
            self._tickets[id(job)] = ticket
            if not job.chunks:
                self._complete(ticket)
                return
            first_only = job.language is None
            self._pending.extend(job.chunks[:1] if first_only else job.chunks)
            self._cond.notify_all()

    def _drop(self, ticket: _Ticket, reason: str) -> None:
        """Forget a request's queued chunks (client gone, timeout, error). Chunks in a running batch finish."""
        with self._cond:
            job = ticket.job
            if self._tickets.pop(id(job), None) is None:
                return
            job.cancelled = True
            before = len(self._pending)
            self._pending = [c for c in self._pending if c.job is not job]
            self._release(ticket)
            if reason == "cancelled":
                self.stats.cancelled += 1
            else:
                self.stats.failed += 1
        if reason in ("cancelled", "timeout"):
            log.info("dropped %s request: %d queued chunks discarded", reason, before - len(self._pending))

    def _release(self, ticket: _Ticket) -> None:
        self._queued_seconds = max(0.0, self._queued_seconds - ticket.admitted_seconds)
        self._cond.notify_all()

    def _complete(self, ticket: _Ticket) -> None:
        """Called under the lock when a job's last chunk is done."""
        self._tickets.pop(id(ticket.job), None)
        self._release(ticket)
        try:
            result: Transcript | BaseException = self.engine.finish(ticket.job)
            result.queue_wait_seconds = ticket.queue_wait
            self.stats.completed += 1
            self.stats.audio_seconds += ticket.job.duration
        except Exception as exc:  # pragma: no cover - defensive: never leave a request hanging
            result = exc
        _resolve(ticket, result)

    def _take_batch(self) -> list[Chunk] | None:
        """Under the lock: the oldest pending chunk and compatible others, up to this worker's fair share."""
        while not self._pending:
            if self._stopping and not self._tickets:
                return None
            self._cond.wait(timeout=0.5)
        if len(self._pending) < self.batch_size and self.batch_wait > 0:
            self._cond.wait(timeout=self.batch_wait)  # let concurrent requests join this batch
            if not self._pending:
                return []
        idle = max(1, self.engine.workers - self.stats.busy_workers)
        share = max(1, min(self.batch_size, math.ceil(len(self._pending) / idle)))
        self._pending.sort(key=lambda c: (self._tickets[id(c.job)].seq if id(c.job) in self._tickets else -1, c.index))
        key = self.engine.batch_key(self._pending[0])
        batch, rest = [], []
        for chunk in self._pending:
            if len(batch) < share and self.engine.batch_key(chunk) == key:
                batch.append(chunk)
            else:
                rest.append(chunk)
        self._pending = rest
        self.stats.busy_workers += 1
        return batch

    def _worker(self) -> None:
        while True:
            with self._cond:
                batch = self._take_batch()
            if batch is None:
                return
            if not batch:
                continue
            started = time.perf_counter()
            error: BaseException | None = None
            tails: list[Chunk] = []
            try:
                tails = self.engine.run_batch(batch)
            except BaseException as exc:  # one bad batch fails its requests, not the server
                log.exception("batch of %d chunks failed", len(batch))
                error = exc
            elapsed = time.perf_counter() - started
            if self.on_batch:
                self.on_batch(len(batch), elapsed)
            with self._cond:
                self.stats.busy_workers -= 1
                self.stats.batches += 1
                self.stats.batched_chunks += len(batch)
                self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
                self._pending.extend(t for t in tails if id(t.job) in self._tickets and not t.job.cancelled)
                for chunk in batch:
                    self._chunk_done(chunk, error)
                self._cond.notify_all()

    def _chunk_done(self, chunk: Chunk, error: BaseException | None) -> None:
        job = chunk.job
        ticket = self._tickets.get(id(job))
        if ticket is None or job.cancelled:
            return
        if error is not None:
            self._drop(ticket, "failed")
            _resolve(ticket, error if isinstance(error, STTError) else STTError(f"Transcription failed: {error}"))
            return
        if ticket.queue_wait is None:
            ticket.queue_wait = time.monotonic() - job.created
            self.stats.queue_wait_seconds.append(ticket.queue_wait)
            del self.stats.queue_wait_seconds[:-1000]
        job.done_count += 1
        if chunk.index == 0 and job.options.language is None:  # language now known: release the other VAD chunks
            self._pending.extend(c for c in job.chunks[1:] if c.depth == 0)
        if job.finished:
            self._complete(ticket)


def _resolve(ticket: _Ticket, result: Transcript | BaseException) -> None:
    def settle() -> None:
        if ticket.future.done():
            return
        if isinstance(result, BaseException):
            ticket.future.set_exception(result)
        else:
            ticket.future.set_result(result)

    ticket.loop.call_soon_threadsafe(settle)
