"""The original contract and the OpenAI routes, end to end on the real model and real clips; the routes that do not
look at what was said (model list, model-name mapping, OpenAPI) in-process on the stand-in engine (`client`)."""

from __future__ import annotations

import ctranslate2
import httpx
import pytest
from fastapi.testclient import TestClient

from tests.fake_engine import FAKE_TEXT
from tests.support import SHARED_AUDIO, clip, error_rate, post_audio

JFK = SHARED_AUDIO / "en" / "jfk.flac"


def test_health_reports_model(server: str) -> None:
    body = httpx.get(server + "/health").json()
    assert body["status"] == "ok"
    # WHISPER_DEVICE=auto: the GPU when there is one (float16), else the CPU (int8)
    on_gpu = ctranslate2.get_cuda_device_count() > 0
    assert body["device"] == ("cuda" if on_gpu else "cpu")
    assert body["compute_type"] == ("float16" if on_gpu else "int8")
    assert "bundled" in body["model"] and body["model_path"]


def test_transcribe_original_contract_jfk(server: str) -> None:
    response = post_audio(server, "/transcribe", JFK)
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True and body["language"] == "en"
    assert error_rate(body["text"], clip("en/jfk.flac")) <= 0.10
    assert body["duration"] == pytest.approx(11.0, abs=0.1)


def test_transcribe_with_language_field(server: str) -> None:
    body = post_audio(server, "/transcribe", SHARED_AUDIO / "ko" / "ett_pfi00017.wav", language="ko").json()
    assert body["success"] is True and body["language"] == "ko"
    assert error_rate(body["text"], clip("ko/ett_pfi00017.wav")) <= 0.2
    assert not body["text"].startswith(" ") and "  " not in body["text"]


@pytest.mark.parametrize(
    ("file", "language"),
    [
        ("en/jfk.flac", "en"),
        ("ko/ett_lmy02132.wav", "ko"),
        ("ja/picovoice_test_ja.wav", "ja"),
        ("es/picovoice_test_es.wav", "es"),
        ("de/picovoice_test_de.wav", "de"),
        ("zh/aishell_BAC009S0724W0121.wav", "zh"),
    ],
)
def test_language_detection(server: str, file: str, language: str) -> None:
    body = post_audio(server, "/transcribe", SHARED_AUDIO / file).json()
    assert body["language"] == language, body


@pytest.mark.parametrize("file", [c.file for c in __import__("tests.support").support.clips("none")])
def test_no_speech_gives_empty_text(server: str, file: str) -> None:
    body = post_audio(server, "/v1/audio/transcriptions", SHARED_AUDIO / file, response_format="json").json()
    assert len(body["text"].split()) <= 2, body  # near-empty: no invented sentences


def test_models_endpoint(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    ids = [m["id"] for m in body["data"]]
    assert body["object"] == "list" and "whisper-1" in ids


def test_any_model_name_maps_to_loaded_model(client: TestClient) -> None:
    response = client.post("/v1/audio/transcriptions", files={"file": (JFK.name, JFK.read_bytes())},
                           data={"model": "gpt-4o-transcribe"})
    assert response.status_code == 200 and FAKE_TEXT in response.json()["text"]


def test_translation_route_gives_english(server: str) -> None:
    response = post_audio(server, "/v1/audio/translations", SHARED_AUDIO / "de" / "picovoice_test_de.wav")
    assert response.status_code == 200
    text = response.json()["text"]
    assert text and text.isascii(), text


def test_openapi_docs(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/transcribe", "/v1/audio/transcriptions", "/v1/audio/translations", "/v1/models", "/health"} <= set(paths)


def test_tenth_of_a_second_gives_no_invented_text(server: str, tmp_path) -> None:
    """Peers answer a 0.1 s clip with an invented "you."; we answer with nothing."""
    import wave

    import numpy as np

    from stt_engine.audio import decode

    samples = decode(str(JFK)).samples[: int(0.12 * 16000)]
    path = tmp_path / "tiny.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes((samples * 32767).astype(np.int16).tobytes())
    response = post_audio(server, "/v1/audio/transcriptions", path)
    assert response.status_code == 200 and response.json()["text"] == ""
