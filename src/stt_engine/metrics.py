"""Prometheus metrics: one registry per app, so several apps (tests, benchmarks) can live in one process.

Request-level figures are recorded by the request middleware, transcription figures by the transcription path,
batch figures through the scheduler's `on_batch` hook, and gauges that mirror live state (queue depth, scheduler
counters) are read at scrape time, so nothing has to remember to keep them up to date.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

PREFIX = "stt"
# Whole-request latency: from milliseconds (health, errors) to long files (tens of minutes).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
AUDIO_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400)
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5, 10)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
CONTENT_TYPE = CONTENT_TYPE_LATEST
# The method label's closed set: anything else a client sends (any token is a valid method) becomes "other".
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Answers that no endpoint gave: counted, never timed, so a sweep of methods x paths adds no histogram series.
_UNSERVED_STATUSES = frozenset({405})


def method_label(method: str) -> str:
    """A bounded label value for an HTTP method."""
    return method if method in HTTP_METHODS else "other"


class _SchedulerCollector(Collector):
    """Scrape-time view of the scheduler's own counters (it is owned elsewhere and counts under its lock)."""

    def __init__(self, get_scheduler: Callable[[], Any]) -> None:
        self._get_scheduler = get_scheduler

    def collect(self) -> Iterable[Any]:
        scheduler = self._get_scheduler()
        jobs = CounterMetricFamily(
            f"{PREFIX}_scheduler_jobs", "Transcription jobs by outcome, as the scheduler counts them.", labels=["outcome"]
        )
        depth = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Requests admitted and not finished (queued or decoding).")
        queued_audio = GaugeMetricFamily(f"{PREFIX}_queue_audio_seconds", "Seconds of audio admitted and not finished.")
        busy = GaugeMetricFamily(f"{PREFIX}_busy_workers", "Model workers decoding a batch right now.")
        if scheduler is not None:
            stats = scheduler.stats
            for outcome in ("submitted", "completed", "rejected", "cancelled", "failed"):
                jobs.add_metric([outcome], float(getattr(stats, outcome, 0)))
            depth.add_metric([], float(scheduler.queued_requests))
            queued_audio.add_metric([], float(scheduler.queued_seconds))
            busy.add_metric([], float(stats.busy_workers))
        else:
            depth.add_metric([], 0.0)
            queued_audio.add_metric([], 0.0)
            busy.add_metric([], 0.0)
        yield from (jobs, depth, queued_audio, busy)


class _MemoryCollector(Collector):
    """Scrape-time view of the memory reclaimer's counters (memory.py); the resident size itself is the process
    collector's `process_resident_memory_bytes`."""

    def __init__(self, memory: Any) -> None:
        self._memory = memory

    def collect(self) -> Iterable[Any]:
        trims = CounterMetricFamily(f"{PREFIX}_memory_trims", "malloc_trim calls made after requests grew the heap.")
        trims.add_metric([], float(self._memory.trims))
        released = CounterMetricFamily(
            f"{PREFIX}_memory_released_bytes", "Resident bytes those trims handed back to the system."
        )
        released.add_metric([], float(self._memory.released))
        yield from (trims, released)


