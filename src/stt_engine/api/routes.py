"""Routes: the original contract (`/transcribe`, `/health`) and the OpenAI audio API (`/v1/...`)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from stt_engine.api.schemas import (
    TEXT_RESPONSES,
    TranscribeResponse,
    TranscriptionDiarized,
    TranscriptionJson,
    TranscriptionVerbose,
)
from stt_engine.api.security import is_authenticated
from stt_engine.api.transcription import picked_scheduler, stream_upload, transcribe_upload
from stt_engine.api.web import web_page
from stt_engine.errors import InvalidRequest, NotReady, quote
from stt_engine.formats import MEDIA_TYPES, ResponseFormat, render, text_report
from stt_engine.metrics import CONTENT_TYPE
from stt_engine.openai_fields import RequestFields, merge_keywords, transcript_logprobs, usage
from stt_engine.options import build_options
from stt_engine.speakers import DiarizeRequest, parse_request, speakers_of
from stt_engine.textproc import text_options
from stt_engine.types import Transcript

router = APIRouter()

FileField = Annotated[UploadFile | None, File(description="Audio or video file (wav, flac, mp3, m4a, ogg, webm, mp4 …)")]
# Bounds on short form fields: a longer value is refused by validation, whose message never echoes it back.
_LANGUAGE_MAX = 35  # the longest BCP-47 tag anyone sends (zh-Hant-TW, ...)
_TASK_MAX = 40
ChannelsField = Annotated[
    str | None, Form(max_length=10, description="split: one speaker per channel (stereo calls); mix; "
                     "default CHANNELS_DEFAULT")
]
SpeakerNamesField = Annotated[
    list[str] | None, Form(alias="known_speaker_names[]", description="Speaker names in channel order (split)")
]
DiarizeField = Annotated[
    bool | None, Form(description="Who spoke (mono audio): segments get speakers A, B, ... (or a known speaker's "
                      "name); on by default with response_format=diarized_json")
]
SpeakerReferencesField = Annotated[
    list[str] | None, Form(alias="known_speaker_references[]",
                           description="With diarization: data URLs of 2-10 s of each known speaker's voice, in the "
                           "order of known_speaker_names[] (up to 4)")
]
MinSpeakersField = Annotated[int | None, Form(description="With diarization: at least this many speakers")]
MaxSpeakersField = Annotated[int | None, Form(description="With diarization: at most this many speakers")]
NormalizeField = Annotated[
    str | None, Form(max_length=10, description="numbers: spoken numbers to written form (NeMo ITN); none; "
                     "default NORMALIZE_DEFAULT")
]
RedactField = Annotated[
    str | None, Form(max_length=10, description="pii: mask personal data ([RRN] [PHONE] [CARD] [ACCOUNT] [EMAIL]); "
                     "none; default REDACT_DEFAULT")
]
LanguageField = Annotated[
    str | None, Form(max_length=_LANGUAGE_MAX, description="ISO-639-1 code, e.g. ko; detected when absent")
]


# --- health -------------------------------------------------------------------------------------------
def _model_info(request: Request) -> dict[str, Any]:
    engine = request.app.state.engine
    if engine is None:
        return {}
    return {
        "model": engine.resolved.name,
        "model_path": str(engine.resolved.path),
        "model_source": engine.resolved.source,
        "device": engine.device,
        "compute_type": engine.compute_type,
        "workers": engine.workers,
        "threads_per_worker": engine.threads,
        "batch_size": engine.batch_size,
    }


@router.get(
    "/health", tags=["health"], summary="Liveness and model status (503 while the model loads)",
    description="With API_KEYS set, a caller without a key sees the status only; with a key, the details "
    "(model, device, queue, LLM server).",
)
async def health(request: Request) -> JSONResponse:
    state = request.app.state
    status_code = 200 if state.engine is not None else 503
    status = "ok" if state.engine is not None else state.load_status
    if not is_authenticated(request.state, state.settings):
        return JSONResponse({"status": status}, status_code=status_code)
    body: dict[str, Any] = {"status": status, **_model_info(request)}
    if state.load_error:
        body["error"] = state.load_error
    scheduler = state.scheduler
    if scheduler is not None:
        stats = scheduler.stats
        body["queue"] = {
            "requests": scheduler.queued_requests,
            "audio_seconds": round(scheduler.queued_seconds, 1),
            "completed": stats.completed,
            "rejected": stats.rejected,
            "cancelled": stats.cancelled,
            "batches": stats.batches,
            "batched_chunks": stats.batched_chunks,
            "largest_batch": stats.largest_batch,
            "express_batches": stats.express_batches,
            "busy_workers": stats.busy_workers,
            "workers_alive": stats.workers_alive,
            "workers_expected": scheduler.workers_expected,
        }
        if stats.workers_alive < scheduler.workers_expected:
            body["status"] = "degraded"  # a model worker thread died: fewer windows decode at once
    if getattr(state, "memory", None) is not None:
        body["memory"] = state.memory.snapshot()  # resident size now, and what trims gave back (memory.py)
    postprocessor = getattr(state, "postprocessor", None)
    if postprocessor is not None and postprocessor.enabled:
        body["llm"] = await postprocessor.health_snapshot()
    return JSONResponse(body, status_code=status_code)


@router.get("/health/ready", tags=["health"], summary="Ready: model loaded and warmed up with a real decode")
async def ready(request: Request) -> JSONResponse:
    state = request.app.state
    ok = state.engine is not None and state.warmed_up
    details = _model_info(request) if is_authenticated(request.state, state.settings) else {}
    return JSONResponse({"ready": ok, "status": state.load_status, **details}, status_code=200 if ok else 503)


@router.get("/metrics", tags=["health"], summary="Prometheus metrics (text exposition format)")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


def model_languages(request: Request) -> frozenset[str]:
    """The loaded model's languages (options are parsed only once it is loaded; before, the route answers 503)."""
    scheduler = picked_scheduler(request)
    engine = scheduler.engine if scheduler is not None else None
    if engine is None:
        raise NotReady("The model is still loading; retry in a few seconds.", headers={"Retry-After": "5"})
    return engine.supported_languages


