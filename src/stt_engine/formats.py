"""Render a `Transcript` as OpenAI's response formats: json, text, srt, vtt, verbose_json, diarized_json.

Segments that carry a speaker (channels=split, or diarization) show it in every format: a `[A]` prefix in srt, a
`<v A>` voice in vtt, an `A: ...` line per turn in text, a `speaker` field in the JSON formats."""

from __future__ import annotations

from enum import Enum
from typing import Any

from faster_whisper.utils import format_timestamp

from stt_engine.types import Transcript


class ResponseFormat(str, Enum):
    json = "json"
    text = "text"
    srt = "srt"
    vtt = "vtt"
    verbose_json = "verbose_json"
    diarized_json = "diarized_json"


MEDIA_TYPES: dict[ResponseFormat, str] = {
    ResponseFormat.json: "application/json",
    ResponseFormat.verbose_json: "application/json",
    ResponseFormat.diarized_json: "application/json",
    ResponseFormat.text: "text/plain; charset=utf-8",
    ResponseFormat.srt: "application/x-subrip; charset=utf-8",
    ResponseFormat.vtt: "text/vtt; charset=utf-8",
}


def timestamp(seconds: float, separator: str) -> str:
    """`HH:MM:SS,mmm` (srt) or `HH:MM:SS.mmm` (vtt): faster-whisper's own formatter, always with hours.

    Hours are always written because srt requires them and fixed-width cues are what players and our tests expect.
    """
    return format_timestamp(max(0.0, float(seconds)), always_include_hours=True, decimal_marker=separator)


def speaker_of(segment: Any) -> str | None:
    """The segment's speaker (channels=split or diarization), else None."""
    return getattr(segment, "speaker", None)


def segment_labels(segment: Any) -> dict[str, Any]:
    """A JSON segment's `speaker` and `channel`, each only when the segment has it (channels=split, diarization)."""
    speaker, channel = speaker_of(segment), getattr(segment, "channel", None)
    return ({"speaker": speaker} if speaker is not None else {}) | ({"channel": channel} if channel is not None else {})


def word_json(word: Any, probability: bool = True) -> dict[str, Any]:
    """A word in the JSON formats: its text without the leading space, its timing (and its probability)."""
    body = {"word": word.word.strip(), "start": float(word.start), "end": float(word.end)}
    return body | {"probability": float(word.probability)} if probability else body


def _has_speakers(transcript: Transcript) -> bool:
    return any(speaker_of(s) is not None for s in transcript.segments)


def to_srt(transcript: Transcript) -> str:
    def cue(s: Any) -> str:
        speaker = speaker_of(s)
        return f"[{speaker}] {s.text.strip()}" if speaker is not None else s.text

    blocks = [
        f"{i}\n{timestamp(s.start, ',')} --> {timestamp(s.end, ',')}\n{cue(s)}\n"
        for i, s in enumerate(transcript.segments, start=1)
    ]
    return "\n".join(blocks)


def to_vtt(transcript: Transcript) -> str:
    def cue(s: Any) -> str:
        speaker = speaker_of(s)
        return f"<v {speaker}>{s.text.strip()}" if speaker is not None else s.text

    blocks = [f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{cue(s)}\n" for s in transcript.segments]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_speaker_text(transcript: Transcript) -> str:
    """`Speaker: text` lines, one per turn (consecutive segments of one speaker join)."""
    lines: list[tuple[str | None, list[str]]] = []
    for s in transcript.segments:
        speaker = speaker_of(s)
        if lines and lines[-1][0] == speaker:
            lines[-1][1].append(s.text.strip())
        else:
            lines.append((speaker, [s.text.strip()]))
    return "".join(f"{speaker}: {' '.join(parts)}\n" for speaker, parts in lines)


def to_diarized_json(transcript: Transcript) -> dict[str, Any]:
    """OpenAI's diarized_json. Speakers come from channels=split or diarization; a transcript without either (a
    stream's done event of another format) is all speaker A."""
    return {
        "task": transcript.task,
        "language": transcript.language,
        "duration": round(transcript.duration, 3),
        "text": transcript.text,
        "segments": [
            {
                "type": "transcript.text.segment", "id": f"seg_{s.id}", "start": float(s.start), "end": float(s.end),
                "speaker": speaker_of(s) or "A", "text": s.text.strip(),
            }
            | ({"channel": s.channel} if getattr(s, "channel", None) is not None else {})
            for s in transcript.segments
        ],
    }


def to_verbose_json(transcript: Transcript, include_words: bool) -> dict[str, Any]:
    """OpenAI's verbose_json: language, duration, segments with their confidence figures, optional words."""
    body: dict[str, Any] = {
        "task": transcript.task,
        "language": transcript.language,
        "duration": round(transcript.duration, 3),
        "text": transcript.text,
        "segments": [
            {
                "id": s.id,
                "seek": s.seek,
                "start": float(s.start),
                "end": float(s.end),
                "text": s.text,
                "tokens": list(s.tokens),
                "temperature": float(s.temperature or 0.0),
                "avg_logprob": float(s.avg_logprob),
                "compression_ratio": float(s.compression_ratio),
                "no_speech_prob": float(s.no_speech_prob),
            }
            | segment_labels(s)
            for s in transcript.segments
        ],
    }
    dropped = getattr(transcript, "dropped_segments", None)
    if dropped is not None:  # a processed transcript: what the invented-phrase filter removed, never silently
        body["dropped_segments"] = [d.as_dict() for d in dropped]
    if include_words:
        body["words"] = [word_json(w) for s in transcript.segments for w in (s.words or [])]
    return body


def text_report(transcript: Transcript) -> dict[str, Any]:
    """What text processing reports in a JSON body: mask counts, and the unmasked text where it is allowed."""
    body: dict[str, Any] = {}
    redactions = getattr(transcript, "redactions", None)
    if redactions is not None:
        body["redactions"] = redactions
        original = getattr(transcript, "original_text", None)
        if original is not None:
            body["original_text"] = original
    return body


def render(transcript: Transcript, fmt: ResponseFormat, include_words: bool = False) -> str | dict[str, Any]:
    """The response body: a dict for the JSON formats, a string for the others."""
    if fmt is ResponseFormat.json:
        return {"text": transcript.text, **text_report(transcript)}
    if fmt is ResponseFormat.verbose_json:
        return {**to_verbose_json(transcript, include_words), **text_report(transcript)}
    if fmt is ResponseFormat.diarized_json:
        return {**to_diarized_json(transcript), **text_report(transcript)}
    if fmt is ResponseFormat.srt:
        return to_srt(transcript)
    if fmt is ResponseFormat.vtt:
        return to_vtt(transcript)
    if _has_speakers(transcript):
        return to_speaker_text(transcript)
    return transcript.text + "\n" if transcript.text else ""
