"""Speakers by channel: a stereo call (agent left, customer right) transcribed channel by channel.

`channels=split` decodes each channel to its own 16 kHz track (in a decoder process: `stt_engine.decoder.decode_split`) and sends every track through the scheduler at the
same time, so their windows batch like any others. Segments come back labelled with their channel and speaker and
merged in time order. A silent channel costs nothing (it is not sent), and channels that are copies of each other
(a mono recording stored as stereo) are transcribed once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from stt_engine.audio import DecodedAudio
from stt_engine.options import TranscribeOptions
from stt_engine.types import Segment, SpeakerSegment, Transcript, join_segments

log = logging.getLogger(__name__)

SILENT_RMS = 1e-4  # about -80 dBFS: digital silence or a muted line
IDENTICAL_RESIDUAL = 0.01  # energy of the difference relative to the signal's: copies, maybe re-encoded


def is_silent(samples: np.ndarray) -> bool:
    return samples.size == 0 or float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) < SILENT_RMS


def same_signal(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two channels carry the same signal (a mono file copied to both), up to a gain."""
    n = min(len(a), len(b))
    if n == 0:
        return True
    a64, b64 = a[:n].astype(np.float64), b[:n].astype(np.float64)
    energy = float(np.dot(b64, b64))
    if energy == 0.0:
        return float(np.dot(a64, a64)) == 0.0
    gain = float(np.dot(a64, b64)) / energy
    residual = a64 - gain * b64
    return float(np.dot(residual, residual)) <= IDENTICAL_RESIDUAL * float(np.dot(a64, a64))


@dataclass(frozen=True)
class ChannelPlan:
    """Which channels to transcribe, and who speaks on each."""

    tracks: list[tuple[int, np.ndarray]]  # (channel, samples) to send
    speakers: list[str]  # one name per channel
    copies: bool  # every sounding channel is a copy of the first: transcribed once
    silent: list[int]


def speaker_names(known: list[str] | None, count: int) -> list[str]:
    """`known_speaker_names[]` in channel order, then A, B, C ... for the rest."""
    names = [n.strip() for n in (known or []) if n and n.strip()]
    letters = [chr(ord("A") + i) if i < 26 else f"S{i + 1}" for i in range(count)]
    return [names[i] if i < len(names) else letters[i] for i in range(count)]


def plan(channels: list[np.ndarray], known: list[str] | None) -> ChannelPlan:
    speakers = speaker_names(known, len(channels))
    silent = [i for i, c in enumerate(channels) if is_silent(c)]
    sounding = [i for i in range(len(channels)) if i not in silent]
    if len(sounding) > 1 and all(same_signal(channels[i], channels[sounding[0]]) for i in sounding[1:]):
        return ChannelPlan([(sounding[0], channels[sounding[0]])], speakers, True, silent)
    return ChannelPlan([(i, channels[i]) for i in sounding], speakers, False, silent)


def track_audio(samples: np.ndarray, source: DecodedAudio) -> DecodedAudio:
    return DecodedAudio(samples, source.source_format, source.source_sample_rate, 1)


def merge(results: list[tuple[int, Transcript]], speakers: list[str], duration: float,
          template: Transcript | None = None) -> Transcript:
    """One transcript: every channel's segments labelled and in time order (ties: lower channel first)."""
    labelled: list[SpeakerSegment] = []
    for channel, transcript in results:
        for s in transcript.segments:
            fields = {f.name: getattr(s, f.name) for f in dataclasses.fields(Segment)}
            labelled.append(SpeakerSegment(**fields, speaker=speakers[channel], channel=channel))
    labelled.sort(key=lambda s: (float(s.start), s.channel or 0))
    for i, s in enumerate(labelled):
        s.id = i
    languages = [t.language for _, t in results if t.language and t.segments] or [
        t.language for _, t in results if t.language
    ]
    language = languages[0] if languages else None
    first = results[0][1] if results else template
    return Transcript(
        text=join_segments(labelled, language),  # type: ignore[arg-type]
        language=language,
        language_probability=max((t.language_probability for _, t in results), default=0.0),
        duration=duration,
        duration_after_vad=sum(t.duration_after_vad for _, t in results),
        segments=labelled,  # type: ignore[arg-type]
        task=first.task if first is not None else "transcribe",
        queue_wait_seconds=min(
            (t.queue_wait_seconds for _, t in results if t.queue_wait_seconds is not None), default=None
        ),
    )


async def plan_split(decoded: DecodedAudio, tracks: list[np.ndarray], names: list[str] | None) -> ChannelPlan:
    """channels=split's plan (off the loop): `tracks` are the channels from `decoder.decode_split`; empty for a mono
    upload, which is then one channel, the first speaker's."""
    channel_plan = await asyncio.to_thread(plan, tracks or [decoded.samples], names)
    if channel_plan.copies:
        log.info("channels=split: the channels carry the same signal; transcribed once")
    return channel_plan


async def transcribe_planned(
    channel_plan: ChannelPlan,
    source: DecodedAudio,
    duration: float,
    options: TranscribeOptions,
    transcribe: Callable[[int, DecodedAudio], Awaitable[Transcript]],
) -> Transcript:
    """Every channel of the plan through `transcribe(channel, audio)` (the caller's scheduler call, at its
    priority) at once, so their windows batch together; merged in time order with speakers. `source` gives the
    upload's format, `duration` its length. When one channel fails, or the caller is cancelled, the other channels'
    work is dropped too (a plain gather would leave it running in the scheduler for nobody)."""
    channels = [channel for channel, _ in channel_plan.tracks]
    work = [asyncio.ensure_future(transcribe(channel, track_audio(samples, source)))
            for channel, samples in channel_plan.tracks]
    try:
        results = await asyncio.gather(*work)
    except BaseException:
        for task in work:
            task.cancel()
        await asyncio.gather(*work, return_exceptions=True)
        raise
    merged = merge(list(zip(channels, results)), channel_plan.speakers, duration)
    if options.task == "translate" and merged.task != "translate":
        merged = dataclasses.replace(merged, task="translate")
    return merged


async def transcribe_split(
    decoded: DecodedAudio,
    tracks: list[np.ndarray],
    options: TranscribeOptions,
    names: list[str] | None,
    transcribe: Callable[[DecodedAudio], Awaitable[Transcript]],
) -> Transcript:
    """channels=split for the routes and the jobs runner alike: `plan_split`, then `transcribe_planned`."""
    channel_plan = await plan_split(decoded, tracks, names)
    del tracks
    return await transcribe_planned(
        channel_plan, decoded, decoded.duration, options, lambda _, audio: transcribe(audio)
    )
