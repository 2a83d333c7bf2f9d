"""What every transcription route does with a file: receive it, queue it, process the text, post-process.

Routes differ only in how they read the form and shape the reply; this module is the one path a user's audio
takes through the server (the streamed variant is `api.streaming`; storage and admission, `api.uploads` and
`api.admission`; the LLM step, `api.llm`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Request, UploadFile
from starlette.concurrency import run_in_threadpool

from stt_engine import channels as channels_mod
from stt_engine import speakers as speakers_mod
from stt_engine.api.admission import picked_model, receive_audio, wait_for_disconnect
from stt_engine.api.llm import postprocess_transcript, validate_postprocess
from stt_engine.api.services import Services
from stt_engine.errors import STTError
from stt_engine.memory import release_memory
from stt_engine.options import TranscribeOptions
from stt_engine.textproc import TextOptions, finish_transcript
from stt_engine.types import Transcript

log = logging.getLogger(__name__)


@dataclass
class TranscriptionResult:
    transcript: Transcript
    processing_seconds: float
    postprocess: dict[str, Any] | None = None


async def transcribe_upload(
    request: Request,
    services: Services,
    upload: UploadFile | None,
    options: TranscribeOptions,
    *,
    postprocess: str | None = None,
    postprocess_prompt: str | None = None,
    text: TextOptions | None = None,
    split_channels: bool = False,
    speaker_names: list[str] | None = None,
    diarization: speakers_mod.DiarizeRequest | None = None,
) -> TranscriptionResult:
    """The whole path of one request's audio. Raises `STTError`s that the app renders in the route's shape.

    With `diarization` (and not channels=split, whose channels are the speakers), the mono audio is diarized in
    the diarization executor while the scheduler transcribes it (with word timings, to split segments at speaker
    changes), and the processed transcript gets its speakers."""
    validate_postprocess(services, postprocess, postprocess_prompt)  # fail before any decoding
    settings = services.settings
    diarizing = diarization is not None and not split_channels
    if diarizing:
        await speakers_mod.prepare(settings, diarization)  # a bad reference is a 400 before the upload is decoded
    started = time.perf_counter()
    tracks: list[np.ndarray] = []
    decoded = await receive_audio(request, services, upload, channels_out=tracks if split_channels else None)
    long_audio = decoded.duration > 30
    scheduler = services.ready_scheduler(picked_model(request))
    if split_channels:
        work = asyncio.ensure_future(channels_mod.transcribe_split(
            decoded, tracks, options, speaker_names, lambda audio: scheduler.transcribe(audio, options)
        ))
    elif diarizing:
        work = asyncio.ensure_future(speakers_mod.with_turns(
            scheduler.transcribe(decoded, dataclasses.replace(options, word_timestamps=True)),
            speakers_mod.diarize(settings, decoded.samples, diarization),
        ))
    else:
        work = asyncio.ensure_future(scheduler.transcribe(decoded, options))
    del decoded, tracks  # the scheduler holds the samples only until its sections are decoded
    watcher = asyncio.ensure_future(wait_for_disconnect(request))
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
    if diarizing:
        assert diarization is not None
        raw, turns = work.result()
        transcript = await processed(services, raw, text)
        transcript = speakers_mod.SpeakerAssigner(turns, diarization.names, options.word_timestamps).transcript(
            transcript
        )
    else:
        transcript = await processed(services, work.result(), text)
    del work
    if long_audio:
        await run_in_threadpool(release_memory)  # its samples are free now: hand them back to the OS
    result = TranscriptionResult(transcript, record_finished(request, services, transcript, started))
    if postprocess:
        result.postprocess = await postprocess_transcript(services, transcript, postprocess, postprocess_prompt)
    return result


async def processed(services: Services, transcript: Transcript, text: TextOptions | None) -> Transcript:
    """The scheduler's transcript after the text processing the request and settings ask for (off the loop)."""
    return await run_in_threadpool(finish_transcript, transcript, services.settings, text, services.metrics)


def record_finished(request: Request, services: Services, transcript: Transcript, started: float) -> float:
    """Record a finished transcription for the access log and metrics; its processing time."""
    elapsed = time.perf_counter() - started
    request.state.processing_seconds = elapsed  # the access log and metrics middleware read these
    request.state.queue_wait_seconds = transcript.queue_wait_seconds
    if services.settings.log_transcripts:
        log.info("transcript: %s", transcript.text, extra={"transcript": transcript.text})
    return elapsed
