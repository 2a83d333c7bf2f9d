"""Live sessions over `/v1/realtime` (issue 10's targets), against a real server on this machine.

    PYTHONPATH=src python bench/realtime_bench.py [--sessions 1,2,4] [--audio-dir ../shared/audio]
                                                   [--output bench/results/realtime.json]

Starts `stt-engine serve` on a free loopback port with the bundled model, sends the four clips once as files (the
first twice: a warm-up), then for each count in `--sessions`, one after another on the same server, opens that many
sessions at once with the official `openai` SDK's realtime client (`tests/realtime_support.py` `stream_sdk`). Each
session streams 0.5 s of silence, then four turns (Korean, English, Korean, English, 4-7 s each) with 2 s of silence
after each, as 24 kHz PCM in 100 ms appends at real-time pace; server VAD with `silence_duration_ms` 800, language
detected. The sessions of one count start together, so their turns overlap: the worst case for that count.

Per session count (all times are event arrivals at the client):
- final latency: `...transcription.completed` minus the turn's `input_audio_buffer.speech_stopped` (median, p95);
- first partial: the turn's first `...transcription.delta` minus its `speech_started` (median), and how many turns
  had one before their `speech_stopped`;
- how late each session's last final comes after its stream ended (its last append was due), negative when it came
  while the trailing silence was still being sent;
- CER (Korean) / WER (English) of each clip's completed text (the turns that overlap it, joined) against the
  manifest's reference, by `stt_engine.textnorm.error_rate`, next to the same clip sent as a file;
- the machine's load average at the start and end, so a shared CPU shows in the results.

Writes the JSON (with every turn's events) to `--output` and prints a markdown table like the README's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the SDK streamer is the tests' own

from stt_engine.benchmark.clips import Clip, by_file, read_manifest
from stt_engine.benchmark.server import ServerProcess, serving
from tests.realtime_support import Stream, pcm16, silence, stream_sdk

TURNS = ("ko/ett_pma00031.wav", "en/picovoice_test_en.wav", "ko/ett_pfi00017.wav",
         "en/librivox_sense_and_sensibility-0870.wav")
RATE = 24000
LEAD_S, GAP_S = 0.5, 2.0  # silence before the first turn; after each turn (the last one's is the stream's tail)
PREFIX_MS, SILENCE_MS = 300, 800
SESSION = {"type": "transcription", "audio": {"input": {
    "format": {"type": "audio/pcm", "rate": RATE}, "transcription": {"model": "whisper-1"},
    "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": PREFIX_MS,
                       "silence_duration_ms": SILENCE_MS}}}}
COMPLETED = "conversation.item.input_audio_transcription.completed"
FAILED = "conversation.item.input_audio_transcription.failed"


def _manifest(audio_dir: Path) -> dict[str, Clip]:
    if not (audio_dir / "manifest.tsv").is_file():
        raise SystemExit(f"no manifest.tsv in {audio_dir}")
    rows = by_file(read_manifest(audio_dir))
    missing = [f for f in TURNS if f not in rows or not rows[f].path.is_file()]
    if missing:
        raise SystemExit(f"{audio_dir} lacks {', '.join(missing)}")
    return rows


def _score(text: str, clip: Clip) -> float:
    return round(clip.error_rate(text), 4)


def _stream(audio_dir: Path) -> tuple[bytes, list[tuple[float, float]]]:
    """The session's audio and each clip's span in it (seconds from the first append)."""
    audio, spans = silence(LEAD_S, RATE), []
    for name in TURNS:
        start = len(audio) / (2 * RATE)
        audio += pcm16(audio_dir / name, RATE)
        spans.append((start, len(audio) / (2 * RATE)))
        audio += silence(GAP_S, RATE)
    return audio, spans


def _settled(stream: Stream) -> bool:
    """Every turn the server started has ended in a transcript (or a failure), and there are at least four."""
    ended = len(stream.completed()) + len(stream.of(FAILED))
    return ended >= max(len(TURNS), len(stream.of("input_audio_buffer.speech_started")))


def _turns(stream: Stream, spans: list[tuple[float, float]]) -> list[dict[str, Any]]:
    """One row per turn the server started: its events' arrival times, latencies and the clip it overlaps most."""
    def by_item(kind: str) -> dict[str, tuple[float, dict[str, Any]]]:
        out: dict[str, tuple[float, dict[str, Any]]] = {}
        for t, e in stream.of(kind):
            out.setdefault(e["item_id"], (t, e))
        return out

    started, stopped = by_item("input_audio_buffer.speech_started"), by_item("input_audio_buffer.speech_stopped")
    completed, failed = by_item(COMPLETED), by_item(FAILED)
    rows = []
    for item, (t_start, ev) in started.items():
        deltas = stream.deltas(item)
        t_stop, stop_ev = stopped.get(item, (None, {}))
        t_done, done_ev = completed.get(item, (None, {}))
        begin = ev.get("audio_start_ms", 0) / 1000
        end = stop_ev.get("audio_end_ms", begin * 1000) / 1000
        overlaps = [max(0.0, min(end, b) - max(begin, a)) for a, b in spans]
        clip = TURNS[int(np.argmax(overlaps))] if max(overlaps) > 0 else None
        rows.append({
            "item_id": item, "clip": clip, "audio_start_ms": ev.get("audio_start_ms"),
            "audio_end_ms": stop_ev.get("audio_end_ms"), "speech_started_at": round(t_start, 3),
            "speech_stopped_at": None if t_stop is None else round(t_stop, 3),
            "completed_at": None if t_done is None else round(t_done, 3), "failed": item in failed,
            "deltas": len(deltas), "first_delta_at": round(deltas[0][0], 3) if deltas else None,
            "final_latency_s": None if t_done is None or t_stop is None else round(t_done - t_stop, 3),
            "first_partial_s": round(deltas[0][0] - t_start, 3) if deltas else None,
            "partial_before_end": bool(deltas) and t_stop is not None and deltas[0][0] < t_stop,
            # how late the client heard of the onset, against where VAD put it in the (real-time paced) audio
            "speech_started_lag_s": round(t_start - (ev.get("audio_start_ms", 0) + PREFIX_MS) / 1000, 3),
            "deltas_equal_final": t_done is None or "".join(d for _, d in deltas) == done_ev.get("transcript"),
            "transcript": done_ev.get("transcript"),
        })
    return rows


