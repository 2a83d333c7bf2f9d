"""Diarization's cost next to transcription's (issue 20's budget: added time ≤ 30%, peak RSS added < 300 MB).

    PYTHONPATH=src python bench/diarize_bench.py [--minutes 1 10 60] [--audio-dir ../shared/audio]
                                                [--output bench/results/diarize.json] [--skip-transcribe]

Audio: real speech of several speakers (the long-form English and Korean files and single clips, joined with short
gaps), tiled to each length. For each length, two fresh processes on the same audio:
1. transcription with the bundled Whisper base (int8, CPU, VAD on, beam 5, the server's defaults) and
2. diarization (`Diarizer.diarize`, DIARIZE_CPU_THREADS as configured: default half the cores),
each reporting wall and CPU seconds and the peak RSS it added over the process with the audio loaded. A benchmark,
not a test: the numbers depend on the machine and its load, so compare ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
CLIPS = [
    "en/en_longform_librispeech_librivox_concat.wav", "ko/ett_longform_lmy_concat.wav",
    "en/picovoice_diarization_test_3spk.wav", "ko/ett_kih00108.wav", "en/ljspeech_LJ050-0131.wav",
    "ko/ett_pfd00004.wav", "en/jfk.flac", "ko/ett_pma00031.wav",
]


def build_audio(audio_dir: Path, minutes: float) -> np.ndarray:
    from stt_engine.audio import decode

    rng = np.random.default_rng(0)
    pieces = [decode(audio_dir / name).samples for name in CLIPS]
    out, total, i = [], 0, 0
    while total < minutes * 60 * SR:
        clip = pieces[i % len(pieces)]
        out += [(rng.standard_normal(int(rng.uniform(0.3, 1.0) * SR)) * 1e-3).astype(np.float32), clip]
        total += len(out[-2]) + len(clip)
        i += 1
    return np.concatenate(out)[: int(minutes * 60 * SR)]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(kind: str, wav: Path) -> dict[str, float]:
    samples = np.load(wav)
    base = _peak_mb()
    cpu0, t0 = time.process_time(), time.perf_counter()
    if kind == "transcribe":
        from faster_whisper import WhisperModel

        from stt_engine.models.bundled import assemble_bundled_model

        model = WhisperModel(str(assemble_bundled_model()), device="cpu", compute_type="int8",
                             cpu_threads=os.cpu_count() or 1)
        segments, _ = model.transcribe(samples, beam_size=5, vad_filter=True, condition_on_previous_text=False)
        words = sum(len(s.text.split()) for s in segments)
        extra = {"words": words}
    else:
        from stt_engine.config import Settings
        from stt_engine.diarize import Diarizer

        diarizer = Diarizer(Settings())
        loaded = time.perf_counter() - t0
        turns = diarizer.diarize(samples)
        extra = {"turns": len(turns), "speakers": len({t.speaker for t in turns}), "load_s": round(loaded, 2)}
    return {"wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(time.process_time() - cpu0, 2),
            "rss_added_mb": round(_peak_mb() - base, 1), **extra}


def _health_latencies(base: str, count: int, keep_going: Callable[[], bool] = lambda: True) -> list[float]:
    import httpx

    timings = []
    with httpx.Client(base_url=base, timeout=30) as client:
        while len(timings) < count and keep_going():
            started = time.perf_counter()
            client.get("/health").raise_for_status()
            timings.append(time.perf_counter() - started)
            time.sleep(0.1)
    return sorted(timings)


def _summary(timings: list[float]) -> dict[str, float]:
    return {"count": len(timings), "median_ms": round(1000 * timings[len(timings) // 2], 1),
            "p95_ms": round(1000 * timings[int(len(timings) * 0.95)], 1), "max_ms": round(1000 * timings[-1], 1)}


def health_while_diarizing(audio_dir: Path, minutes: float) -> dict[str, object]:
    """Does the event loop stay free while a long file is diarized? /health idle, then during the request."""
    import threading

    import httpx

    from stt_engine.benchmark.server import ServerProcess

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "long.wav"
        _write_wav(wav, build_audio(audio_dir, minutes))
        server = ServerProcess({})
        try:
            idle = _health_latencies(server.base, 50)
            done = threading.Event()
            answer: dict[str, object] = {}

            def diarize() -> None:
                started = time.perf_counter()
                with wav.open("rb") as handle:
                    response = httpx.post(server.base + "/v1/audio/diarization", files={"file": handle}, timeout=3600)
                answer.update(status=response.status_code, seconds=round(time.perf_counter() - started, 1),
                              speakers=response.json().get("speakers"))
                done.set()

            worker = threading.Thread(target=diarize)
            worker.start()
            busy = _health_latencies(server.base, 100_000, lambda: not done.is_set())
            worker.join()
        finally:
            server.stop()
    return {"minutes": minutes, "load_avg": os.getloadavg(), "diarization": answer,
            "health_idle": _summary(idle), "health_during": _summary(busy)}


def _write_wav(path: Path, samples: np.ndarray) -> None:
    import wave

    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SR)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--audio-dir", type=Path, default=ROOT.parent / "shared" / "audio")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "diarize.json")
    parser.add_argument("--skip-transcribe", action="store_true", help="diarization only (no ratio)")
    parser.add_argument("--health-minutes", type=float, default=0,
                        help="instead: /health latency on a server while it diarizes this much audio, against idle")
    parser.add_argument("--child", choices=["transcribe", "diarize"], help=argparse.SUPPRESS)
    parser.add_argument("--wav", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.wav)))
        return 0
    if args.health_minutes:
        print(json.dumps(health_while_diarizing(args.audio_dir, args.health_minutes), indent=2))
        return 0
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.minutes:
            wav = Path(tmp) / f"{minutes}.npy"
            np.save(wav, build_audio(args.audio_dir, minutes))
            row: dict[str, object] = {"minutes": minutes}
            for kind in (["diarize"] if args.skip_transcribe else ["diarize", "transcribe"]):
                out = subprocess.run([sys.executable, __file__, "--child", kind, "--wav", str(wav)],
                                     capture_output=True, text=True, check=True)
                row[kind] = json.loads(out.stdout.strip().splitlines()[-1])
            if "transcribe" in row:
                row["added_time_ratio"] = round(row["diarize"]["wall_s"] / row["transcribe"]["wall_s"], 3)  # type: ignore[index]
                row["added_cpu_ratio"] = round(row["diarize"]["cpu_s"] / row["transcribe"]["cpu_s"], 3)  # type: ignore[index]
            print(json.dumps(row), flush=True)
            results.append(row)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"cpu_count": os.cpu_count(), "load_avg": os.getloadavg(), "results": results},
                                      indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
