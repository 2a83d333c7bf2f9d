"""Turn detection on a live stream: Silero VAD as faster-whisper ships it, and the turn tracker around it.

faster-whisper's `SileroVADModel` scores 512-sample windows (32 ms at 16 kHz), each with the last 64 samples of
the window before as context and no other state, so scoring a stream piece by piece, with the previous window
prepended, gives the same probabilities as scoring the whole file at once.

`TurnTracker` turns probabilities into turns the way OpenAI's server VAD does: speech starts at the first window
over `threshold` (the turn begins `prefix_padding_ms` earlier) and stops after `silence_duration_ms` under it.
A turn never exceeds `max_turn_s` (Whisper's 30 s window): a longer one is cut at its latest pause, or hard at the
limit when the speaker never paused. With turn detection off, the client commits and the tracker only buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from faster_whisper.vad import get_vad_model

from stt_engine.audio import SAMPLE_RATE

WINDOW = 512
MIN_PAUSE_S = 0.2  # a silence this long inside a turn is where an over-long turn may be cut
MIN_CUT_S = 5.0  # ...unless it leaves a piece shorter than this


class StreamingVad:
    """Speech probabilities for each complete 512-sample window of the stream so far."""

    def __init__(self) -> None:
        self._model = get_vad_model()
        self._pending = np.zeros(0, dtype=np.float32)
        self._previous = np.zeros(WINDOW, dtype=np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        data = np.concatenate([self._pending, samples]) if self._pending.size else samples
        n = len(data) // WINDOW
        self._pending = data[n * WINDOW:].copy()
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        windows = data[: n * WINDOW]
        probs = self._model(np.concatenate([self._previous, windows]))  # the first window only gives context
        self._previous = windows[-WINDOW:].copy()
        return np.asarray(probs, dtype=np.float32).reshape(-1)[1:]


@dataclass(frozen=True)
class SpeechStarted:
    start: int  # sample index on the session's timeline, prefix padding included


@dataclass(frozen=True)
class SpeechStopped:
    start: int
    end: int
    audio: np.ndarray
    cut: bool = False  # ended by the length limit, not by a pause of silence_duration_ms
    speech_end: int | None = None  # end of the last window scored as speech (None without VAD)


class _Buffer:
    """The session's recent audio: everything from `base` (a sample index) on, in a growable array."""

    def __init__(self) -> None:
        self.base = 0
        self._data = np.zeros(SAMPLE_RATE * 4, dtype=np.float32)
        self._len = 0

    @property
    def end(self) -> int:
        return self.base + self._len

    def append(self, samples: np.ndarray) -> None:
        need = self._len + len(samples)
        if need > len(self._data):
            grown = np.zeros(max(need, 2 * len(self._data)), dtype=np.float32)
            grown[: self._len] = self._data[: self._len]
            self._data = grown
        self._data[self._len: need] = samples
        self._len = need

    def slice(self, start: int, end: int) -> np.ndarray:
        start, end = max(start, self.base), min(end, self.end)
        return self._data[start - self.base: max(start, end) - self.base].copy()

    def drop_before(self, position: int) -> None:
        cut = min(max(position, self.base), self.end) - self.base
        if cut > 0:
            self._data[: self._len - cut] = self._data[cut: self._len]
            self._len -= cut
            self.base += cut