async def _sessions(base: str, count: int, audio: bytes, settle_s: float) -> list[Stream]:
    return list(await asyncio.gather(*(stream_sdk(base, audio, SESSION, rate=RATE, settle_s=settle_s,
                                                  until=_settled) for _ in range(count))))


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _p95(values: list[float]) -> float | None:
    return round(float(np.percentile(values, 95)), 3) if values else None


def _run_count(base: str, count: int, audio: bytes, spans: list[tuple[float, float]],
               rows: dict[str, Clip], settle_s: float) -> dict[str, Any]:
    load_start = os.getloadavg()
    started = time.monotonic()
    streams = asyncio.run(_sessions(base, count, audio, settle_s))
    wall = time.monotonic() - started
    stream_end = len(audio) / (2 * RATE)
    sessions = []
    for stream in streams:
        turns = _turns(stream, spans)
        finals = [t for t, _ in stream.of(COMPLETED)]
        texts = {name: " ".join(t["transcript"] for t in turns if t["clip"] == name and t["transcript"])
                 for name in TURNS}
        sessions.append({
            "turns": turns,
            "last_final_after_stream_end_s": round(max(finals) - stream_end, 3) if finals else None,
            "settled": _settled(stream),
            "errors": [e for _, e in stream.of("error")],
            "clips": [{"clip": name, "text": texts[name], "error_rate": _score(texts[name], rows[name])}
                      for name in TURNS],
        })
    turns = [t for s in sessions for t in s["turns"]]
    finals = [t["final_latency_s"] for t in turns if t["final_latency_s"] is not None]
    partials = [t["first_partial_s"] for t in turns if t["first_partial_s"] is not None]
    late = [s["last_final_after_stream_end_s"] for s in sessions if s["last_final_after_stream_end_s"] is not None]
    clip_rates = [c for s in sessions for c in s["clips"]]

    def mean_rate(language: str) -> float:
        return round(statistics.mean(c["error_rate"] for c in clip_rates if rows[c["clip"]].language == language), 4)

    return {
        "sessions": count, "wall_s": round(wall, 2), "stream_seconds": round(stream_end, 2),
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "turns_expected": count * len(TURNS), "turns_started": len(turns),
        "turns_completed": sum(t["completed_at"] is not None for t in turns),
        "turns_failed": sum(t["failed"] for t in turns), "all_settled": all(s["settled"] for s in sessions),
        "error_events": sum(len(s["errors"]) for s in sessions),
        "deltas_equal_final": all(t["deltas_equal_final"] for t in turns),
        "final_latency_median_s": _median(finals), "final_latency_p95_s": _p95(finals),
        "first_partial_median_s": _median(partials),
        "turns_with_partial_before_end": sum(t["partial_before_end"] for t in turns),
        "speech_started_lag_median_s": _median([t["speech_started_lag_s"] for t in turns]),
        "last_final_after_stream_end_s": {"min": min(late, default=None), "max": max(late, default=None)},
        "cer_ko_mean": mean_rate("ko"), "wer_en_mean": mean_rate("en"),
        "session_details": sessions,
    }


