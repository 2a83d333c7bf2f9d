"""`stream=true`: a transcription as Server-Sent Events in OpenAI's shape (FastAPI's `EventSourceResponse` and
its SSE framing)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import numpy as np
from fastapi import Request, UploadFile
from fastapi.sse import EventSourceResponse, format_sse_event
from starlette.concurrency import run_in_threadpool

from stt_engine import speakers as speakers_mod
from stt_engine.api.admission import picked_model, receive_audio
from stt_engine.api.channel_merge import EMPTY, ChannelMerge
from stt_engine.api.errors import error_body
from stt_engine.api.services import Services
from stt_engine.api.transcription import processed, record_finished
from stt_engine.audio import DecodedAudio
from stt_engine.errors import STTError
from stt_engine.formats import to_diarized_json
from stt_engine.openai_fields import transcript_logprobs
from stt_engine.options import TranscribeOptions
from stt_engine.textproc import TextOptions
from stt_engine.textproc.streaming import TextStream
from stt_engine.types import Segment, Transcript

log = logging.getLogger(__name__)


def sse_event(event: dict[str, Any]) -> bytes:
    """One event, its JSON as the `data:` line (UTF-8 kept as is, as OpenAI sends it)."""
    return format_sse_event(data_str=json.dumps(event, ensure_ascii=False))


async def stream_upload(
    request: Request,
    services: Services,
    upload: UploadFile | None,
    options: TranscribeOptions,
    *,
    final: Callable[[Transcript], dict],
    text: TextOptions | None = None,
    split_channels: bool = False,
    speaker_names: list[str] | None = None,
    segment_events: bool = False,
    diarization: speakers_mod.DiarizeRequest | None = None,
    logprobs: bool = False,
) -> EventSourceResponse:
    """`stream=true`: Server-Sent Events in OpenAI's shape. A `transcript.text.delta` for each run of segments as
    it becomes final (decoded with the plan of the same request without `stream`, so the text is the file's; its
    first window goes first, so the first delta comes after one window), then
    `transcript.text.done` with the whole text, extended by `final(transcript)`. Bad input is refused before the
    stream starts, with the route's usual error; an error after that ends the stream with an `error` event.

    The deltas are the final text's own pieces: the segments go through the same filter, vocabulary, numbers and
    masking as the done text (`TextStream`), so nothing the done text drops or masks is ever sent, and the deltas
    concatenate to it. With `split_channels` (or `segment_events`), each processed segment is also announced as
    OpenAI's diarized `transcript.text.segment` event, with its speaker, once every channel has passed its start.
    With `diarization` (mono), the audio is diarized while it is transcribed; segment events, split by speaker,
    follow as soon as the speaker turns are known (deltas do not wait for them)."""
    started = time.perf_counter()
    settings = services.settings
    diarizing = diarization is not None and not split_channels
    if diarizing:
        await speakers_mod.prepare(settings, diarization)  # a bad reference is a 400 before the stream starts
    tracks: list[np.ndarray] = []
    decoded = await receive_audio(request, services, upload, channels_out=tracks if split_channels else None)
    scheduler = services.ready_scheduler(picked_model(request))
    turns_work: asyncio.Future[list[Any]] | None = None
    track_options = options
    if diarizing:
        assert diarization is not None
        turns_work = asyncio.ensure_future(speakers_mod.diarize(settings, decoded.samples, diarization))
        track_options = dataclasses.replace(options, word_timestamps=True)
    loop = asyncio.get_running_loop()
    arrived: asyncio.Queue[tuple[int, list[Segment] | None, str | None]] = asyncio.Queue()

    def receiver(channel: int) -> Callable[[list[Segment], str | None], None]:
        def on_segments(segments: list[Segment], language: str | None) -> None:
            loop.call_soon_threadsafe(arrived.put_nowait, (channel, segments, language))
        return on_segments

    async def one_track(channel: int, audio: DecodedAudio) -> Transcript:
        transcript = await scheduler.transcribe(
            audio, track_options, on_segments=receiver(channel), first_text_early=True
        )
        arrived.put_nowait((channel, None, None))  # after its segments: the channel is finished
        return transcript

    merging: ChannelMerge | None = None
    if split_channels:
        merging = await ChannelMerge.start(decoded, tracks, speaker_names)
        work = asyncio.ensure_future(merging.transcribe(options, one_track))
    else:
        work = asyncio.ensure_future(one_track(0, decoded))
    del decoded, tracks
    request_id = getattr(request.state, "request_id", None)
    stream = TextStream(settings, text)
    announce = split_channels or segment_events or diarizing
    held: list[Segment] = []  # final segments waiting for the speaker turns
    assigner: list[speakers_mod.SpeakerAssigner] = []

    def new_assigner() -> speakers_mod.SpeakerAssigner:
        assert turns_work is not None and diarization is not None
        return speakers_mod.SpeakerAssigner(turns_work.result(), diarization.names, options.word_timestamps)

    def events_for(delta: str, segments: list[Segment]) -> Iterator[bytes]:
        if delta:
            scores = {"logprobs": transcript_logprobs(segments)} if logprobs else {}
            yield sse_event({"type": "transcript.text.delta", "delta": delta, **scores})
        if diarizing:
            held.extend(segments)
            if not assigner and turns_work is not None and turns_work.done():
                assigner.append(new_assigner())
            if not assigner or not held:
                return
            segments = assigner[0].segments(held)
            held.clear()
        if announce and segments:
            for segment in to_diarized_json(dataclasses.replace(EMPTY, segments=segments))["segments"]:
                yield sse_event(segment)

    async def events() -> AsyncIterator[bytes]:
        received: dict[int, list[Segment]] = {}
        languages: dict[int, str | None] = {}
        finished: set[int] = set()
        try:
            while True:
                getter = asyncio.ensure_future(arrived.get())
                waiting: set[asyncio.Future[Any]] = {getter, work}
                if turns_work is not None and not assigner:
                    waiting.add(turns_work)
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if turns_work is not None and turns_work.done() and not assigner:
                    for event in events_for("", []):  # the turns are known: the held segments go out
                        yield event
                if not getter.done():
                    getter.cancel()
                    if work.done() and arrived.empty():
                        break
                    continue
                batch = [getter.result()]
                while not arrived.empty():
                    batch.append(arrived.get_nowait())
                for channel, segments, lang in batch:
                    if segments is None:
                        finished.add(channel)
                    else:
                        received.setdefault(channel, []).extend(segments)
                        languages[channel] = lang or languages.get(channel)
                if merging is not None:
                    so_far, language = merging.final_so_far(received, languages, finished)
                else:
                    so_far, language = received.get(0, []), languages.get(0)
                delta, fresh = await run_in_threadpool(stream.update, so_far, language)
                for event in events_for(delta, fresh):
                    yield event
            transcript = await processed(services, work.result(), text)
            if turns_work is not None and diarization is not None:
                await turns_work
                for event in events_for("", []):
                    yield event
            record_finished(request, services, transcript, started)
            delta, fresh = stream.finish(transcript)
            for event in events_for(delta, fresh):
                yield event
            if turns_work is not None:  # the done event's segments: as the segment events numbered them
                transcript = new_assigner().transcript(transcript)
            yield sse_event({"type": "transcript.text.done", "text": transcript.text, **final(transcript)})
        except STTError as exc:
            yield sse_event({"type": "error", "error": error_body("/v1/", exc, request_id)["error"]})
        except Exception:
            log.exception("a streamed transcription failed")
            failed = STTError("Transcription failed; the server log has the details under this request's id.")
            yield sse_event({"type": "error", "error": error_body("/v1/", failed, request_id)["error"]})
        finally:
            if turns_work is not None and not turns_work.done():
                turns_work.cancel()
            if not work.done():
                work.cancel()
                log.info("client disconnected; its streamed transcription was dropped")

    return EventSourceResponse(events(), headers={"Cache-Control": "no-cache"})
