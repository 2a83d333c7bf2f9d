"""`create_app(settings, engine=...)`: the app runs on any engine satisfying `SpeechEngine`, loading no model; the
stand-in the HTTP-layer tests use (tests/fake_engine.py) is one."""

from __future__ import annotations

from fastapi.testclient import TestClient

from stt_engine.engine import Engine
from stt_engine.engine.protocol import SpeechEngine
from tests.fake_engine import FAKE_TEXT, FakeEngine
from tests.support import SHARED_AUDIO


def test_the_stand_in_and_the_real_engine_satisfy_the_protocol() -> None:
    assert isinstance(FakeEngine(), SpeechEngine)
    methods = {"prepare", "batch_key", "decode", "final_segments", "transcript"}
    assert methods <= set(dir(Engine))  # the attributes are set in __init__, which loads a model


def test_the_app_serves_the_given_engine(client: TestClient) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "fake-whisper"
    assert client.get("/health/ready").json()["ready"] is True


def test_a_transcription_goes_through_the_scheduler_to_the_given_engine(client: TestClient) -> None:
    path = SHARED_AUDIO / "en" / "jfk.flac"
    before = client.get("/health").json()["queue"]["completed"]
    body = client.post("/transcribe", files={"file": (path.name, path.read_bytes())}).json()
    assert body["success"] is True and FAKE_TEXT in body["text"] and body["duration"] == 11.0
    assert client.get("/health").json()["queue"]["completed"] == before + 1
