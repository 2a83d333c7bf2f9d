"""The domain's data: a transcript, its segments and words, and what text processing adds to it.

A leaf: it imports nothing of stt_engine's and nothing heavy, so text processing, formats, jobs and tests can use
these types without loading CTranslate2 or the Whisper model. `Segment` and `Word` have faster-whisper's fields
(faster_whisper.transcribe imports CTranslate2), so code written against faster-whisper's reads them unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Task = Literal["transcribe", "translate"]

NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "yue"})


@dataclass
class Word:
    """faster-whisper's `Word`: one word's timing on the original audio, and its probability."""

    start: float
    end: float
    word: str
    probability: float


@dataclass
class Segment:
    """faster-whisper's `Segment`: the same fields in the same order."""

    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: list[Word] | None
    temperature: float | None


@dataclass
class SpeakerSegment(Segment):
    """A segment with the channel it was heard on and that channel's speaker (or a diarized speaker)."""

    speaker: str | None = None
    channel: int | None = None


@dataclass
class Transcript:
    """The result for one request: segments on the original audio's timeline."""

    text: str
    language: str | None  # None when no speech was found and no language was asked for
    language_probability: float
    duration: float
    duration_after_vad: float
    segments: list[Segment]
    task: Task = "transcribe"
    queue_wait_seconds: float | None = None  # admission to the first decode start, when a scheduler ran it


@dataclass(frozen=True)
class DroppedSegment:
    """A segment the filter removed, and why (reported in verbose_json as `dropped_segments`)."""

    id: int
    start: float
    end: float
    text: str
    reasons: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "start": round(float(self.start), 3), "end": round(float(self.end), 3),
            "text": self.text, "reasons": list(self.reasons),
        }


@dataclass
class ProcessedTranscript(Transcript):
    """A transcript after text processing, with the report of what was changed."""

    dropped_segments: list[DroppedSegment] = field(default_factory=list)
    redactions: dict[str, int] | None = None  # masks by type, when PII masking was asked for
    original_text: str | None = None  # the unmasked text, only when REDACT_KEEP_ORIGINAL allows it


def tidy_text(text: str) -> str:
    """Collapse whitespace; segments never start with a space (Whisper emits one before most tokens)."""
    return " ".join(text.split())


def segment_separator(language: str | None) -> str:
    """Chinese and Japanese put no space between sentences; every other language (Korean too) does."""
    return "" if language in NO_SPACE_LANGUAGES else " "


def join_segments(segments: list[Segment], language: str | None) -> str:
    return segment_separator(language).join(s.text for s in segments).strip()
