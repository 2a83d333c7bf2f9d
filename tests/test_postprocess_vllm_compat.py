"""vLLM's own wire behaviours, through the in-process stand-in (`vllm` fixture in tests/llm_fixtures.py).

llama.cpp (tests/test_postprocess_client.py) covers real generation; these cover what only vLLM does
and the failure paths: error envelopes, auth, retries, timeouts, splitting long transcripts.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from stt_engine.config import Settings
from stt_engine.errors import InvalidRequest
from stt_engine.postprocess import (
    LLMAuthError,
    LLMBadRequest,
    LLMClient,
    LLMContextLengthExceeded,
    LLMModelNotFound,
    LLMResponseError,
    LLMServerError,
    LLMUnreachable,
    PostProcessor,
    normalize_base_url,
)
from tests.llm_fixtures import VLLMStandIn, closed_port_url

HELLO = [{"role": "user", "content": "Say hello\n\nhello there friend"}]


def client_for(url: str, **kwargs: object) -> LLMClient:
    options: dict[str, object] = {"max_tokens": 32}
    options.update(kwargs)
    return LLMClient(url, **options)  # type: ignore[arg-type]


def processor_for(url: str, **settings: object) -> PostProcessor:
    processor = PostProcessor.from_settings(Settings(vllm_base_url=url, vllm_max_tokens=64, **settings))  # type: ignore[arg-type]
    assert processor.client is not None
    return processor


def test_base_url_spellings() -> None:
    for url in ("http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/", "h:8000",
                "http://h:8000/v1/chat/completions"):
        assert normalize_base_url(url) == "http://h:8000", url
    assert normalize_base_url("https://gw.example.com/llm/v1") == "https://gw.example.com/llm"


@pytest.mark.parametrize("suffix", ["", "/v1", "/v1/"])
async def test_health_with_empty_body_and_discovery(vllm: VLLMStandIn, suffix: str) -> None:
    client = client_for(vllm.base_url + suffix)
    health = await client.health()
    assert health["ok"] and health["reachable"] and health["model"] == vllm.behaviour.model
    assert [r["path"] for r in vllm.requests] == ["/health", "/v1/models"]
    assert await client.resolve_model() == vllm.behaviour.model
    assert await client.context_tokens() == 4096  # vLLM's max_model_len
    answer = await client.generate(HELLO)
    assert answer.text == "hello there friend" and answer.model == vllm.behaviour.model
    assert answer.usage and answer.usage["prompt_tokens"] > 0
    await client.aclose()


@pytest.mark.parametrize("shape", ["new", "old"])
async def test_unknown_model_is_a_clear_404(vllm: VLLMStandIn, shape: str) -> None:
    vllm.behaviour.error_shape = shape
    client = client_for(vllm.base_url, model="no/such-model")
    with pytest.raises(LLMModelNotFound) as caught:
        await client.generate(HELLO)
    assert "The model `no/such-model` does not exist" in caught.value.message
    assert caught.value.upstream_status == 404 and caught.value.upstream_type == "NotFoundError"
    assert "VLLM_MODEL" in caught.value.message
    assert len(vllm.generation_requests()) == 1  # a 4xx is never retried
    await client.aclose()


@pytest.mark.parametrize("shape", ["new", "old"])
async def test_both_error_envelopes_become_exceptions(vllm: VLLMStandIn, shape: str) -> None:
    vllm.behaviour.error_shape = shape
    vllm.behaviour.fail_next = 10
    client = client_for(vllm.base_url, max_retries=0)
    with pytest.raises(LLMServerError) as caught:
        await client.generate(HELLO)
    assert caught.value.upstream_status == 503
    assert "The engine is overloaded" in caught.value.message and "InternalServerError" in caught.value.message
    await client.aclose()


async def test_context_overflow_is_its_own_error(vllm: VLLMStandIn) -> None:
    vllm.behaviour.max_model_len = 64
    client = client_for(vllm.base_url)
    with pytest.raises(LLMContextLengthExceeded, match="maximum context length is 64"):
        await client.generate([{"role": "user", "content": "word " * 400}])
    assert len(vllm.generation_requests()) == 1
    await client.aclose()


async def test_retries_5xx_and_429_with_backoff(vllm: VLLMStandIn) -> None:
    client = client_for(vllm.base_url, max_retries=2)
    vllm.behaviour.fail_next = 2
    assert (await client.generate(HELLO)).text == "hello there friend"
    assert len(vllm.generation_requests()) == 3
    vllm.requests.clear()
    # Retry-After is honoured: twice 1.2 s, longer than the SDK's own backoff (0.5 s, then 1 s; at most 1.5 s in
    # all), so a lower bound tells them apart, and a lower bound cannot fail because the machine is slow
    vllm.behaviour.fail_next, vllm.behaviour.fail_status, vllm.behaviour.retry_after = 2, 429, "1.2"
    started = time.monotonic()
    assert (await client.generate(HELLO)).text == "hello there friend"
    assert time.monotonic() - started >= 2.4
    assert len(vllm.generation_requests()) == 3
    vllm.requests.clear()
    vllm.behaviour.fail_next, vllm.behaviour.fail_status = 5, 502
    with pytest.raises(LLMServerError):
        await client.generate(HELLO)
    assert len(vllm.generation_requests()) == 3  # 1 + max_retries, then give up
    await client.aclose()


async def test_api_key(vllm: VLLMStandIn) -> None:
    vllm.behaviour.api_key = "sk-secret"
    anonymous = client_for(vllm.base_url, model=vllm.behaviour.model)
    with pytest.raises(LLMAuthError, match="401.*Unauthorized.*VLLM_API_KEY"):
        await anonymous.generate(HELLO)
    assert len(vllm.generation_requests()) == 1
    health = await anonymous.health()
    assert not health["ok"] and health["reachable"] and health["error"]["code"] == "llm_auth_failed"
    keyed = client_for(vllm.base_url, api_key="sk-secret")
    assert (await keyed.generate(HELLO)).text == "hello there friend"
    assert vllm.requests[-1]["authorization"] == "Bearer sk-secret"
    await anonymous.aclose()
    await keyed.aclose()


async def test_streaming_chat_with_done_and_usage_chunk(vllm: VLLMStandIn) -> None:
    client = client_for(vllm.base_url)
    deltas = [delta async for delta in client.generate(HELLO, stream=True)]
    assert "".join(d.text for d in deltas) == "hello there friend"
    assert deltas[-2].finish_reason == "stop"
    assert deltas[-1].usage is not None and deltas[-1].text == ""  # usage-only chunk (choices: [])
    body = vllm.generation_requests()[-1]["json"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    await client.aclose()


async def test_streaming_completions_and_plain_completions(vllm: VLLMStandIn) -> None:
    client = client_for(vllm.base_url)
    text = "".join([d.text async for d in client.generate("Continue\n\nonce upon a time", stream=True)])
    assert text == "once upon a time"
    completion = await client.generate("Continue\n\nthe end")
    assert completion.text == "the end" and completion.finish_reason == "stop"
    assert [r["path"] for r in vllm.generation_requests()] == ["/v1/completions", "/v1/completions"]
    await client.aclose()


async def test_error_in_the_middle_of_a_stream(vllm: VLLMStandIn) -> None:
    vllm.behaviour.stream_error = True
    client = client_for(vllm.base_url)
    with pytest.raises(LLMResponseError, match="engine died"):
        async for _ in client.generate([{"role": "user", "content": "x\n\na b c d e f"}], stream=True):
            pass
    await client.aclose()


async def test_rediscovers_the_model_after_a_server_swap(vllm: VLLMStandIn) -> None:
    client = client_for(vllm.base_url)
    assert (await client.generate(HELLO)).model == vllm.behaviour.model
    vllm.behaviour.model = "meta-llama/Llama-3.1-8B-Instruct"
    assert (await client.generate(HELLO)).model == "meta-llama/Llama-3.1-8B-Instruct"
    await client.aclose()


async def test_wrong_endpoint_says_check_the_url(vllm: VLLMStandIn) -> None:
    client = client_for(vllm.base_url + "/not-openai", model="m")
    with pytest.raises(LLMBadRequest, match="VLLM_BASE_URL"):
        await client.generate(HELLO)
    await client.aclose()


# --- PostProcessor against vLLM ---------------------------------------------------------------------


async def test_postprocess_summarize(vllm: VLLMStandIn) -> None:
    vllm.behaviour.reply = lambda user: "<think>the user wants a summary</think>A short summary."
    processor = processor_for(vllm.base_url)
    result = await processor.run("We agreed to ship on Friday.", "summarize", None, "en")
    assert result["text"] == "A short summary." and result["error"] is None
    assert result["model"] == vllm.behaviour.model and result["task"] == "summarize" and result["chunks"] == 1
    await processor.aclose()


async def test_long_transcript_is_split_and_summaries_combined(vllm: VLLMStandIn) -> None:
    vllm.behaviour.max_model_len = 600
    calls: list[str] = []

    def reply(user: str) -> str:
        calls.append(user)
        return "COMBINED" if "[Part 1/" in user else f"summary {len(calls)}"

    vllm.behaviour.reply = reply
    processor = processor_for(vllm.base_url)
    text = " ".join(f"In meeting point {i} we talked about topic {i}." for i in range(120))
    result = await processor.run(text, "summarize", None, "en")
    assert result["error"] is None and result["text"] == "COMBINED"
    assert result["chunks"] == len(calls) >= 4
    assert all(len(body["json"]["messages"][-1]["content"]) < 2400 for body in vllm.generation_requests())
    await processor.aclose()


async def test_long_correction_is_split_and_joined_in_order(vllm: VLLMStandIn) -> None:
    vllm.behaviour.max_model_len = 600
    processor = processor_for(vllm.base_url)
    text = " ".join(f"문장 번호 {i} 입니다." for i in range(150))
    result = await processor.run(text, "correct", None, None)  # language guessed: Korean
    assert result["error"] is None and result["chunks"] > 1
    assert result["text"].split() == text.split()  # the echoing model changes nothing; nothing lost
    assert "띄어쓰기" in vllm.generation_requests()[0]["json"]["messages"][0]["content"]
    await processor.aclose()


async def test_a_correction_that_invents_content_is_rejected(vllm: VLLMStandIn) -> None:
    vllm.behaviour.reply = lambda user: "Here is a completely different text that the model made up on its own."
    processor = processor_for(vllm.base_url)
    original = "we will meet on monday to talk about the budget"
    result = await processor.run(original, "correct", None, "en")
    assert result["error"] is None and result["text"] == original
    assert any("left as transcribed" in warning for warning in result["warnings"])
    await processor.aclose()


async def test_part_too_long_for_the_server_is_split_again(vllm: VLLMStandIn) -> None:
    vllm.behaviour.max_model_len = 300
    processor = processor_for(vllm.base_url, vllm_context_tokens=None)
    assert processor.client is not None
    processor.client._cache.context_tokens = 3000  # pretend /v1/models over-reported the context
    processor.client._cache.models = [object()]  # type: ignore[list-item]
    processor.client._cache.model = vllm.behaviour.model
    text = " ".join(f"This is sentence {i}." for i in range(60))
    result = await processor.run(text, "correct", None, "en")
    assert result["error"] is None and result["text"].split() == text.split()
    assert result["chunks"] >= 2
    await processor.aclose()


async def test_slow_server_hits_the_timeout_and_reports_it(vllm: VLLMStandIn) -> None:
    vllm.behaviour.delay_s = 3.0
    processor = processor_for(vllm.base_url, vllm_timeout_s=0.5)
    result = await processor.run("Some transcript.", "summarize", None, "en")
    # llm_timeout is the 0.5 s budget firing: without it the 3 s reply would have come back as a summary
    assert result["text"] is None and result["error"]["code"] == "llm_timeout"
    assert "0.5" in result["error"]["message"]
    await processor.aclose()


async def test_server_errors_are_reported_not_raised(vllm: VLLMStandIn) -> None:
    vllm.behaviour.fail_next = 100
    processor = processor_for(vllm.base_url, vllm_max_retries=1)
    result = await processor.run("Some transcript.", "summarize", None, "en")
    assert result["text"] is None and result["error"]["code"] == "llm_server_error"
    assert result["error"]["upstream_status"] == 503 and "overloaded" in result["error"]["message"]
    await processor.aclose()


async def test_server_down_is_reported_quickly() -> None:
    processor = processor_for(closed_port_url(), vllm_max_retries=1)
    result = await processor.run("Some transcript.", "minutes", None, "ko")
    assert result["text"] is None and result["error"]["code"] == "llm_unreachable"
    health = await processor.health()
    assert health["configured"] and not health["ok"] and not health["reachable"]
    await processor.aclose()
    with pytest.raises(LLMUnreachable):
        await client_for(closed_port_url(), max_retries=0).models()


async def test_not_configured_and_caller_mistakes() -> None:
    processor = PostProcessor.from_settings(Settings(vllm_base_url=None))
    assert not processor.enabled
    result = await processor.run("text", "summarize", None, None)
    assert result["error"]["code"] == "llm_not_configured" and "VLLM_BASE_URL" in result["error"]["message"]
    assert (await processor.health())["configured"] is False
    with pytest.raises(InvalidRequest):
        await processor.run("text", "poem", None, None)
    with pytest.raises(InvalidRequest):
        await processor.run("text", "custom", None, None)
    assert (await processor.run("   ", "summarize", None, None))["text"] == ""


async def test_custom_task_and_prompts_dir(vllm: VLLMStandIn, tmp_path: Path) -> None:
    (tmp_path / "translate.txt").write_text("[system]\nTranslate into {instruction}.\n[user]\nText:\n\n{text}\n")
    processor = processor_for(vllm.base_url, prompts_dir=tmp_path)
    result = await processor.run("bonjour", "translate", "English", "fr")
    assert result["error"] is None and result["text"] == "bonjour"
    assert vllm.generation_requests()[-1]["json"]["messages"][0]["content"] == "Translate into English."
    result = await processor.run("hello", "custom", "Count the words.", "en")
    assert "Count the words." in vllm.generation_requests()[-1]["json"]["messages"][0]["content"]
    await processor.aclose()


async def test_completions_api_mode(vllm: VLLMStandIn) -> None:
    processor = processor_for(vllm.base_url)
    processor.api = "completions"
    result = await processor.run("We ship Friday.", "summarize", None, "en")
    assert result["error"] is None and vllm.generation_requests()[-1]["path"] == "/v1/completions"
    streamed = "".join([piece async for piece in processor.stream("We ship Friday.", "summarize", None, "en")])
    assert streamed.strip()
    await processor.aclose()