class Metrics:
    """Every metric the server exports, on a private registry."""

    def __init__(self, get_scheduler: Callable[[], Any] | None = None, memory: Any = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds, open fds
        PlatformCollector(registry=r)
        GCCollector(registry=r)

        self.requests = Counter(
            f"{PREFIX}_http_requests", "HTTP requests by method, route template and status.",
            ["method", "route", "status"], registry=r,
        )
        self.request_seconds = Histogram(
            f"{PREFIX}_http_request_duration_seconds", "Whole-request latency, first byte in to last byte out.",
            ["method", "route"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.unauthorized = Counter(
            f"{PREFIX}_http_unauthorized_requests",
            "Requests refused with 401 (one series, whatever their method or path: anonymous traffic adds none).",
            registry=r,
        )
        self.in_flight = Gauge(f"{PREFIX}_http_requests_in_flight", "HTTP requests being served now.", registry=r)
        self.connections_refused = Counter(
            f"{PREFIX}_connections_refused", "Connections answered 503 at accept: past the connection cap that "
            "SERVER_MAX_CONNECTIONS and the open-file limit allow.", registry=r,
        )
        self.connection_limit = Gauge(
            f"{PREFIX}_connection_limit", "Open connections served at once (the descriptor budget's cap).", registry=r
        )

        self.audio_seconds = Counter(
            f"{PREFIX}_audio_seconds_processed", "Seconds of audio transcribed successfully.", ["route"], registry=r
        )
        self.audio_duration = Histogram(
            f"{PREFIX}_audio_duration_seconds", "Length of each successfully transcribed file.",
            ["route"], buckets=AUDIO_BUCKETS, registry=r,
        )
        self.processing_seconds = Histogram(
            f"{PREFIX}_transcription_seconds", "Time from upload received to transcript ready (decode, queue, model).",
            ["route"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.rtf = Histogram(
            f"{PREFIX}_realtime_factor", "Processing seconds per second of audio (lower is faster).",
            ["route"], buckets=RTF_BUCKETS, registry=r,
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds", "Time a request waited before its first chunk was decoded.",
            buckets=WAIT_BUCKETS, registry=r,
        )
        self.batch_chunks = Histogram(
            f"{PREFIX}_batch_chunks", "Chunks decoded together in one model batch.", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            f"{PREFIX}_batch_seconds", "Model time of one batch.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.model_load_seconds = Gauge(
            f"{PREFIX}_model_load_seconds", "Time to resolve, verify and load the model at start-up.", registry=r
        )
        self.model_warmup_seconds = Gauge(
            f"{PREFIX}_model_warmup_seconds", "Time of the warm-up decode at start-up.", registry=r
        )
        self.model_ready = Gauge(f"{PREFIX}_model_ready", "1 once the model is loaded and warmed up.", registry=r)
        self.postprocess_calls = Counter(
            f"{PREFIX}_postprocess_calls", "Post-processing (LLM) calls made for transcription requests.",
            ["task"], registry=r,
        )
        self.postprocess_failures = Counter(
            f"{PREFIX}_postprocess_failures", "Post-processing calls that returned an error instead of text.",
            ["task", "error"], registry=r,
        )
        self.upload_rejected = Counter(
            f"{PREFIX}_uploads_rejected", "Uploads refused before transcription, by reason.", ["reason"], registry=r
        )
        # live sessions (/v1/realtime)
        self.realtime_sessions = Gauge(f"{PREFIX}_realtime_sessions_open", "Realtime sessions open now.", registry=r)
        self.realtime_partial_latency = Histogram(
            f"{PREFIX}_realtime_partial_latency_seconds",
            "From taking a snapshot of an open turn to sending the partial text decoded from it.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.realtime_final_latency = Histogram(
            f"{PREFIX}_realtime_final_latency_seconds",
            "From the end of a turn (VAD stop or commit) to its completed transcript being sent.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.dropped_segments = Counter(
            f"{PREFIX}_hallucinated_segments_dropped",
            "Segments the invented-phrase filter dropped (listed in verbose_json's dropped_segments).",
            ["language"], registry=r,
        )
        if get_scheduler is not None:
            r.register(_SchedulerCollector(get_scheduler))
        if memory is not None:
            r.register(_MemoryCollector(memory))

    # --- recording helpers --------------------------------------------------------------------------
    def observe_request(self, method: str, route: str, status: int, seconds: float, *, served: bool = True) -> None:
        """Count and time a request. Labels stay in closed sets: `route` is a template or the unmatched value,
        `method` is collapsed here, and a 401 only moves its own unlabelled counter. Only requests an endpoint
        served (`served`: a route matched the path; not a 405) are timed: the histogram, 20 lines a series, then
        has a series per real endpoint at most, whatever methods and paths clients sweep."""
        if status == 401:
            self.unauthorized.inc()
            return
        method = method_label(method)
        self.requests.labels(method, route, str(status)).inc()
        if served and status not in _UNSERVED_STATUSES:
            self.request_seconds.labels(method, route).observe(seconds)

    def observe_transcription(
        self, route: str, audio_seconds: float, processing_seconds: float, queue_wait_seconds: float | None
    ) -> None:
        self.audio_seconds.labels(route).inc(audio_seconds)
        self.audio_duration.labels(route).observe(audio_seconds)
        self.processing_seconds.labels(route).observe(processing_seconds)
        if audio_seconds > 0:
            self.rtf.labels(route).observe(processing_seconds / audio_seconds)
        if queue_wait_seconds is not None:
            self.queue_wait.observe(queue_wait_seconds)

    def observe_batch(self, n_chunks: int, seconds: float) -> None:
        """The scheduler's `on_batch` hook (called from worker threads; prometheus-client is thread-safe)."""
        self.batch_chunks.observe(n_chunks)
        self.batch_seconds.observe(seconds)

    def observe_postprocess(self, task: str, result: dict[str, Any] | None) -> None:
        task_label = task if task in _KNOWN_TASKS else "other"  # bounded label values
        self.postprocess_calls.labels(task_label).inc()
        error = (result or {}).get("error")
        if error:
            kind = (error.get("type") or error.get("code") or "error") if isinstance(error, dict) else "error"
            self.postprocess_failures.labels(task_label, str(kind)[:40]).inc()

    def observe_dropped_segments(self, language: str | None, count: int) -> None:
        label = language if language and len(language) <= 3 and language.isalpha() else "unknown"
        self.dropped_segments.labels(label).inc(count)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


_KNOWN_TASKS = frozenset({"correct", "summarize", "minutes", "custom"})

