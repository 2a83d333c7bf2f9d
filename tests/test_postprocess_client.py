"""The LLM client and PostProcessor against a real OpenAI-compatible server: llama.cpp with SmolLM2-135M.

The model is tiny, so wording is never asserted, only the protocol and the result's structure.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stt_engine.config import Settings
from stt_engine.postprocess import LLMClient, LLMContextLengthExceeded, PostProcessor
from stt_engine.postprocess.cli import register
from tests.llm_fixtures import LLAMA_ALIAS, LLAMA_CONTEXT, LlamaServer

JFK = "And so, my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
SAY_HI = [{"role": "user", "content": "Say hi."}]


@pytest.fixture
async def client(llama_server: LlamaServer) -> AsyncIterator[LLMClient]:
    llm = LLMClient(llama_server.base_url + "/v1", max_tokens=8, temperature=0.0)
    yield llm
    await llm.aclose()


async def test_model_discovery_and_context(client: LLMClient) -> None:
    models = await client.models()
    assert [m.id for m in models] == [LLAMA_ALIAS]
    assert models[0].max_model_len == LLAMA_CONTEXT  # llama.cpp reports it as meta.n_ctx
    assert await client.resolve_model() == LLAMA_ALIAS
    health = await client.health()
    assert health["ok"] and health["model"] == LLAMA_ALIAS and health["latency_ms"] >= 0


async def test_chat_and_completion(client: LLMClient) -> None:
    chat = await client.generate(SAY_HI)
    assert isinstance(chat.text, str) and chat.text.strip()
    assert chat.model == LLAMA_ALIAS and chat.finish_reason in ("stop", "length")
    assert chat.usage and 0 < chat.usage["completion_tokens"] <= 8
    completion = await client.generate("The capital of France is")
    assert completion.text.strip() and completion.usage and completion.usage["completion_tokens"] <= 8


async def test_streaming(client: LLMClient) -> None:
    deltas = [delta async for delta in client.generate(SAY_HI, stream=True)]
    assert "".join(d.text for d in deltas).strip()
    assert any(d.finish_reason for d in deltas)
    assert deltas[-1].usage is not None  # include_usage: llama.cpp also sends a usage-only last chunk
    pieces = [delta.text async for delta in client.generate("One, two, three,", stream=True)]
    assert len(pieces) > 1 and "".join(pieces).strip()


async def test_context_overflow_from_llama_cpp(client: LLMClient) -> None:
    with pytest.raises(LLMContextLengthExceeded, match="context size"):
        await client.generate([{"role": "user", "content": "hello " * 3000}])


async def test_postprocessor_summarize_and_correct(llama_server: LlamaServer) -> None:
    processor = PostProcessor.from_settings(Settings(vllm_base_url=llama_server.base_url, vllm_max_tokens=24))
    result = await processor.run(JFK, "summarize", None, "en")
    assert result["error"] is None and isinstance(result["text"], str)
    assert result["task"] == "summarize" and result["model"] == LLAMA_ALIAS and result["chunks"] == 1
    assert result["usage"]["completion_tokens"] > 0
    result = await processor.run("ask not what your country can do for you", "correct", None, "en")
    assert result["error"] is None and result["text"]  # the model's, or the original kept by the guard
    result = await processor.run(JFK, "custom", "List the nouns.", "en")
    assert result["error"] is None and result["text"] is not None
    health = await processor.health()
    assert health["configured"] and health["ok"]
    await processor.aclose()


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="stt-engine")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_llm_check_and_postprocess(llama_server: LlamaServer, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli("llm-check", "--base-url", llama_server.base_url + "/v1") == 0
    out = capsys.readouterr().out
    assert LLAMA_ALIAS in out and "context 2048" in out and out.strip().endswith("OK")

    transcript = tmp_path / "meeting.txt"
    transcript.write_text(JFK, encoding="utf-8")
    assert _cli("postprocess", "--task", "summarize", str(transcript), "--json",
                "--base-url", llama_server.base_url) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "summarize" and result["error"] is None and result["model"] == LLAMA_ALIAS

    assert _cli("postprocess", "--task", "summarize", "--stream", str(transcript),
                "--base-url", llama_server.base_url) == 0
    assert capsys.readouterr().out.strip()

    assert _cli("postprocess", "--task", "custom", str(transcript), "--base-url", llama_server.base_url) == 2
    assert "needs an instruction" in capsys.readouterr().err
