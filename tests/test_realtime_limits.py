"""Realtime sessions cannot be held for free: the idle timeout counts only audio and commits, and one API key (or,
without keys, one client address) holds at most REALTIME_MAX_SESSIONS_PER_KEY places. A real server with the real
model, plain websockets clients as tests/test_realtime.py uses."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import websockets
from websockets.sync.client import connect

from stt_engine.api.realtime_routes import session_holder
from stt_engine.config import Settings
from tests.realtime_support import pcm16, silence
from tests.support import clip, error_rate, running_server

KEYS = ("sk-limits-one-0123456789", "sk-limits-two-0123456789")
IDLE_S = 3.0
EN = clip("en/picovoice_test_en.wav")


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/v1/realtime?intent=transcription"


def recv(ws: Any, timeout: float = 60.0) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=timeout))


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def open_session(base: str, key: str) -> Any:
    ws = connect(ws_url(base), additional_headers=auth(key))
    first = recv(ws)
    assert first["type"] == "session.created", first
    return ws


def append(ws: Any, audio: bytes) -> None:
    ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(audio).decode()}))


def closed_with(ws: Any, code: int) -> None:
    with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
        while True:
            recv(ws, timeout=30)
    assert info.value.rcvd is not None and info.value.rcvd.code == code


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    env = {"API_KEYS": ",".join(KEYS), "MAX_REALTIME_SESSIONS": "3", "REALTIME_MAX_SESSIONS_PER_KEY": "2",
           "REALTIME_IDLE_TIMEOUT_S": str(IDLE_S)}
    with running_server(env) as base:
        yield base


def test_clear_does_not_keep_a_session_alive_but_audio_does(server: str) -> None:
    # a client that only sends input_audio_buffer.clear is idle: closed, where before it stayed for an hour
    with open_session(server, KEYS[0]) as ws:
        started, event = time.monotonic(), None
        while time.monotonic() - started < 10 * IDLE_S:
            # the server may close between a read and this send; the error it sent first is still read below
            with contextlib.suppress(websockets.exceptions.ConnectionClosed):
                ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            event = _next_or_none(ws, IDLE_S / 3)
            if event is not None and event["type"] == "error":
                break
        assert event is not None and event["error"]["code"] == "idle_timeout", event
        assert "audio" in event["error"]["message"] and "REALTIME_IDLE_TIMEOUT_S" in event["error"]["message"]
        closed_with(ws, 1000)
    # audio appends (even silence, as a quiet microphone sends) keep it open past the timeout; then speech is
    # transcribed as usual
    with open_session(server, KEYS[0]) as ws:
        ws.send(json.dumps({"type": "session.update", "session": {
            "type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                                          "transcription": {"language": "en"},
                                                          "turn_detection": None}}}}))
        assert recv(ws)["type"] == "session.updated"
        started = time.monotonic()
        while time.monotonic() - started < 2.5 * IDLE_S:
            append(ws, silence(0.2))
            event = _next_or_none(ws, 0.4)
            assert event is None or event["type"] != "error", event  # in particular no idle_timeout
        append(ws, pcm16(EN.path) + silence(0.3))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        while (event := recv(ws, timeout=120))["type"] != "conversation.item.input_audio_transcription.completed":
            assert event["type"] != "error", event
        assert error_rate(event["transcript"], EN) <= 0.2, event["transcript"]


def _next_or_none(ws: Any, timeout: float) -> dict[str, Any] | None:
    try:
        return recv(ws, timeout=timeout)
    except TimeoutError:
        return None


def test_one_key_cannot_hold_every_place(server: str) -> None:
    first, second = open_session(server, KEYS[0]), open_session(server, KEYS[0])
    try:
        with connect(ws_url(server), additional_headers=auth(KEYS[0])) as third:
            refused = recv(third)
            assert refused["type"] == "error" and refused["error"]["code"] == "too_many_sessions_for_key", refused
            assert "REALTIME_MAX_SESSIONS_PER_KEY" in refused["error"]["message"]
            closed_with(third, 1013)
        with open_session(server, KEYS[1]):  # another key still gets the place left
            pass
        first.close()
        deadline = time.monotonic() + 60  # the closed session's place comes back to its key
        while True:
            ws = connect(ws_url(server), additional_headers=auth(KEYS[0]))
            if recv(ws)["type"] == "session.created":
                ws.close()
                break
            ws.close()
            assert time.monotonic() < deadline, "the key's place did not come back"
            time.sleep(0.3)
    finally:
        first.close()
        second.close()


def test_without_keys_sessions_count_per_client_address() -> None:
    keyed = Settings(_env_file=None, api_keys=["a", "b"])
    open_ = Settings(_env_file=None)
    client = SimpleNamespace(host="10.0.0.7")
    assert session_holder(keyed, "a", client) == session_holder(keyed, "a", SimpleNamespace(host="10.0.0.8"))
    assert session_holder(keyed, "a", client) != session_holder(keyed, "b", client)
    assert "sk-secret" not in session_holder(keyed, "sk-secret", client)  # a hash, never the key
    assert session_holder(open_, None, client) == "addr:10.0.0.7"
    assert session_holder(open_, None, client) != session_holder(open_, None, SimpleNamespace(host="10.0.0.8"))
    assert session_holder(open_, None, None) == "addr:unknown"
