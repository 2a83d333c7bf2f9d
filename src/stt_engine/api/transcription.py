"""What every transcription route does: store the upload, decode it, queue it, post-process.

Routes differ only in how they read the form and shape the reply; this module is the one path a user's audio
takes through the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Request, UploadFile
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from stt_engine import channels as channels_mod
from stt_engine import decoder
from stt_engine import speakers as speakers_mod
from stt_engine.api.errors import error_body
from stt_engine.audio import DecodedAudio
from stt_engine.config import Settings
from stt_engine.errors import InvalidRequest, NotReady, PayloadTooLarge, STTError
from stt_engine.formats import to_diarized_json
from stt_engine.memory import release_memory
from stt_engine.openai_fields import transcript_logprobs
from stt_engine.options import TranscribeOptions
from stt_engine.scheduler import Scheduler
from stt_engine.scheduler.slots import RankedSlots
from stt_engine.textproc import TextOptions, finish_transcript
from stt_engine.textproc.streaming import TextStream
from stt_engine.textproc.vocabulary import load_vocabulary
from stt_engine.types import Segment, Transcript

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


class _Intake:
    """Uploads whose header has been read but which are not yet in the scheduler's queue.

    They count toward the queue's bounds, so a burst of uploads is refused from their headers within moments instead
    of after all of them were decoded; and at most MAX_CONCURRENT_DECODES of them decode at once, the shorter
    (by the header's length) first within an age bound (`policy.slot_rank`), plus one slot only short files take,
    so a short upload is never decoded after the long ones that came before it.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.seconds = 0.0
        self.count = 0
        self.decoding = RankedSlots(settings.max_concurrent_decodes)

    @classmethod
    def of(cls, request: Request) -> _Intake:
        intake: _Intake | None = getattr(request.app.state, "intake", None)
        if intake is None:
            intake = request.app.state.intake = cls(request.app.state.settings)
        return intake

    @contextlib.contextmanager
    def reserve(self, scheduler: Scheduler, seconds: float) -> Iterator[None]:
        """Hold room for `seconds` of audio until it is decoded; the scheduler's admission, counting the uploads
        still decoding, refuses (429, or 422 for a file that can never fit) when there is none."""
        scheduler.admit(seconds, pending_requests=self.count, pending_seconds=self.seconds)
        self.seconds += seconds
        self.count += 1
        try:
            yield
        finally:
            self.seconds -= seconds
            self.count -= 1


def decoding_slot(request: Request, seconds: float | None = None) -> contextlib.AbstractAsyncContextManager[None]:
    """One of the MAX_CONCURRENT_DECODES slots, shared by every upload that is decoded (transcriptions and job
    intake); `seconds`, the length the header declares, decides the order (None: unknown, served as long)."""
    return _Intake.of(request).decoding.slot(seconds)


async def _decode_admitted(
    request: Request, scheduler: Scheduler, settings: Settings, path: str, *, split: bool = False,
    channels_out: list[np.ndarray] | None = None,
) -> DecodedAudio:
    """Read the header, take queue room for the length it states, then decode; refusals come before the work.

    With `split` (channels=split) every channel is queued on its own, so the room taken is channels × length, and
    the channels of a multi-channel upload go into `channels_out`. Both steps run in a decoder process
    (`stt_engine.decoder`); the length is counted from the packets, so a lying header cannot buy room. Decoding
    stops at MAX_AUDIO_SECONDS whatever the header said, and when the client goes away.
    """
    intake = _Intake.of(request)
    source = await run_in_threadpool(decoder.probe, path, max_seconds=settings.max_audio_seconds)
    if split:
        decoder.split_channel_limit(source.channels, settings)
    seconds = (source.length_seconds or 0.0) * (max(1, source.channels) if split else 1)
    with intake.reserve(scheduler, seconds):
        stop = threading.Event()
        watcher = asyncio.ensure_future(_wait_for_disconnect(request))
        watcher.add_done_callback(lambda _: stop.set())
        try:
            async with decoding_slot(request, seconds):
                if stop.is_set():
                    raise STTError("Client disconnected.", status=499, code="client_closed_request")
                if split:
                    decoded, tracks = await run_in_threadpool(
                        decoder.decode_split, path, max_seconds=settings.max_audio_seconds, stop=stop,
                        max_channels=settings.max_split_channels,
                    )
                    if channels_out is not None:
                        channels_out.extend(tracks)
                    del tracks
                else:
                    decoded = await run_in_threadpool(
                        decoder.decode, path, max_seconds=settings.max_audio_seconds, stop=stop
                    )
        finally:
            watcher.cancel()
    if decoded.duration > 30:
        await run_in_threadpool(release_memory)  # what decoding freed goes back to the OS
    return decoded


@dataclass
class TranscriptionResult:
    transcript: Transcript
    processing_seconds: float
    postprocess: dict[str, Any] | None = None


def picked_scheduler(request: Request) -> Scheduler | None:
    """The scheduler of the model the request picked (its `model`, kept by the route), else the default model's;
    None while it is not loaded."""
    return request.app.state.models.loaded(getattr(request.state, "model", None))


async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body has been read, so the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def receive_audio(
    request: Request, upload: UploadFile | None, *, channels_out: list[np.ndarray] | None = None
) -> DecodedAudio:
    """Check that the request can be served, then store and decode its upload (bounded by the settings).

    With `channels_out` (channels=split), a multi-channel upload's channels are also decoded one by one into it."""
    settings: Settings = request.app.state.settings
    scheduler: Scheduler | None = picked_scheduler(request)
    if upload is None or isinstance(upload, str):
        raise InvalidRequest(
            "'file' is required: send the audio as the multipart form field 'file'.", param="file", code="missing_file"
        )
    if scheduler is None:
        raise NotReady("The model is still loading; retry in a few seconds.", headers={"Retry-After": "5"})
    scheduler.admit(0.0)  # a full queue answers 429 before we spend time storing the upload
    async with stored_upload(upload, settings) as path:
        decoded = await _decode_admitted(request, scheduler, settings, path, split=channels_out is not None,
                                         channels_out=channels_out)
    request.state.audio_seconds = decoded.duration
    return decoded


async def transcribe_upload(
    request: Request,
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
    if postprocess:
        request.app.state.postprocessor.validate(postprocess, postprocess_prompt)  # fail before any decoding
    settings: Settings = request.app.state.settings
    diarizing = diarization is not None and not split_channels
    if diarizing:
        await speakers_mod.prepare(settings, diarization)  # a bad reference is a 400 before the upload is decoded
    started = time.perf_counter()
    tracks: list[np.ndarray] = []
    decoded = await receive_audio(request, upload, channels_out=tracks if split_channels else None)
    long_audio = decoded.duration > 30
    scheduler: Scheduler = picked_scheduler(request)
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
    if diarizing:
        assert diarization is not None
        raw, turns = work.result()
        transcript = await _processed(request, raw, text)
        transcript = speakers_mod.SpeakerAssigner(turns, diarization.names, options.word_timestamps).transcript(
            transcript
        )
    else:
        transcript = await _processed(request, work.result(), text)
    del work
    if long_audio:
        await run_in_threadpool(release_memory)  # its samples are free now: hand them back to the OS
    result = TranscriptionResult(transcript, _finished(request, transcript, started))
    if postprocess:
        result.postprocess = await _postprocess(request, transcript, postprocess, postprocess_prompt)
    return result


async def _processed(request: Request, transcript: Transcript, text: TextOptions | None) -> Transcript:
    """The scheduler's transcript after the text processing the request and settings ask for (off the loop)."""
    state = request.app.state
    return await run_in_threadpool(finish_transcript, transcript, state.settings, text, getattr(state, "metrics", None))


def _finished(request: Request, transcript: Transcript, started: float) -> float:
    """Record a finished transcription for the access log and metrics; its processing time."""
    elapsed = time.perf_counter() - started
    request.state.processing_seconds = elapsed  # the access log and metrics middleware read these
    request.state.queue_wait_seconds = transcript.queue_wait_seconds
    if request.app.state.settings.log_transcripts:
        log.info("transcript: %s", transcript.text, extra={"transcript": transcript.text})
    return elapsed


async def stream_upload(
    request: Request,
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
) -> StreamingResponse:
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
    settings: Settings = request.app.state.settings
    diarizing = diarization is not None and not split_channels
    if diarizing:
        await speakers_mod.prepare(settings, diarization)  # a bad reference is a 400 before the stream starts
    tracks: list[np.ndarray] = []
    decoded = await receive_audio(request, upload, channels_out=tracks if split_channels else None)
    scheduler: Scheduler = picked_scheduler(request)
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

    merging: _ChannelMerge | None = None
    if split_channels:
        merging = await _ChannelMerge.start(decoded, tracks, speaker_names)
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

    def events_for(delta: str, segments: list[Segment]) -> Iterator[str]:
        if delta:
            scores = {"logprobs": transcript_logprobs(segments)} if logprobs else {}
            yield _sse({"type": "transcript.text.delta", "delta": delta, **scores})
        if diarizing:
            held.extend(segments)
            if not assigner and turns_work is not None and turns_work.done():
                assigner.append(new_assigner())
            if not assigner or not held:
                return
            segments = assigner[0].segments(held)
            held.clear()
        if announce and segments:
            for segment in to_diarized_json(dataclasses.replace(_EMPTY, segments=segments))["segments"]:
                yield _sse(segment)

    async def events() -> AsyncIterator[str]:
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
            transcript = await _processed(request, work.result(), text)
            if turns_work is not None and diarization is not None:
                await turns_work
                for event in events_for("", []):
                    yield event
            _finished(request, transcript, started)
            delta, fresh = stream.finish(transcript)
            for event in events_for(delta, fresh):
                yield event
            if turns_work is not None:  # the done event's segments: as the segment events numbered them
                transcript = new_assigner().transcript(transcript)
            yield _sse({"type": "transcript.text.done", "text": transcript.text, **final(transcript)})
        except STTError as exc:
            yield _sse({"type": "error", "error": error_body("/v1/", exc, request_id)["error"]})
        except Exception:
            log.exception("a streamed transcription failed")
            failed = STTError("Transcription failed; the server log has the details under this request's id.")
            yield _sse({"type": "error", "error": error_body("/v1/", failed, request_id)["error"]})
        finally:
            if turns_work is not None and not turns_work.done():
                turns_work.cancel()
            if not work.done():
                work.cancel()
                log.info("client disconnected; its streamed transcription was dropped")

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


_EMPTY = Transcript(text="", language=None, language_probability=0.0, duration=0.0, duration_after_vad=0.0,
                    segments=[])


@dataclass
class _ChannelMerge:
    """channels=split for a stream: the channels planned and transcribed as for a file (`channels.plan_split`,
    `transcribe_planned`), each with its own segment callback, and their segments merged as far as every channel
    has come."""

    plan: channels_mod.ChannelPlan
    template: DecodedAudio  # the upload's format, without its samples (the mono mix is not kept)
    duration: float

    @classmethod
    async def start(cls, decoded: DecodedAudio, tracks: list[np.ndarray], names: list[str] | None) -> _ChannelMerge:
        channel_plan = await channels_mod.plan_split(decoded, tracks, names)
        template = channels_mod.track_audio(np.zeros(0, dtype=np.float32), decoded)
        return cls(channel_plan, template, decoded.duration)

    @property
    def channels(self) -> list[int]:
        return [channel for channel, _ in self.plan.tracks]

    @property
    def speakers(self) -> list[str]:
        return self.plan.speakers

    async def transcribe(self, options: TranscribeOptions,
                         one_track: Callable[[int, DecodedAudio], Awaitable[Transcript]]) -> Transcript:
        return await channels_mod.transcribe_planned(self.plan, self.template, self.duration, options, one_track)

    def final_so_far(self, received: dict[int, list[Segment]], languages: dict[int, str | None],
                     finished: set[int]) -> tuple[list[Segment], str | None]:
        """The merged segments whose place in the final order is known: those that start before the latest segment
        of every unfinished channel (a channel's later segments start no earlier than its latest)."""
        frontier = min(
            (float(received[c][-1].start) if received.get(c) else 0.0 for c in self.channels if c not in finished),
            default=float("inf"),
        )
        partial = [(c, dataclasses.replace(_EMPTY, language=languages.get(c), segments=received.get(c, [])))
                   for c in self.channels]
        merged = channels_mod.merge(partial, self.speakers, 0.0)
        return [s for s in merged.segments if float(s.start) < frontier], merged.language


def _sse(event: dict[str, Any]) -> str:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"


async def _postprocess(request: Request, transcript: Transcript, task: str, prompt: str | None) -> dict[str, Any]:
    """The LLM's result for `task`; a disabled post-processor answers with its own `llm_not_configured` error."""
    vocabulary = load_vocabulary(request.app.state.settings.vocabulary_file)
    if task == "correct" and vocabulary.terms:  # the team's spelling of its names and terms
        prompt = vocabulary.glossary() + (f"\n{prompt}" if prompt and prompt.strip() else "")
    result: dict[str, Any] = await request.app.state.postprocessor.run(
        transcript.text, task, prompt, transcript.language
    )
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:  # asked-for and failed counts alike, so the failure ratio is honest
        metrics.observe_postprocess(task, result)
    return result
