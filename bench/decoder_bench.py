"""What the decoder pool costs (issue 18): the same clips decoded in-process (before) and through the pool (after),
each then transcribed by the server's scheduler, against raw faster-whisper, in one run.

    PYTHONPATH=src python bench/decoder_bench.py [--audio-dir ../shared/audio] [--repeats 3] [--output FILE]

- Latency: each clip alone, one request at a time: file on disk -> decoded -> transcript.
- Throughput: 8 clients at once over the clips (audio seconds per wall second).
- Raw: `WhisperModel.transcribe(path, language, beam_size=5, vad_filter=True, condition_on_previous_text=False)`
  from the file, sequential (it decodes the file itself, in-process).

Before and after alternate within each repeat (A B A B ...) so that the load of a shared machine falls on both; the
ratios after/before are reported per repeat, with their range.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stt_engine.benchmark.clips import read_manifest

ROOT = Path(__file__).resolve().parents[1]
BEAM_SIZE = 5
CLIENTS = 8


def _clips(audio_dir: Path, languages: tuple[str, ...]) -> list[tuple[Path, str, float]]:
    return [(c.path, c.language, c.duration) for c in read_manifest(audio_dir)
            if c.language in languages and 2.0 <= c.duration <= 12.0 and c.path.is_file()]


async def _through_scheduler(scheduler: Any, options_for: Callable[[str], Any], decode: Callable[..., Any],
                             clips: list[tuple[Path, str, float]], clients: int) -> tuple[list[float], float]:
    """Every clip decoded with `decode` (off the loop) and transcribed, `clients` at a time: latencies, wall time."""
    gate = asyncio.Semaphore(clients)
    latencies: list[float] = []

    async def one(path: Path, language: str) -> None:
        async with gate:
            started = time.perf_counter()
            audio = await asyncio.to_thread(decode, path, max_seconds=3600.0)
            await scheduler.transcribe(audio, options_for(language))
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(one(path, language) for path, language, _ in clips))
    return latencies, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio-dir", default=str(ROOT.parent / "shared" / "audio"))
    parser.add_argument("--languages", default="en,ko")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "decoder.json"))
    args = parser.parse_args()

    from faster_whisper import WhisperModel

    from stt_engine import audio as audio_mod
    from stt_engine import decoder
    from stt_engine.config import get_settings
    from stt_engine.engine import Engine
    from stt_engine.models import resolve_model
    from stt_engine.options import build_options
    from stt_engine.scheduler import Scheduler

    clips = _clips(Path(args.audio_dir), tuple(args.languages.split(",")))
    if not clips:
        print("no clips", file=sys.stderr)
        return 2
    audio_seconds = sum(c[2] for c in clips)
    settings = get_settings()
    model = resolve_model(settings)
    engine = Engine(model, settings)
    scheduler = Scheduler(engine, timeout_base_s=1e9, max_queue_seconds=float("inf"))
    options = {lang: build_options(settings, engine.supported_languages, language=lang, beam_size=BEAM_SIZE)
               for lang in {c[1] for c in clips}}
    decoder.start(settings)
    raw = WhisperModel(str(model.path), device=engine.device, compute_type=engine.compute_type, local_files_only=True)
    print(f"{len(clips)} clips, {audio_seconds:.1f} s of audio; model {model.name}; pool of {decoder.pool().size}")

    sides = {"before (in-process decode)": audio_mod.decode, "after (decoder pool)": decoder.decode}
    results: dict[str, dict[str, list[float]]] = {name: {"latency": [], "throughput": []} for name in sides}
    results["raw faster-whisper"] = {"latency": [], "throughput": []}

    async def bench() -> None:
        for path, language, _ in clips[:2]:  # warm-up: model, pool, page cache
            for decode in sides.values():
                await scheduler.transcribe(await asyncio.to_thread(decode, path), options[language])
        for repeat in range(args.repeats):
            for name, decode in (sides.items() if repeat % 2 == 0 else reversed(sides.items())):
                latencies, _ = await _through_scheduler(scheduler, options.get, decode, clips, 1)
                _, wall = await _through_scheduler(scheduler, options.get, decode, clips, CLIENTS)
                results[name]["latency"].append(statistics.mean(latencies))
                results[name]["throughput"].append(audio_seconds / wall)
                print(f"repeat {repeat + 1} {name}: mean latency {statistics.mean(latencies):.3f} s, "
                      f"{CLIENTS}-client throughput {audio_seconds / wall:.2f} audio s/s", flush=True)
            started = time.perf_counter()
            latencies = []
            for path, language, _ in clips:
                t0 = time.perf_counter()
                segments, _info = raw.transcribe(str(path), language=language, beam_size=BEAM_SIZE, vad_filter=True,
                                                 condition_on_previous_text=False)
                list(segments)
                latencies.append(time.perf_counter() - t0)
            wall = time.perf_counter() - started
            results["raw faster-whisper"]["latency"].append(statistics.mean(latencies))
            results["raw faster-whisper"]["throughput"].append(audio_seconds / wall)
            print(f"repeat {repeat + 1} raw: mean latency {statistics.mean(latencies):.3f} s, "
                  f"sequential throughput {audio_seconds / wall:.2f} audio s/s", flush=True)

    asyncio.run(bench())
    scheduler.close(5)
    decoder.stop()
    before, after = results["before (in-process decode)"], results["after (decoder pool)"]
    summary = {
        "latency_ratio_after_before": [a / b for a, b in zip(after["latency"], before["latency"])],
        "throughput_ratio_after_before": [a / b for a, b in zip(after["throughput"], before["throughput"])],
    }
    for key, values in summary.items():
        print(f"{key}: {min(values):.3f} .. {max(values):.3f} (median {statistics.median(values):.3f})")
    Path(args.output).write_text(json.dumps({"clips": len(clips), "audio_seconds": audio_seconds,
                                             "results": results, **summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
