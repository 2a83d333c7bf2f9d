"""`/v1/realtime?intent=transcription`: OpenAI Realtime transcription sessions over WebSocket.

The route owns what belongs to the connection (API key, session count, idle and length limits, sending); the
protocol and the turn logic live in `stt_engine.realtime.session`. Close codes: 1000 when the server ends a
session by its limits (after an `error` event saying which), 1013 "try again later" when there is no room or no
model yet, 1008 when the key is wrong and the server cannot answer the handshake with HTTP 401.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse

from stt_engine.api.errors import error_body
from stt_engine.api.security import api_key_matches, bearer_token
from stt_engine.api.services import Services, services_of
from stt_engine.audio import SAMPLE_RATE, DecodedAudio
from stt_engine.config import Settings
from stt_engine.errors import Unauthorized
from stt_engine.jobs.models import owner_of
from stt_engine.options import TranscribeOptions
from stt_engine.realtime.protocol import error_event
from stt_engine.realtime.session import RealtimeSession
from stt_engine.scheduler import Priority, Scheduler
from stt_engine.types import Transcript

log = logging.getLogger(__name__)
router = APIRouter()

KEY_PROTOCOL_PREFIX = "openai-insecure-api-key."
CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TRY_AGAIN = 1000, 1008, 1013


def _presented_key(websocket: WebSocket, offered: list[str]) -> str | None:
    """The key from `Authorization: Bearer`, or from a browser's `openai-insecure-api-key.<key>` subprotocol."""
    token = bearer_token(websocket.headers.get("authorization"))
    if token is not None:
        return token
    for protocol in offered:
        if protocol.startswith(KEY_PROTOCOL_PREFIX):
            return protocol[len(KEY_PROTOCOL_PREFIX):]
    return None


async def _deny(websocket: WebSocket, error: Unauthorized) -> None:
    """Refuse the handshake: HTTP 401 with OpenAI's error body where the server can, else close code 1008."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse(
            error_body(websocket.url.path, error), status_code=error.status, headers={"WWW-Authenticate": "Bearer"}
        ))
    else:
        await websocket.close(code=CLOSE_POLICY, reason=error.message[:120])


def session_holder(settings: Settings, presented_key: str | None, client: Any) -> str:
    """Who a session counts against for REALTIME_MAX_SESSIONS_PER_KEY: the API key (its hash) when the server
    has keys, else the client's address, so one caller cannot hold every place."""
    if settings.api_keys:
        return "key:" + owner_of(presented_key)
    return "addr:" + (getattr(client, "host", None) or "unknown")


def _scheduler_call(scheduler: Scheduler) -> Any:
    """`scheduler.transcribe` for a live session's turns: before file and job work, so partials stay timely."""

    async def transcribe(samples: np.ndarray, options: TranscribeOptions) -> Transcript:
        return await scheduler.transcribe(
            DecodedAudio(samples, "realtime", SAMPLE_RATE, 1), options, priority=Priority.LIVE
        )

    return transcribe


async def _partial_model(services: Services) -> Any:
    """REALTIME_PARTIAL_MODEL's transcribe call, or None: the session's model does partials too. The model is
    looked up for each partial, so one unloaded after MODEL_TTL_S loads again (a load that fails skips a partial)."""
    name = services.settings.realtime_partial_model
    if not name or services.models.lookup(name) is services.models.default:  # an unknown id stopped the start
        return None
    return _model_call(services, lambda: name)


