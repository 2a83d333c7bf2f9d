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
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from stt_engine.scheduler.policy import slot_rank

T = TypeVar("T")


class RankedSlots:
    """`size` slots on one event loop, given to waiters lowest `slot_rank` first. Not thread-safe (loop only)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        self._waiting: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for *_, f in self._waiting if not f.done())

    @contextlib.asynccontextmanager
    async def slot(self, seconds: float | None = None) -> AsyncIterator[None]:
        """Hold one slot; `seconds` is the file's declared length (None: unknown, ranked as long)."""
        await self._acquire(seconds)
        try:
            yield
        finally:
            self._release()

    async def __aenter__(self) -> None:  # `async with slots:` works as it did with a semaphore (unknown length)
        await self._acquire(None)

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    async def _acquire(self, seconds: float | None) -> None:
        if self.free > 0 and not self.waiting:
            self.free -= 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (slot_rank(seconds, time.monotonic()), next(self._seq), granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release()  # it was handed to us as we were cancelled: pass it on
            raise

    def _release(self) -> None:
        while self._waiting:
            *_, granted = heapq.heappop(self._waiting)
            if not granted.done():
                granted.set_result(None)
                return
        self.free += 1


class RankedPool:
    """A fixed set of threads that run submitted calls lowest rank first (a ThreadPoolExecutor runs them FIFO).
    A call whose future was cancelled before it started is skipped."""

    def __init__(self, threads: int, name: str) -> None:
        self._heap: list[tuple[float, int, Future[Any], Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, rank: float, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._cond:
            if self._stopping:
                raise RuntimeError("the pool is shut down")
            heapq.heappush(self._heap, (rank, next(self._seq), future, fn, args))
            self._cond.notify()
        return future

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._heap and not self._stopping:
                    self._cond.wait()
                if self._stopping and not self._heap:
                    return
                _, _, future, fn, args = heapq.heappop(self._heap)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the caller, like ThreadPoolExecutor
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Cancel what has not started; the threads end after their current call."""
        with self._cond:
            self._stopping = True
            pending, self._heap = self._heap, []
            self._cond.notify_all()
        for _, _, future, _, _ in pending:
            future.cancel()