def _files(server: ServerProcess, rows: dict[str, Clip]) -> list[dict[str, Any]]:
    """The same clips as files (language detected, like the sessions): the accuracy to match and the CPU's speed."""
    server.transcribe(rows[TURNS[0]].path)  # warm-up
    out = []
    for name in TURNS:
        t0 = time.monotonic()
        text = server.transcribe(rows[name].path)
        out.append({"clip": name, "audio_s": rows[name].duration, "seconds": round(time.monotonic() - t0, 3),
                    "text": text, "error_rate": _score(text, rows[name])})
    return out


def _fmt(value: float | None, unit: str = " s") -> str:
    return "none" if value is None else f"{value:.2f}{unit}"


def _table(result: dict[str, Any]) -> str:
    files = result["files"]
    ko = statistics.mean(f["error_rate"] for f in files if f["clip"].startswith("ko/"))
    en = statistics.mean(f["error_rate"] for f in files if f["clip"].startswith("en/"))
    lines = [
        ("| sessions | final after `speech_stopped`: median / p95 | first partial after speech onset: median (turns "
         "with one before they ended) | last final after the stream ended | CER ko / WER en "
         f"(as files: {ko:.3f} / {en:.3f}) | load average start → end |"),
        "|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        late = run["last_final_after_stream_end_s"]
        late_text = _fmt(late["min"]) if late["min"] == late["max"] else f"{_fmt(late['min'], '')} to {_fmt(late['max'])}"
        if run["turns_completed"] < run["turns_expected"] or not run["all_settled"]:
            late_text += f" ({run['turns_completed']} of {run['turns_expected']} turns completed)"
        lines.append(
            f"| {run['sessions']} | {_fmt(run['final_latency_median_s'])} / {_fmt(run['final_latency_p95_s'])} "
            f"| {_fmt(run['first_partial_median_s'])} ({run['turns_with_partial_before_end']} of "
            f"{run['turns_started']}) | {late_text} | {run['cer_ko_mean']:.3f} / {run['wer_en_mean']:.3f} "
            f"| {run['load_average_start'][0]:.2f} → {run['load_average_end'][0]:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", default="1,2,4", help="session counts, run one after another (default 1,2,4)")
    parser.add_argument("--audio-dir", default=str(ROOT.parent / "shared" / "audio"))
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "realtime.json"))
    parser.add_argument("--settle", type=float, default=180.0,
                        help="longest wait for the last finals after a stream ended, seconds (default 180)")
    args = parser.parse_args()
    try:
        counts = [int(c) for c in args.sessions.split(",") if c.strip()]
    except ValueError:
        parser.error("--sessions takes comma-separated counts, e.g. 1,2,4")
    if not counts or min(counts) < 1:
        parser.error("--sessions takes counts of at least 1")
    audio_dir = Path(args.audio_dir)
    rows = _manifest(audio_dir)
    audio, spans = _stream(audio_dir)

    load_start = os.getloadavg()
    log_dir = Path(tempfile.mkdtemp(prefix="stt-realtime-bench-"))
    env = {"LOG_LEVEL": "WARNING", "LOG_DIR": str(log_dir), "MAX_REALTIME_SESSIONS": str(max(8, max(counts)))}
    try:
        with serving(env, ready_timeout=300) as server:
            base, health = server.base, server.health
            files = _files(server, rows)
            runs = []
            for count in counts:
                runs.append(_run_count(base, count, audio, spans, rows, args.settle))
                print(f"{count} session(s): final median {_fmt(runs[-1]['final_latency_median_s'])}", flush=True)
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "server_health": health,
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "stream": {"clips": list(TURNS), "lead_silence_s": LEAD_S, "silence_after_each_s": GAP_S, "rate": RATE,
                   "append_s": 0.1, "turn_detection": SESSION["audio"]["input"]["turn_detection"],
                   "clip_spans_s": [[round(a, 2), round(b, 2)] for a, b in spans]},
        "files": files,
        "runs": runs,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    table = _table(result)
    print(", ".join(f"{f['clip']} {f['seconds']:.2f} s as a file ({f['audio_s']:.1f} s audio, error "
                    f"{f['error_rate']:.3f})" for f in files))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
