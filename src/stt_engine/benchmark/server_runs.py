"""The server's side of the benchmark: concurrent clients on the short clips, long clips alone, fairness."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from stt_engine.benchmark.clips import Clip
from stt_engine.benchmark.library import raw_text
from stt_engine.benchmark.measure import Run, language_for, timed
from stt_engine.benchmark.server import ServerProcess


def server_run(server: ServerProcess, clips: list[Clip], payloads: dict[str, bytes], mode: str, concurrency: int,
               rounds: int) -> Run:
    """`rounds` passes over the clips with `concurrency` requests in flight at any time."""
    work = [clip for _ in range(rounds) for clip in clips]
    run = Run(mode, f"server c={concurrency}", concurrency, len(work), sum(c.duration for c in work))
    lock = threading.Lock()

    def one(clip: Clip) -> None:
        t0 = time.perf_counter()
        text = server.transcribe(clip.path, payloads[clip.name], language_for(clip, mode))
        with lock:
            run.latencies.append(time.perf_counter() - t0)
            run.texts[clip.name] = text

    server.rss.reset()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, work))
    run.wall_seconds = time.perf_counter() - started
    run.peak_rss_mb = server.rss.peak_mb
    return run


def long_clip_rows(model: Any, batched_transcribe: Any, server: ServerProcess, clips: list[Clip],
                   audio: dict[str, Any], payloads: dict[str, bytes]) -> list[dict[str, Any]]:
    """Each long clip alone, language given: the library sequential, its `BatchedInferencePipeline`, the server."""
    rows = []
    for clip in clips:
        samples = audio[clip.name]
        sequential, t_seq = timed(lambda: raw_text(model.transcribe, samples, clip.language))
        pipeline, t_batch = timed(lambda: raw_text(batched_transcribe, samples, clip.language))
        server.rss.reset()
        ours, t_server = timed(lambda: server.transcribe(clip.path, payloads[clip.name], clip.language))
        rows.append({
            "clip": clip.name, "language": clip.language, "audio_seconds": round(clip.duration, 2),
            "metric": clip.metric,
            "raw_sequential_s": round(t_seq, 2), "raw_batched_s": round(t_batch, 2), "server_s": round(t_server, 2),
            "raw_sequential_error": round(clip.error_rate(sequential), 4),
            "raw_batched_error": round(clip.error_rate(pipeline), 4),
            "server_error": round(clip.error_rate(ours), 4),
            "server_peak_rss_mb": round(server.rss.peak_mb, 1),
        })
    return rows


def fairness_row(server: ServerProcess, long_clip: Clip, short_clip: Clip,
                 payloads: dict[str, bytes]) -> dict[str, Any]:
    """A short clip's latency alone, and while the long clip is being transcribed (sent 1 s after it)."""
    def short() -> str:
        return server.transcribe(short_clip.path, payloads[short_clip.name], short_clip.language)

    _, alone = timed(short)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(server.transcribe, long_clip.path, payloads[long_clip.name], long_clip.language)
        time.sleep(1.0)
        _, during = timed(short)
        overlapped = not pending.done()  # the long clip was still in flight when the short one came back
        pending.result()
    return {"short_clip": short_clip.name, "long_clip": long_clip.name, "alone_s": round(alone, 2),
            "during_long_s": round(during, 2), "ratio": round(during / alone, 2), "overlapped": overlapped}
