"""The one place a scheduler's `Transcript` becomes what the API returns: filtered, then masked.

Every route and the jobs runner call `finish_transcript`, so a transcript is treated the same wherever it goes
(formats, post-processing, logs, job results).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Any

from stt_engine.config import Settings
from stt_engine.errors import InvalidRequest, quote
from stt_engine.textproc import numbers, pii
from stt_engine.textproc.hallucination import filter_transcript
from stt_engine.textproc.vocabulary import correct_transcript, load_vocabulary
from stt_engine.types import ProcessedTranscript, Transcript, segment_separator


@dataclass(frozen=True)
class TextOptions:
    """A request's text-processing choices (defaults from the settings)."""

    hallucination_filter: bool = True
    redact: bool = False
    keep_original: bool = False
    normalize_numbers: bool = False


def text_options(settings: Settings, *, redact: str | None = None, normalize: str | None = None) -> TextOptions:
    """A request's choices: its own `redact` (`pii` | `none`) and `normalize` (`numbers` | `none`) values, else
    the server's defaults."""
    value = (redact or settings.redact_default).strip().lower()
    if value not in ("pii", "none"):
        raise InvalidRequest(f"redact must be 'pii' or 'none', not {quote(redact)}.", param="redact",
                             code="invalid_redact")
    norm = (normalize or settings.normalize_default).strip().lower()
    if norm not in ("numbers", "none"):
        raise InvalidRequest(f"normalize must be 'numbers' or 'none', not {quote(normalize)}.", param="normalize",
                             code="invalid_normalize")
    if norm == "numbers":
        numbers.check_available()
    return TextOptions(
        hallucination_filter=settings.hallucination_filter, redact=value == "pii",
        keep_original=settings.redact_keep_original, normalize_numbers=norm == "numbers",
    )


def _masked(transcript: Transcript) -> tuple[Transcript, Counter[str]]:
    """Text, segments and words masked alike: segments and words are masked in context (a phone number read over
    two segments is one mask), so no format shows a piece of what the text masks."""
    text, counts = pii.redact(transcript.text)
    separator = segment_separator(transcript.language)
    texts = pii.redact_pieces([s.text for s in transcript.segments], separator)
    words = pii.redact_words([w.word for s in transcript.segments for w in (s.words or [])])
    segments = []
    for s, masked_text in zip(transcript.segments, texts):
        own = s.words
        if own:
            mine, words = words[: len(own)], words[len(own):]
            own = [dataclasses.replace(w, word=m) for w, m in zip(own, mine) if m.strip()]
        segments.append(dataclasses.replace(s, text=masked_text, words=own))
    return dataclasses.replace(transcript, text=text, segments=segments), counts


def phrases_file(settings: Settings) -> str | None:
    """HALLUCINATION_PHRASES_FILE as the filter takes it."""
    return str(settings.hallucination_phrases_file) if settings.hallucination_phrases_file else None


def process_kept(
    transcript: Transcript, settings: Settings, options: TextOptions
) -> tuple[Transcript, dict[str, int] | None, str | None]:
    """What follows the filter, on a transcript of kept segments: the team's spelling (VOCABULARY_FILE), numbers
    written (when asked), personal data masked (when asked). Returns it with the mask counts and, where allowed,
    the unmasked text. `finish_transcript` and streamed text (`TextStream`) both go through here, so a stream's text
    is the final text's."""
    result = correct_transcript(transcript, load_vocabulary(settings.vocabulary_file))
    if options.normalize_numbers:  # before masking: written digits are what the PII patterns read best
        result = numbers.normalize_transcript(result, settings.normalize_cache_dir or settings.data_dir / "itn")
    if not options.redact:
        return result, None, None
    original = result.text if options.keep_original else None
    result, counts = _masked(result)
    return result, {label: counts.get(label, 0) for label in pii.MASKS}, original


def finish_transcript(
    transcript: Transcript, settings: Settings, options: TextOptions | None = None, metrics: Any | None = None
) -> ProcessedTranscript:
    """Filter invented phrases (when on), correct the team's known misspellings (VOCABULARY_FILE), write numbers
    (when asked), then mask personal data (when asked); report what was dropped and masked. Blocking (NeMo's
    grammars): call it off the event loop."""
    options = options or text_options(settings)
    result, dropped = filter_transcript(transcript, extra_file=phrases_file(settings),
                                        enabled=options.hallucination_filter)
    if dropped and metrics is not None:
        metrics.observe_dropped_segments(result.language, len(dropped))
    result, redactions, original = process_kept(result, settings, options)
    if options.redact:
        dropped = [dataclasses.replace(d, text=pii.redact(d.text)[0]) for d in dropped]
    base = {f.name: getattr(result, f.name) for f in dataclasses.fields(Transcript)}
    return ProcessedTranscript(**base, dropped_segments=dropped, redactions=redactions, original_text=original)
