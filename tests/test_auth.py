"""API keys: the OpenAI SDK with the right key works, a wrong or missing key gets 401 in the route's error shape,
health and metrics stay open, keys never reach the logs. Also CORS: closed by default, open to configured origins.

The server here also runs with LOG_TRANSCRIPTS=true: even when transcripts are logged, keys are not. It is a real
`serve` process (raw sockets, log files) on the stand-in engine: what is said does not matter here, so no model.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import openai
import pytest
from openai import OpenAI

from tests.fake_engine import FAKE_TEXT
from tests.support import SHARED_AUDIO, running_server

KEYS = ("sk-test-first-0123456789", "sk-test-second-abcdefghij")
WRONG = "sk-test-wrong-zzzzzzzzzz"
ORIGIN = "https://app.example.com"
SHORT = SHARED_AUDIO / "en" / "speech_recognition_english_123.wav"


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("auth-logs")


@pytest.fixture(scope="module")
def secured(log_dir: Path) -> Iterator[str]:
    env = {"API_KEYS": ",".join(KEYS), "CORS_ORIGINS": ORIGIN, "LOG_TRANSCRIPTS": "true", "LOG_DIR": str(log_dir)}
    with running_server(env, engine="fake") as base:
        yield base


def sdk(base: str, key: str) -> OpenAI:
    return OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)


@pytest.mark.parametrize("key", KEYS)
def test_sdk_with_right_key(secured: str, key: str) -> None:
    with SHORT.open("rb") as handle:
        result = sdk(secured, key).audio.transcriptions.create(model="whisper-1", file=handle)
    assert FAKE_TEXT in result.text


def test_sdk_with_wrong_key_gets_401(secured: str) -> None:
    with pytest.raises(openai.AuthenticationError) as info, SHORT.open("rb") as handle:
        sdk(secured, WRONG).audio.transcriptions.create(model="whisper-1", file=handle)
    assert info.value.status_code == 401
    assert info.value.body["message"] == "Invalid API key." and info.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        sdk(secured, WRONG).models.list()


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer"}, {"Authorization": f"Basic {KEYS[0]}"}, {"Authorization": KEYS[0]}]
)
def test_missing_or_malformed_key_gets_401(secured: str, headers: dict[str, str]) -> None:
    with SHORT.open("rb") as handle:
        response = httpx.post(secured + "/v1/audio/transcriptions", files={"file": handle}, headers=headers)
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
    assert "API key" in error["message"]


def test_original_route_401_in_its_shape(secured: str) -> None:
    response = httpx.post(secured + "/transcribe", files={"file": ("a.wav", b"x")})
    assert response.status_code == 401
    body = response.json()
    assert body["success"] is False and body["error"]["code"] == "invalid_api_key"
    assert "Authorization: Bearer" in body["error"]["message"]
    ok = httpx.post(secured + "/transcribe", files={"file": (SHORT.name, SHORT.read_bytes())},
                    headers={"Authorization": f"Bearer {KEYS[1]}"}, timeout=120)
    assert ok.status_code == 200 and ok.json()["success"] is True


def test_unauthenticated_big_upload_gets_401_not_413(secured: str) -> None:
    url = urlsplit(secured)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(b"POST /transcribe HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000000\r\n\r\n" + b"\0" * 1024)
        assert sock.recv(4096).startswith(b"HTTP/1.1 401")


@pytest.mark.parametrize("path", ["/health", "/health/ready", "/metrics"])
def test_open_paths(secured: str, path: str) -> None:
    assert httpx.get(secured + path).status_code == 200


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/whisper-1", "/metricsx", "/docsx"])
def test_everything_else_is_closed(secured: str, path: str) -> None:
    assert httpx.get(secured + path).status_code == 401
    expected = 404 if path.endswith("x") else 200
    assert httpx.get(secured + path, headers={"Authorization": f"Bearer {KEYS[0]}"}).status_code == expected


@pytest.mark.parametrize("path", ["/", "/docs", "/openapi.json", "/docs/static/swagger-ui.css"])
def test_api_pages_stay_open_so_a_browser_can_ask_for_the_key(secured: str, path: str) -> None:
    assert httpx.get(secured + path).status_code == 200


def test_keys_never_logged_but_transcripts_are_when_enabled(secured: str, log_dir: Path) -> None:
    for key in (KEYS[0], WRONG):
        httpx.post(secured + "/transcribe", files={"file": (SHORT.name, SHORT.read_bytes())},
                   headers={"Authorization": f"Bearer {key}", "X-Request-ID": "auth-log-check"}, timeout=120)
    logs = "".join(p.read_text(encoding="utf-8", errors="replace") for p in log_dir.iterdir() if p.is_file())
    assert "auth-log-check" in logs
    for key in (*KEYS, WRONG):
        assert key not in logs
    assert '"transcript"' in logs  # LOG_TRANSCRIPTS=true on this server


def test_cors_allowed_origin(secured: str) -> None:
    preflight = httpx.options(
        secured + "/v1/audio/transcriptions",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    simple = httpx.get(secured + "/health", headers={"Origin": ORIGIN})
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()


def test_cors_other_origin_refused(secured: str) -> None:
    preflight = httpx.options(
        secured + "/v1/audio/transcriptions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 400 and "access-control-allow-origin" not in preflight.headers


def test_cors_closed_by_default(fake_server: str) -> None:
    response = httpx.get(fake_server + "/health", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in response.headers
    preflight = httpx.options(
        fake_server + "/v1/audio/transcriptions", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_no_keys_means_open(fake_server: str) -> None:
    assert httpx.get(fake_server + "/v1/models").status_code == 200
