"""The process's own memory: measured after each request, and what was freed handed back to the system.

glibc keeps memory that Python, NumPy and CTranslate2 free in its arenas (one per thread that allocated), so
without help the server's resident size only ever climbs to its peak: the samples of a long file, a batch's
buffers, a burst of uploads. `malloc_trim(0)` returns every free page of every arena to the kernel. It costs a
walk over the heap (milliseconds to tens of them on a large one), so it runs on a worker thread, one at a time,
and only when the resident size has grown by `TRIM_GROWTH_BYTES` since the last trim left it: a run of small
requests costs a read of /proc/self/statm each, nothing more.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

TRIM_GROWTH_BYTES = 32 << 20  # growth since the last trim that is worth a trim
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_libc: Any = None
_libc_checked = False


def rss_bytes() -> int:
    """This process's resident size, from /proc/self/statm (0 where there is no /proc)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def release_memory() -> bool:
    """Give freed heap memory back to the OS (glibc keeps it otherwise). False where there is no glibc."""
    global _libc, _libc_checked
    if not _libc_checked:
        _libc_checked = True
        name = ctypes.util.find_library("c")
        _libc = ctypes.CDLL(name) if name else None
    trim = getattr(_libc, "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True


def should_trim(rss: int, after_last_trim: int, growth: int = TRIM_GROWTH_BYTES) -> bool:
    """The policy: trim once the resident size is `growth` above where the last trim left it."""
    return rss - after_last_trim >= growth


@dataclass
class MemoryReclaimer:
    """Checks the resident size after each request and, when it grew noticeably, trims on a worker thread.

    `schedule` runs a callable off the event loop (the loop's default executor in the server); the check itself is
    one read of /proc/self/statm. Counters feed /metrics and /health.
    """

    growth: int = TRIM_GROWTH_BYTES
    measure: Callable[[], int] = rss_bytes
    trim: Callable[[], bool] = release_memory
    after_last_trim: int = 0
    trims: int = 0
    released: int = 0  # bytes the trims took off the resident size, in all
    _busy: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.after_last_trim = self.after_last_trim or self.measure()

    def after_request(self, schedule: Callable[[Callable[[], None]], object]) -> bool:
        """Called at the end of a request; True when a trim was scheduled."""
        rss = self.measure()
        if rss < self.after_last_trim:
            self.after_last_trim = rss  # it went down by itself (mmap'ed buffers unmapped): measure from here
            return False
        if not should_trim(rss, self.after_last_trim, self.growth) or self._busy.locked():
            return False
        schedule(self.trim_now)
        return True

    def trim_now(self) -> None:
        """Trim (blocking: call it off the event loop) unless a trim is already running."""
        if not self._busy.acquire(blocking=False):
            return
        try:
            before = self.measure()
            started = time.perf_counter()
            if not self.trim():
                self.after_last_trim = before  # no glibc: stop asking until it grows again
                return
            after = self.measure()
            self.trims += 1
            self.released += max(0, before - after)
            self.after_last_trim = after
            log.debug("malloc_trim: %.0f -> %.0f MB in %.1f ms", before / 2**20, after / 2**20,
                      (time.perf_counter() - started) * 1000)
        finally:
            self._busy.release()

    def snapshot(self) -> dict[str, float | int]:
        """For /health: the resident size now and what the trims gave back."""
        return {"rss_mb": round(self.measure() / 2**20, 1), "trims": self.trims,
                "released_mb": round(self.released / 2**20, 1)}
