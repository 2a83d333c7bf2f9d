"""What one pass of work measured, for the library, the ceiling and the server alike."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from stt_engine.benchmark.clips import Clip

MODES = ("given", "detected")


def language_for(clip: Clip, mode: str) -> str | None:
    """The clip's language in mode "given"; None (detect it) in mode "detected"."""
    return clip.language if mode == "given" else None


def timed(fn: Callable[[], str]) -> tuple[str, float]:
    t0 = time.perf_counter()
    text = fn()
    return text, time.perf_counter() - t0


@dataclass
class Run:
    """One pass of work: its timings, and the text each clip got (the last round's). `kind` is "library",
    "ceiling" or "server"; `concurrency` is clients for the server, processes for the ceiling."""

    mode: str
    name: str
    concurrency: int
    requests: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)
    peak_rss_mb: float | None = None
    kind: str = "server"

    @property
    def throughput(self) -> float:
        return self.audio_seconds / self.wall_seconds if self.wall_seconds else 0.0

    @classmethod
    def pooled(cls, runs: list[Run]) -> Run:
        """Repeats of the same run as one: their work and wall time summed, so throughput is total audio over total
        time, and their latencies together. Repeats interleaved with the other runs' share the machine's drift."""
        first = runs[0]
        return cls(first.mode, first.name, first.concurrency, sum(r.requests for r in runs),
                   sum(r.audio_seconds for r in runs), sum(r.wall_seconds for r in runs),
                   [t for r in runs for t in r.latencies], runs[-1].texts,
                   max((r.peak_rss_mb for r in runs if r.peak_rss_mb is not None), default=None), first.kind)

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else 0.0
