"""What every transcription route does: store the upload, decode it, queue it, post-process.

Routes differ only in how they read the form and shape the reply; this module is the one path a user's audio
takes through the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request, UploadFile
from starlette.concurrency import run_in_threadpool

from stt_engine import audio as audio_mod
from stt_engine.config import Settings
from stt_engine.engine import Transcript
from stt_engine.errors import InvalidRequest, NotReady, PayloadTooLarge, STTError
from stt_engine.options import TranscribeOptions
from stt_engine.scheduler import Scheduler

log = logging.getLogger(__name__)

_COPY_BLOCK = 1 << 20


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
    scheduler.admit(0.0)  # a full queue answers 429 before we spend time decoding
    async with stored_upload(upload, settings) as path:
        decoded = await run_in_threadpool(audio_mod.decode, path, max_seconds=settings.max_audio_seconds)
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
