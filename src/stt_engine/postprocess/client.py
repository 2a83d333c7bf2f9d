"""Async client for an OpenAI-compatible LLM server: vLLM first, and also llama.cpp, TGI and OpenAI.

Why not the `openai` package: we need control over the things that differ between these servers
(the base URL written with or without ``/v1``, vLLM's two error envelopes, ``/health`` that may return
an empty body or not exist, context size reported under different names) and over retries, which must
never repeat a request the server rejected as wrong (4xx) nor stretch the caller's time budget.

The `httpx.AsyncClient` is created lazily for the running event loop, so one `LLMClient` can be built
at import or start-up time and used from whichever loop serves requests (tests run several loops).
"""

from __future__ import annotations

import asyncio
import codecs
import json
import random
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from stt_engine.postprocess.errors import (
    LLMError,
    LLMModelNotFound,
    LLMResponseError,
    LLMTimeout,
    LLMUnreachable,
    error_from_response,
    extract_error,
)

if TYPE_CHECKING:
    from stt_engine.config import Settings

Message = dict[str, str]

_USER_AGENT = "stt-engine-postprocess"
_SUFFIXES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1")
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
# Response headers that describe the body as sent, not the decoded bytes we keep after a capped read.
_WIRE_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})
# Keys under which servers report a model's context size in /v1/models (vLLM, llama.cpp, others).
_CONTEXT_KEYS = ("max_model_len", "context_length", "context_window", "max_context_length", "n_ctx")


def normalize_base_url(url: str) -> str:
    """The server root, whichever way the user wrote it.

    ``host:8000``, ``http://host:8000``, ``http://host:8000/`` and ``http://host:8000/v1`` all mean the
    same server; a path prefix in front of ``/v1`` (a reverse proxy) is kept.
    """
    root = url.strip().rstrip("/")
    if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", root):
        root = "http://" + root
    for suffix in _SUFFIXES:
        if root.endswith(suffix):
            root = root[: -len(suffix)]
            break
    return root.rstrip("/")


@dataclass(frozen=True)
class ModelInfo:
    """One entry of ``GET /v1/models``; `max_model_len` is None when the server does not say."""

    id: str
    max_model_len: int | None = None
    owned_by: str | None = None


@dataclass(frozen=True)
class Completion:
    """The result of a non-streaming chat or text completion."""

    text: str
    model: str
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None


@dataclass(frozen=True)
class StreamDelta:
    """One piece of a streamed answer; the last ones may carry only `finish_reason` or `usage`."""

    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    model: str | None = None


def _context_of(entry: dict[str, Any]) -> int | None:
    for container in (entry, entry.get("meta") or {}):
        if not isinstance(container, dict):
            continue
        for key in _CONTEXT_KEYS:
            value = container.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def parse_models(payload: Any) -> list[ModelInfo]:
    """Models from a ``/v1/models`` body (OpenAI's ``{"data": [...]}``, tolerant of extras)."""
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        raise LLMResponseError(f"/v1/models did not return a model list: {str(payload)[:200]}")
    models = []
    for entry in data:
        if isinstance(entry, dict) and isinstance(entry.get("id"), str):
            models.append(ModelInfo(entry["id"], _context_of(entry), entry.get("owned_by")))
    return models


def _choice_text(choice: dict[str, Any], *, chat: bool, delta: bool) -> str:
    if not chat:
        return str(choice.get("text") or "")
    message = choice.get("delta" if delta else "message") or {}
    return str(message.get("content") or "") if isinstance(message, dict) else ""


@dataclass
class _Cache:
    """What we learned from /v1/models; refreshed when the server says the model is gone."""

    model: str | None = None
    context_tokens: int | None = None
    models: list[ModelInfo] = field(default_factory=list)


