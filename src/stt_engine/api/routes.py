"""Routes: the original contract (`/transcribe`, `/health`) and the OpenAI audio API (`/v1/...`)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import JSONResponse, Response

from stt_engine.api.forms import (
    FORMAT_HELP,
    FileField,
    LanguageField,
    ModelField,
    OpenAIAudioForm,
    PostprocessForm,
    PromptField,
    RedactField,
    SpeakersForm,
    TemperatureField,
    TextForm,
    TranscriptionForm,
)
from stt_engine.api.responses import original_body, stream_done, transcript_response
from stt_engine.api.schemas import (
    TEXT_RESPONSES,
    TranscribeResponse,
    TranscriptionDiarized,
    TranscriptionJson,
    TranscriptionVerbose,
)
from stt_engine.api.security import is_authenticated
from stt_engine.api.services import Services, ServicesDep
from stt_engine.api.streaming import stream_upload
from stt_engine.api.transcription import transcribe_upload
from stt_engine.api.web import web_page
from stt_engine.errors import InvalidRequest
from stt_engine.formats import ResponseFormat
from stt_engine.metrics import CONTENT_TYPE
from stt_engine.openai_fields import RequestFields, merge_keywords
from stt_engine.options import build_options

router = APIRouter()


# --- health -------------------------------------------------------------------------------------------
def _model_info(services: Services) -> dict[str, Any]:
    engine = services.engine
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
async def health(request: Request, services: ServicesDep) -> JSONResponse:
    status_code = 200 if services.engine is not None else 503
    status = "ok" if services.engine is not None else services.load_status
    if not is_authenticated(request.state, services.settings):
        return JSONResponse({"status": status}, status_code=status_code)
    body: dict[str, Any] = {"status": status, **_model_info(services)}
    if services.load_error:
        body["error"] = services.load_error
    scheduler = services.scheduler
    if scheduler is not None:
        stats = scheduler.stats
        body["queue"] = {
            "requests": scheduler.queued_requests,
            "audio_seconds": round(scheduler.queued_seconds, 1),
            "uploads_pending": services.intake.count,  # header read, waiting for or in decoding; not queued yet
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
    body["memory"] = services.memory.snapshot()  # resident size now, and what trims gave back (memory.py)
    body["models"] = services.models.health()  # every served model: loaded, default, memory, idle, loads
    postprocessor = services.postprocessor
    if postprocessor is not None and postprocessor.enabled:
        body["llm"] = await postprocessor.health_snapshot()
    return JSONResponse(body, status_code=status_code)


@router.get("/health/ready", tags=["health"], summary="Ready: model loaded and warmed up with a real decode")
async def ready(request: Request, services: ServicesDep) -> JSONResponse:
    ok = services.engine is not None and services.warmed_up
    details = _model_info(services) if is_authenticated(request.state, services.settings) else {}
    return JSONResponse({"ready": ok, "status": services.load_status, **details}, status_code=200 if ok else 503)


@router.get("/metrics", tags=["health"], summary="Prometheus metrics (text exposition format)")
async def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type=CONTENT_TYPE)


# --- original contract ----------------------------------------------------------------------------------
@router.post(
    "/transcribe", tags=["original"], summary="Transcribe a file (original contract)",
    response_model=TranscribeResponse, response_model_exclude_none=True,
)
async def transcribe(
    request: Request,
    services: ServicesDep,
    speakers: Annotated[SpeakersForm, Depends()],
    text_form: Annotated[TextForm, Depends()],
    llm: Annotated[PostprocessForm, Depends()],
    file: FileField = None,
    language: LanguageField = None,
    prompt: PromptField = None,
    hotwords: Annotated[str | None, Form()] = None,
    task: Annotated[str, Form(pattern="^(transcribe|translate)$")] = "transcribe",
    word_timestamps: Annotated[bool, Form()] = False,
    stream: Annotated[bool, Form(description="Server-Sent Events: text deltas as segments become final")] = False,
    model: ModelField = None,
) -> Response:
    settings = services.settings
    split = speakers.split(settings)
    await services.models.scheduler_for(model)  # 404 model_not_found for an unknown id; loads it if needed
    request.state.model = model
    decoded_by = {"model": services.models.lookup(model).id}  # the response says which model decoded it
    options = build_options(
        settings, services.model_languages(model), language=language, task=task, prompt=prompt, hotwords=hotwords,
        word_timestamps=word_timestamps, vocabulary=services.vocabulary(),
    )
    text = text_form.options(settings)
    diarization = speakers.diarization(None, split) if speakers.diarize else None  # only when asked for here
    if stream:
        _no_postprocess_when_streaming(llm.postprocess)
        return await stream_upload(
            request, services, file, options, final=lambda t: {"success": True, **original_body(t), **decoded_by},
            text=text, split_channels=split, speaker_names=speakers.names(), diarization=diarization,
        )
    result = await transcribe_upload(
        request, services, file, options, postprocess=llm.postprocess, postprocess_prompt=llm.postprocess_prompt,
        text=text, split_channels=split, speaker_names=speakers.names(), diarization=diarization,
    )
    body: dict[str, Any] = {"success": True, **original_body(result.transcript), **decoded_by}
    body["processing_time"] = round(result.processing_seconds, 3)
    if result.postprocess is not None:
        body["postprocess"] = result.postprocess
    return JSONResponse(body)


def _no_postprocess_when_streaming(postprocess: str | None) -> None:
    if postprocess:
        raise InvalidRequest(
            "postprocess needs the whole transcript and cannot be combined with stream=true.", param="postprocess"
        )


# --- OpenAI audio API -----------------------------------------------------------------------------------
async def _openai_audio(
    request: Request,
    services: Services,
    task: str,
    file: FileField,
    form: TranscriptionForm,
    stream: bool = False,
) -> Response:
    settings = services.settings
    audio, speakers, llm = form.audio, form.speakers, form.llm
    fmt = audio.format()
    extra = RequestFields.from_form(await request.form()) if task == "transcribe" else RequestFields()
    split = speakers.split(settings)
    diarization = speakers.diarization(fmt, split)
    words = audio.words()
    await services.models.scheduler_for(audio.model)  # 404 for an unknown id; loads it if needed
    request.state.model = audio.model
    options = build_options(
        settings, services.model_languages(audio.model), language=audio.language, task=task, prompt=audio.prompt,
        temperature=audio.temperature, word_timestamps=words, hotwords=merge_keywords(audio.hotwords, extra.keywords),
        vad_filter=extra.chunking.vad_filter, vad=extra.chunking.vad, logprobs=extra.logprobs, vocabulary=services.vocabulary(),
    )
    text = form.text.options(settings)
    extra.check(json_format=fmt is ResponseFormat.json, redact=text.redact, split_channels=split)
    if stream:
        _no_postprocess_when_streaming(llm.postprocess)
        return await stream_upload(
            request, services, file, options, final=lambda t: stream_done(t, fmt, words, extra.logprobs), text=text,
            split_channels=split, speaker_names=speakers.names(),
            segment_events=fmt is ResponseFormat.diarized_json, diarization=diarization, logprobs=extra.logprobs,
        )
    result = await transcribe_upload(
        request, services, file, options, postprocess=llm.postprocess, postprocess_prompt=llm.postprocess_prompt,
        text=text, split_channels=split, speaker_names=speakers.names(), diarization=diarization,
    )
    return transcript_response(result.transcript, fmt, include_words=words, postprocess=result.postprocess,
                               logprobs=extra.logprobs)


_OPENAI_JSON = TranscriptionVerbose | TranscriptionDiarized | TranscriptionJson


@router.post(
    "/v1/audio/transcriptions", tags=["openai"], summary="OpenAI-compatible transcription",
    response_model=_OPENAI_JSON, response_model_exclude_none=True, responses=TEXT_RESPONSES,
)
async def openai_transcriptions(
    request: Request,
    services: ServicesDep,
    form: Annotated[TranscriptionForm, Depends()],
    file: FileField = None,
    stream: Annotated[bool, Form(description="Server-Sent Events in OpenAI's shape, for any model")] = False,
    # Read from the form by `RequestFields` (the SDK also sends chunking_strategy[...] fields); declared for the docs.
    include: Annotated[list[str] | None, Form(alias="include[]", description="logprobs")] = None,
    keywords: Annotated[list[str] | None, Form(alias="keywords[]", description="Vocabulary hints, "
                                               "merged with hotwords")] = None,
    chunking_strategy: Annotated[str | None, Form(description='"auto" or a server_vad object (JSON) for the VAD')]
    = None,
) -> Response:
    return await _openai_audio(request, services, "transcribe", file, form, stream)


@router.post(
    "/v1/audio/translations", tags=["openai"], summary="OpenAI-compatible translation to English",
    response_model=_OPENAI_JSON, response_model_exclude_none=True, responses=TEXT_RESPONSES,
)
async def openai_translations(
    request: Request,
    services: ServicesDep,
    file: FileField = None,
    model: ModelField = None,
    prompt: PromptField = None,
    response_format: Annotated[str | None, Form(description=FORMAT_HELP)] = None,
    temperature: TemperatureField = None,
    redact: RedactField = None,
) -> Response:
    audio = OpenAIAudioForm(model=model, prompt=prompt, response_format=response_format, temperature=temperature)
    form = TranscriptionForm(audio, TextForm(redact=redact), PostprocessForm(), SpeakersForm())
    return await _openai_audio(request, services, "translate", file, form)


@router.get("/", include_in_schema=False)
async def root(request: Request) -> Response:
    """The web page for a browser (it asks for text/html); the service's signpost JSON for everything else."""
    if "text/html" in request.headers.get("accept", ""):
        return web_page()
    return JSONResponse({
        "service": "stt-engine", "page": "/", "docs": "/docs", "health": "/health", "time": time.time(),
    })
