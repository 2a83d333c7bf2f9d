"""The one place a scheduler's `Transcript` becomes what the API returns: filtered, then masked.

Every route and the jobs runner call `finish_transcript`, so a transcript is treated the same wherever it goes
(formats, post-processing, logs, job results).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from stt_engine.config import Settings
from stt_engine.engine import Transcript
from stt_engine.textproc.hallucination import DroppedSegment, filter_transcript


@dataclass
class ProcessedTranscript(Transcript):
    """A transcript after text processing, with the report of what was changed."""

    dropped_segments: list[DroppedSegment] = field(default_factory=list)


@dataclass(frozen=True)
class TextOptions:
    """A request's text-processing choices (defaults from the settings)."""

    hallucination_filter: bool = True


def text_options(settings: Settings) -> TextOptions:
    """The choices for a request that set none of its own."""
    return TextOptions(hallucination_filter=settings.hallucination_filter)


def finish_transcript(
    transcript: Transcript, settings: Settings, options: TextOptions | None = None, metrics: Any | None = None
) -> ProcessedTranscript:
    """Filter invented phrases (when on), and report it. Pure apart from the metrics it counts."""
    options = options or text_options(settings)
    extra = str(settings.hallucination_phrases_file) if settings.hallucination_phrases_file else None
    filtered, dropped = filter_transcript(transcript, extra_file=extra, enabled=options.hallucination_filter)
    if dropped and metrics is not None:
        metrics.observe_dropped_segments(filtered.language, len(dropped))
    base = {f.name: getattr(filtered, f.name) for f in dataclasses.fields(Transcript)}
    return ProcessedTranscript(**base, dropped_segments=dropped)
