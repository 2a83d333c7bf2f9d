"""Bad input gets a clear 4xx in the route's error shape, and the server answers the next good request.

All of it is refused before decoding, so it runs in-process on the stand-in engine (`client`, no model).
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.support import SHARED_AUDIO

JFK = SHARED_AUDIO / "en" / "jfk.flac"


def _post(client: TestClient, route: str, files: dict | None, data: dict | None = None) -> httpx.Response:
    return client.post(route, files=files, data=data or {})


def post_audio(client: TestClient, route: str, path: Path, **fields: str) -> httpx.Response:
    return _post(client, route, {"file": (path.name, path.read_bytes())}, fields)


def _assert_next_good_request_works(client: TestClient) -> None:
    body = post_audio(client, "/transcribe", SHARED_AUDIO / "en" / "speech_recognition_english_123.wav").json()
    assert body["success"] is True and body["text"]


def _truncated_flac(tmp: Path) -> Path:
    data = JFK.read_bytes()
    out = tmp / "cut.flac"
    out.write_bytes(data[: len(data) // 3])
    return out


CASES = {
    "empty upload": (lambda tmp: ("empty.wav", b""), "empty", 400),
    "text named .wav": (lambda tmp: ("speech.wav", b"hello, this is not audio at all\n" * 20), "not a supported audio", 400),
    "truncated flac": (lambda tmp: ("cut.flac", _truncated_flac(tmp).read_bytes()), "truncated", 400),
}


@pytest.mark.parametrize("route", ["/transcribe", "/v1/audio/transcriptions"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_files(client: TestClient, tmp_path: Path, route: str, case: str) -> None:
    make, phrase, status = CASES[case]
    name, content = make(tmp_path)
    response = _post(client, route, {"file": (name, io.BytesIO(content))})
    assert response.status_code == status, response.text
    body = response.json()
    if route == "/transcribe":
        assert body["success"] is False and phrase in body["error"]["message"].lower()
    else:
        assert phrase in body["error"]["message"].lower() and body["error"]["type"] == "invalid_request_error"
    _assert_next_good_request_works(client)


@pytest.mark.parametrize("route", ["/transcribe", "/v1/audio/transcriptions"])
def test_missing_file_field(client: TestClient, route: str) -> None:
    response = _post(client, route, None, {"language": "en"})
    assert response.status_code == 400
    assert "'file' is required" in response.text
    _assert_next_good_request_works(client)


def test_unknown_response_format(client: TestClient) -> None:
    response = post_audio(client, "/v1/audio/transcriptions", JFK, response_format="docx")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "response_format"
    assert "json, text, srt, vtt, verbose_json" in response.json()["error"]["message"]


@pytest.mark.parametrize("route", ["/transcribe", "/v1/audio/transcriptions"])
def test_invalid_language(client: TestClient, route: str) -> None:
    response = post_audio(client, route, JFK, language="xx")
    assert response.status_code == 400
    assert "Unsupported language 'xx'" in response.text
    _assert_next_good_request_works(client)
