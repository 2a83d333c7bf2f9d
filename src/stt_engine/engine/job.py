"""The engine's view of one request: its speech, split into sections that are each decoded window by window.

A `Job` holds the speech that VAD kept, as sample ranges of the original audio (no copy of the samples). The speech
is cut at pauses into `Stream`s (sections). Each stream is decoded exactly as faster-whisper's sequential decoder
decodes a whole file: a 30 s window at its `seek`, then the next window from where that one's last complete segment
ended. Streams are independent of each other, so the windows of several streams (of one request or of many) can be
decoded at the same time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stt_engine.audio import SAMPLE_RATE
from stt_engine.options import TranscribeOptions
from stt_engine.types import Transcript as Transcript  # its home before stt_engine.types

HOP = 160  # samples per Whisper feature frame (10 ms)
WINDOW_FRAMES = 3000  # 30 s


@dataclass(eq=False)
class Stream:
    """One section of a job's speech, decoded sequentially by seek, like a whole file in faster-whisper."""

    job: Job
    index: int
    start: int  # first sample of this section on the job's speech timeline (VAD removed)
    end: int
    seek: int = 0  # frames from the section's start
    segments: list[dict] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # decoded text tokens, for condition_on_previous_text
    prompt_reset_since: int = 0
    last_speech_timestamp: float = 0.0
    in_flight: bool = False

    @property
    def frames(self) -> int:
        """faster-whisper's `content_frames` for this audio: one feature frame per 10 ms."""
        return (self.end - self.start) // HOP

    @property
    def offset(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def done(self) -> bool:
        return self.seek >= self.frames

    @property
    def first_window(self) -> bool:
        return self.index == 0 and self.seek == 0


@dataclass(eq=False)
class Job:
    """One request's audio and decoding state. The scheduler's own bookkeeping lives on its ticket, not here."""

    options: TranscribeOptions
    samples: np.ndarray | None  # the original 16 kHz audio; dropped once every stream is decoded
    duration: float
    speech: list[dict]  # VAD output: {"start", "end"} in samples of the original audio
    streams: list[Stream] = field(default_factory=list)
    language: str | None = None
    language_probability: float = 1.0
    emitted: int = 0  # segments already handed out as final, in order (streaming)
    _bounds: np.ndarray | None = None

    @property
    def duration_after_vad(self) -> float:
        return sum(c["end"] - c["start"] for c in self.speech) / SAMPLE_RATE

    @property
    def finished(self) -> bool:
        return all(s.done for s in self.streams)

    def speech_samples(self, start: int, end: int) -> np.ndarray:
        """Samples [start, end) of the speech timeline, gathered from the original audio's speech ranges."""
        assert self.samples is not None, "samples are dropped once the job is decoded"
        if self._bounds is None:
            self._bounds = np.cumsum([0] + [c["end"] - c["start"] for c in self.speech])
        pieces = []
        first = max(0, int(np.searchsorted(self._bounds, start, side="right")) - 1)
        for i in range(first, len(self.speech)):
            lo, hi = int(self._bounds[i]), int(self._bounds[i + 1])
            if lo >= end:
                break
            a, b = max(start, lo), min(end, hi)
            if a < b:
                origin = self.speech[i]["start"] - lo
                pieces.append(self.samples[origin + a: origin + b])
        if not pieces:
            return np.zeros(0, dtype=np.float32)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def release(self) -> None:
        """Drop the audio: the transcript needs only the segments."""
        self.samples = None