# --- original contract ----------------------------------------------------------------------------------
@router.post(
    "/transcribe", tags=["original"], summary="Transcribe a file (original contract)",
    response_model=TranscribeResponse, response_model_exclude_none=True,
)
async def transcribe(
    request: Request,
    file: FileField = None,
    language: LanguageField = None,
    prompt: Annotated[str | None, Form()] = None,
    hotwords: Annotated[str | None, Form()] = None,
    task: Annotated[str, Form(pattern="^(transcribe|translate)$")] = "transcribe",
    word_timestamps: Annotated[bool, Form()] = False,
    postprocess: Annotated[
        str | None, Form(max_length=_TASK_MAX, description="correct | summarize | minutes | custom")
    ] = None,
    postprocess_prompt: Annotated[str | None, Form(description="Instruction for postprocess=custom")] = None,
    stream: Annotated[bool, Form(description="Server-Sent Events: text deltas as segments become final")] = False,
    redact: RedactField = None,
    channels: ChannelsField = None,
    known_speaker_names: SpeakerNamesField = None,
    normalize: NormalizeField = None,
    diarize: Annotated[bool, Form(description="Who spoke (mono audio): segments[].speaker and a speakers list")]
    = False,
    known_speaker_references: SpeakerReferencesField = None,
    min_speakers: MinSpeakersField = None,
    max_speakers: MaxSpeakersField = None,
) -> Response:
    settings = request.app.state.settings
    split = split_channels_choice(settings, channels)
    options = build_options(
        settings, model_languages(request), language=language, task=task, prompt=prompt, hotwords=hotwords,
        word_timestamps=word_timestamps,
    )
    text = text_options(settings, redact=redact, normalize=normalize)
    diarization = diarize_choice(diarize, None, split, known_speaker_names, known_speaker_references,
                                 min_speakers, max_speakers)
    if stream:
        _no_postprocess_when_streaming(postprocess)
        return await stream_upload(
            request, file, options, final=lambda t: {"success": True, **_original_body(t)}, text=text,
            split_channels=split, speaker_names=parse_speaker_names(known_speaker_names), diarization=diarization,
        )
    result = await transcribe_upload(
        request, file, options, postprocess=postprocess, postprocess_prompt=postprocess_prompt, text=text,
        split_channels=split, speaker_names=parse_speaker_names(known_speaker_names), diarization=diarization,
    )
    body: dict[str, Any] = {"success": True, **_original_body(result.transcript)}
    body["processing_time"] = round(result.processing_seconds, 3)
    if result.postprocess is not None:
        body["postprocess"] = result.postprocess
    return JSONResponse(body)


