"""Step 1, audio -> job: find speech with Silero VAD, then cut the speech into sections at pauses.

VAD runs with faster-whisper's own defaults (2 s of silence ends a speech chunk, 400 ms of padding), so the speech
the decoder sees is the speech `WhisperModel.transcribe(vad_filter=True)` sees. We measured the previous setting,
160 ms, on the long shared clips: it cut conversation into fragments and lost words at their edges.

Sections are what lets one long request use several model workers (or GPU batch slots) at once: each is decoded
sequentially by seek, like a whole file in faster-whisper, and they are cut where the speaker pauses, so no word
is split. A section boundary then costs what a seek boundary costs the library: a new 30 s window.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from faster_whisper.vad import VadOptions, get_speech_timestamps

from stt_engine.audio import SAMPLE_RATE
from stt_engine.engine.job import Job, Stream
from stt_engine.options import TranscribeOptions

VAD_BLOCK_SECONDS = 600  # VAD copies its input twice; long audio goes through it in blocks of this size
SECTION_SECONDS = 60.0  # speech per section when the request is long
MIN_SECTION_SECONDS = 30.0  # never cut sections shorter than one window
PAUSE_SEARCH_SECONDS = 8.0  # how far from an even split a cut may move to find a pause
_FRAME = SAMPLE_RATE // 50  # 20 ms energy frames
_SMOOTH_FRAMES = 10  # 200 ms: a pause, not a gap between two syllables


def prepare(samples: np.ndarray, duration: float, options: TranscribeOptions, parallelism: int) -> Job:
    """A job whose streams cover the speech in `samples`; none when there is no speech.

    Streamed requests get this same plan: a different cut (we used to cut a short first section so the first text
    came early) decodes different windows with different context, and measured worse (CER 0.126 against 0.113 on
    the 184 s Korean clip). The first delta comes after the first section's first window instead."""
    if options.vad_filter:
        speech = detect_speech(samples, options.vad.vad_options() if options.vad else None)
    else:
        speech = [{"start": 0, "end": len(samples)}] if len(samples) else []
    job = Job(options=options, samples=samples, duration=duration, speech=speech, language=options.language)
    total = sum(c["end"] - c["start"] for c in speech)
    if total == 0:
        return job
    if options.condition_on_previous_text:
        bounds = [0, total]  # each window is prompted with its predecessor's text: one section, in order
    else:
        joins = list(np.cumsum([c["end"] - c["start"] for c in speech])[:-1])
        def find_pause(a: int, b: int) -> int:
            a, b = max(0, a), min(total, b)
            return quietest_point(job.speech_samples(a, b), a)

        bounds = plan_sections(total, joins, parallelism, find_pause)
    job.streams = [Stream(job, i, a, b) for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    return job


def detect_speech(samples: np.ndarray, vad: dict | None = None) -> list[dict]:
    """faster-whisper's VAD with its defaults (or the request's `chunking_strategy` values, `vad`); audio longer
    than a block is scanned block by block (bounded memory) and speech across a block boundary is joined again."""
    block = VAD_BLOCK_SECONDS * SAMPLE_RATE
    if len(samples) <= block:
        return get_speech_timestamps(samples, VadOptions(**(vad or {})))
    speech: list[dict] = []
    for offset in range(0, len(samples), block):
        piece = samples[offset: offset + block]
        for chunk in get_speech_timestamps(piece, VadOptions(**(vad or {}))):
            chunk = {"start": chunk["start"] + offset, "end": chunk["end"] + offset}
            if speech and chunk["start"] <= speech[-1]["end"]:
                speech[-1]["end"] = max(speech[-1]["end"], chunk["end"])
            else:
                speech.append(chunk)
    return speech


def plan_sections(total: int, joins: list[int], parallelism: int, find_pause: Callable[[int, int], int]) -> list[int]:
    """Section boundaries on the speech timeline (samples), first 0 and last `total`.

    Long speech gets one section per `SECTION_SECONDS`, and at least `parallelism` sections when each can still
    hold a full window, so a lone request keeps every worker busy. Each cut sits near an even split: on a VAD
    join (a removed silence) when one is near, else at the quietest 200 ms that `find_pause(a, b)` finds there.
    """
    seconds = total / SAMPLE_RATE
    count = max(math.ceil(seconds / SECTION_SECONDS), min(parallelism, int(seconds // MIN_SECTION_SECONDS)), 1)
    search = int(PAUSE_SEARCH_SECONDS * SAMPLE_RATE)
    shortest = int(MIN_SECTION_SECONDS * SAMPLE_RATE * 0.5)
    bounds = [0]
    for k in range(1, count):
        target = total * k // count
        near = [j for j in joins if abs(j - target) <= search]
        cut = min(near, key=lambda j: abs(j - target)) if near else find_pause(target - search, target + search)
        if cut - bounds[-1] >= shortest and total - cut >= shortest:
            bounds.append(int(cut))
    bounds.append(total)
    return bounds


def quietest_point(samples: np.ndarray, origin: int) -> int:
    """The middle of the quietest 200 ms of `samples` (which start at `origin` on the timeline)."""
    frames = len(samples) // _FRAME
    if frames <= _SMOOTH_FRAMES:
        return origin + len(samples) // 2
    energy = np.square(samples[: frames * _FRAME].reshape(frames, _FRAME), dtype=np.float64).mean(axis=1)
    smooth = np.convolve(energy, np.ones(_SMOOTH_FRAMES) / _SMOOTH_FRAMES, mode="valid")
    return origin + (int(np.argmin(smooth)) + _SMOOTH_FRAMES // 2) * _FRAME
