"""Limited resources served in `policy.slot_rank` order instead of arrival order: decoding slots for uploads (on
the event loop) and the VAD threads. With FIFO, a 9 s upload that came after 64 five-minute ones waited for all of
their container decodes and all of their VADs before its own; ranked, it waits for the ones already running."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

from stt_engine.scheduler.policy import is_short, next_at_gate, slot_rank

T = TypeVar("T")


class RankedSlots:
    """`size` slots on one event loop, given to waiters lowest `slot_rank` first, plus `reserved` more that only
    short files (`policy.is_short` on the declared length) may take: a short upload then never waits for the long
    ones being decoded, only for other short ones. Not thread-safe (the loop's only)."""

    def __init__(self, size: int, reserved: int = 1) -> None:
        self.size = size
        self.free = {False: size, True: reserved}  # reserved-for-short -> free slots
        self._waiting: list[tuple[float, int, bool, asyncio.Future[bool]]] = []
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for *_, f in self._waiting if not f.done())

    @contextlib.asynccontextmanager
    async def slot(self, seconds: float | None = None) -> AsyncIterator[None]:
        """Hold one slot; `seconds` is the file's declared length (None: unknown, ranked as long)."""
        reserved = await self._acquire(seconds)
        try:
            yield
        finally:
            self._release(reserved)

    async def _acquire(self, seconds: float | None) -> bool:
        """Wait for a slot; True when it is a reserved one."""
        short = seconds is not None and is_short(seconds)
        if self.free[False] > 0 and not self.waiting:
            self.free[False] -= 1
            return False
        if short and self.free[True] > 0:
            self.free[True] -= 1
            return True
        granted: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (slot_rank(seconds, time.monotonic()), next(self._seq), short, granted))
        try:
            return await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release(granted.result())  # it was handed to us as we were cancelled: pass it on
            raise

    def _release(self, reserved: bool) -> None:
        """Hand the slot to the best waiter that may take it (a reserved one only to a short file), else free it."""
        for entry in sorted(self._waiting):
            *_, short, granted = entry
            if granted.done():
                self._waiting.remove(entry)
            elif short or not reserved:
                self._waiting.remove(entry)
                heapq.heapify(self._waiting)
                granted.set_result(reserved)
                return
        heapq.heapify(self._waiting)
        self.free[reserved] += 1


class RankedPool:
    """Threads that run submitted calls lowest rank first (a ThreadPoolExecutor runs them FIFO), plus
    `short_threads` that run only calls marked short: a short file's VAD (milliseconds) never waits behind a long
    file's (seconds). A call whose future was cancelled before it started is skipped."""

    def __init__(self, threads: int, name: str, short_threads: int = 1) -> None:
        self._heap: list[tuple[float, int, bool, Future[Any], Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._threads = [threading.Thread(target=self._loop, args=(i >= threads,), name=f"{name}-{i}", daemon=True)
                         for i in range(threads + short_threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, rank: float, fn: Callable[..., T], *args: Any, short: bool = False) -> Future[T]:
        future: Future[T] = Future()
        with self._cond:
            if self._stopping:
                raise RuntimeError("the pool is shut down")
            heapq.heappush(self._heap, (rank, next(self._seq), short, future, fn, args))
            self._cond.notify_all()
        return future

    def _next(self, short_only: bool) -> tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None:
        """The lowest-ranked call this thread may run, taken off the heap (under the lock)."""
        if not short_only:
            return heapq.heappop(self._heap)[3:] if self._heap else None
        entry = min((e for e in self._heap if e[2]), default=None)
        if entry is None:
            return None
        self._heap.remove(entry)
        heapq.heapify(self._heap)
        return entry[3:]

    def _loop(self, short_only: bool) -> None:
        while True:
            with self._cond:
                while (taken := self._next(short_only)) is None and not self._stopping:
                    self._cond.wait()
                if taken is None:
                    return
            future, fn, args = taken
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # handed to the caller, like ThreadPoolExecutor
                    future.set_exception(exc)
            # an idle thread must not keep its last call's audio (and result) alive until the next call
            del taken, future, fn, args

    def shutdown(self) -> None:
        """Cancel what has not started; the threads end after their current call."""
        with self._cond:
            self._stopping = True
            pending, self._heap = self._heap, []
            self._cond.notify_all()
        for entry in pending:
            entry[3].cancel()


class CoreGate:
    """Decoding slots shared by the schedulers of every model a server serves (one slot per core on a CPU). Each
    model's workers are sized for the whole machine; with two models busy, a worker waits here for a slot before it
    takes a batch, and the slot goes to the worker whose model has the request that ranks first across models
    (`policy.next_at_gate`): a live turn of one model before file work of another, and no more windows decoding at
    once than the machine has room for. Each waiter's priority is asked again whenever a slot frees, so work that
    arrives meanwhile counts. With one model busy nothing waits: its workers are never more than the slots."""

    def __init__(self, slots: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.slots = max(1, slots)
        self.free = self.slots
        self.clock = clock
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._waiting: list[tuple[Callable[[], int], float, int]] = []

    def _first(self) -> tuple[Callable[[], int], float, int]:
        ranks = [(priority(), since, seq) for priority, since, seq in self._waiting]
        return self._waiting[next_at_gate(ranks, self.clock())]

    @contextlib.contextmanager
    def slot(self, priority: Callable[[], int]) -> Iterator[None]:
        """Hold one slot for the `with` body. `priority()`: the best priority the caller has work for now (it may
        take its scheduler's lock: the gate never runs while a scheduler holds its own)."""
        me = (priority, self.clock(), next(self._seq))
        with self._cond:
            self._waiting.append(me)
            while not (self.free and self._first() is me):
                self._cond.wait(timeout=0.5)  # priorities age and new work arrives while waiting: look again
            self._waiting.remove(me)
            self.free -= 1
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self.free += 1
                self._cond.notify_all()
