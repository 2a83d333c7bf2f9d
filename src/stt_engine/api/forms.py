"""The transcription and job routes' form fields, declared once: field types, the dependency classes that group
them (FastAPI reads their fields from the form, as it would a route's own), and the parsers of their values.

No `from __future__ import annotations` here: FastAPI reads a dependency class's field annotations at runtime.
"""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, File, Form, UploadFile

from stt_engine.config import Settings
from stt_engine.errors import InvalidRequest, quote
from stt_engine.formats import ResponseFormat
from stt_engine.speakers import DiarizeRequest, parse_request
from stt_engine.textproc import TextOptions, text_options

FileField = Annotated[UploadFile | None, File(description="Audio or video file (wav, flac, mp3, m4a, ogg, webm, mp4 …)")]
# Bounds on short form fields: a longer value is refused by validation, whose message never echoes it back.
LANGUAGE_MAX = 35  # the longest BCP-47 tag anyone sends (zh-Hant-TW, ...)
TASK_MAX = 40
FORMAT_HELP = "json | text | srt | verbose_json | vtt | diarized_json"
LanguageField = Annotated[
    str | None, Form(max_length=LANGUAGE_MAX, description="ISO-639-1 code, e.g. ko; detected when absent")
]
ModelField = Annotated[
    str | None, Form(max_length=200, description="A served model's id (GET /v1/models); OpenAI's names mean the "
                     "default model")
]
PromptField = Annotated[str | None, Form()]
TemperatureField = Annotated[float | None, Form()]
GranularitiesField = Annotated[list[str] | None, Form(alias="timestamp_granularities[]")]
RedactField = Annotated[
    str | None, Form(max_length=10, description="pii: mask personal data ([RRN] [PHONE] [CARD] [ACCOUNT] [EMAIL]); "
                     "none; default REDACT_DEFAULT")
]
NormalizeField = Annotated[
    str | None, Form(max_length=10, description="numbers: spoken numbers to written form (NeMo ITN); none; "
                     "default NORMALIZE_DEFAULT")
]


def parse_format(value: str | None) -> ResponseFormat:
    """`response_format`, json when absent; 400 naming the allowed ones otherwise."""
    try:
        return ResponseFormat((value or "json").strip().lower())
    except ValueError:
        allowed = ", ".join(f.value for f in ResponseFormat)
        raise InvalidRequest(
            f"Unsupported response_format {quote(value)}. Use one of: {allowed}.",
            param="response_format", code="invalid_response_format",
        ) from None


def parse_granularities(values: list[str] | None) -> bool:
    """`timestamp_granularities[]` (repeated, or comma-separated): whether word timings are asked for."""
    items = {g.strip() for item in (values or []) for g in item.split(",") if g.strip()}
    unknown = sorted(items - {"segment", "word"})
    if unknown:
        raise InvalidRequest(
            f"Unsupported timestamp_granularities {unknown}; use 'segment' and/or 'word'.",
            param="timestamp_granularities", code="invalid_timestamp_granularities",
        )
    return "word" in items


def parse_speaker_names(values: list[str] | None) -> list[str] | None:
    """`known_speaker_names[]`, repeated fields or one comma-separated value."""
    return [n.strip() for v in (values or []) for n in v.split(",") if n.strip()] or None


def split_channels_choice(settings: Settings, value: str | None) -> bool:
    """`channels`: split (one speaker per channel) or mix, CHANNELS_DEFAULT when absent."""
    choice = (value or settings.channels_default).strip().lower()
    if choice not in ("split", "mix"):
        raise InvalidRequest(f"channels must be 'split' or 'mix', not {quote(value)}.", param="channels",
                             code="invalid_channels")
    return choice == "split"


@dataclass
class KnownSpeakersForm:
    """Who the speakers are, for diarization (and, by name, for channels=split)."""

    known_speaker_names: Annotated[
        list[str] | None, Form(alias="known_speaker_names[]", description="Speaker names in channel order (split)")
    ] = None
    known_speaker_references: Annotated[
        list[str] | None, Form(alias="known_speaker_references[]",
                               description="With diarization: data URLs of 2-10 s of each known speaker's voice, in "
                               "the order of known_speaker_names[] (up to 4)")
    ] = None
    min_speakers: Annotated[int | None, Form(description="With diarization: at least this many speakers")] = None
    max_speakers: Annotated[int | None, Form(description="With diarization: at most this many speakers")] = None

    def names(self) -> list[str] | None:
        return parse_speaker_names(self.known_speaker_names)

    def request(self) -> DiarizeRequest:
        """The diarization these fields ask for (400 for bad references or bounds)."""
        return parse_request(self.names(), self.known_speaker_references, self.min_speakers, self.max_speakers)


@dataclass
class SpeakersForm(KnownSpeakersForm):
    """Who spoke: channels=split (the channels are the speakers) or diarization of mono audio."""

    channels: Annotated[
        str | None, Form(max_length=10, description="split: one speaker per channel (stereo calls); mix; "
                         "default CHANNELS_DEFAULT")
    ] = None
    diarize: Annotated[
        bool | None, Form(description="Who spoke (mono audio): segments get speakers A, B, ... (or a known "
                          "speaker's name); on by default with response_format=diarized_json")
    ] = None

    def split(self, settings: Settings) -> bool:
        return split_channels_choice(settings, self.channels)

    def diarization(self, fmt: ResponseFormat | None, split: bool) -> DiarizeRequest | None:
        """Whether to diarize, and how: asked for (`diarize=true`), or implied by diarized_json or references; never
        with channels=split, whose channels are the speakers (names then name the channels)."""
        references = self.known_speaker_references
        wanted = self.diarize if self.diarize is not None else (
            fmt is ResponseFormat.diarized_json or bool(references)
        )
        if split or not wanted:
            return None
        return self.request()


@dataclass
class TextForm:
    """What is done to the transcript's text: masking and number normalisation."""

    redact: RedactField = None
    normalize: NormalizeField = None

    def options(self, settings: Settings) -> TextOptions:
        return text_options(settings, redact=self.redact, normalize=self.normalize)


@dataclass
class PostprocessForm:
    """The LLM step asked for, if any."""

    postprocess: Annotated[
        str | None, Form(max_length=TASK_MAX, description="correct | summarize | minutes | custom")
    ] = None
    postprocess_prompt: Annotated[str | None, Form(description="Instruction for postprocess=custom")] = None


@dataclass
class OpenAIAudioForm:
    """The OpenAI transcription fields shared by `/v1/audio/transcriptions` and `/v1/jobs`."""

    model: ModelField = None
    language: LanguageField = None
    prompt: PromptField = None
    response_format: Annotated[str | None, Form(description=FORMAT_HELP)] = None
    temperature: TemperatureField = None
    timestamp_granularities: GranularitiesField = None
    hotwords: Annotated[str | None, Form()] = None

    def format(self) -> ResponseFormat:
        return parse_format(self.response_format)

    def words(self) -> bool:
        return parse_granularities(self.timestamp_granularities)



@dataclass
class TranscriptionForm:
    """Everything `/v1/audio/transcriptions` and `/v1/jobs` read beside the file, in its groups."""

    audio: Annotated[OpenAIAudioForm, Depends()]
    text: Annotated[TextForm, Depends()]
    llm: Annotated[PostprocessForm, Depends()]
    speakers: Annotated[SpeakersForm, Depends()]
