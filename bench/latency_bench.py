"""Short behind long (issue 18, item 6): how long a short request waits when big ones are ahead of it.

    PYTHONPATH=src python bench/latency_bench.py [--long-count 16] [--figure-count 64] [--repeats 2]
        [--baseline-src /path/to/other/checkout/src] [--output bench/results/latency.json]

Against a real server on this machine, with the real model and real clips (../shared/audio):

1. "5 s behind 162 s": a ~5 s clip alone, then the same clip sent while the long Korean clip (184 s) is being
   decoded (once the server has finished a window of it); its latency both ways and the ratio. The long request is dropped (client disconnects) once the short one answered.
2. "short behind N uploads": N five-minute uploads (concatenated long clips, written to a temp dir) sent at once,
   then an 11 s clip 1 s later: its total latency, its `queue_wait` (scheduler admission to first decode, from the
   access log) and its first decode counted from when it was sent (from the scheduler's log line, where the
   server writes one). The long uploads are dropped afterwards.

With `--baseline-src`, every scenario runs first against a server whose code comes from that folder (say the
main checkout, before a change) and then against this one, alternately `--repeats` times, so the two are measured
back to back on the same machine under the same load. The server gets room for the long uploads
(MAX_QUEUE_SECONDS, MAX_QUEUED_REQUESTS) so they are queued, not refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
import wave
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from stt_engine.benchmark.clips import default_audio_dir, read_manifest  # noqa: E402
from stt_engine.benchmark.server import ServerProcess  # noqa: E402

SAMPLE_RATE = 16000
LONG_CLIP = "ko/ett_longform_lmy_concat.wav"
LONG_PARTS = ("ko/ett_longform_lmy_concat.wav", "en/en_longform_librispeech_librivox_concat.wav")
SHORT_5S = "en/picovoice_test_en.wav"
SHORT_UNDER_30 = "en/jfk.flac"
UPLOAD_SECONDS = 300.0


def _languages(audio_dir: Path) -> dict[str, str]:
    return {c.file: c.language for c in read_manifest(audio_dir)}


def five_minute_file(audio_dir: Path, folder: Path) -> Path:
    """A 300 s WAV made of the long clips one after another (in a temp folder, never in the repo)."""
    from faster_whisper import decode_audio

    parts = [decode_audio(str(audio_dir / name), sampling_rate=SAMPLE_RATE) for name in LONG_PARTS]
    samples = np.concatenate(parts * 3)[: int(UPLOAD_SECONDS * SAMPLE_RATE)]
    path = folder / "five_minutes.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


class Target:
    """One server under test and its JSON log (for `queue_wait` and the first-window line)."""

    def __init__(self, name: str, src: Path, log_dir: Path) -> None:
        self.name, self.log_dir = name, log_dir
        env = {"PYTHONPATH": str(src), "LOG_DIR": str(log_dir), "LOG_LEVEL": "INFO",
               "MAX_QUEUE_SECONDS": "40000", "MAX_QUEUED_REQUESTS": "200", "MAX_UPLOAD_MB": "64"}
        self.server = ServerProcess(env)
        self.base = self.server.base

    def log_entries(self, request_id: str) -> list[dict[str, Any]]:
        entries = []
        for path in sorted(self.log_dir.glob("stt-engine.jsonl*")):
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                if request_id in line:
                    try:
                        entries.append(json.loads(line))
                    except ValueError:
                        pass
        return entries

    def stop(self) -> None:
        self.server.stop()


async def _post(client: httpx.AsyncClient, base: str, payload: bytes, name: str, language: str | None,
                request_id: str) -> tuple[float, int]:
    """Seconds to the answer and its status (a 504 or 429 is a result to report, not a crash)."""
    data = {"response_format": "json", **({"language": language} if language else {})}
    started = time.perf_counter()
    response = await client.post(base + "/v1/audio/transcriptions", files={"file": (name, payload)}, data=data,
                                 headers={"X-Request-ID": request_id}, timeout=1800)
    return time.perf_counter() - started, response.status_code


def _timings(target: Target, request_id: str, sent_at: float) -> dict[str, float | None]:
    """queue_wait from the access log; the first window's start (from the scheduler's line) counted from sending."""
    queue_wait = first = None
    for entry in target.log_entries(request_id):
        if entry.get("queue_wait_seconds") is not None:
            queue_wait = float(entry["queue_wait_seconds"])
        if entry.get("first_window_at") is not None:
            first = float(entry["first_window_at"]) - sent_at
    return {"queue_wait_s": queue_wait, "first_decode_s": round(first, 2) if first is not None else None}


async def short_behind(target: Target, short: tuple[bytes, str, str | None], long: tuple[bytes, str, str | None],
                       count: int, settle: float = 1.0, decoding: bool = False) -> dict[str, Any]:
    """`count` long requests at once, the short one `settle` s later (`decoding`: once a window of theirs has
    been decoded, so they are past VAD); the long ones are dropped afterwards."""
    limits = httpx.Limits(max_connections=count + 8, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=1800) as client:
        batches = (await client.get(target.base + "/health")).json()["queue"]["batches"]
        longs = [asyncio.ensure_future(_post(client, target.base, *long, f"long-{uuid.uuid4().hex}"))
                 for _ in range(count)]
        await asyncio.sleep(settle)
        deadline = time.monotonic() + 120
        while decoding and time.monotonic() < deadline:
            if (await client.get(target.base + "/health")).json()["queue"]["batches"] > batches:
                break
            await asyncio.sleep(0.05)
        request_id = f"short-{uuid.uuid4().hex}"
        sent_at = time.time()
        try:
            total, status = await _post(client, target.base, *short, request_id)
        finally:
            overlapped = sum(not t.done() for t in longs)
            for task in longs:
                task.cancel()
            await asyncio.gather(*longs, return_exceptions=True)
    await _idle(target)
    return {"long_requests": count, "total_s": round(total, 2), "status": status, "long_still_running": overlapped,
            **_timings(target, request_id, sent_at)}


async def alone(target: Target, short: tuple[bytes, str, str | None]) -> float:
    async with httpx.AsyncClient(timeout=600) as client:
        seconds, status = await _post(client, target.base, *short, f"alone-{uuid.uuid4().hex}")
    if status != 200:
        raise RuntimeError(f"{target.name}: a request alone answered {status}")
    return seconds


async def _idle(target: Target, limit: float = 300.0) -> None:
    """Wait until the dropped requests have left the queue and their windows in flight have ended (a window cannot
    be stopped), so the next measurement starts on a quiet server. A server that does not report busy workers is
    taken as idle once its batch count has not moved for 10 s."""
    deadline = time.monotonic() + limit
    last, still = None, 0.0
    async with httpx.AsyncClient(timeout=10) as client:
        while time.monotonic() < deadline:
            queue = (await client.get(target.base + "/health")).json().get("queue", {})
            if not queue.get("requests"):
                if "busy_workers" in queue:
                    if not queue["busy_workers"]:
                        await asyncio.sleep(1.0)  # the express lane's window, if any, ends about as soon
                        return
                elif queue.get("batches") == last:
                    still += 1.0
                    if still >= 10:
                        return
                else:
                    last, still = queue.get("batches"), 0.0
            await asyncio.sleep(1.0)


async def scenarios(target: Target, clips: dict[str, tuple[bytes, str, str | None]], long_count: int
                    ) -> dict[str, Any]:
    await alone(target, clips["short5"])  # warm-up
    solo = [await alone(target, clips["short5"]) for _ in range(2)]
    behind = await short_behind(target, clips["short5"], clips["long184"], 1, decoding=True)
    row: dict[str, Any] = {
        "short5_alone_s": round(min(solo), 2), "short5_behind_184s_s": behind["total_s"],
        "short5_ratio": round(behind["total_s"] / min(solo), 2), "short5_behind_detail": behind,
        "under30_alone_s": round(await alone(target, clips["under30"]), 2),
        "under30_behind_uploads": await short_behind(target, clips["under30"], clips["upload300"], long_count),
    }
    return row


async def figure(target: Target, clips: dict[str, tuple[bytes, str, str | None]], count: int) -> dict[str, Any]:
    """The issue's figure on a fresh server: the short clip 1 s after `count` five-minute uploads."""
    await alone(target, clips["short5"])  # warm-up
    return await short_behind(target, clips["under30"], clips["upload300"], count)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio-dir", default=None)
    parser.add_argument("--long-count", type=int, default=8,
                        help="five-minute uploads ahead of the short one (0: only the figure)")
    parser.add_argument("--figure-count", type=int, default=0, help="also once with this many (e.g. 64)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--baseline-src", default=None, help="src folder of the code to compare against")
    parser.add_argument("--keep-logs", default=None, help="copy the servers' JSON logs into this folder")
    parser.add_argument("--only", choices=("this", "baseline"), default=None, help="run one side only")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "latency.json"))
    args = parser.parse_args()
    audio_dir = Path(args.audio_dir) if args.audio_dir else default_audio_dir()
    languages = _languages(audio_dir)
    work = Path(tempfile.mkdtemp(prefix="stt-latency-bench-"))
    try:
        upload = five_minute_file(audio_dir, work)

        def clip(path: Path, name: str) -> tuple[bytes, str, str | None]:
            return path.read_bytes(), path.name, languages.get(name)

        clips = {"short5": clip(audio_dir / SHORT_5S, SHORT_5S), "under30": clip(audio_dir / SHORT_UNDER_30,
                 SHORT_UNDER_30), "long184": clip(audio_dir / LONG_CLIP, LONG_CLIP),
                 "upload300": (upload.read_bytes(), upload.name, "ko")}
        targets = [("this", ROOT / "src")] + ([("baseline", Path(args.baseline_src))] if args.baseline_src else [])
        targets = [t for t in targets if args.only in (None, t[0])]
        rows: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in targets}
        for repeat in range(args.repeats):
            for name, src in (targets if repeat % 2 else targets[::-1]):
                row: dict[str, Any] = {}
                runs = [("scenarios", lambda t: scenarios(t, clips, args.long_count))] if args.long_count else []
                if args.figure_count and repeat == args.repeats - 1:
                    runs.append(("figure", lambda t: figure(t, clips, args.figure_count)))
                for part, run in runs:
                    target = Target(name, src, work / f"logs-{name}-{repeat}-{part}")
                    try:
                        result = asyncio.run(run(target))
                        row.update(result if part == "scenarios" else {"under30_behind_figure": result})
                    finally:
                        target.stop()
                        if args.keep_logs:
                            shutil.copytree(target.log_dir, Path(args.keep_logs) / target.log_dir.name,
                                            dirs_exist_ok=True)
                row["started"] = datetime.now().isoformat(timespec="seconds")
                rows[name].append(row)
                print(name, json.dumps(row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {name: _summary(r) for name, r in rows.items()}
    result = {"machine_cores": os.cpu_count(), "long_count": args.long_count, "figure_count": args.figure_count,
              "repeats": args.repeats, "summary": summary, "runs": rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def spread(values: list[float | None]) -> list[float] | None:
        known = [v for v in values if v is not None]
        return [round(min(known), 2), round(statistics.median(known), 2), round(max(known), 2)] if known else None

    behind = [r["under30_behind_uploads"] for r in rows if "under30_behind_uploads" in r]
    if not behind:
        return {"figure": [r.get("under30_behind_figure") for r in rows]}
    return {
        "short5_ratio_min_median_max": spread([r["short5_ratio"] for r in rows]),
        "short5_alone_s": spread([r["short5_alone_s"] for r in rows]),
        "under30_total_s": spread([b["total_s"] for b in behind]),
        "under30_queue_wait_s": spread([b["queue_wait_s"] for b in behind]),
        "under30_first_decode_s": spread([b["first_decode_s"] for b in behind]),
        "figure": [r.get("under30_behind_figure") for r in rows if r.get("under30_behind_figure")],
    }


if __name__ == "__main__":
    raise SystemExit(main())
