"""Scheduler policy with a stand-in engine: fairness, priorities, batch keys, failures, shutdown, timeouts.

The stand-in is fine here: this is the scheduler's policy, not the path a user's audio takes (that is tested with
the real model everywhere else). Its 'windows' are sections of silence that it marks decoded, recording each batch.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Hashable, Sequence
from dataclasses import replace

import numpy as np
import pytest

from stt_engine.audio import SAMPLE_RATE, DecodedAudio
from stt_engine.engine import Job, Stream
from stt_engine.engine.job import HOP
from stt_engine.errors import RequestTimeout, ShuttingDown, TranscriptionFailed
from stt_engine.options import TranscribeOptions
from stt_engine.scheduler import Priority, Scheduler
from stt_engine.scheduler.policy import (
    LONG_TURN_EVERY,
    SLOT_MAX_HEADSTART,
    STARVE_AFTER_SECONDS,
    Candidate,
    Turn,
    admits,
    effective_priority,
    express,
    fair_share,
    level,
    long_turn_due,
    next_at_gate,
    pick_batch,
    run_solo,
    slot_rank,
)
from stt_engine.scheduler.slots import CoreGate, RankedPool, RankedSlots
from stt_engine.types import Transcript

EN = TranscribeOptions(language="en")


class StandInEngine:
    """Each stream is one window per `window_s`; decoding a window sleeps `delay` and records who was in the batch."""

    def __init__(self, workers: int = 1, batch_size: int = 1, delay: float = 0.01, window_s: float = 30.0) -> None:
        self.workers, self.batch_size, self.delay, self.window_s = workers, batch_size, delay, window_s
        self.batches: list[list[tuple[str, int]]] = []
        self.fail_on: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()

    def prepare(self, audio: DecodedAudio, options: TranscribeOptions, streamed: bool = False) -> Job:
        job = Job(options=options, samples=audio.samples, duration=audio.duration,
                  speech=[{"start": 0, "end": len(audio.samples)}], language=options.language)
        job.name = audio.source_format  # type: ignore[attr-defined]
        step = int(self.window_s * SAMPLE_RATE)
        job.streams = [Stream(job, i, a, min(a + step, len(audio.samples)))
                       for i, a in enumerate(range(0, len(audio.samples), step))]
        return job

    def batch_key(self, job: Job) -> Hashable:
        return replace(job.options, language=None)

    def decode(self, streams: Sequence[Stream], *, solo: bool = False) -> None:
        self.gate.wait()
        names = [(s.job.name, s.index) for s in streams]  # type: ignore[attr-defined]
        with self._lock:
            self.batches.append(names)
        time.sleep(self.delay)
        if any(name in self.fail_on for name, _ in names):
            raise RuntimeError("secret internal detail")
        for stream in streams:
            if stream.job.language is None:
                stream.job.language = "en"
            stream.seek = stream.frames

    def final_segments(self, job: Job) -> list:
        return []

    def transcript(self, job: Job) -> Transcript:
        return Transcript(job.name, job.language, 1.0, job.duration, job.duration, [])  # type: ignore[attr-defined]


def audio(name: str, seconds: float) -> DecodedAudio:
    return DecodedAudio(np.zeros(int(seconds * SAMPLE_RATE) + HOP, dtype=np.float32), name, SAMPLE_RATE, 1)


def order(engine: StandInEngine) -> list[str]:
    return [name for batch in engine.batches for name, _ in batch]


async def test_round_robin_lets_a_short_request_pass_a_long_one() -> None:
    engine = StandInEngine(workers=1)
    engine.gate.clear()
    scheduler = Scheduler(engine, max_queue_seconds=10_000)
    long = asyncio.ensure_future(scheduler.transcribe(audio("long", 600), EN))  # 20 windows
    await asyncio.sleep(0.2)
    short = asyncio.ensure_future(scheduler.transcribe(audio("short", 10), EN))
    await asyncio.sleep(0.2)
    engine.gate.set()
    await asyncio.gather(long, short)
    scheduler.close(1)
    assert order(engine).index("short") <= 2, order(engine)


async def test_live_sessions_go_first_and_jobs_last() -> None:
    engine = StandInEngine(workers=1)
    engine.gate.clear()
    scheduler = Scheduler(engine, max_queue_seconds=10_000)
    job = asyncio.ensure_future(scheduler.transcribe(audio("job", 120), EN, priority=Priority.JOB))
    await asyncio.sleep(0.1)
    file = asyncio.ensure_future(scheduler.transcribe(audio("file", 60), EN, priority=Priority.FILE))
    live = asyncio.ensure_future(scheduler.transcribe(audio("live", 5), EN, priority=Priority.LIVE))
    await asyncio.sleep(0.2)
    engine.gate.set()
    await asyncio.gather(job, file, live)
    scheduler.close(1)
    names = order(engine)[1:]  # the first window was taken before the others arrived
    assert names.index("live") < names.index("file") < len(names) - 1 - names[::-1].index("job"), names


async def test_different_options_never_share_a_batch() -> None:
    engine = StandInEngine(workers=1, batch_size=8)
    engine.gate.clear()
    scheduler = Scheduler(engine, batch_wait_ms=50)
    words = replace(EN, word_timestamps=True)
    tasks = [asyncio.ensure_future(scheduler.transcribe(audio(f"plain{i}", 5), EN)) for i in range(3)]
    tasks += [asyncio.ensure_future(scheduler.transcribe(audio(f"words{i}", 5), words)) for i in range(3)]
    tasks.append(asyncio.ensure_future(scheduler.transcribe(audio("warmup", 5), EN, exclusive=True)))
    await asyncio.sleep(0.2)
    engine.gate.set()
    await asyncio.gather(*tasks)
    scheduler.close(1)
    for batch in engine.batches:
        kinds = {name.rstrip("0123456789") for name, _ in batch}
        assert len(kinds) == 1, engine.batches
        assert len(batch) == 1 or "warmup" not in kinds
    assert max(len(b) for b in engine.batches) >= 2, "compatible requests should have shared a batch"


async def test_a_failing_window_fails_only_its_own_request() -> None:
    engine = StandInEngine(workers=1, batch_size=8)
    engine.fail_on = {"bad"}
    engine.gate.clear()
    scheduler = Scheduler(engine, batch_wait_ms=50)
    names = ["good1", "bad", "good2", "good3"]
    tasks = [asyncio.ensure_future(scheduler.transcribe(audio(n, 5), EN)) for n in names]
    await asyncio.sleep(0.2)
    engine.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert max(len(b) for b in engine.batches) >= 2, "the requests should have been batched together"
    for name, result in zip(names, results):
        if name == "bad":
            assert isinstance(result, TranscriptionFailed) and "secret" not in result.message
        else:
            assert isinstance(result, Transcript) and result.text == name
    health = scheduler.stats
    assert health.workers_alive == 1 and health.retried_batches >= 1
    scheduler.close(1)


async def test_close_answers_every_waiting_request_with_503() -> None:
    engine = StandInEngine(workers=1, delay=0.2)
    scheduler = Scheduler(engine, max_queue_seconds=10_000)
    tasks = [asyncio.ensure_future(scheduler.transcribe(audio(f"r{i}", 120), EN)) for i in range(4)]
    await asyncio.sleep(0.1)
    await asyncio.to_thread(scheduler.close, 0.3)
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert all(isinstance(r, ShuttingDown) and r.status == 503 for r in results), results
    assert scheduler.queued_requests == 0


async def test_the_drain_admits_and_serves_a_request_still_arriving() -> None:
    """SIGTERM's drain, told that an upload is still in flight: the request it becomes is admitted and served
    within the grace; once the drain is over, a new request gets 503."""
    engine = StandInEngine(workers=1)
    scheduler = Scheduler(engine, max_queue_seconds=10_000)
    arrived = threading.Event()
    drain = asyncio.ensure_future(asyncio.to_thread(scheduler.close, 5, lambda: not arrived.is_set()))
    await asyncio.sleep(0.2)
    late = asyncio.ensure_future(scheduler.transcribe(audio("late", 10), EN))
    await asyncio.sleep(0)  # admitted and queued: its request is no longer only in flight
    arrived.set()
    assert (await asyncio.wait_for(late, 5)).text == "late"
    await asyncio.wait_for(drain, 5)
    with pytest.raises(ShuttingDown):
        await scheduler.transcribe(audio("after", 10), EN)


async def test_timeout_runs_from_the_first_decode_not_from_admission() -> None:
    engine = StandInEngine(workers=1, delay=0.3)
    engine.gate.clear()
    scheduler = Scheduler(engine, timeout_base_s=0.8, timeout_rtf=0.0, max_queue_seconds=10_000)
    blocker = asyncio.ensure_future(scheduler.transcribe(audio("blocker", 5), EN))  # holds the only worker
    await asyncio.sleep(0.1)
    patient = asyncio.ensure_future(scheduler.transcribe(audio("patient", 5), EN))
    await asyncio.sleep(1.2)  # longer than the timeout, but the patient request has not started yet
    engine.gate.set()
    with pytest.raises(RequestTimeout):
        await blocker
    assert (await patient).text == "patient"
    slow = asyncio.ensure_future(scheduler.transcribe(audio("slow", 300), EN))  # 10 windows x 0.3 s > 0.8 s
    with pytest.raises(RequestTimeout):
        await slow
    scheduler.close(1)


async def test_a_file_that_can_never_fit_is_refused_at_once() -> None:
    scheduler = Scheduler(StandInEngine(), max_queue_seconds=100)
    with pytest.raises(Exception) as caught:
        await scheduler.transcribe(audio("huge", 101), EN)
    assert caught.value.status == 422 and "MAX_QUEUE_SECONDS" in caught.value.message
    scheduler.close(1)


def test_pick_batch_takes_turns_in_priority_then_service_order() -> None:
    key = "k"
    candidates = [Candidate(1, i, key) for i in range(4)] + [Candidate(2, 0, key), Candidate(3, 0, "other")]
    turns = [Turn(1, 1, last_served=5, seq=1), Turn(2, 1, last_served=-1, seq=2), Turn(3, 2, last_served=9, seq=3)]
    assert pick_batch(candidates, turns, 4) == [Candidate(3, 0, "other")]  # live first, alone with its key
    rest = [c for c in candidates if c.ticket != 3]
    assert pick_batch(rest, turns[:2], 3) == [Candidate(2, 0, key), Candidate(1, 0, key), Candidate(1, 1, key)]


def test_only_a_lone_batch_runs_on_every_core() -> None:
    assert run_solo(chosen=1, ready=1, busy_workers=0)
    assert not run_solo(chosen=1, ready=3, busy_workers=0), "others are waiting: leave them the other workers"
    assert not run_solo(chosen=1, ready=1, busy_workers=1), "another worker is decoding"


def test_fair_share_spreads_one_request_over_idle_workers() -> None:
    assert fair_share(ready=4, batch_size=8, idle_workers=2) == 2
    assert fair_share(ready=1, batch_size=8, idle_workers=2) == 1
    assert fair_share(ready=40, batch_size=8, idle_workers=1) == 8


def test_a_request_waiting_too_long_moves_up_so_live_sessions_never_stop_files() -> None:
    """Live before files before jobs, but not for ever: each STARVE_AFTER_SECONDS unserved lifts one level."""
    assert effective_priority(Priority.FILE, 0.5) == Priority.FILE
    assert effective_priority(Priority.FILE, STARVE_AFTER_SECONDS) == Priority.LIVE
    assert effective_priority(Priority.JOB, STARVE_AFTER_SECONDS) == Priority.FILE
    assert effective_priority(Priority.JOB, 5 * STARVE_AFTER_SECONDS) == Priority.LIVE
    live, file = Candidate(1, 0, "k"), Candidate(2, 0, "k")
    fresh = [Turn(1, Priority.LIVE, last_served=9, seq=1), Turn(2, Priority.FILE, last_served=3, seq=2)]
    assert pick_batch([live, file], fresh, 1) == [live]
    starved = [fresh[0], Turn(2, effective_priority(Priority.FILE, STARVE_AFTER_SECONDS), last_served=3, seq=2)]
    assert pick_batch([live, file], starved, 1) == [file]  # same level now, and served less recently


# --- short before long (issue 18) ------------------------------------------------------------------------------


def test_a_short_request_goes_before_long_ones_that_waited_longer() -> None:
    """64 long files that all waited past the starvation bound do not outrank a short one that just came: aging
    lifts a request over higher levels, never over its equals."""
    longs = [Turn(i, level(effective_priority(Priority.FILE, 5 * STARVE_AFTER_SECONDS), Priority.FILE), -1, i)
             for i in range(64)]
    short = Turn(64, level(effective_priority(Priority.FILE, 0.0), Priority.FILE), -1, 64, short=True)
    candidates = [Candidate(t.ticket, 0, "k") for t in longs + [short]]
    assert pick_batch(candidates, longs + [short], 1) == [Candidate(64, 0, "k")]


def test_job_windows_never_go_before_a_short_sync_request() -> None:
    """Jobs run at the lowest level; starved, they rise to the files' level, and there a short file still goes
    first. With live work waiting they may rise to the live level, so a flood of live sessions cannot stop them."""
    jobs = [Turn(i, level(effective_priority(Priority.JOB, 100.0), Priority.FILE), 5, i) for i in range(4)]
    short = Turn(9, level(Priority.FILE, Priority.FILE), -1, 9, short=True)
    candidates = [Candidate(t.ticket, 0, "k") for t in jobs + [short]]
    assert pick_batch(candidates, jobs + [short], 1) == [Candidate(9, 0, "k")]
    assert level(effective_priority(Priority.JOB, 100.0), Priority.LIVE) == Priority.LIVE
    assert level(effective_priority(Priority.JOB, 0.0), Priority.LIVE) == Priority.JOB


def test_long_requests_keep_a_share_while_short_ones_keep_coming() -> None:
    long, short = Turn(1, Priority.FILE, -1, 1), Turn(2, Priority.FILE, 7, 2, short=True)
    candidates = [Candidate(1, 0, "k"), Candidate(2, 0, "k")]
    picks, in_a_row = [], 0
    for _ in range(3 * LONG_TURN_EVERY):
        first = pick_batch(candidates, [long, short], 1, long_first=long_turn_due(in_a_row))[0].ticket
        in_a_row = 0 if first == 1 else in_a_row + 1
        picks.append(first)
    assert picks.count(1) == 3 and picks.count(2) == 3 * (LONG_TURN_EVERY - 1), picks
    assert max(len(run) for run in "".join(map(str, picks)).split("1")) == LONG_TURN_EVERY - 1


def test_a_short_request_is_admitted_when_long_ones_fill_the_queue() -> None:
    assert admits(9.0, waiting=0, queued=3000.0, max_requests=64, max_seconds=3600.0)
    assert not admits(300.0, waiting=10, queued=3000.0, max_requests=64, max_seconds=3600.0), "long ones keep a reserve"
    assert admits(9.0, waiting=60, queued=0.0, max_requests=64, max_seconds=3600.0)
    assert not admits(300.0, waiting=60, queued=0.0, max_requests=64, max_seconds=3600.0)
    assert not admits(9.0, waiting=64, queued=0.0, max_requests=64, max_seconds=3600.0), "the bounds still hold"
    assert not admits(9.0, waiting=1, queued=3595.0, max_requests=64, max_seconds=3600.0)
    assert admits(3500.0, waiting=0, queued=0.0, max_requests=64, max_seconds=3600.0), "a big file fits an empty queue"
    assert not admits(60.0, waiting=1, queued=0.0, max_requests=1, max_seconds=3600.0)


def test_the_express_lane_opens_only_when_every_worker_decodes_a_long_window() -> None:
    assert express(True, busy_workers=2, workers=2, long_busy=2, solo_free=True)
    assert not express(True, busy_workers=1, workers=2, long_busy=1, solo_free=True), "a worker will be free"
    assert not express(True, busy_workers=2, workers=2, long_busy=1, solo_free=True), "short work ends soon"
    assert not express(True, busy_workers=2, workers=2, long_busy=2, solo_free=False)
    assert not express(False, busy_workers=2, workers=2, long_busy=2, solo_free=True)


def test_slots_serve_shorter_files_first_within_an_age_bound() -> None:
    assert slot_rank(9.0, arrived=101.0) < slot_rank(300.0, arrived=100.0)
    assert slot_rank(300.0, arrived=100.0) < slot_rank(1.0, arrived=100.0 + SLOT_MAX_HEADSTART + 1)
    assert slot_rank(None, 100.0) == slot_rank(10_000.0, 100.0) == 100.0 + SLOT_MAX_HEADSTART


async def test_ranked_slots_hand_a_freed_slot_to_the_shortest_waiter() -> None:
    slots = RankedSlots(1, reserved=0)
    served: list[str] = []
    release = asyncio.Event()

    async def use(name: str, seconds: float | None) -> None:
        async with slots.slot(seconds):
            served.append(name)
            await release.wait()

    holder = asyncio.ensure_future(use("first", 300.0))
    await asyncio.sleep(0)
    waiters = [asyncio.ensure_future(use(n, s)) for n, s in (("long", 300.0), ("unknown", None), ("short", 9.0))]
    gone = asyncio.ensure_future(use("cancelled", 1.0))
    await asyncio.sleep(0)
    gone.cancel()
    release.set()
    await asyncio.gather(holder, *waiters)
    assert served == ["first", "short", "long", "unknown"]
    assert slots.free == {False: 1, True: 0} and slots.waiting == 0


async def test_a_short_upload_takes_the_reserved_slot_while_long_ones_decode() -> None:
    slots = RankedSlots(1, reserved=1)
    release = asyncio.Event()
    served: list[str] = []

    async def use(name: str, seconds: float | None) -> None:
        async with slots.slot(seconds):
            served.append(name)
            await release.wait()

    tasks = [asyncio.ensure_future(use("long1", 300.0)), asyncio.ensure_future(use("long2", 300.0))]
    await asyncio.sleep(0)
    tasks.append(asyncio.ensure_future(use("short", 9.0)))
    await asyncio.sleep(0)
    assert served == ["long1", "short"], "the second long upload waits; the short one does not"
    release.set()
    await asyncio.gather(*tasks)
    assert served == ["long1", "short", "long2"] and slots.free == {False: 1, True: 1}


def test_ranked_pool_runs_the_lowest_rank_first_and_skips_cancelled_calls() -> None:
    pool = RankedPool(1, "test-pool")
    gate = threading.Event()
    ran: list[str] = []
    blocker = pool.submit(0.0, gate.wait)
    futures = {name: pool.submit(rank, ran.append, name) for name, rank in (("c", 3.0), ("a", 1.0), ("b", 2.0))}
    futures["b"].cancel()
    gate.set()
    blocker.result(5)
    futures["c"].result(5)
    assert ran == ["a", "c"]
    gate.clear()
    busy = pool.submit(0.0, gate.wait)
    assert pool.submit(9.0, lambda: "short work", short=True).result(5) == "short work", "the short thread ran it"
    gate.set()
    busy.result(5)
    failing = pool.submit(0.0, lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(5)
    pool.shutdown()


class LongWindowsBlock(StandInEngine):
    """Two workers and an all-cores instance; windows of requests named long* wait for `release`."""

    has_solo = True

    def __init__(self) -> None:
        super().__init__(workers=2)
        self.release = threading.Event()
        self.solo_calls: list[str] = []

    def decode(self, streams: Sequence[Stream], *, solo: bool = False) -> None:
        name = streams[0].job.name  # type: ignore[attr-defined]
        if solo:
            self.solo_calls.append(name)
        if name.startswith("long"):
            self.release.wait(10)
        super().decode(streams, solo=solo)


async def test_a_short_request_starts_at_once_while_both_workers_decode_long_windows() -> None:
    engine = LongWindowsBlock()
    scheduler = Scheduler(engine, max_queue_seconds=10_000)
    longs = [asyncio.ensure_future(scheduler.transcribe(audio(f"long{i}", 300), EN)) for i in range(2)]
    while scheduler.stats.busy_workers < 2:
        await asyncio.sleep(0.01)
    short = await asyncio.wait_for(scheduler.transcribe(audio("short", 9), EN), 5)  # long windows still blocked
    assert short.text == "short" and engine.solo_calls == ["short"]
    assert scheduler.stats.express_batches == 1
    engine.release.set()
    await asyncio.gather(*longs)
    scheduler.close(1)


async def test_a_short_request_behind_many_long_ones_gets_the_next_window() -> None:
    engine = StandInEngine(workers=1)
    engine.gate.clear()
    scheduler = Scheduler(engine, max_queue_seconds=100_000, max_queued_requests=100)
    longs = [asyncio.ensure_future(scheduler.transcribe(audio(f"long{i}", 300), EN)) for i in range(16)]
    await asyncio.sleep(0.3)
    short = asyncio.ensure_future(scheduler.transcribe(audio("short", 9), EN))
    await asyncio.sleep(0.3)
    engine.gate.set()
    await asyncio.gather(short, *longs)
    scheduler.close(1)
    assert order(engine).index("short") <= 1, order(engine)[:5]


def test_ranked_pool_lets_go_of_a_finished_calls_audio() -> None:
    """An idle VAD thread must not keep the last file's samples alive (an hour is 230 MB)."""
    import gc
    import weakref

    class Samples:
        pass

    pool = RankedPool(1, "test-pool")
    samples = Samples()
    gone = weakref.ref(samples)
    pool.submit(0.0, lambda s: None, samples).result(5)
    del samples
    for _ in range(50):
        gc.collect()
        if gone() is None:
            break
        time.sleep(0.02)
    assert gone() is None, "the pool still holds the finished call's arguments"
    pool.shutdown()


