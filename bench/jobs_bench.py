"""Jobs vs the sync API on the same audio (issue 11's targets), against a real server on this machine.

    PYTHONPATH=src python bench/jobs_bench.py [--audio-dir ../shared/audio] [--output bench/results/jobs.json]

1. Throughput: 20 clips of 5-60 s sent concurrently to /v1/audio/transcriptions, then the same 20 as jobs
   (submitted at once, polled until all complete); total wall time of each.
2. Overhead: a few clips one at a time, sync request latency vs job latency (submit to "completed" seen by a
   client polling every 20 ms): the time a job adds over the sync route.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from stt_engine.benchmark.clips import read_manifest
from stt_engine.benchmark.server import ServerProcess

ROOT = Path(__file__).resolve().parents[1]


def _clips(audio_dir: Path) -> list[Path]:
    rows = sorted((c for c in read_manifest(audio_dir) if 5 <= c.duration <= 60), key=lambda c: c.duration)
    paths = [c.path for c in rows]
    while len(paths) < 20:
        paths += paths[: 20 - len(paths)]
    return paths[:20]


def _server(data_dir: Path) -> ServerProcess:
    return ServerProcess({"DATA_DIR": str(data_dir), "LOG_LEVEL": "WARNING", "MAX_QUEUED_REQUESTS": "64"})


def _submit(base: str, path: Path) -> str:
    with path.open("rb") as handle:
        r = httpx.post(base + "/v1/jobs", files={"file": (path.name, handle)}, timeout=300)
    r.raise_for_status()
    return r.json()["id"]


def _wait(base: str, job_id: str, interval: float) -> dict:
    while True:
        job = httpx.get(f"{base}/v1/jobs/{job_id}", timeout=30).json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return job
        time.sleep(interval)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--audio-dir", default=str(ROOT.parent / "shared" / "audio"))
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "jobs.json"))
    parser.add_argument("--overhead-runs", type=int, default=3)
    args = parser.parse_args()
    clips = _clips(Path(args.audio_dir))
    audio_seconds = 0.0
    data_dir = Path(tempfile.mkdtemp(prefix="stt-jobs-bench-"))
    server = _server(data_dir)
    base = server.base
    try:
        server.transcribe(clips[0])  # warm
        started = time.perf_counter()
        with ThreadPoolExecutor(len(clips)) as pool:
            sync_texts = list(pool.map(server.transcribe, clips))
        sync_total = time.perf_counter() - started

        started = time.perf_counter()
        with ThreadPoolExecutor(len(clips)) as pool:
            ids = list(pool.map(lambda p: _submit(base, p), clips))
            jobs = list(pool.map(lambda i: _wait(base, i, 0.1), ids))
        jobs_total = time.perf_counter() - started
        audio_seconds = sum(j["duration"] for j in jobs)
        same_text = sum(j["result"]["text"] == t for j, t in zip(jobs, sync_texts))

        overhead = []
        for path in (clips[0], clips[len(clips) // 2], clips[-2])[: args.overhead_runs]:
            t0 = time.perf_counter()
            server.transcribe(path)
            sync_latency = time.perf_counter() - t0
            t0 = time.perf_counter()
            job = _wait(base, _submit(base, path), 0.02)
            job_latency = time.perf_counter() - t0
            overhead.append({"clip": path.name, "audio_s": job["duration"], "sync_s": round(sync_latency, 3),
                             "job_s": round(job_latency, 3), "added_s": round(job_latency - sync_latency, 3)})
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    result = {
        "clips": len(clips), "audio_seconds": round(audio_seconds, 1),
        "sync_concurrent_total_s": round(sync_total, 2), "jobs_total_s": round(jobs_total, 2),
        "jobs_vs_sync": round(jobs_total / sync_total, 3), "jobs_text_equal_to_sync": f"{same_text}/{len(clips)}",
        "overhead": overhead, "median_added_s": round(statistics.median(o["added_s"] for o in overhead), 3),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
