"""Between the API and the model: admission control, fairness, and batching of windows across requests.

Flow of one request: `transcribe()` admits it (429 with Retry-After when the queue is full, at once), VAD runs in a
small prep pool, and the job's sections join the pool of ready work. `workers` threads (one per CTranslate2 model
worker) each take a batch chosen by `policy.pick_batch` (priority, then round-robin over requests, equal batch
keys only), decode it outside the lock, and put the sections back. A request's timeout runs from its first decode,
not from admission, and a request nobody waits for any more is dropped.

Short before long (issue 18): VAD runs shortest file first (`slots.RankedPool`), a request with little audio left
goes ahead of long ones at its level (with a guaranteed share for the long ones, `policy.long_turn_due`), and when
every worker is busy with a long request's window, a short request's window starts at once on the all-cores
instance (`policy.express`) instead of waiting seconds for one of them to end.

Nothing here runs on the event loop: results come back through `loop.call_soon_threadsafe`. The lock guards only
bookkeeping; decoding and assembling a transcript happen outside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from stt_engine.audio import SAMPLE_RATE, DecodedAudio
from stt_engine.engine import Engine, Job, Stream
from stt_engine.engine.job import HOP
from stt_engine.errors import AudioTooLong, Overloaded, RequestTimeout, ShuttingDown, TranscriptionFailed
from stt_engine.logging_setup import request_id_var
from stt_engine.options import TranscribeOptions
from stt_engine.scheduler.policy import (
    Candidate,
    Priority,
    Turn,
    admits,
    effective_priority,
    express,
    fair_share,
    is_short,
    level,
    long_turn_due,
    pick_batch,
    run_solo,
    slot_rank,
)
from stt_engine.scheduler.slots import CoreGate, RankedPool
from stt_engine.types import Segment, Transcript

__all__ = ["Priority", "Scheduler", "SchedulerStats"]

log = logging.getLogger(__name__)

SegmentsCallback = Callable[[list[Segment], str | None], None]  # newly final segments, the job's language


@dataclass
class SchedulerStats:
    """Counters the metrics endpoint and /health read; plain numbers, updated under the scheduler's lock."""

    submitted: int = 0
    completed: int = 0
    rejected: int = 0
    cancelled: int = 0
    failed: int = 0
    batches: int = 0
    batched_chunks: int = 0
    largest_batch: int = 0
    express_batches: int = 0
    retried_batches: int = 0
    audio_seconds: float = 0.0
    busy_workers: int = 0
    workers_alive: int = 0
    queue_wait_seconds: list[float] = field(default_factory=list)


@dataclass(eq=False)
class _Ticket:
    """The scheduler's bookkeeping for one request: its job, its place in line, and the futures it resolves."""

    seq: int
    priority: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Transcript]
    started: asyncio.Future[None]  # set when its first window starts decoding (the timeout runs from then)
    admitted_seconds: float
    exclusive: bool = False  # never batched with other requests (the warm-up)
    bounded: bool = True  # counts toward the queue's bounds
    on_segments: SegmentsCallback | None = None
    first_text_early: bool = False  # its first window decodes before its other windows (streaming)
    job: Job | None = None  # None while VAD runs
    admitted_at: float = field(default_factory=time.monotonic)
    served_at: float = field(default_factory=time.monotonic)  # when a window of it last started (else admission)
    queue_wait: float | None = None
    last_served: int = -1
    finishing: bool = False
    request_id: str | None = None
    prepared_at: float | None = None
    short: bool = False  # at most SHORT_SECONDS of audio left to decode (updated as it is decoded)


