"""One realtime transcription session: client events in, server events out, turns decoded through the scheduler.

The socket is not known here (the route passes `send`), nor the scheduler (`transcribe`), so the state machine is
the same whoever drives it. Per session, in order:

- the route hands each client message to `handle()`, one at a time; appended audio is decoded, resampled and
  scored by the VAD off the event loop, then the turn tracker decides where turns start and stop;
- each turn (an "item") has its own task: while the turn is open it re-decodes the turn so far every
  `partial_interval` and sends the LocalAgreement-2 prefix as `...delta` events; when the turn ends it decodes the
  whole turn once more and sends the rest of the text and `...completed`. Items complete in order.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from stt_engine.audio import SAMPLE_RATE
from stt_engine.config import Settings
from stt_engine.errors import STTError
from stt_engine.openai_fields import merge_keywords, transcript_logprobs
from stt_engine.options import TranscribeOptions, build_options
from stt_engine.realtime import agreement
from stt_engine.realtime.audio_formats import StreamDecoder
from stt_engine.realtime.protocol import (
    LOGPROBS_INCLUDE,
    ProtocolError,
    SessionConfig,
    apply_beta,
    apply_ga,
    error_event,
    event,
    is_beta_session,
    new_id,
    render_beta,
    render_ga,
)
from stt_engine.realtime.vad import SpeechStarted, SpeechStopped, StreamingVad, TurnTracker
from stt_engine.textproc.vocabulary import load_vocabulary
from stt_engine.types import Transcript

log = logging.getLogger(__name__)

MIN_COMMIT_SECONDS = 0.1  # OpenAI refuses to commit less than 100 ms
MIN_PARTIAL_SECONDS = 0.8  # shorter audio gives Whisper too little to say anything stable (or the wrong language)
# Once a turn has been quiet for half its silence_duration_ms (at least this long), the next decode is a candidate
# final: if the speaker does not resume, the turn ends with its transcript already decoded. Shorter pauses are
# mostly between words of one sentence.
EARLY_FINAL_PAUSE_SECONDS = 0.3
MAX_TURN_SECONDS = 30.0

Send = Callable[[dict[str, Any]], Awaitable[None]]
Transcribe = Callable[[np.ndarray, TranscribeOptions], Awaitable[Transcript]]


@dataclass
class _Item:
    id: str
    start: int
    opened: float  # monotonic time the turn was opened (speech onset seen)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    audio: np.ndarray | None = None
    ended_at: float = 0.0
    sent: list[str] = field(default_factory=list)
    sent_text: str = ""
    task: asyncio.Task[None] | None = None
    stopped: SpeechStopped | None = None
    early: tuple[int, Transcript] | None = None  # (speech end it covered, transcript) of the last candidate final
    paused: asyncio.Event = field(default_factory=asyncio.Event)  # quiet for EARLY_FINAL_PAUSE_SECONDS now
    vad_turn: bool = False  # opened by the VAD hearing speech (else: buffered audio the client committed)


class RealtimeSession:
    def __init__(self, settings: Settings, languages: Collection[str], send: Send, transcribe: Transcribe, *,
                 beta: bool = False, metrics: Any = None, expires_at: int | None = None,
                 partial_transcribe: Transcribe | None = None, check_model: Callable[[str], Any] | None = None
                 ) -> None:
        self.settings = settings
        self.languages = languages
        self.id = new_id("sess")
        self.beta = beta  # the dialect of session.created; updates are answered in their own dialect
        self.expires_at = expires_at
        self._send = send
        self._transcribe = transcribe
        # REALTIME_PARTIAL_MODEL: partials from a faster model are a preview; the final text is `transcribe`'s own
        self._transcribe_partial = partial_transcribe or transcribe
        self._preview_partials = partial_transcribe is not None
        self._check_model = check_model  # raises for a `transcription.model` the server does not serve
        self._metrics = metrics
        self.config = SessionConfig()
        self._vocabulary = load_vocabulary(settings.vocabulary_file)  # read once a session, not on every update
        self._options = self._build_options(self.config)
        self._decoder = StreamDecoder(self.config.format)
        self._vad = StreamingVad()
        self._tracker = self._new_tracker(self.config)
        self._item: _Item | None = None  # the open turn
        self._last_item_id: str | None = None
        self._last_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.partial_interval = settings.realtime_partial_interval_ms / 1000
        # monotonic time of the last audio append or commit (or answer to a commit): what the idle timeout counts
        # from. Other events (clear, session.update, junk) do not keep a session alive, or one could hold a place
        # for free forever.
        self.last_activity = time.monotonic()
        self._finals_pending = 0  # committed turns whose transcript is not sent yet

    # --- lifecycle ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.beta:
            await self._send(event("transcription_session.created", session=self._render(beta=True)))
        else:
            await self._send(event("session.created", session=self._render(beta=False)))

    async def close(self) -> None:
        """Drop every pending decode (the scheduler drops work whose awaiting task is cancelled)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    def idle_for(self, now: float) -> float:
        """Seconds the client has been idle: since its last audio or commit, or since the server answered its last
        commit; 0 while a committed turn is still being transcribed (the client is waiting for us, not idle)."""
        return 0.0 if self._finals_pending else now - self.last_activity

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for committed turns to complete, e.g. before a graceful close."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    # --- client events ------------------------------------------------------------------------------------
    async def handle(self, raw: str | bytes) -> None:
        """One client message. Anything wrong with it is answered with an `error` event; the session goes on."""
        event_id = None
        try:
            if isinstance(raw, bytes):
                raise ProtocolError("Binary frames are not accepted: send JSON text events "
                                    "(audio goes base64-encoded in input_audio_buffer.append).", code="invalid_frame")
            try:
                message = json.loads(raw)
            except ValueError as exc:
                raise ProtocolError(f"The message is not valid JSON ({exc.msg} at position {exc.pos}).",
                                    code="invalid_json") from None
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                raise ProtocolError("A client event must be a JSON object with a string 'type'.",
                                    code="invalid_event", param="type")
            event_id = message.get("event_id") if isinstance(message.get("event_id"), str) else None
            handler = self._HANDLERS.get(message["type"])
            if handler is None:
                raise ProtocolError(
                    f"Unknown or unsupported event type {message['type']!r}. This transcription endpoint accepts: "
                    + ", ".join(sorted(self._HANDLERS)) + ".",
                    code="invalid_event", param="type",
                )
            await handler(self, message)
        except ProtocolError as exc:
            await self._send(error_event(exc.message, code=exc.code, param=exc.param, event_id=event_id,
                                         error_type=exc.error_type))
        except STTError as exc:
            await self._send(error_event(exc.message, code=exc.code, param=exc.param, event_id=event_id,
                                         error_type=exc.error_type))
        except Exception:  # a bug must cost one message, not the session
            log.exception("realtime session %s: failed to handle a client event", self.id)
            await self._send(error_event("The server failed to handle this event.", code="internal_error",
                                         event_id=event_id, error_type="server_error"))

    async def _session_update(self, message: dict[str, Any]) -> None:
        session = message.get("session")
        if session is None:
            raise ProtocolError("'session' is required.", param="session", code="missing_required_parameter")
        beta = message["type"] == "transcription_session.update" or is_beta_session(session)
        config = (apply_beta if beta else apply_ga)(self.config, session)
        options = self._build_options(config)  # validates language and prompt before anything changes
        if self._check_model is not None and config.model != self.config.model:
            self._check_model(config.model)
        if config.format != self.config.format:
            self._decoder = StreamDecoder(config.format)
        if config.turn_detection != self.config.turn_detection:
            await self._end_turn_for_reconfigure()
            self._tracker = self._new_tracker(config, position=self._tracker.position)
            self._vad = StreamingVad()
        self.config, self._options = config, options
        kind = "transcription_session.updated" if message["type"] == "transcription_session.update" else \
            "session.updated"
        await self._send(event(kind, session=self._render(beta=beta)))

    async def _append(self, message: dict[str, Any]) -> None:
        audio = message.get("audio")
        if not isinstance(audio, str):
            raise ProtocolError("'audio' (base64-encoded audio bytes) is required.", param="audio",
                                code="missing_required_parameter")
        limit = self.settings.realtime_max_append_bytes
        if len(audio) > (limit + 2) // 3 * 4 + 4:
            raise ProtocolError(
                f"This append carries about {len(audio) * 3 // 4} bytes of audio; at most {limit} are accepted in "
                "one input_audio_buffer.append (REALTIME_MAX_APPEND_BYTES). Send smaller pieces, e.g. 100 ms each.",
                param="audio", code="audio_too_large",
            )
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("'audio' is not valid base64.", param="audio", code="invalid_base64") from None
        if not data:
            return
        self.last_activity = time.monotonic()
        samples, probs = await run_in_threadpool(self._ingest, data)
        for ev in self._tracker.feed(samples, probs):
            await self._on_turn_event(ev)
        if self._item is not None:
            if self._tracker.pause_samples >= self._early_final_pause() * SAMPLE_RATE:
                self._item.paused.set()
            else:
                self._item.paused.clear()
                if self._tracker.pause_samples == 0:  # speaking again: a candidate final is out of date
                    self._item.early = None
        if not self.vad_on and self._item is None and self._tracker.turn_start is not None:
            self._open_item(self._tracker.turn_start)  # without VAD, partials run on the uncommitted buffer

    async def _commit(self, message: dict[str, Any]) -> None:
        position = self._tracker.position
        pending = self._tracker.uncommitted()
        stopped = self._tracker.commit() if pending >= MIN_COMMIT_SECONDS * SAMPLE_RATE else None
        if stopped is None:
            seconds = pending / SAMPLE_RATE
            raise ProtocolError(
                f"Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_SECONDS * 1000:.0f}ms of audio, but buffer only has {seconds * 1000:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
            )
        self.last_activity = time.monotonic()
        if self._item is not None and self.vad_on:
            await self._send(event("input_audio_buffer.speech_stopped", audio_end_ms=_ms(position),
                                   item_id=self._item.id))
        await self._end_item(stopped)

    async def _clear(self, message: dict[str, Any]) -> None:
        self._tracker.clear()
        if self._item is not None:
            item, self._item = self._item, None
            if item.task is not None:
                item.task.cancel()
        await self._send(event("input_audio_buffer.cleared"))

    _HANDLERS: dict[str, Callable[[RealtimeSession, dict[str, Any]], Awaitable[None]]] = {
        "session.update": _session_update,
        "transcription_session.update": _session_update,
        "input_audio_buffer.append": _append,
        "input_audio_buffer.commit": _commit,
        "input_audio_buffer.clear": _clear,
    }

    # --- turns --------------------------------------------------------------------------------------------
    @property
    def vad_on(self) -> bool:
        return self.config.turn_detection is not None

    def _ingest(self, data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
        """Off the event loop: decode + resample the bytes, score complete VAD windows."""
        samples = self._decoder.decode(data)
        return samples, (self._vad.push(samples) if self.vad_on else None)

    async def _on_turn_event(self, ev: SpeechStarted | SpeechStopped) -> None:
        if isinstance(ev, SpeechStarted):
            item = self._open_item(ev.start)
            item.vad_turn = True
            await self._send(event("input_audio_buffer.speech_started", audio_start_ms=_ms(ev.start),
                                   item_id=item.id))
        else:
            if self._item is not None and self.vad_on:
                await self._send(event("input_audio_buffer.speech_stopped", audio_end_ms=_ms(ev.end),
                                       item_id=self._item.id))
            await self._end_item(ev)

    def _open_item(self, start: int) -> _Item:
        item = _Item(new_id("item"), start, time.monotonic())
        previous = self._last_task
        item.task = asyncio.ensure_future(self._run_item(item, previous))
        self._tasks.add(item.task)
        item.task.add_done_callback(self._tasks.discard)
        item.task.add_done_callback(lambda _task: self._item_done(item))
        self._item, self._last_task = item, item.task
        return item

    def _item_done(self, item: _Item) -> None:
        if item.ended.is_set():  # its commit is answered (or dropped): the idle clock starts again from now
            self._finals_pending -= 1
            self.last_activity = time.monotonic()

    async def _end_item(self, stopped: SpeechStopped) -> None:
        item = self._item or self._open_item(stopped.start)
        self._item = None
        item.audio, item.ended_at, item.stopped = stopped.audio, time.monotonic(), stopped
        await self._send(event("input_audio_buffer.committed", item_id=item.id,
                               previous_item_id=self._last_item_id))
        self._last_item_id = item.id
        if item.task is not None and not item.task.done():  # (a task that already died answers nothing)
            self._finals_pending += 1
        item.ended.set()

    async def _end_turn_for_reconfigure(self) -> None:
        """Turn detection changed: an open VAD turn ends where the audio is now, so nothing heard is lost."""
        if self._item is not None and self._tracker.turn_start is not None:
            stopped = self._tracker.commit()
            if stopped is not None:
                await self._end_item(stopped)

    async def _run_item(self, item: _Item, previous: asyncio.Task[None] | None) -> None:
        try:
            await self._partials(item, previous)
            await self._final(item, previous)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must cost one item, not the session
            log.exception("realtime item %s failed", item.id)
            await self._send(event("conversation.item.input_audio_transcription.failed", item_id=item.id,
                                   content_index=0, error={"type": "server_error", "code": "internal_error",
                                                           "message": "Transcription failed.", "param": None}))

    async def _partials(self, item: _Item, previous_item: asyncio.Task[None] | None) -> None:
        """Re-decode the open turn every `partial_interval` (one decode in flight at most) and send what two
        consecutive hypotheses agree on.

        Once the turn has been quiet for half its `silence_duration_ms`, a partial still in flight is dropped and the
        turn is decoded as a candidate final instead (see `_final`). While the previous turn's final is still being
        decoded, partials wait: on a busy CPU, finished turns come first.
        """
        ended = asyncio.ensure_future(item.ended.wait())
        previous: list[str] | None = None
        decoded_len = 0
        try:
            while not item.ended.is_set():
                started = time.monotonic()
                audio = self._tracker.turn_audio() if self._item is item else None
                if previous_item is not None and not previous_item.done():
                    audio = None
                if item.paused.is_set() and item.early is not None:
                    audio = None  # quiet, and the candidate final already covers the speech
                if audio is not None and len(audio) >= MIN_PARTIAL_SECONDS * SAMPLE_RATE and len(audio) > decoded_len:
                    early = item.paused.is_set()
                    speech_end = self._tracker.speech_end
                    transcript = await self._hypothesis(item, audio, early, ended)
                    if transcript is None:
                        if item.ended.is_set():
                            return
                        if not item.paused.is_set():  # refused by the scheduler: try again later
                            await asyncio.sleep(self.partial_interval)
                        continue  # (or dropped for the candidate final, which the next round decodes)
                    decoded_len = len(audio)
                    log.debug("%s %s: %.2f s of audio in %.2f s: %s", "early final" if early else "partial",
                              item.id, len(audio) / SAMPLE_RATE, time.monotonic() - started, transcript.text)
                    if early and speech_end is not None:
                        item.early = (speech_end, transcript)
                    if item.ended.is_set():
                        return
                    current = agreement.tokens(transcript.text, transcript.language)
                    new = agreement.partial_delta(item.sent, previous, current)
                    previous = current
                    if new:
                        await self._send_delta(item, new)
                        if self._metrics is not None:
                            self._metrics.realtime_partial_latency.observe(time.monotonic() - started)
                wait = self.partial_interval - (time.monotonic() - started)
                if audio is not None and len(audio) < MIN_PARTIAL_SECONDS * SAMPLE_RATE:
                    # the first hypothesis as soon as the turn has enough audio, not an interval later
                    wait = max(0.05, min(wait, MIN_PARTIAL_SECONDS - len(audio) / SAMPLE_RATE))
                if item.paused.is_set() and item.early is None:
                    wait = min(wait, 0.05)  # a pause began: decode the candidate final now
                if wait > 0:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(asyncio.shield(ended), wait)
        finally:
            ended.cancel()

    async def _hypothesis(self, item: _Item, audio: np.ndarray, early: bool,
                          ended: asyncio.Future[Any]) -> Transcript | None:
        """One decode of the open turn; None when it was dropped (turn ended, or a pause began under a partial)
        or refused by the scheduler."""
        options = self._options if early else self._partial_options()
        decode = asyncio.ensure_future((self._transcribe if early else self._transcribe_partial)(audio, options))
        waits: set[asyncio.Future[Any]] = {decode}
        if not early:  # a candidate final outlives the end of its turn: that is what it is for
            waits.add(ended)
            pause = asyncio.ensure_future(item.paused.wait())
            waits.add(pause)
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not early:
                pause.cancel()
        if not decode.done():
            decode.cancel()
            with contextlib.suppress(BaseException):
                await decode
            return None
        try:
            return decode.result()
        except STTError as exc:  # e.g. the queue is full: skip this one, keep the turn
            log.info("realtime partial skipped: %s", exc.message)
            return None

    def _early_final(self, item: _Item) -> Transcript | None:
        """The candidate final decoded in the turn's closing pause, if no speech came after it."""
        stopped = item.stopped
        if item.early is None or stopped is None or stopped.cut or stopped.speech_end is None:
            return None
        speech_end, transcript = item.early
        return transcript if speech_end == stopped.speech_end else None

    async def _final(self, item: _Item, previous: asyncio.Task[None] | None) -> None:
        assert item.audio is not None
        transcript: Transcript | None = self._early_final(item)
        failure: STTError | None = None
        if transcript is None:
            try:
                # audio our VAD did not cut (a client's commit) goes through the file path's VAD filter
                options = self._options if item.vad_turn else replace(
                    self._options, vad_filter=self.settings.whisper_vad_filter)
                started = time.monotonic()
                transcript = await self._transcribe(item.audio, options)
                log.debug("final %s: %.2f s of audio in %.2f s (%.2f s after the turn ended)", item.id,
                          len(item.audio) / SAMPLE_RATE, time.monotonic() - started, time.monotonic() - item.ended_at)
            except STTError as exc:
                failure = exc
        if previous is not None and not previous.done():
            with contextlib.suppress(BaseException):
                await asyncio.shield(previous)  # items complete in the order they were spoken
        if transcript is None:
            assert failure is not None
            await self._send(event("conversation.item.input_audio_transcription.failed", item_id=item.id,
                                   content_index=0, error={"type": failure.error_type, "code": failure.code,
                                                           "message": failure.message, "param": None}))
            return
        final = agreement.tokens(transcript.text, transcript.language)
        rest = agreement.final_delta(item.sent, final)
        if rest:
            await self._send_delta(item, rest)
        # With a partial model its deltas were a preview that may differ: the completed text is the final model's.
        text = "".join(final).strip() if self._preview_partials else item.sent_text
        await self._send(event(
            "conversation.item.input_audio_transcription.completed", item_id=item.id, content_index=0,
            transcript=text, usage={"type": "duration", "seconds": round(len(item.audio) / SAMPLE_RATE, 3)},
            **({"logprobs": transcript_logprobs(transcript.segments)} if self._options.logprobs else {}),
        ))
        if self._metrics is not None:
            self._metrics.realtime_final_latency.observe(time.monotonic() - item.ended_at)
        if self.settings.log_transcripts:
            log.info("realtime transcript: %s", text, extra={"transcript": text})

    async def _send_delta(self, item: _Item, new: list[str]) -> None:
        delta = agreement.join(new, item.sent_text)
        item.sent.extend(new)
        item.sent_text += delta
        await self._send(event("conversation.item.input_audio_transcription.delta", item_id=item.id,
                               content_index=0, delta=delta))

    # --- helpers ------------------------------------------------------------------------------------------
    def _build_options(self, config: SessionConfig) -> TranscribeOptions:
        # Turns cut by our VAD are speech already; committed buffers without VAD get the file path's VAD filter.
        return build_options(self.settings, self.languages, language=config.language, prompt=config.prompt,
                             vad_filter=None if config.turn_detection is None else False,
                             hotwords=merge_keywords(None, config.keywords),
                             logprobs=LOGPROBS_INCLUDE in (config.include or []), vocabulary=self._vocabulary)

    def _early_final_pause(self) -> float:
        td = self.config.turn_detection
        return max(EARLY_FINAL_PAUSE_SECONDS, td.silence_duration_ms / 2000) if td else float("inf")

    def _partial_options(self) -> TranscribeOptions:
        """Partials are provisional: greedy, no temperature fallback, so they cost the least."""
        return replace(self._options, beam_size=1, temperatures=(0.0,), logprobs=False)

    def _new_tracker(self, config: SessionConfig, position: int = 0) -> TurnTracker:
        td = config.turn_detection
        if td is None:
            tracker = TurnTracker(vad=False, max_turn_s=MAX_TURN_SECONDS)
        else:
            tracker = TurnTracker(vad=True, threshold=td.threshold, prefix_padding_ms=td.prefix_padding_ms,
                                  silence_duration_ms=td.silence_duration_ms, max_turn_s=MAX_TURN_SECONDS)
        if position:
            tracker.skip_to(position)
        return tracker

    def _render(self, *, beta: bool) -> dict[str, Any]:
        return (render_beta if beta else render_ga)(self.config, self.id, self.expires_at)


def _ms(samples: int) -> int:
    return int(samples * 1000 / SAMPLE_RATE)