def _original_body(t: Transcript) -> dict[str, Any]:
    """The original contract's fields for a transcript (beyond `success` and `processing_time`)."""
    return {
        "text": t.text,
        "language": t.language,
        "language_probability": round(t.language_probability, 4),
        "duration": round(t.duration, 3),
        "segments": [
            {"start": float(s.start), "end": float(s.end), "text": s.text}
            | ({"speaker": s.speaker} if getattr(s, "speaker", None) is not None else {})
            | ({"channel": s.channel} if getattr(s, "channel", None) is not None else {})
            | ({"words": [{"word": w.word.strip(), "start": float(w.start), "end": float(w.end)} for w in s.words]}
               if s.words else {})
            for s in t.segments
        ],
        **({"speakers": speakers} if (speakers := speakers_of(t)) else {}),
        **text_report(t),
    }


def parse_speaker_names(values: list[str] | None) -> list[str] | None:
    """`known_speaker_names[]`, repeated fields or one comma-separated value."""
    return [n.strip() for v in (values or []) for n in v.split(",") if n.strip()] or None


def diarize_choice(
    diarize: bool | None, fmt: ResponseFormat | None, split: bool, names: list[str] | None,
    references: list[str] | None, min_speakers: int | None, max_speakers: int | None,
) -> DiarizeRequest | None:
    """Whether to diarize, and how: asked for (`diarize=true`), or implied by diarized_json or references; never with
    channels=split, whose channels are the speakers (names then name the channels)."""
    wanted = diarize if diarize is not None else (fmt is ResponseFormat.diarized_json or bool(references))
    if split or not wanted:
        return None
    return parse_request(parse_speaker_names(names), references, min_speakers, max_speakers)


def split_channels_choice(settings: Any, value: str | None) -> bool:
    choice = (value or settings.channels_default).strip().lower()
    if choice not in ("split", "mix"):
        raise InvalidRequest(f"channels must be 'split' or 'mix', not {quote(value)}.", param="channels",
                             code="invalid_channels")
    return choice == "split"


def _no_postprocess_when_streaming(postprocess: str | None) -> None:
    if postprocess:
        raise InvalidRequest(
            "postprocess needs the whole transcript and cannot be combined with stream=true.", param="postprocess"
        )


def _stream_done(t: Transcript, fmt: ResponseFormat, words: bool, logprobs: bool = False) -> dict[str, Any]:
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


# --- OpenAI audio API -----------------------------------------------------------------------------------
def parse_format(value: str | None) -> ResponseFormat:
    try:
        return ResponseFormat((value or "json").strip().lower())
    except ValueError:
        allowed = ", ".join(f.value for f in ResponseFormat)
        raise InvalidRequest(
            f"Unsupported response_format {quote(value)}. Use one of: {allowed}.",
            param="response_format", code="invalid_response_format",
        ) from None


async def _openai_audio(
    request: Request,
    task: str,
    file: UploadFile | None,
    language: str | None,
    prompt: str | None,
    response_format: str | None,
    temperature: float | None,
    granularities: list[str] | None,
    hotwords: str | None,
    postprocess: str | None,
    postprocess_prompt: str | None,
    stream: bool = False,
    redact: str | None = None,
    channels: str | None = None,
    known_speaker_names: list[str] | None = None,
    normalize: str | None = None,
    diarize: bool | None = None,
    known_speaker_references: list[str] | None = None,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
    model: str | None = None,
) -> Response:
    fmt = parse_format(response_format)
    extra = RequestFields.from_form(await request.form()) if task == "transcribe" else RequestFields()
    split = split_channels_choice(request.app.state.settings, channels)
    diarization = diarize_choice(diarize, fmt, split, known_speaker_names, known_speaker_references,
                                 min_speakers, max_speakers)
    granularities = [g for item in (granularities or []) for g in item.split(",") if g.strip()]
    unknown = sorted({g.strip() for g in granularities} - {"segment", "word"})
    if unknown:
        raise InvalidRequest(
            f"Unsupported timestamp_granularities {unknown}; use 'segment' and/or 'word'.",
            param="timestamp_granularities", code="invalid_timestamp_granularities",
        )
    words = "word" in {g.strip() for g in granularities}
    await request.app.state.models.scheduler_for(model)  # 404 for an unknown id; loads it if needed
    request.state.model = model
    options = build_options(
        request.app.state.settings, model_languages(request), language=language, task=task, prompt=prompt,
        temperature=temperature, word_timestamps=words, hotwords=merge_keywords(hotwords, extra.keywords),
        vad_filter=extra.chunking.vad_filter, vad=extra.chunking.vad, logprobs=extra.logprobs,
    )
    text = text_options(request.app.state.settings, redact=redact, normalize=normalize)
    extra.check(json_format=fmt is ResponseFormat.json, redact=text.redact, split_channels=split)
    if stream:
        _no_postprocess_when_streaming(postprocess)
        return await stream_upload(
            request, file, options, final=lambda t: _stream_done(t, fmt, words, extra.logprobs), text=text,
            split_channels=split, speaker_names=parse_speaker_names(known_speaker_names),
            segment_events=fmt is ResponseFormat.diarized_json, diarization=diarization, logprobs=extra.logprobs,
        )
    result = await transcribe_upload(
        request, file, options, postprocess=postprocess, postprocess_prompt=postprocess_prompt, text=text,
        split_channels=split, speaker_names=parse_speaker_names(known_speaker_names), diarization=diarization,
    )
    return transcript_response(result.transcript, fmt, include_words=words, postprocess=result.postprocess,
                               logprobs=extra.logprobs)


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