class Scheduler:
    """Admission control, fairness and cross-request batching in front of one `Engine`."""

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
        gate: CoreGate | None = None,
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
        self._tickets: dict[int, _Ticket] = {}  # seq -> ticket, for every admitted, unfinished request
        self._queued_seconds = 0.0
        self._seq = itertools.count()
        self._tick = itertools.count()
        self._stopping = False
        self._prep = RankedPool(max(1, engine.workers), "stt-prep")
        self.gate = gate  # decoding slots shared with other models' schedulers (model_registry)
        self._short_in_a_row = 0  # batches in a row that went to short requests while long ones had ready windows
        self._long_busy = 0  # workers decoding a long request's window
        self._express_busy = False
        self._solo_busy = 0  # workers decoding on the all-cores instance
        self._threads = [
            threading.Thread(target=self._worker, name=f"stt-worker-{i}", daemon=True) for i in range(engine.workers)
        ]
        self.stats.workers_alive = len(self._threads)
        for thread in self._threads:
            thread.start()
        self._express_thread: threading.Thread | None = None
        if getattr(engine, "has_solo", False) and engine.workers > 1:
            self._express_thread = threading.Thread(target=self._express, name="stt-express", daemon=True)
            self._express_thread.start()

    # --- public, called on the event loop ------------------------------------------------------------
    @property
    def queued_requests(self) -> int:
        return len(self._tickets)

    @property
    def queued_seconds(self) -> float:
        return self._queued_seconds

    @property
    def workers_expected(self) -> int:
        return len(self._threads)

    def timeout_for(self, duration: float) -> float:
        return self.timeout_base_s + self.timeout_rtf * duration

    def admit(self, duration: float, *, pending_requests: int = 0, pending_seconds: float = 0.0) -> None:
        """Refuse at once what cannot be queued now: 429 with Retry-After when the queue is full, 422 for a file
        that could never fit (it would lock everyone else out), 503 while shutting down. `pending_*` count
        uploads admitted from their headers but still decoding (not yet queued here)."""
        if duration > self.max_queue_seconds:
            raise AudioTooLong(
                f"The audio is {duration:.0f} s long; this server queues at most {self.max_queue_seconds:.0f} s of "
                "audio at a time (MAX_QUEUE_SECONDS). Split the file into shorter parts."
            )
        with self._cond:
            waiting = sum(1 for t in self._tickets.values() if t.bounded) + pending_requests
            queued = self._queued_seconds + pending_seconds
            full = not admits(duration, waiting, queued, self.max_queued_requests, self.max_queue_seconds)
            if self._stopping:
                self.stats.rejected += 1
                raise ShuttingDown("The server is shutting down; retry on another instance.",
                                   headers={"Retry-After": "5"})
            if full:
                self.stats.rejected += 1
                retry = self._retry_after(queued)
                raise Overloaded(
                    f"The server is busy ({waiting} requests / {queued:.0f} s of audio already queued or being "
                    f"decoded). Retry after {retry} s.",
                    headers={"Retry-After": str(retry)},
                )

    async def transcribe(
        self,
        audio: DecodedAudio,
        options: TranscribeOptions,
        *,
        priority: int = Priority.FILE,
        on_segments: SegmentsCallback | None = None,
        exclusive: bool = False,
        timed: bool = True,
        bounded: bool = True,
        first_text_early: bool = False,
    ) -> Transcript:
        """Queue `audio` and wait for its transcript. Cancelling the awaiting task drops the queued work.

        `on_segments` is called from a worker thread with each run of newly final segments, in order (for
        streaming responses), and `first_text_early` decodes the first window before the others (alone, on every
        core when nothing else is decoding) so the first of them come soon, with the plan of a file (same text);
        `exclusive` keeps the request out of other requests' batches and `timed=False` spares it the request timeout
        (the warm-up, which must finish however short the timeout is set); `bounded=False` leaves it out of the
        queue's bounds (jobs, which the job store bounds).
        """
        if bounded:
            self.admit(audio.duration)
        loop = asyncio.get_running_loop()
        with self._cond:
            ticket = _Ticket(
                seq=next(self._seq), priority=int(priority), loop=loop, future=loop.create_future(),
                started=loop.create_future(), admitted_seconds=audio.duration if bounded else 0.0,
                exclusive=exclusive, on_segments=on_segments, bounded=bounded, first_text_early=first_text_early,
                request_id=request_id_var.get(),
            )
            self._tickets[ticket.seq] = ticket
            self._queued_seconds += ticket.admitted_seconds
            self.stats.submitted += 1
        try:
            job = await asyncio.wrap_future(self._prep.submit(
                slot_rank(audio.duration, time.monotonic()), self.engine.prepare, audio, options,
                short=is_short(audio.duration),
            ))
            ticket.prepared_at = time.monotonic()
            self._enqueue(ticket, job)
            await asyncio.wait({ticket.started, ticket.future}, return_when=asyncio.FIRST_COMPLETED)
            timeout = self.timeout_for(audio.duration) if timed else None
            try:
                return await asyncio.wait_for(asyncio.shield(ticket.future), timeout)
            except asyncio.TimeoutError:
                raise RequestTimeout(
                    f"Transcription did not finish within {timeout or 0:.0f} s of its start (REQUEST_TIMEOUT_BASE_S + "
                    f"REQUEST_TIMEOUT_RTF x {audio.duration:.0f} s of audio)."
                ) from None
        except asyncio.CancelledError:
            self._drop(ticket, "cancelled")
            raise
        except BaseException:
            self._drop(ticket, "failed")
            raise

    def close(self, timeout: float | None = None, busy: Callable[[], bool] | None = None) -> None:
        """Let the work in flight finish for at most `timeout` seconds (None: no limit); then answer every request
        still waiting with 503, refuse new ones, and stop the threads.

        `busy` says whether requests not queued here yet are still in flight (an upload still arriving when SIGTERM
        came): the drain waits for them too, and admits them when they get here, so a request the server had
        already accepted is served within the grace instead of refused."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def working() -> bool:
            return bool(self._tickets) or (busy is not None and busy())

        with self._cond:
            while working() and (deadline is None or time.monotonic() < deadline):
                self._cond.wait(timeout=0.1 if deadline is None else max(0.01, min(0.1, deadline - time.monotonic())))
            self._stopping = True
            self._cond.notify_all()
            left = list(self._tickets.values())
            for ticket in left:
                self._forget(ticket)
            self._cond.notify_all()
        for ticket in left:
            _resolve(ticket, ShuttingDown(
                f"The server shut down before this transcription finished (SHUTDOWN_GRACE_S={timeout or 0:g} s). "
                "Send it again.", headers={"Retry-After": "5"},
            ))
        for thread in self._threads + ([self._express_thread] if self._express_thread else []):
            thread.join(timeout=1)
        self._prep.shutdown()

    # --- bookkeeping (under the lock) ---------------------------------------------------------------------
    def _retry_after(self, queued: float) -> int:
        """Seconds until the queue has likely drained somewhat: queued audio over a conservative speed."""
        return max(1, min(120, math.ceil(queued / (10.0 * max(1, self.engine.workers)))))

    def _enqueue(self, ticket: _Ticket, job: Job) -> None:
        finished = False
        with self._cond:
            if ticket.seq not in self._tickets:
                return  # dropped while VAD ran
            ticket.job = job
            if not job.streams:
                ticket.finishing = finished = True
                self._forget(ticket)
            self._cond.notify_all()
        if finished:
            self._finish(ticket)

    def _forget(self, ticket: _Ticket) -> None:
        if self._tickets.pop(ticket.seq, None) is not None:
            self._queued_seconds = max(0.0, self._queued_seconds - ticket.admitted_seconds)
            self._cond.notify_all()

    def _drop(self, ticket: _Ticket, reason: str) -> None:
        """Forget a request (client gone, timeout, error). Windows already decoding finish and are discarded."""
        with self._cond:
            if ticket.seq not in self._tickets:
                return
            self._forget(ticket)
            if reason == "cancelled":
                self.stats.cancelled += 1
            else:
                self.stats.failed += 1
        log.info("dropped a %s request", reason)

    def _ready(self) -> tuple[list[Candidate], list[Turn], dict[tuple[int, int], Stream]]:
        """Every window that could start now: streams not done, not decoding, and whose language is known (a job
        that must detect it decodes its first window alone first, so the whole request uses one language; so does a
        `first_text_early` one, so its first text is final after one window on every core); and each request's turn:
        its level (`policy.level`), and whether it is short."""
        candidates: list[Candidate] = []
        pending: list[tuple[_Ticket, int]] = []
        streams: dict[tuple[int, int], Stream] = {}
        now = time.monotonic()
        for ticket in self._tickets.values():
            job = ticket.job
            if job is None or ticket.finishing:
                continue
            key = ("exclusive", ticket.seq) if ticket.exclusive else self.engine.batch_key(job)
            if job.language is None or (ticket.first_text_early and job.streams[0].first_window):
                first = job.streams[0]
                ready = [first] if not first.in_flight and not first.done else []
            else:
                ready = [s for s in job.streams if not s.in_flight and not s.done]
            for stream in ready:
                candidates.append(Candidate(ticket.seq, stream.index, key))
                streams[(ticket.seq, stream.index)] = stream
            if ready:
                left = sum(max(0, s.frames - s.seek) for s in job.streams if not s.done) * HOP / SAMPLE_RATE
                ticket.short = is_short(left)
                pending.append((ticket, effective_priority(ticket.priority, now - ticket.served_at)))
        top = max((t.priority for t, _ in pending), default=0)
        turns = [Turn(t.seq, level(p, top), t.last_served, t.seq, t.short) for t, p in pending]
        return candidates, turns, streams

    def _claim(self, chosen: list[Candidate], streams: dict[tuple[int, int], Stream]) -> list[Stream]:
        """Mark the chosen windows as decoding; a request's first one starts its timeout."""
        now = time.monotonic()
        batch = []
        for candidate in chosen:
            stream = streams[(candidate.ticket, candidate.stream)]
            stream.in_flight = True
            ticket = self._tickets[candidate.ticket]
            ticket.last_served = next(self._tick)
            ticket.served_at = now
            if ticket.queue_wait is None:
                ticket.queue_wait = now - ticket.admitted_at
                self.stats.queue_wait_seconds.append(ticket.queue_wait)
                del self.stats.queue_wait_seconds[:-1000]
                ticket.loop.call_soon_threadsafe(_set_started, ticket.started)
                if ticket.queue_wait >= 1.0 and ticket.bounded:
                    prep = (ticket.prepared_at or now) - ticket.admitted_at
                    log.info(
                        "first window after %.2f s: VAD %.2f s, then %.2f s in the queue", ticket.queue_wait, prep,
                        ticket.queue_wait - prep, extra={
                            "request_id": ticket.request_id, "first_window_at": time.time(),
                            "prep_seconds": round(prep, 3), "queue_wait_seconds": round(ticket.queue_wait, 3),
                        },
                    )
            batch.append(stream)
        return batch

    def _await_work(self) -> bool:
        """Wait until a window is ready. False: stop."""
        while True:
            if self._stopping and not self._tickets:
                return False
            if self._ready()[0]:
                return True
            self._cond.wait(timeout=0.5)

    def _top_priority(self) -> int:
        """The highest priority among the requests with a ready window (-1: none), for the shared `gate`."""
        with self._cond:
            candidates, _, _ = self._ready()
            return max((self._tickets[c.ticket].priority for c in candidates), default=-1)

    def _take_batch(self, wait: bool = True) -> tuple[list[Stream], bool, bool] | None:
        """Wait for ready work (or, `wait` false, take none if another worker took it), then take this worker's
        fair share of it as one batch, whether it may run on every core (it is all there is to do), and whether
        it is a long request's. None: stop."""
        if (wait and not self._await_work()) or (self._stopping and not self._tickets):
            return None
        candidates, turns, streams = self._ready()
        if not candidates:
            return [], False, False
        if len(candidates) < self.batch_size and self.batch_wait > 0 and self.batch_size > 1:
            self._cond.wait(timeout=self.batch_wait)  # let concurrent requests join this batch
            candidates, turns, streams = self._ready()
            if not candidates:
                return [], False, False
        idle = max(1, self.stats.workers_alive - self.stats.busy_workers)
        long_waiting = any(not t.short for t in turns)
        long_first = long_waiting and long_turn_due(self._short_in_a_row)
        chosen = pick_batch(candidates, turns, fair_share(len(candidates), self.batch_size, idle), long_first)
        long = not self._tickets[chosen[0].ticket].short
        self._short_in_a_row = 0 if long else self._short_in_a_row + int(long_waiting)
        batch = self._claim(chosen, streams)
        solo = run_solo(len(chosen), len(candidates), self.stats.busy_workers + int(self._express_busy))
        self.stats.busy_workers += 1
        self._long_busy += int(long)
        self._solo_busy += int(solo)
        return batch, solo, long

    def _take_express(self) -> list[Stream] | None:
        """Wait until a short request's window is ready while every worker decodes a long one's and the all-cores
        instance is idle (`policy.express`); take that window. None: stop."""
        while not self._stopping:
            candidates, turns, streams = self._ready()
            short = [t for t in turns if t.short]
            if express(bool(short), self.stats.busy_workers, self.stats.workers_alive, self._long_busy,
                       not self._express_busy and not self._solo_busy):
                tickets = {t.ticket for t in short}
                chosen = pick_batch([c for c in candidates if c.ticket in tickets], short, 1)
                self._express_busy = True
                self.stats.express_batches += 1
                return self._claim(chosen, streams)
            self._cond.wait(timeout=0.5)
        return None

    # --- worker threads ------------------------------------------------------------------------------------
    def _worker(self) -> None:
        """Take a batch, decode it, hand back the results; forever. Nothing that goes wrong in one iteration,
        decoding or bookkeeping, ends the thread; if it ends anyway, /health reports fewer workers alive."""
        try:
            while True:
                try:
                    gate = self.gate  # shared with other models: a slot first, then the batch (never held waiting)
                    if gate:
                        with self._cond:
                            if not self._await_work():
                                return
                    with gate.slot(self._top_priority) if gate else contextlib.nullcontext():
                        with self._cond:
                            taken = self._take_batch(wait=gate is None)
                        if taken is None:
                            return
                        batch, solo, long = taken
                        if batch:
                            self._run(batch, solo, long=long)
                except Exception:
                    log.exception("scheduler worker: unexpected error; continuing")
                    time.sleep(0.1)
        finally:
            with self._cond:
                self.stats.workers_alive -= 1
            if not self._stopping:
                log.error("scheduler worker %s stopped", threading.current_thread().name)

    def _express(self) -> None:
        """The express lane: a short request's window on the all-cores instance beside busy workers."""
        while True:
            try:
                with self._cond:
                    batch = self._take_express()
                if batch is None:
                    return
                self._run(batch, True, express=True)
            except Exception:
                log.exception("scheduler express lane: unexpected error; continuing")
                time.sleep(0.1)

    def _run(self, batch: list[Stream], solo: bool = False, *, long: bool = False, express: bool = False) -> None:
        """Decode one batch; a batch that fails is retried window by window, so one bad window fails only its
        own request. `long`: a long request's (counted for the express lane); `express`: the express lane's."""
        started = time.perf_counter()
        failed: list[Stream] = []
        try:
            self.engine.decode(batch, solo=solo)
        except Exception:
            if len(batch) == 1:
                log.exception("decoding a window failed")
                failed = batch
            else:
                log.warning("a batch of %d windows failed; retrying them one by one", len(batch), exc_info=True)
                self.stats.retried_batches += 1
                for stream in batch:
                    try:
                        self.engine.decode([stream])
                    except Exception:
                        log.exception("decoding a window failed")
                        failed.append(stream)
        elapsed = time.perf_counter() - started
        if self.on_batch:
            try:
                self.on_batch(len(batch), elapsed)
            except Exception:
                log.exception("the on_batch hook failed")
        finished: list[_Ticket] = []
        progressed: list[_Ticket] = []
        errors: list[_Ticket] = []
        with self._cond:
            if express:
                self._express_busy = False
            else:
                self.stats.busy_workers -= 1
                self._long_busy -= int(long)
                self._solo_busy -= int(solo)
            self.stats.batches += 1
            self.stats.batched_chunks += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            for stream in batch:
                stream.in_flight = False
                ticket = self._ticket_of(stream.job)
                if ticket is None or ticket.finishing:
                    continue
                if any(stream is f for f in failed):
                    ticket.finishing = True
                    self._forget(ticket)
                    self.stats.failed += 1
                    errors.append(ticket)
                elif stream.job.finished:
                    ticket.finishing = True
                    self._forget(ticket)
                    finished.append(ticket)
                elif ticket.on_segments is not None and ticket not in progressed:
                    progressed.append(ticket)
            self._cond.notify_all()
        for ticket in errors:
            _resolve(ticket, TranscriptionFailed(
                "Transcription failed inside the model. The server log has the details under this request's id."
            ))
        for ticket in progressed:
            self._emit(ticket)
        for ticket in finished:
            self._finish(ticket)

    def _ticket_of(self, job: Job) -> _Ticket | None:
        return next((t for t in self._tickets.values() if t.job is job), None)

    def _emit(self, ticket: _Ticket) -> None:
        """Hand newly final segments to a streaming request. They are assembled outside the lock; the hand-over
        happens under it, so two workers never deliver out of order (callbacks only schedule work on the loop)."""
        assert ticket.job is not None and ticket.on_segments is not None
        segments = self.engine.final_segments(ticket.job)
        with self._cond:
            fresh = segments[ticket.job.emitted:]
            if not fresh:
                return
            ticket.job.emitted = len(segments)
            try:
                ticket.on_segments(fresh, ticket.job.language)
            except Exception:
                log.exception("a streaming callback failed")

    def _finish(self, ticket: _Ticket) -> None:
        """Assemble the transcript outside the lock and resolve the request."""
        assert ticket.job is not None
        try:
            if ticket.on_segments is not None:
                self._emit(ticket)
            result: Transcript | BaseException = self.engine.transcript(ticket.job)
            result.queue_wait_seconds = ticket.queue_wait
            ticket.job.release()
            with self._cond:
                self.stats.completed += 1
                self.stats.audio_seconds += ticket.job.duration
        except Exception:
            log.exception("assembling a transcript failed")
            result = TranscriptionFailed("Assembling the transcript failed. The server log has the details.")
        _resolve(ticket, result)


def _set_started(started: asyncio.Future[None]) -> None:
    if not started.done():
        started.set_result(None)


def _resolve(ticket: _Ticket, result: Transcript | BaseException) -> None:
    def settle() -> None:
        _set_started(ticket.started)
        if ticket.future.done():
            return
        if isinstance(result, BaseException):
            ticket.future.set_exception(result)
        else:
            ticket.future.set_result(result)

    try:
        ticket.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass
