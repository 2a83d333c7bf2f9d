"""A stream against a file on the same long clips (issue 21 section 3), against a real server on this machine.

    PYTHONPATH=src python bench/stream_bench.py [--audio-dir ../shared/audio] [--modes given detect] [--rounds 1]
        [--output bench/results/stream.json]

For every clip over 30 s that has a reference, one after the other on an otherwise idle server: the request
without `stream` (its wall time), then the same request with `stream=true` (time to the first
`transcript.text.delta`, time to `transcript.text.done`). Reported per clip: whether the streamed text equals the
file's, CER/WER of each, and the first delta as a fraction of the file's time (the target: under a quarter).
Timings move with the machine's load; the ratio is taken within one run, clip by clip.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from stt_engine import textnorm  # noqa: E402
from stt_engine.benchmark.clips import Clip, default_audio_dir, read_manifest  # noqa: E402
from stt_engine.benchmark.server import ServerProcess  # noqa: E402

LONG_SECONDS = 30.0


def _data(clip: Clip, mode: str, stream: bool) -> dict[str, str]:
    data = {"model": "whisper-1", "response_format": "json"}
    if mode == "given":
        data["language"] = clip.language
    if stream:
        data["stream"] = "true"
    return data


def file_request(base: str, clip: Clip, payload: bytes, mode: str) -> tuple[str, float]:
    started = time.perf_counter()
    response = httpx.post(base + "/v1/audio/transcriptions", files={"file": (clip.path.name, payload)},
                          data=_data(clip, mode, False), timeout=1800)
    response.raise_for_status()
    return str(response.json()["text"]), time.perf_counter() - started


def stream_request(base: str, clip: Clip, payload: bytes, mode: str) -> dict[str, Any]:
    """The streamed request: its deltas, done text, and the times of its first delta and of its done event."""
    started = time.perf_counter()
    first: float | None = None
    deltas: list[str] = []
    done: str | None = None
    with httpx.stream("POST", base + "/v1/audio/transcriptions", files={"file": (clip.path.name, payload)},
                      data=_data(clip, mode, True), timeout=1800) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "transcript.text.delta":
                first = first if first is not None else time.perf_counter() - started
                deltas.append(event["delta"])
            elif event["type"] == "transcript.text.done":
                done = event["text"]
            elif event["type"] == "error":
                raise RuntimeError(f"the stream ended with an error: {event['error']}")
    if done is None:
        raise RuntimeError("the stream ended without a done event")
    return {"deltas": deltas, "text": done, "first_delta_s": first, "total_s": time.perf_counter() - started}


def measure(server: ServerProcess, clip: Clip, mode: str, rounds: int) -> dict[str, Any]:
    payload = clip.path.read_bytes()
    file_times, first_times, stream_times = [], [], []
    text = streamed = ""
    deltas: list[str] = []
    for _ in range(rounds):
        text, seconds = file_request(server.base, clip, payload, mode)
        file_times.append(seconds)
        result = stream_request(server.base, clip, payload, mode)
        streamed, deltas = result["text"], result["deltas"]
        stream_times.append(result["total_s"])
        if result["first_delta_s"] is not None:
            first_times.append(result["first_delta_s"])
    file_s = statistics.median(file_times)
    first_s = statistics.median(first_times) if first_times else None
    return {
        "clip": clip.name, "duration_s": clip.duration, "language": mode,
        "identical": streamed == text, "deltas_add_up": "".join(deltas) == streamed, "deltas": len(deltas),
        "error_file": round(textnorm.error_rate(text, clip.references, clip.language), 4),
        "error_stream": round(textnorm.error_rate(streamed, clip.references, clip.language), 4),
        "metric": textnorm.metric(clip.language),
        "file_s": round(file_s, 2), "stream_done_s": round(statistics.median(stream_times), 2),
        "first_delta_s": round(first_s, 2) if first_s is not None else None,
        "first_delta_fraction": round(first_s / file_s, 3) if first_s is not None else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio-dir", type=Path, default=None)
    parser.add_argument("--modes", nargs="+", choices=["given", "detect"], default=["given", "detect"],
                        help="language given in the request, or detected by the server")
    parser.add_argument("--rounds", type=int, default=1, help="file + stream pairs per clip and mode (median)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "stream.json")
    args = parser.parse_args(argv)
    audio_dir = args.audio_dir or default_audio_dir()
    clips = sorted((c for c in read_manifest(audio_dir) if c.duration > LONG_SECONDS), key=lambda c: c.duration)
    if not clips:
        print(f"no clip over {LONG_SECONDS:.0f} s with a reference in {audio_dir}", file=sys.stderr)
        return 1
    server = ServerProcess({})
    rows = []
    try:
        for mode in args.modes:
            for clip in clips:
                row = measure(server, clip, mode, args.rounds)
                rows.append(row)
                print(json.dumps(row, ensure_ascii=False), flush=True)
    finally:
        server.stop()
    print(f"\n| clip | language | identical | {rows[0]['metric']}/… file | stream | file s | first delta s | fraction |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clip']} | {r['language']} | {r['identical']} | {r['error_file']:.3f} | {r['error_stream']:.3f} "
              f"| {r['file_s']:.1f} | {r['first_delta_s']} | {r['first_delta_fraction']} |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"rows": rows, "rounds": args.rounds}, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