_FORMAT_HELP = "json | text | srt | verbose_json | vtt | diarized_json"


_OPENAI_JSON = TranscriptionVerbose | TranscriptionDiarized | TranscriptionJson


@router.post(
    "/v1/audio/transcriptions", tags=["openai"], summary="OpenAI-compatible transcription",
    response_model=_OPENAI_JSON, response_model_exclude_none=True, responses=TEXT_RESPONSES,
)
async def openai_transcriptions(
    request: Request,
    file: FileField = None,
    model: Annotated[str | None, Form(max_length=200, description="A served model's id (GET /v1/models); "
                                      "OpenAI's names mean the default model")] = None,
    language: LanguageField = None,
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[str | None, Form(description=_FORMAT_HELP)] = None,
    temperature: Annotated[float | None, Form()] = None,
    timestamp_granularities: Annotated[list[str] | None, Form(alias="timestamp_granularities[]")] = None,
    hotwords: Annotated[str | None, Form()] = None,
    postprocess: Annotated[str | None, Form(max_length=_TASK_MAX)] = None,
    postprocess_prompt: Annotated[str | None, Form()] = None,
    stream: Annotated[bool, Form(description="Server-Sent Events in OpenAI's shape, for any model")] = False,
    redact: RedactField = None,
    channels: ChannelsField = None,
    known_speaker_names: SpeakerNamesField = None,
    normalize: NormalizeField = None,
    diarize: DiarizeField = None,
    known_speaker_references: SpeakerReferencesField = None,
    min_speakers: MinSpeakersField = None,
    max_speakers: MaxSpeakersField = None,
    # Read from the form by `RequestFields` (the SDK also sends chunking_strategy[...] fields); declared for the docs.
    include: Annotated[list[str] | None, Form(alias="include[]", description="logprobs")] = None,
    keywords: Annotated[list[str] | None, Form(alias="keywords[]", description="Vocabulary hints, "
                                               "merged with hotwords")] = None,
    chunking_strategy: Annotated[str | None, Form(description='"auto" or a server_vad object (JSON) for the VAD')]
    = None,
) -> Response:
    return await _openai_audio(
        request, "transcribe", file, language, prompt, response_format, temperature, timestamp_granularities,
        hotwords, postprocess, postprocess_prompt, stream, redact, channels, known_speaker_names, normalize,
        diarize, known_speaker_references, min_speakers, max_speakers, model=model,
    )


@router.post(
    "/v1/audio/translations", tags=["openai"], summary="OpenAI-compatible translation to English",
    response_model=_OPENAI_JSON, response_model_exclude_none=True, responses=TEXT_RESPONSES,
)
async def openai_translations(
    request: Request,
    file: FileField = None,
    model: Annotated[str | None, Form(max_length=200)] = None,
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[str | None, Form(description=_FORMAT_HELP)] = None,
    temperature: Annotated[float | None, Form()] = None,
    redact: RedactField = None,
) -> Response:
    return await _openai_audio(
        request, "translate", file, None, prompt, response_format, temperature, None, None, None, None,
        redact=redact, model=model,
    )


@router.get("/", include_in_schema=False)
async def root(request: Request) -> Response:
    """The web page for a browser (it asks for text/html); the service's signpost JSON for everything else."""
    if "text/html" in request.headers.get("accept", ""):
        return web_page()
    return JSONResponse({
        "service": "stt-engine", "page": "/", "docs": "/docs", "health": "/health", "time": time.time(),
    })
