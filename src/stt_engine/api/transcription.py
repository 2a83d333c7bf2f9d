"""What every transcription route does: validate options, store the upload, decode it, queue it, post-process.

Routes differ only in how they read the form and shape the reply; this module is the one path a user's audio
takes through the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request, UploadFile
from faster_whisper.tokenizer import _LANGUAGE_CODES
from starlette.concurrency import run_in_threadpool

from stt_engine import audio as audio_mod
from stt_engine.audio import DecodedAudio
from stt_engine.config import Settings
from stt_engine.engine import DEFAULT_TEMPERATURES, TranscribeOptions, Transcript
from stt_engine.errors import InvalidRequest, NotReady, Overloaded, PayloadTooLarge, STTError
from stt_engine.scheduler import Scheduler

log = logging.getLogger(__name__)

LANGUAGE_CODES = frozenset(_LANGUAGE_CODES)
_COPY_BLOCK = 1 << 20


def parse_language(value: str | None) -> str | None:
    """Empty/`auto` means detect. Accepts `ko`, `KO`, `ko-KR`; refuses codes Whisper does not know."""
    if value is None or not value.strip() or value.strip().lower() == "auto":
        return None
    code = value.strip().lower().replace("_", "-").split("-")[0]
    if code not in LANGUAGE_CODES:
        raise InvalidRequest(
            f"Unsupported language '{value}'. Use an ISO-639-1 code Whisper knows (e.g. ko, en, ja, zh), "
            "or leave it empty to detect the language.",
            param="language", code="invalid_language",
        )
    return code


def parse_temperature(value: float | None) -> tuple[float, ...]:
    """OpenAI semantics: 0 (default) = greedy/beam first, raising the temperature when a decode fails."""
    if value is None or value == 0:
        return DEFAULT_TEMPERATURES
    if not 0 <= value <= 1:
        raise InvalidRequest(
            f"temperature must be between 0 and 1, got {value}.", param="temperature", code="invalid_temperature"
        )
    return tuple(t for t in DEFAULT_TEMPERATURES if t >= value) or (value,)


def build_options(
    settings: Settings,
    *,
    language: str | None,
    task: str = "transcribe",
    prompt: str | None = None,
    temperature: float | None = None,
    word_timestamps: bool = False,
    hotwords: str | None = None,
    beam_size: int | None = None,
    vad_filter: bool | None = None,
) -> TranscribeOptions:
    for name, text in (("prompt", prompt), ("hotwords", hotwords)):
        if text and len(text) > settings.max_prompt_chars:
            raise InvalidRequest(
                f"'{name}' is {len(text)} characters long; at most {settings.max_prompt_chars} are accepted "
                "(Whisper only uses the last ~220 tokens of a prompt).",
                param=name, code="prompt_too_long",
            )
    if beam_size is not None and not 1 <= beam_size <= 20:
        raise InvalidRequest("beam_size must be between 1 and 20.", param="beam_size")
    return TranscribeOptions(
        language=parse_language(language) or settings.whisper_default_language,
        task="translate" if task == "translate" else "transcribe",
        beam_size=beam_size or settings.whisper_beam_size,
        temperatures=parse_temperature(temperature),
        initial_prompt=prompt.strip() if prompt and prompt.strip() else None,
        hotwords=hotwords.strip() if hotwords and hotwords.strip() else None,
        word_timestamps=word_timestamps,
        vad_filter=settings.whisper_vad_filter if vad_filter is None else vad_filter,
        condition_on_previous_text=settings.whisper_condition_on_previous_text,
    )


@contextlib.asynccontextmanager
async def stored_upload(upload: UploadFile, settings: Settings) -> AsyncIterator[str]:
    """Copy the upload to a temporary file we own (bounded by MAX_UPLOAD_MB); always removed afterwards."""
    limit = int(settings.max_upload_mb * 1024 * 1024)
    fd, path = tempfile.mkstemp(prefix="stt-upload-", suffix=".audio")
    try:
        with os.fdopen(fd, "wb") as out:
            size = 0
            while block := await upload.read(_COPY_BLOCK):
                size += len(block)
                if size > limit:
                    raise PayloadTooLarge(
                        f"The upload is larger than this server's limit of {settings.max_upload_mb:g} MB (MAX_UPLOAD_MB).",
                        param="file",
                    )
                await run_in_threadpool(out.write, block)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        await upload.close()


class _Intake:
    """Uploads whose header has been read but which are not yet in the scheduler's queue.

    They count toward the queue's bounds, so a burst of uploads is refused from their headers within moments instead
    of after all of them were decoded; and at most MAX_CONCURRENT_DECODES of them decode at once.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.seconds = 0.0
        self.count = 0
        self.decoding = asyncio.Semaphore(settings.max_concurrent_decodes)

    @classmethod
    def of(cls, request: Request) -> _Intake:
        intake: _Intake | None = getattr(request.app.state, "intake", None)
        if intake is None:
            intake = request.app.state.intake = cls(request.app.state.settings)
        return intake

    @contextlib.contextmanager
    def reserve(self, scheduler: Scheduler, seconds: float) -> Iterator[None]:
        """Hold room for `seconds` of audio until it is decoded; `Overloaded` (429) when the queue has none."""
        scheduler.admit(self.seconds + seconds)
        waiting = scheduler.queued_requests + self.count
        queued = scheduler.queued_seconds + self.seconds
        if waiting >= self.settings.max_queued_requests or (
            waiting and queued + seconds > self.settings.max_queue_seconds
        ):
            retry = max(1, min(120, math.ceil(queued / 10.0)))
            raise Overloaded(
                f"The server is busy ({waiting} requests / {queued:.0f} s of audio already queued or being decoded). "
                f"Retry after {retry} s.",
                headers={"Retry-After": str(retry)},
            )
        self.seconds += seconds
        self.count += 1
        try:
            yield
        finally:
            self.seconds -= seconds
            self.count -= 1


