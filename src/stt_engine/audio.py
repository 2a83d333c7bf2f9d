"""Decode and validate uploaded audio: any container/codec PyAV's bundled FFmpeg reads, to 16 kHz mono float32.

We decode ourselves (rather than through faster-whisper's `decode_audio`) to tell users *what* is wrong with a
file: not media at all, media without an audio track, a file cut short, or too short/long to transcribe.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

from stt_engine.errors import AudioTooLong, InvalidAudio

SAMPLE_RATE = 16_000
MIN_AUDIO_SECONDS = 0.1  # OpenAI's API refuses shorter files too; Whisper invents text for them.
_TRUNCATION_TOLERANCE = 0.9  # decoded/declared duration below this means the file was cut short


@dataclass(frozen=True)
class DecodedAudio:
    """16 kHz mono samples and what we learned about the source."""

    samples: np.ndarray
    source_format: str
    source_sample_rate: int
    source_channels: int

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def decode(source: str | os.PathLike[str] | BinaryIO, *, max_seconds: float | None = None) -> DecodedAudio:
    """Decode `source` (a path or a binary file object) to 16 kHz mono float32.

    Raises `InvalidAudio` (400) for empty, undecodable, audio-less, truncated or too-short input and
    `AudioTooLong` (422) beyond `max_seconds`.
    """
    if isinstance(source, (str, os.PathLike)) and Path(source).stat().st_size == 0:
        raise InvalidAudio("The uploaded file is empty.", code="empty_file")
    try:
        container = av.open(source, mode="r", metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise InvalidAudio(
            "The file could not be read as audio: it is not a supported audio or video format "
            f"({_ffmpeg_reason(exc)}). Supported: wav, flac, mp3, m4a/aac, ogg/opus, webm, mp4 and anything FFmpeg decodes.",
            code="unsupported_format",
        ) from exc
    with container:
        if not container.streams.audio:
            raise InvalidAudio("The file has no audio track.", code="no_audio_track")
        stream = container.streams.audio[0]
        declared = _declared_seconds(container, stream)
        if max_seconds is not None and declared is not None and declared > max_seconds:
            raise AudioTooLong(_too_long_message(declared, max_seconds))
        fmt = container.format.name
        rate, channels = stream.codec_context.sample_rate or 0, stream.codec_context.channels or 0
        samples, errors = _decode_stream(container, stream, max_seconds)

    duration = len(samples) / SAMPLE_RATE
    if duration == 0:
        raise InvalidAudio(
            "No audio could be decoded from the file (it is empty, damaged, or not audio).", code="undecodable_audio"
        )
    if declared and errors and duration < declared * _TRUNCATION_TOLERANCE:
        raise InvalidAudio(
            f"The audio file is truncated or damaged: it declares {declared:.2f} s but only {duration:.2f} s "
            "could be decoded.",
            code="truncated_audio",
        )
    if duration < MIN_AUDIO_SECONDS:
        raise InvalidAudio(
            f"The audio is too short ({duration:.3f} s); at least {MIN_AUDIO_SECONDS} s is needed.",
            code="audio_too_short",
        )
    return DecodedAudio(samples, fmt, rate, channels)


def _decode_stream(
    container: av.container.InputContainer, stream: av.audio.stream.AudioStream, max_seconds: float | None
) -> tuple[np.ndarray, int]:
    """Decode and resample one audio stream; returns the samples and how many packets failed to decode."""
    resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    pieces: list[np.ndarray] = []
    total = 0
    errors = 0
    limit = int(max_seconds * SAMPLE_RATE) if max_seconds is not None else None
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                errors += 1
                continue
            for frame in frames:
                frame.pts = None
                for out in resampler.resample(frame):
                    array = out.to_ndarray().reshape(-1)
                    pieces.append(array)
                    total += len(array)
            if limit is not None and total > limit:
                raise AudioTooLong(_too_long_message(total / SAMPLE_RATE, max_seconds or 0, at_least=True))
        for out in resampler.resample(None):
            pieces.append(out.to_ndarray().reshape(-1))
    except av.error.FFmpegError as exc:
        errors += 1
        if not pieces:
            raise InvalidAudio(
                f"The audio could not be decoded ({_ffmpeg_reason(exc)}).", code="undecodable_audio"
            ) from exc
    finally:
        del resampler
        gc.collect()  # PyAV's resampler graphs are freed only by the cycle collector
    if not pieces:
        return np.zeros(0, dtype=np.float32), errors
    return np.concatenate(pieces).astype(np.float32) / 32768.0, errors


def _declared_seconds(container: av.container.InputContainer, stream: av.audio.stream.AudioStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def _too_long_message(seconds: float, limit: float, at_least: bool = False) -> str:
    prefix = "at least " if at_least else ""
    return (
        f"The audio is {prefix}{seconds:.0f} s long, over this server's limit of {limit:.0f} s "
        "(MAX_AUDIO_SECONDS). Split it into shorter files."
    )


def _ffmpeg_reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
