"""Response models of the transcription routes, for `/docs` and the OpenAPI schema.

The routes build their JSON themselves (the wire format predates these models and must not change), so these
models describe it; `tests/test_http_hardening.py` checks that real responses validate against them.
"""

from __future__ import annotations

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


class UsageDuration(_Strict):
    """OpenAI's duration usage (docs/openai-compat.md)."""

    type: str = "duration"
    seconds: float = Field(description="Length of the input audio in seconds.")


class Logprob(_Strict):
    token: str
    logprob: float
    bytes: list[int]


_USAGE = Field(None, description="The input audio's length, as OpenAI reports it.")


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


# --- OpenAI: POST /v1/audio/transcriptions and /v1/audio/translations --------------------------------------
class TranscriptionJson(_Strict):
    """`response_format=json` (the default)."""

    text: str
    language: str | None = Field(None, description="Present with `postprocess`.")
    postprocess: PostprocessResult | None = Field(None, description="Present when `postprocess` was asked for.")
    redactions: dict[str, int] | None = _REDACTIONS
    original_text: str | None = _ORIGINAL
    logprobs: list[Logprob] | None = Field(None, description="Present with `include[]=logprobs`.")
    usage: UsageDuration | None = _USAGE


class VerboseSegment(_Strict):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    speaker: str | None = _SPEAKER
    channel: int | None = _CHANNEL


class VerboseWord(_Strict):
    word: str
    start: float
    end: float
    probability: float


class TranscriptionVerbose(_Strict):
    """`response_format=verbose_json`."""

    task: str
    language: str | None
    duration: float
    text: str
    segments: list[VerboseSegment]
    words: list[VerboseWord] | None = Field(None, description="Present with `timestamp_granularities[]=word`.")
    postprocess: PostprocessResult | None = Field(None, description="Present when `postprocess` was asked for.")
    dropped_segments: list[DroppedSegment] | None = Field(
        None, description="Segments the invented-phrase filter removed (HALLUCINATION_FILTER), with the reasons."
    )
    redactions: dict[str, int] | None = _REDACTIONS
    original_text: str | None = _ORIGINAL
    usage: UsageDuration | None = _USAGE


class DiarizedSegment(_Strict):
    type: str = "transcript.text.segment"
    id: str
    start: float
    end: float
    speaker: str
    text: str
    channel: int | None = _CHANNEL


class TranscriptionDiarized(_Strict):
    """`response_format=diarized_json` (OpenAI's shape); speakers come from diarization, or from channels=split."""

    task: str
    language: str | None
    duration: float
    text: str
    segments: list[DiarizedSegment]
    postprocess: PostprocessResult | None = Field(None, description="Present when `postprocess` was asked for.")
    redactions: dict[str, int] | None = _REDACTIONS
    original_text: str | None = _ORIGINAL
    usage: UsageDuration | None = _USAGE


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