async def _decode_admitted(request: Request, scheduler: Scheduler, settings: Settings, path: str) -> DecodedAudio:
    """Read the header, take queue room for the length it states, then decode; refusals come before the work.

    Decoding stops at MAX_AUDIO_SECONDS whatever the header said, and when the client goes away.
    """
    intake = _Intake.of(request)
    source = await run_in_threadpool(audio_mod.open_audio, path, max_seconds=settings.max_audio_seconds)
    try:
        with intake.reserve(scheduler, source.length_seconds or 0.0):
            stop = threading.Event()
            watcher = asyncio.ensure_future(_wait_for_disconnect(request))
            watcher.add_done_callback(lambda _: stop.set())
            try:
                async with intake.decoding:
                    if stop.is_set():
                        raise STTError("Client disconnected.", status=499, code="client_closed_request")
                    decoded = await run_in_threadpool(source.decode, stop)
            finally:
                watcher.cancel()
    finally:
        source.close()
    if decoded.duration > 30:
        await run_in_threadpool(audio_mod.release_memory)  # what decoding freed goes back to the OS
    return decoded


@dataclass
class TranscriptionResult:
    transcript: Transcript
    processing_seconds: float
    postprocess: dict[str, Any] | None = None


async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body has been read, so the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def transcribe_upload(
    request: Request,
    upload: UploadFile | None,
    options: TranscribeOptions,
    *,
    postprocess: str | None = None,
    postprocess_prompt: str | None = None,
) -> TranscriptionResult:
    """The whole path of one request's audio. Raises `STTError`s that the app renders in the route's shape."""
    settings: Settings = request.app.state.settings
    scheduler: Scheduler | None = request.app.state.scheduler
    if upload is None or isinstance(upload, str):
        raise InvalidRequest(
            "'file' is required: send the audio as the multipart form field 'file'.", param="file", code="missing_file"
        )
    if scheduler is None:
        raise NotReady("The model is still loading; retry in a few seconds.", headers={"Retry-After": "5"})
    if postprocess:
        request.app.state.postprocessor.validate(postprocess, postprocess_prompt)  # fail before any decoding

    started = time.perf_counter()
    scheduler.admit(0.0)  # a full queue answers 429 before we spend time storing the upload
    async with stored_upload(upload, settings) as path:
        decoded = await _decode_admitted(request, scheduler, settings, path)
    request.state.audio_seconds = decoded.duration

    work = asyncio.ensure_future(scheduler.transcribe(decoded, options))
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not work.done():
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError, STTError):
            await work
        log.info("client disconnected; its transcription was dropped")
        raise STTError("Client disconnected.", status=499, code="client_closed_request")
    transcript = work.result()
    long_audio = decoded.duration > 30
    del decoded, work
    if long_audio:
        await run_in_threadpool(audio_mod.release_memory)  # its samples are free now: hand them back to the OS
    elapsed = time.perf_counter() - started
    request.state.processing_seconds = elapsed  # the access log and metrics middleware read these
    request.state.queue_wait_seconds = transcript.queue_wait_seconds
    if settings.log_transcripts:
        log.info("transcript: %s", transcript.text, extra={"transcript": transcript.text})
    result = TranscriptionResult(transcript, elapsed)
    if postprocess:
        result.postprocess = await _postprocess(request, transcript, postprocess, postprocess_prompt)
    return result


async def _postprocess(request: Request, transcript: Transcript, task: str, prompt: str | None) -> dict[str, Any]:
    """The LLM's result for `task`; a disabled post-processor answers with its own `llm_not_configured` error."""
    result: dict[str, Any] = await request.app.state.postprocessor.run(
        transcript.text, task, prompt, transcript.language
    )
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:  # asked-for and failed counts alike, so the failure ratio is honest
        metrics.observe_postprocess(task, result)
    return result
