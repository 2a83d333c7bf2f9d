"""`stream=true`: Server-Sent Events in OpenAI's shape, read with the official SDK, on real speech."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import OpenAI

from tests.support import SHARED_AUDIO, clip, error_rate, post_audio, running_server

LONG_EN = "en/en_longform_librispeech_librivox_concat.wav"


def _sdk(base: str) -> OpenAI:
    return OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=600)


def test_sdk_stream_gives_early_deltas_that_add_up(server: str) -> None:
    if not (SHARED_AUDIO / LONG_EN).is_file():
        pytest.skip(f"{LONG_EN} is only in ../shared/audio")
    c = clip(LONG_EN)
    started = time.perf_counter()
    whole = post_audio(server, "/v1/audio/transcriptions", c.path, language="en").json()["text"]
    whole_seconds = time.perf_counter() - started

    started = time.perf_counter()
    first_delta: float | None = None
    deltas: list[str] = []
    done = None
    with c.path.open("rb") as handle:
        stream = _sdk(server).audio.transcriptions.create(
            model="whisper-1", file=handle, language="en", stream=True
        )
        for event in stream:
            if event.type == "transcript.text.delta":
                first_delta = first_delta or time.perf_counter() - started
                deltas.append(event.delta)
            elif event.type == "transcript.text.done":
                done = event.text
    assert done is not None and len(deltas) >= 3, deltas
    assert "".join(deltas) == done == whole
    assert error_rate(done, c) < 0.1
    print(f"first delta after {first_delta:.2f} s; whole file {whole_seconds:.2f} s")
    assert first_delta is not None and first_delta < 0.5 * whole_seconds


def test_stream_on_the_original_route_ends_with_the_original_body(server: str) -> None:
    c = clip("ko/picovoice_test_ko.wav")
    with c.path.open("rb") as handle:
        response = httpx.post(
            server + "/transcribe", files={"file": (c.path.name, handle)}, data={"language": "ko", "stream": "true"},
            timeout=120,
        )
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    done = events[-1]
    assert done["type"] == "transcript.text.done" and done["success"] is True and done["language"] == "ko"
    assert "".join(e["delta"] for e in events[:-1]) == done["text"] and done["segments"]
    assert error_rate(done["text"], c) < 0.3


def test_bad_input_is_refused_before_the_stream_starts(server: str) -> None:
    response = httpx.post(
        server + "/v1/audio/transcriptions", files={"file": ("x.wav", b"not audio at all")},
        data={"stream": "true"}, timeout=30,
    )
    assert response.status_code == 400 and response.json()["error"]["code"]


@pytest.fixture(scope="module")
def impatient_server() -> Iterator[str]:
    with running_server({"REQUEST_TIMEOUT_BASE_S": "0.2", "REQUEST_TIMEOUT_RTF": "0.001"}) as base:
        yield base


def test_an_error_mid_stream_ends_with_an_error_event(impatient_server: str) -> None:
    c = clip("en/jfk.flac")
    with c.path.open("rb") as handle, pytest.raises(openai.APIError, match="did not finish"):
        for _ in _sdk(impatient_server).audio.transcriptions.create(model="whisper-1", file=handle, stream=True):
            pass
