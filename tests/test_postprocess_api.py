"""Post-processing through the HTTP API.

* `/v1/postprocess` in-process (the router on a bare app, against the vLLM stand-in): fast.
* End to end: a real `serve` process on the stand-in speech engine (what is said does not matter to the LLM glue;
  test_pii runs real speech through the real model and a real LLM), and a real LLM server (llama.cpp) that is
  then killed mid-test; and a stand-in slower than VLLM_TIMEOUT_S. In every case the raw transcript must come back
  intact with HTTP 200.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from stt_engine.api.errors import install_error_handlers
from stt_engine.api.postprocess_routes import router
from stt_engine.api.services import Services
from stt_engine.config import Settings
from stt_engine.postprocess import PostProcessor
from tests.fake_engine import FAKE_TEXT
from tests.llm_fixtures import LLAMA_ALIAS, VLLMStandIn, closed_port_url, start_llama_server
from tests.support import SHARED_AUDIO, post_audio, running_server

JFK = SHARED_AUDIO / "en" / "jfk.flac"
JFK_WORDS = FAKE_TEXT.lower()  # what the stand-in engine hears


def _app(processor: PostProcessor | None) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    services = Services.create(Settings())
    services.postprocessor = processor
    app.state.services = services
    return app


@pytest.fixture
async def api(vllm: VLLMStandIn) -> AsyncIterator[httpx.AsyncClient]:
    processor = PostProcessor.from_settings(Settings(vllm_base_url=vllm.base_url + "/v1", vllm_max_tokens=64))
    transport = httpx.ASGITransport(app=_app(processor))
    async with httpx.AsyncClient(transport=transport, base_url="http://stt") as client:
        yield client
    await processor.aclose()


async def test_postprocess_route(api: httpx.AsyncClient, vllm: VLLMStandIn) -> None:
    response = await api.post("/v1/postprocess", json={"text": "We ship on Friday.", "task": "summarize"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["text"] == "We ship on Friday." and body["error"] is None
    assert body["task"] == "summarize" and body["model"] == vllm.behaviour.model

    response = await api.post("/v1/postprocess", json={"text": "x", "task": "custom", "prompt": "Shout it."})
    assert response.status_code == 200
    assert "Shout it." in vllm.generation_requests()[-1]["json"]["messages"][0]["content"]


async def test_postprocess_route_caller_mistakes(api: httpx.AsyncClient) -> None:
    for body in ({"text": "x", "task": "poem"}, {"text": "x", "task": "custom"}):
        response = await api.post("/v1/postprocess", json=body)
        assert response.status_code == 400, response.text
    assert (await api.post("/v1/postprocess", json={"task": "summarize"})).status_code in (400, 422)


async def test_postprocess_route_llm_failures_are_200_with_error(vllm: VLLMStandIn) -> None:
    down = PostProcessor.from_settings(Settings(vllm_base_url=closed_port_url(), vllm_max_retries=0))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app(down)), base_url="http://stt") as client:
        response = await client.post("/v1/postprocess", json={"text": "hello", "task": "correct"})
        assert response.status_code == 200
        assert response.json()["text"] is None and response.json()["error"]["code"] == "llm_unreachable"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app(None)), base_url="http://stt") as client:
        assert (await client.post("/v1/postprocess", json={"text": "hi", "task": "correct"})).status_code == 503


# --- end to end through `stt-engine serve` ----------------------------------------------------------


def _assert_transcript_intact(body: dict[str, object]) -> None:
    text = str(body["text"]).lower()
    assert JFK_WORDS in text.replace(",", ""), text


def _llm_health(base: str) -> dict:
    """/health once the server has probed the LLM server (`ok` is None until then: the probe runs beside startup,
    and a server without a model to load is ready before it)."""
    deadline = time.monotonic() + 120
    while (health := httpx.get(base + "/health", timeout=30).json())["llm"]["ok"] is None:
        assert time.monotonic() < deadline, health
        time.sleep(0.1)
    return health


def test_transcribe_with_llm_up_then_killed() -> None:
    """One request gives transcript + summary; after the LLM server dies, the transcript still comes back."""
    with start_llama_server() as llama, running_server(
        {"VLLM_BASE_URL": llama.base_url + "/v1", "VLLM_MAX_TOKENS": "24", "VLLM_MAX_RETRIES": "1"}, engine="fake"
    ) as base:
        health = _llm_health(base)
        assert health["llm"]["ok"] and health["llm"]["model"] == LLAMA_ALIAS

        response = post_audio(base, "/transcribe", JFK, postprocess="summarize")
        assert response.status_code == 200, response.text
        body = response.json()
        _assert_transcript_intact(body)
        post = body["postprocess"]
        assert post["task"] == "summarize" and post["model"] == LLAMA_ALIAS and post["error"] is None
        assert isinstance(post["text"], str)

        response = post_audio(base, "/v1/audio/transcriptions", JFK, postprocess="correct", response_format="json")
        assert response.status_code == 200, response.text
        _assert_transcript_intact(response.json())
        assert response.json()["postprocess"]["task"] == "correct"

        assert post_audio(base, "/transcribe", JFK, postprocess="poem").status_code == 400

        llama.stop()  # the LLM server goes away mid-test

        response = post_audio(base, "/transcribe", JFK, postprocess="summarize")
        assert response.status_code == 200, response.text
        body = response.json()
        _assert_transcript_intact(body)
        assert body["postprocess"]["text"] is None
        assert body["postprocess"]["error"]["code"] == "llm_unreachable"

        health = httpx.get(base + "/health", timeout=30)
        assert health.status_code == 200 and health.json()["llm"]["reachable"] is False


def test_transcribe_with_slow_llm_times_out(vllm: VLLMStandIn) -> None:
    vllm.behaviour.delay_s = 30.0
    vllm.behaviour.health_delay_s = 30.0
    with running_server({"VLLM_BASE_URL": vllm.base_url, "VLLM_TIMEOUT_S": "1.5"}, engine="fake") as base:
        response = post_audio(base, "/transcribe", JFK, postprocess="summarize")
        assert response.status_code == 200, response.text
        body = response.json()
        _assert_transcript_intact(body)
        # llm_timeout is the 1.5 s budget firing; without it the 30 s reply would come back as a summary
        assert body["postprocess"]["text"] is None and body["postprocess"]["error"]["code"] == "llm_timeout"

        response = post_audio(base, "/v1/audio/transcriptions", JFK, postprocess="minutes")
        assert response.status_code == 200 and response.json()["postprocess"]["error"]["code"] == "llm_timeout"
        _assert_transcript_intact(response.json())

        for _ in range(3):  # a hanging LLM server (30 s) never holds up the STT health check: it answers at all
            health = httpx.get(base + "/health", timeout=15)  # within half the hang, however loaded the machine
            assert health.status_code == 200
            assert health.json()["llm"]["ok"] is not True