def _model_call(services: Services, model: Callable[[], str | None]) -> Any:
    """A live session's transcribe call on the model `model()` names now (the session's `transcription.model`,
    checked when the client sets it): looked up for each decode, so one unloaded after MODEL_TTL_S loads again."""

    async def transcribe(samples: np.ndarray, options: TranscribeOptions) -> Transcript:
        scheduler = await services.models.scheduler_for(model())
        return await _scheduler_call(scheduler)(samples, options)

    return transcribe


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket) -> None:
    services = services_of(websocket)
    settings = services.settings
    offered = list(websocket.scope.get("subprotocols") or [])
    if settings.api_keys and not api_key_matches(_presented_key(websocket, offered), settings.api_keys):
        presented = _presented_key(websocket, offered) is not None
        await _deny(websocket, Unauthorized(
            "Invalid API key." if presented else "Missing API key: send 'Authorization: Bearer <key>' (or, from a "
            "browser, the WebSocket subprotocol 'openai-insecure-api-key.<key>')."
        ))
        return
    await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)

    closed = False
    lock = asyncio.Lock()

    async def send(payload: dict[str, Any]) -> None:
        nonlocal closed
        if closed:
            return
        async with lock:
            try:
                await websocket.send_text(json.dumps(payload, ensure_ascii=False))
            except Exception:  # the client went away mid-send (disconnect, reset): stop sending
                closed = True

    async def refuse(message: str, code: str, close_code: int) -> None:
        await send(error_event(message, code=code, error_type="server_error" if close_code == CLOSE_TRY_AGAIN
                               else "invalid_request_error"))
        if not closed:
            await websocket.close(code=close_code, reason=message[:120])

    holder = session_holder(settings, _presented_key(websocket, offered), websocket.client)
    sessions = services.realtime
    if sessions.open >= settings.max_realtime_sessions:
        await refuse(
            f"Too many realtime sessions: this server allows {settings.max_realtime_sessions} at once "
            "(MAX_REALTIME_SESSIONS). Retry later." if settings.max_realtime_sessions else
            "Realtime sessions are turned off on this server (MAX_REALTIME_SESSIONS=0).",
            "too_many_sessions" if settings.max_realtime_sessions else "realtime_disabled", CLOSE_TRY_AGAIN,
        )
        return
    if sessions.held_by(holder) >= settings.realtime_max_sessions_per_key:
        await refuse(
            f"Too many realtime sessions for this {'API key' if settings.api_keys else 'client address'}: "
            f"{settings.realtime_max_sessions_per_key} at once (REALTIME_MAX_SESSIONS_PER_KEY). Close one or retry "
            "later.", "too_many_sessions_for_key", CLOSE_TRY_AGAIN,
        )
        return
    scheduler, engine = services.scheduler, services.engine
    if scheduler is None or engine is None:
        await refuse("The model is still loading; retry in a few seconds.", "model_not_ready", CLOSE_TRY_AGAIN)
        return

    sessions.opened(holder)
    metrics = services.metrics
    metrics.realtime_sessions.inc()
    deadline = time.monotonic() + settings.realtime_max_session_s
    beta = "realtime=v1" in (websocket.headers.get("openai-beta") or "")
    session = RealtimeSession(settings, engine.supported_languages, send,
                              _model_call(services, lambda: session.config.model), beta=beta, metrics=metrics,
                              expires_at=int(time.time() + settings.realtime_max_session_s),
                              partial_transcribe=await _partial_model(services),
                              check_model=services.models.lookup)
    try:
        await session.start()
        while not closed:
            now = time.monotonic()
            idle_left = settings.realtime_idle_timeout_s - session.idle_for(now)
            try:
                message = await asyncio.wait_for(websocket.receive(), max(0.0, min(idle_left, deadline - now)))
            except asyncio.TimeoutError:
                now = time.monotonic()
                if now < deadline and session.idle_for(now) < settings.realtime_idle_timeout_s:
                    continue  # audio came, or a commit was answered, since this wait began
                if now >= deadline:
                    await refuse(f"The session reached its maximum length of {settings.realtime_max_session_s:g} s "
                                 "(REALTIME_MAX_SESSION_S). Open a new one to continue.", "session_expired",
                                 CLOSE_NORMAL)
                else:
                    await refuse(f"No audio and no commit from the client for {settings.realtime_idle_timeout_s:g} s "
                                 "(REALTIME_IDLE_TIMEOUT_S); the session is closed.", "idle_timeout", CLOSE_NORMAL)
                break
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            await session.handle(text if text is not None else (message.get("bytes") or b""))
    finally:
        closed = True
        await session.close()
        sessions.closed(holder)
        metrics.realtime_sessions.dec()
        log.info("realtime session %s closed", session.id)