class LLMClient:
    """Talks to one OpenAI-compatible server. Safe to share between concurrent tasks of one loop."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        max_retries: int = 2,
        max_tokens: int = 1024,
        temperature: float = 0.2,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self.base_url = normalize_base_url(base_url)
        self.api_key = api_key or None
        self.configured_model = model or None
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_retries = max_retries
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._transport = transport
        self.max_response_bytes = max_response_bytes
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._cache = _Cache(model=self.configured_model)
        self._discover_lock: asyncio.Lock | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> LLMClient:
        """A client for `settings.vllm_base_url`; the caller checks that it is set."""
        if not settings.vllm_base_url:
            raise ValueError("VLLM_BASE_URL is not set")
        return cls(
            settings.vllm_base_url,
            api_key=settings.vllm_api_key,
            model=settings.vllm_model,
            timeout_s=settings.vllm_timeout_s,
            connect_timeout_s=settings.vllm_connect_timeout_s,
            max_retries=settings.vllm_max_retries,
            max_tokens=settings.vllm_max_tokens,
            temperature=settings.vllm_temperature,
            max_response_bytes=settings.vllm_max_response_bytes,
        )

    # --- plumbing ---------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        """Absolute URL of an endpoint given as ``/v1/...`` or ``/health``."""
        return self.base_url + path

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client.is_closed or self._client_loop is not loop:
            headers = {"User-Agent": _USER_AGENT}
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
            self._client = httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s),
                transport=self._transport,
                limits=httpx.Limits(max_connections=32, max_keepalive_connections=8),
            )
            self._client_loop = loop
            self._discover_lock = asyncio.Lock()
        return self._client

    async def aclose(self) -> None:
        """Close the connection pool (only if it belongs to the running loop; others are gone already)."""
        client, self._client = self._client, None
        if client is not None and not client.is_closed:
            try:
                if self._client_loop is asyncio.get_running_loop():
                    await client.aclose()
            except RuntimeError:
                pass

    def _backoff(self, attempt: int, error: LLMError) -> float:
        delay = min(self.backoff_max_s, self.backoff_base_s * 2.0**attempt) * (0.5 + random.random() / 2)
        if error.retry_after is not None:
            delay = max(delay, min(float(error.retry_after), self.backoff_max_s))
        return float(delay)

    def _transport_error(self, exc: Exception, url: str) -> LLMError:
        if isinstance(exc, httpx.ConnectTimeout):
            return LLMUnreachable(f"Could not connect to the LLM server at {url} within {self.connect_timeout_s:g} s")
        if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
            return LLMTimeout(f"The LLM server at {url} did not answer within {self.timeout_s:g} s")
        reason = str(exc) or type(exc).__name__
        return LLMUnreachable(f"Could not reach the LLM server at {url}: {reason}")

    async def _send(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        stream: bool = False,
        retries: int | None = None,
        timeout_s: float | None = None,
    ) -> httpx.Response:
        """One request, retried on connection errors, 429 and 5xx - never on other 4xx or a read timeout.

        A read timeout is not retried because the caller's wait must stay bounded by `timeout_s`. With
        `stream=True` the response is returned open (status already checked); the caller closes it.
        """
        url = self.url(path)
        client = self._http()
        attempts = (self.max_retries if retries is None else retries) + 1
        limit = self.timeout_s if timeout_s is None else timeout_s
        for attempt in range(attempts):
            try:
                request = client.build_request(
                    method, url, json=body, timeout=httpx.Timeout(limit, connect=min(self.connect_timeout_s, limit))
                )
                async with asyncio.timeout(None if stream else limit + self.connect_timeout_s):
                    # Always opened as a stream, so no body is read past VLLM_MAX_RESPONSE_BYTES.
                    response = await client.send(request, stream=True)
                    if response.status_code < 400 and stream:
                        return response
                    try:
                        raw = await self._read_capped(response, url, cut=response.status_code >= 400)
                    finally:
                        await response.aclose()
                    if response.status_code < 400:
                        headers = [(k, v) for k, v in response.headers.items() if k.lower() not in _WIRE_HEADERS]
                        return httpx.Response(response.status_code, headers=headers, content=raw, request=request)
                error = error_from_response(response.status_code, raw, dict(response.headers), url)
            except (httpx.TransportError, TimeoutError) as exc:
                error = self._transport_error(exc, url)
            if not error.retryable or attempt + 1 >= attempts:
                raise error
            await asyncio.sleep(self._backoff(attempt, error))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _read_capped(self, response: httpx.Response, url: str, *, cut: bool = False) -> bytes:
        """The (decoded) body, at most `max_response_bytes` of it: past that, an error, or with `cut` (error
        bodies, only quoted) the bytes read so far. An upstream that never stops sending costs bounded memory."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.max_response_bytes:
                if cut:
                    break
                raise self._too_large(url)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, url: str) -> LLMResponseError:
        return LLMResponseError(
            f"{url} sent more than {self.max_response_bytes} bytes; the response was dropped (VLLM_MAX_RESPONSE_BYTES)"
        )

    async def _capped_lines(self, response: httpx.Response, url: str) -> AsyncIterator[str]:
        """`response.aiter_lines()` with the whole stream bounded by `max_response_bytes`, including a single
        line that never ends."""
        decoder = codecs.getincrementaldecoder(response.encoding or "utf-8")(errors="replace")
        size = 0
        pending: list[str] = []
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.max_response_bytes:
                raise self._too_large(url)
            text = decoder.decode(chunk)
            while (end := text.find("\n")) >= 0:
                pending.append(text[:end])
                yield "".join(pending).rstrip("\r")
                pending = []
                text = text[end + 1 :]
            if text:
                pending.append(text)
        tail = "".join(pending) + decoder.decode(b"", final=True)
        if tail:
            yield tail.rstrip("\r")

    async def _json(self, method: str, path: str, body: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        response = await self._send(method, path, body=body, **kwargs)
        try:
            payload = response.json()
        except ValueError as exc:
            raise LLMResponseError(
                f"{self.url(path)} returned HTTP {response.status_code} that is not JSON: {response.text[:200]!r}"
            ) from exc
        message, kind = extract_error(payload)
        if message is not None and "choices" not in payload and "data" not in payload:
            # Some proxies wrap failures in a 200; treat them like the error they are.
            raise LLMResponseError(f"LLM server returned an error: {message}", upstream_type=kind)
        return payload

    # --- discovery --------------------------------------------------------------------------------

    async def models(self, *, retries: int | None = None, timeout_s: float | None = None) -> list[ModelInfo]:
        """``GET /v1/models``: what the server serves, with context sizes when it reports them."""
        models = parse_models(await self._json("GET", "/v1/models", retries=retries, timeout_s=timeout_s))
        self._remember(models)
        return models

    def _remember(self, models: list[ModelInfo]) -> None:
        self._cache.models = models
        if self.configured_model:
            self._cache.model = self.configured_model
        elif models:
            self._cache.model = models[0].id
        match = next((m for m in models if m.id == self._cache.model), None)
        self._cache.context_tokens = match.max_model_len if match else None

    async def resolve_model(self, *, refresh: bool = False) -> str:
        """The model to ask: `VLLM_MODEL`, or the first one the server lists (looked up once, cached)."""
        if self._cache.model and not refresh:
            return self._cache.model
        self._http()
        assert self._discover_lock is not None
        async with self._discover_lock:
            if not (self._cache.model and not refresh):
                if refresh and not self.configured_model:
                    self._cache.model = None
                await self.models()
            if not self._cache.model:
                raise LLMModelNotFound(f"The LLM server at {self.base_url} lists no models (GET /v1/models)")
            return self._cache.model

    async def context_tokens(self) -> int | None:
        """The resolved model's context window, when /v1/models reports it (vLLM's `max_model_len`)."""
        if not self._cache.models:
            await self.models()
        return self._cache.context_tokens

    # --- generation -------------------------------------------------------------------------------

    def _body(
        self, model: str, max_tokens: int | None, temperature: float | None, extra: dict[str, Any] | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": self.max_tokens if max_tokens is None else max_tokens,
            "temperature": self.temperature if temperature is None else temperature,
        }
        if extra:
            body.update(extra)
        return body

    async def _generate(self, path: str, body: dict[str, Any], *, chat: bool) -> Completion:
        discovered = self.configured_model is None
        try:
            payload = await self._json("POST", path, {**body, "model": body.get("model") or await self.resolve_model()})
        except LLMModelNotFound:
            if not discovered or body.get("model"):
                raise
            # The server was restarted with another model since we looked: look again, once.
            payload = await self._json("POST", path, {**body, "model": await self.resolve_model(refresh=True)})
        choices = payload.get("choices") if isinstance(payload, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise LLMResponseError(f"{self.url(path)} returned no choices: {str(payload)[:200]}")
        return Completion(
            text=_choice_text(choices[0], chat=chat, delta=False),
            model=str(payload.get("model") or body.get("model") or self._cache.model or ""),
            finish_reason=choices[0].get("finish_reason"),
            usage=payload.get("usage"),
        )

    async def chat(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Completion:
        """``POST /v1/chat/completions``: the default, since instruct models need their chat template."""
        body = self._body(model or "", max_tokens, temperature, extra)
        body["messages"] = list(messages)
        return await self._generate("/v1/chat/completions", body, chat=True)

    async def complete(
        self,
        prompt: str,
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Completion:
        """``POST /v1/completions``: raw text completion, as the original `vllm_client.py` used."""
        body = self._body(model or "", max_tokens, temperature, extra)
        body["prompt"] = prompt
        return await self._generate("/v1/completions", body, chat=False)

    async def _stream(self, path: str, body: dict[str, Any], *, chat: bool) -> AsyncIterator[StreamDelta]:
        body = {**body, "model": body.get("model") or await self.resolve_model(), "stream": True}
        body.setdefault("stream_options", {"include_usage": True})
        response = await self._send("POST", path, body=body, stream=True)
        url = self.url(path)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        lines = self._capped_lines(response, url)
        try:
            while True:
                # A per-read deadline, not a context manager around the yields: the time the consumer
                # spends between chunks must not be cancelled from inside this generator.
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError
                try:
                    line = await asyncio.wait_for(anext(lines), remaining)
                except StopAsyncIteration:
                    return
                if not line.startswith("data:"):
                    continue  # blank separators, ": ping" comments, "event:" lines
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    chunk = json.loads(data)
                except ValueError as exc:
                    raise LLMResponseError(f"{url} streamed a line that is not JSON: {data[:200]!r}") from exc
                message, kind = extract_error(chunk)
                if message is not None and "choices" not in chunk:
                    raise LLMResponseError(f"LLM server failed mid-stream: {message}", upstream_type=kind)
                choices = chunk.get("choices") or []
                first = choices[0] if choices and isinstance(choices[0], dict) else {}
                yield StreamDelta(
                    text=_choice_text(first, chat=chat, delta=True),
                    finish_reason=first.get("finish_reason"),
                    usage=chunk.get("usage"),
                    model=chunk.get("model"),
                )
        except (httpx.TransportError, TimeoutError) as exc:
            raise self._transport_error(exc, url) from exc
        finally:
            await response.aclose()

    def stream_chat(
        self,
        messages: Sequence[Message],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> AsyncIterator[StreamDelta]:
        """Streamed chat completion (SSE). Ends at ``data: [DONE]``; usage-only chunks are passed on."""
        body = self._body(model or "", max_tokens, temperature, extra)
        body["messages"] = list(messages)
        return self._stream("/v1/chat/completions", body, chat=True)

    def stream_complete(
        self,
        prompt: str,
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> AsyncIterator[StreamDelta]:
        """Streamed text completion (SSE)."""
        body = self._body(model or "", max_tokens, temperature, extra)
        body["prompt"] = prompt
        return self._stream("/v1/completions", body, chat=False)

    # --- health -----------------------------------------------------------------------------------

    async def health(self, timeout_s: float | None = None) -> dict[str, Any]:
        """Is the server up? Never raises; fast (one try, short timeout) so /health can call it.

        ``/health`` is tried first: vLLM answers 200 with an empty body, llama.cpp 200 with JSON (503 while
        loading). Servers without it (OpenAI, some proxies) answer 404, and then ``/v1/models`` decides.
        """
        limit = timeout_s or max(self.connect_timeout_s, 1.0)
        started = time.perf_counter()
        result: dict[str, Any] = {"ok": False, "reachable": False, "base_url": self.base_url, "model": None}
        try:
            try:
                response = await self._send("GET", "/health", retries=0, timeout_s=limit)
                await response.aread()
            except LLMError as exc:
                if exc.upstream_status not in (404, 405):
                    raise
            if not self._cache.models:
                await self.models(retries=0, timeout_s=limit)
            result.update(ok=True, reachable=True, model=self._cache.model, error=None)
        except LLMError as exc:
            # An HTTP answer means the server is there, just not usable (loading, wrong key, ...).
            result.update(reachable=exc.upstream_status is not None, error=exc.to_dict())
        except Exception as exc:  # health must never raise
            result.update(error={"code": "llm_error", "message": f"{type(exc).__name__}: {exc}"})
        result["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return result
