"""Response models of the transcription routes, for `/docs` and the OpenAPI schema.

The routes build their JSON themselves (the wire format predates these models and must not change), so these
models describe it. Where OpenAI defines the shape, the model is the `openai` SDK's own type with our extra fields
added, so a field the SDK does not know, or a type it would not parse, fails here; `tests/test_http_hardening.py` checks that real responses validate against them.
"""

from __future__ import annotations

from openai.types import audio as openai_audio
from openai.types.audio.transcription_diarized_segment import TranscriptionDiarizedSegment
from openai.types.audio.transcription_verbose import Usage as UsageDuration
from pydantic import BaseModel, ConfigDict, Field


class PostprocessError(BaseModel):
    code: str
    message: str
    upstream_status: int | None = None
    upstream_type: str | None = None


class PostprocessResult(BaseModel):
    """The result; `text` is null and `error` set when the LLM server failed."""

    task: str
    model: str | None = None
    text: str | None = None
    error: PostprocessError | None = None
    chunks: int = 0
    usage: dict[str, int] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    duration_ms: float = 0.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


_REDACTIONS = Field(None, description="Masks by type ([RRN] [PHONE] [CARD] [ACCOUNT] [EMAIL]), with redact=pii.")
_ORIGINAL = Field(None, description="The unmasked text, with redact=pii and REDACT_KEEP_ORIGINAL=true.")
_SPEAKER = Field(None, description="With channels=split, the channel's speaker; with diarization, A, B, ... in order "
                 "of first appearance, or a known speaker's name.")
_CHANNEL = Field(None, description="With channels=split: the channel (0 = left).")


class DroppedSegment(_Strict):
    """A segment the invented-phrase filter removed, and why."""

    id: int
    start: float
    end: float
    text: str
    reasons: list[str]


# --- original contract: POST /transcribe ----------------------------------------------------------------
class TranscribeWord(_Strict):
    word: str
    start: float
    end: float


class TranscribeSegment(_Strict):
    start: float
    end: float
    text: str
    words: list[TranscribeWord] | None = Field(None, description="Present with `word_timestamps=true`.")
    speaker: str | None = _SPEAKER
    channel: int | None = _CHANNEL


class TranscribeResponse(_Strict):
    success: bool = True
    text: str
    language: str | None = Field(description="Detected or requested language (ISO-639-1).")
    language_probability: float
    duration: float = Field(description="Audio length in seconds.")
    processing_time: float = Field(description="Seconds from upload received to transcript ready.")
    segments: list[TranscribeSegment]
    postprocess: PostprocessResult | None = Field(None, description="Present when `postprocess` was asked for.")
    speakers: list[str] | None = Field(None, description="With diarize=true or channels=split: the speakers, in "
                                       "order of first appearance.")
    redactions: dict[str, int] | None = _REDACTIONS
    original_text: str | None = _ORIGINAL
    model: str | None = Field(None, description="The id of the model that decoded it (GET /v1/models).")


# --- OpenAI: POST /v1/audio/transcriptions and /v1/audio/translations --------------------------------------
# The OpenAI SDK's own types, with our extra fields added (and no others allowed): the SDK parses what we send.
class TranscriptionJson(openai_audio.Transcription):
    """`response_format=json` (the default)."""

    model_config = ConfigDict(extra="forbid")

    language: str | None = Field(None, description="Present with `postprocess`.")
    postprocess: PostprocessResult | None = Field(None, description="Present when `postprocess` was asked for.")
    redactions: dict[str, int] | None = _REDACTIONS
    original_text: str | None = _ORIGINAL


class VerboseSegment(openai_audio.TranscriptionSegment):
    model_config = ConfigDict(extra="forbid")

    speaker: str | None = _SPEAKER
    channel: int | None = _CHANNEL


class VerboseWord(openai_audio.TranscriptionWord):
    model_config = ConfigDict(extra="forbid")

    probability: float


class TranscriptionVerbose(openai_audio.TranscriptionVerbose):
    """`response_format=verbose_json`."""

    model_config = ConfigDict(extra="forbid")

    task: str
    language: str | None  # type: ignore[assignment]  # None when nothing was heard to tell it
    segments: list[VerboseSegment]  # type: ignore[assignment]  # always sent
    words: list[VerboseWord] | None = Field(  # type: ignore[assignment]
        None, description="Present with `timestamp_granularities[]=word`."
    )
    postprocess: PostprocessResult | None = Field(None, description="Present when `postprocess` was asked for.")
    dropped_segments: list[DroppedSegment] | None = Field(
        None, description="Segments the invented-phrase filter removed (HALLUCINATION_FILTER), with the reasons."
    )
    redactions: dict[str, int] | None = _REDACTIONS
    original_text: str | None = _ORIGINAL


class DiarizedSegment(TranscriptionDiarizedSegment):
    model_config = ConfigDict(extra="forbid")

    channel: int | None = _CHANNEL


class TranscriptionDiarized(openai_audio.TranscriptionDiarized):
    """`response_format=diarized_json` (OpenAI's shape); speakers come from diarization, or from channels=split."""

    model_config = ConfigDict(extra="forbid")

    task: str  # type: ignore[assignment]  # translate too, on /v1/audio/translations
    language: str | None
    segments: list[DiarizedSegment]  # type: ignore[assignment]
    postprocess: PostprocessResult | None = Field(None, description="Present when `postprocess` was asked for.")
    redactions: dict[str, int] | None = _REDACTIONS
    original_text: str | None = _ORIGINAL


# --- stream=true on /v1/audio/*: Server-Sent Events -----------------------------------------------------------
class StreamDelta(openai_audio.TranscriptionTextDeltaEvent):
    """`transcript.text.delta`: the next piece of the final text."""

    model_config = ConfigDict(extra="forbid")


class StreamSegment(openai_audio.TranscriptionTextSegmentEvent):
    """`transcript.text.segment` (diarized_json, channels=split, diarization): a finished segment and its speaker."""

    model_config = ConfigDict(extra="forbid")

    channel: int | None = _CHANNEL


class StreamDone(openai_audio.TranscriptionTextDoneEvent):
    """`transcript.text.done`: the whole text, and what the response format's body would add beside it."""

    model_config = ConfigDict(extra="forbid")

    usage: UsageDuration | None = None  # type: ignore[assignment]  # audio seconds, as the non-streamed reply
    segments: list[VerboseSegment] | list[DiarizedSegment] | None = None
    words: list[VerboseWord] | None = None
    dropped_segments: list[DroppedSegment] | None = None
    redactions: dict[str, int] | None = _REDACTIONS
    original_text: str | None = _ORIGINAL


# --- POST /v1/audio/diarization -----------------------------------------------------------------------------
class SpeakerTurnOut(_Strict):
    start: float
    end: float
    speaker: str = Field(description="A, B, ... in order of first appearance, or a known speaker's name.")


class DiarizationResponse(_Strict):
    """Who spoke when, without transcription."""

    object: str = "audio.diarization"
    duration: float = Field(description="Audio length in seconds.")
    speakers: list[str] = Field(description="The speakers, in order of first appearance.")
    segments: list[SpeakerTurnOut]


# text, srt and vtt are plain text in their own media types
TEXT_RESPONSES = {
    200: {
        "description": "The transcript: JSON for `json`/`verbose_json`, text for `text`, `srt` and `vtt`.",
        "content": {
            "text/plain": {"schema": {"type": "string"}},
            "application/x-subrip": {"schema": {"type": "string"}},
            "text/vtt": {"schema": {"type": "string"}},
        },
    }
}