def test_a_shared_decoding_slot_goes_to_the_highest_priority_then_the_earliest() -> None:
    """Across models (scheduler.slots.CoreGate): (priority, waiting since, arrival) per waiting batch."""
    live, file, job = int(Priority.LIVE), int(Priority.FILE), int(Priority.JOB)
    assert next_at_gate([(file, 0.0, 0), (live, 1.0, 1), (job, 0.0, 2)], now=1.0) == 1
    assert next_at_gate([(file, 0.5, 1), (file, 0.0, 0)], now=1.0) == 1
    # a job batch that waited STARVE_AFTER_SECONDS at the gate ranks as a file's, and came first
    assert next_at_gate([(file, STARVE_AFTER_SECONDS, 1), (job, 0.0, 0)], now=STARVE_AFTER_SECONDS) == 1


async def test_two_models_share_the_cores_and_a_live_turn_of_one_goes_before_file_work_of_the_other() -> None:
    """Each model's workers are sized for the whole machine; with a shared gate of 2 slots, two busy models never
    decode more than 2 windows at once, and a live request to model B starts at the next free slot although
    model A has windows of a file waiting."""
    started: list[str] = []
    running = [0, 0]  # now, most at once
    lock = threading.Lock()

    class Counted(StandInEngine):
        def decode(self, streams: Sequence[Stream], *, solo: bool = False) -> None:
            with lock:
                running[0] += 1
                running[1] = max(running)
                started.extend(s.job.name for s in streams)  # type: ignore[attr-defined]
            try:
                super().decode(streams, solo=solo)
            finally:
                with lock:
                    running[0] -= 1

    gate = CoreGate(2)
    schedulers = []
    for _ in range(2):
        schedulers.append(Scheduler(Counted(workers=2, delay=0.05), max_queue_seconds=10_000, gate=gate))
    a, b = schedulers
    file = asyncio.ensure_future(a.transcribe(audio("file", 3600), EN, priority=Priority.FILE))  # 120 windows
    await asyncio.sleep(0.2)
    job = asyncio.ensure_future(b.transcribe(audio("job", 60), EN, priority=Priority.JOB))
    await asyncio.sleep(0.02)
    live = asyncio.ensure_future(b.transcribe(audio("live", 5), EN, priority=Priority.LIVE))
    arrived = len(started)
    await live
    assert not file.done(), started
    await asyncio.gather(file, job)
    for scheduler in schedulers:
        scheduler.close(1)
    assert running[1] == 2, running
    live_at, job_at = started.index("live"), started.index("job")
    assert live_at <= arrived + 2 and live_at < job_at, (arrived, live_at, job_at, len(started))