class TurnTracker:
    """Cuts the stream into turns from VAD probabilities (or, with `vad=False`, holds audio until a commit)."""

    def __init__(self, *, vad: bool, threshold: float = 0.5, prefix_padding_ms: int = 300,
                 silence_duration_ms: int = 500, max_turn_s: float = 30.0) -> None:
        self.vad = vad
        self.threshold = threshold
        self.neg_threshold = max(threshold - 0.15, 0.01)  # Silero's hysteresis, as in faster_whisper.vad
        self.prefix = int(prefix_padding_ms * SAMPLE_RATE / 1000)
        self.silence_windows = max(1, round(silence_duration_ms * SAMPLE_RATE / 1000 / WINDOW))
        self.max_turn = int(max_turn_s * SAMPLE_RATE)
        self._buffer = _Buffer()
        self._windows = 0  # windows scored so far
        self._origin = 0  # sample index where the VAD stream (window 0) began
        self.turn_start: int | None = None  # set while a turn is open (in speech, or buffered without VAD)
        self._silence = 0  # consecutive quiet windows inside the turn
        self._pause: int | None = None  # middle of the latest pause inside the turn
        self._last_end = 0
        self.speech_end: int | None = None  # end of the open turn's last speech window

    @property
    def pause_samples(self) -> int:
        """How long the open turn has been quiet (0 while speaking, between turns, or without VAD)."""
        return self._silence * WINDOW if self.vad and self.turn_start is not None else 0

    @property
    def position(self) -> int:
        """Samples received so far."""
        return self._buffer.end

    def turn_audio(self) -> np.ndarray | None:
        """The open turn's audio up to now (for partial hypotheses), or None between turns."""
        if self.turn_start is None:
            return None
        return self._buffer.slice(self.turn_start, self._buffer.end)

    def feed(self, samples: np.ndarray, probs: np.ndarray | None) -> list[SpeechStarted | SpeechStopped]:
        self._buffer.append(samples)
        events: list[SpeechStarted | SpeechStopped] = []
        if not self.vad:
            if samples.size and self.turn_start is None:
                self.turn_start = self._buffer.end - len(samples)
            if self.turn_start is not None and self._buffer.end - self.turn_start >= self.max_turn:
                events.append(self._stop(self.turn_start + self.max_turn, cut=True))
                self.turn_start = self._last_end if self._buffer.end > self._last_end else None
            return events
        for p in probs if probs is not None else ():
            start = self._origin + self._windows * WINDOW
            end = start + WINDOW
            self._windows += 1
            if self.turn_start is None:
                if p >= self.threshold:
                    self.turn_start = max(start - self.prefix, self._last_end, self._buffer.base)
                    self._silence, self._pause, self.speech_end = 0, None, end
                    events.append(SpeechStarted(self.turn_start))
                continue
            if p < self.neg_threshold:
                self._silence += 1
                if self._silence * WINDOW >= MIN_PAUSE_S * SAMPLE_RATE:
                    self._pause = end - self._silence * WINDOW // 2
            elif p >= self.threshold:
                self._silence, self.speech_end = 0, end
            if self._silence >= self.silence_windows:
                events.append(self._stop(end))
                self.turn_start = None
            elif end - self.turn_start >= self.max_turn:
                pause = self._pause if self._pause and self._pause - self.turn_start >= MIN_CUT_S * SAMPLE_RATE else None
                events.append(self._stop(pause or end, cut=True))
                self.turn_start, self._silence, self._pause, self.speech_end = self._last_end, 0, None, end
                events.append(SpeechStarted(self.turn_start))
        if self.turn_start is None:  # between turns keep only what a next turn's prefix padding may need
            self._buffer.drop_before(self._buffer.end - self.prefix - WINDOW)
        return events

    def skip_to(self, position: int) -> None:
        """Start this (new) tracker at `position` of a session's timeline, with a fresh VAD stream from there."""
        self._buffer.base = self._origin = self._last_end = position

    def _commit_start(self) -> int:
        return self.turn_start if self.turn_start is not None else max(self._last_end, self._buffer.base)

    def uncommitted(self) -> int:
        """Samples a commit now would take."""
        return max(0, self._buffer.end - self._commit_start())

    def commit(self) -> SpeechStopped | None:
        """The client's commit: the open turn (or, between VAD turns, the buffered audio) ends now."""
        start = self._commit_start()
        if self._buffer.end <= start:
            return None
        self.turn_start = start
        stopped = self._stop(self._buffer.end)
        self.turn_start = None
        return stopped

    def clear(self) -> None:
        """Drop the buffered audio and any open turn."""
        self._last_end = self._buffer.end
        self._buffer.drop_before(self._buffer.end)
        self.turn_start, self._silence, self._pause = None, 0, None

    def _stop(self, end: int, cut: bool = False) -> SpeechStopped:
        assert self.turn_start is not None
        audio = self._buffer.slice(self.turn_start, end)
        speech_end = min(self.speech_end, end) if self.vad and self.speech_end is not None else None
        stopped = SpeechStopped(self.turn_start, end, audio, cut, speech_end)
        self._last_end = end
        self._buffer.drop_before(end - (0 if cut else self.prefix))
        return stopped
