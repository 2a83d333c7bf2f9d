"""The request layer's joints: the typed `Services` object, the shared form parsers, the Bearer-token parser and the
response models built on the `openai` SDK's types. In-process, on the stand-in engine: no model."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from openai.types import audio as openai_audio
from pydantic import ValidationError

from stt_engine.api import schemas
from stt_engine.api.admission import Intake
from stt_engine.api.forms import parse_granularities, parse_speaker_names
from stt_engine.api.responses import transcript_response
from stt_engine.api.security import bearer_token
from stt_engine.api.services import RealtimeSessions, Services
from stt_engine.api.streaming import sse_event
from stt_engine.config import Settings
from stt_engine.errors import InvalidRequest
from stt_engine.formats import ResponseFormat
from stt_engine.types import Segment, Transcript, Word
from tests.support import SHARED_AUDIO


def test_services_exist_before_the_first_request(client: TestClient) -> None:
    services = client.app.state.services  # type: ignore[attr-defined]
    assert isinstance(services, Services)
    assert isinstance(services.intake, Intake) and isinstance(services.realtime, RealtimeSessions)
    assert services.engine is not None and services.scheduler is not None and services.load_status == "ok"
    assert services.jobs is not None and services.postprocessor is not None
    services.metrics.connection_limit.set(4321)  # what cli's serve sets: /metrics reads the same registry
    assert " 4321.0\n" in client.get("/metrics").text


def test_the_intake_is_the_one_the_routes_use(client: TestClient) -> None:
    services = client.app.state.services  # type: ignore[attr-defined]
    intake = services.intake
    path = SHARED_AUDIO / "en" / "jfk.flac"
    body = client.post("/v1/audio/transcriptions", files={"file": (path.name, path.read_bytes())},
                       data={"timestamp_granularities[]": "word", "response_format": "verbose_json"}).json()
    assert body["words"] and services.intake is intake and intake.count == 0 and intake.seconds == 0.0


def test_form_groups_are_read_from_the_form(client: TestClient) -> None:
    path = SHARED_AUDIO / "en" / "jfk.flac"
    answer = client.post("/v1/audio/transcriptions", files={"file": (path.name, path.read_bytes())},
                         data={"channels": "sideways"})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_channels"
    answer = client.post("/transcribe", files={"file": (path.name, path.read_bytes())}, data={"redact": "x" * 11})
    assert answer.status_code in (400, 422)  # the field's bound, in the original contract's error shape
    assert answer.json()["success"] is False


def test_realtime_session_counts() -> None:
    sessions = RealtimeSessions()
    sessions.opened("key:a")
    sessions.opened("key:a")
    sessions.opened("addr:b")
    assert sessions.open == 3 and sessions.held_by("key:a") == 2
    sessions.closed("key:a")
    sessions.closed("key:a")
    assert sessions.held_by("key:a") == 0 and "key:a" not in sessions.by_holder and sessions.open == 1


def test_granularities_one_parser() -> None:
    assert parse_granularities(None) is False
    assert parse_granularities(["segment"]) is False
    assert parse_granularities(["segment,word"]) is True
    assert parse_granularities(["word", " segment "]) is True
    with pytest.raises(InvalidRequest) as refused:
        parse_granularities(["sentence"])
    assert refused.value.code == "invalid_timestamp_granularities"


def test_speaker_names() -> None:
    assert parse_speaker_names(["Kim, Lee", "Park"]) == ["Kim", "Lee", "Park"]
    assert parse_speaker_names([" , "]) is None


@pytest.mark.parametrize(("header", "token"), [
    ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer ", None), (None, None), ("", None),
])
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def _transcript() -> Transcript:
    words = [Word(0.0, 0.5, " Hello", 0.9), Word(0.5, 1.0, " there", 0.8)]
    segment = Segment(0, 0, 0.0, 1.0, " Hello there", [1, 2], -0.1, 1.2, 0.01, words, 0.0)
    return Transcript(" Hello there", "en", 0.9, 1.0, 1.0, [segment])


@pytest.mark.parametrize(("fmt", "ours", "sdk"), [
    (ResponseFormat.json, schemas.TranscriptionJson, openai_audio.Transcription),
    (ResponseFormat.verbose_json, schemas.TranscriptionVerbose, openai_audio.TranscriptionVerbose),
    (ResponseFormat.diarized_json, schemas.TranscriptionDiarized, openai_audio.TranscriptionDiarized),
])
def test_response_models_are_the_sdks_types(fmt: ResponseFormat, ours: type, sdk: type) -> None:
    assert issubclass(ours, sdk)
    body = json.loads(transcript_response(_transcript(), fmt, include_words=True, postprocess=None).body)
    ours.model_validate(body)  # our fields, and no others
    sdk.model_validate(body)
    with pytest.raises(ValidationError):
        ours.model_validate(body | {"surprise": 1})


def test_sse_framing() -> None:
    assert sse_event({"type": "transcript.text.delta", "delta": "안녕"}) == (
        'data: {"type": "transcript.text.delta", "delta": "안녕"}\n\n'.encode()
    )


@pytest.mark.parametrize("fmt", ["json", "verbose_json", "diarized_json"])
def test_stream_events_are_the_sdks_types(client: TestClient, fmt: str) -> None:
    path = SHARED_AUDIO / "en" / "jfk.flac"
    answer = client.post("/v1/audio/transcriptions", files={"file": (path.name, path.read_bytes())},
                         data={"stream": "true", "response_format": fmt, "timestamp_granularities[]": "word"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[len("data: "):]) for line in answer.text.split("\n\n") if line.startswith("data: ")]
    models = {"transcript.text.delta": schemas.StreamDelta, "transcript.text.segment": schemas.StreamSegment,
              "transcript.text.done": schemas.StreamDone}
    for event in events:
        models[event["type"]].model_validate(event)
    assert events[-1]["type"] == "transcript.text.done"
    assert any(e["type"] == "transcript.text.delta" for e in events)  # (they add up: test_streaming, real model)
    assert any(e["type"] == "transcript.text.segment" for e in events) == (fmt == "diarized_json")


def test_sigterm_starts_draining_once() -> None:
    closed: list[tuple[float, bool]] = []
    done = threading.Event()

    class Scheduler:
        def close(self, grace: float, keep_admitting: Callable[[], bool]) -> None:
            closed.append((grace, keep_admitting()))
            done.set()

    services = Services.create(Settings(shutdown_grace_s=7))
    services.start_draining()  # no scheduler yet (the model still loads): nothing to drain
    assert not services.draining
    services.scheduler = Scheduler()  # type: ignore[assignment]
    services.work_in_flight.count = 1
    services.start_draining()
    services.start_draining()  # a second signal changes nothing
    assert done.wait(5) and services.draining and closed == [(7, True)]
