"""The transcription routes' replies: a transcript in the original contract's shape, in an OpenAI response
format (JSON or text), and what a stream's `transcript.text.done` adds. The shapes themselves are rendered by
`stt_engine.formats`; this module adds what the HTTP reply carries beside them (usage, post-processing, headers)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse, PlainTextResponse, Response

from stt_engine.formats import MEDIA_TYPES, ResponseFormat, render, segment_labels, text_report, word_json
from stt_engine.openai_fields import transcript_logprobs, usage
from stt_engine.speakers import speakers_of
from stt_engine.types import Transcript


def original_body(t: Transcript) -> dict[str, Any]:
    """The original contract's fields for a transcript (beyond `success` and `processing_time`)."""
    return {
        "text": t.text,
        "language": t.language,
        "language_probability": round(t.language_probability, 4),
        "duration": round(t.duration, 3),
        "segments": [
            {"start": float(s.start), "end": float(s.end), "text": s.text}
            | segment_labels(s)
            | ({"words": [word_json(w, probability=False) for w in s.words]} if s.words else {})
            for s in t.segments
        ],
        **({"speakers": speakers} if (speakers := speakers_of(t)) else {}),
        **text_report(t),
    }


def stream_done(t: Transcript, fmt: ResponseFormat, words: bool, logprobs: bool = False) -> dict[str, Any]:
    """What a stream's `transcript.text.done` adds to the text: the mask report, `usage` (and `logprobs` when
    asked) and, for the formats whose response has them, the segments (with speakers for channels=split), words and
    `dropped_segments`."""
    body = text_report(t) | {"usage": usage(t.duration)}
    if logprobs:
        body["logprobs"] = transcript_logprobs(t.segments)
    if fmt in (ResponseFormat.diarized_json, ResponseFormat.verbose_json):
        rendered = render(t, fmt, include_words=words)
        assert isinstance(rendered, dict)
        body |= {k: rendered[k] for k in ("segments", "words", "dropped_segments") if k in rendered}
    return body


def transcript_response(
    transcript: Transcript, fmt: ResponseFormat, *, include_words: bool, postprocess: dict[str, Any] | None,
    logprobs: bool = False,
) -> Response:
    """A transcript in `fmt`, as `/v1/audio/*` and a job's result answer it: JSON formats with the post-processing
    result beside them, text formats with the mask counts in an `X-Redactions` header."""
    body = render(transcript, fmt, include_words=include_words)
    if isinstance(body, dict):
        if fmt in (ResponseFormat.verbose_json, ResponseFormat.diarized_json) or postprocess is not None:
            body.setdefault("language", transcript.language)
        if postprocess is not None:
            body["postprocess"] = postprocess
        if logprobs:
            body["logprobs"] = transcript_logprobs(transcript.segments)
        body["usage"] = usage(transcript.duration)
        return JSONResponse(body)
    headers = {}
    redactions = text_report(transcript).get("redactions")
    if redactions is not None:
        headers["X-Redactions"] = ",".join(f"{k}={v}" for k, v in redactions.items())
    return PlainTextResponse(body, media_type=MEDIA_TYPES[fmt], headers=headers)
