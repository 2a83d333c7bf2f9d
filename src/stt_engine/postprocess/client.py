"""Async client for an OpenAI-compatible LLM server: vLLM first, and also llama.cpp, TGI and OpenAI.

The wire work is the `openai` SDK's `AsyncOpenAI`: requests, SSE streaming, retries of connection errors, 429 and
5xx with backoff that honours ``Retry-After`` (never of other 4xx), typed errors. Around it we keep what differs
between these servers: the base URL written with or without ``/v1``, vLLM's error envelopes (mapped to our
`LLMError`s by `errors.error_from_response`), ``/health`` that answers 200 with an empty body or does not exist,
model discovery through ``/v1/models`` with the context size under its several names, and a time budget: every call,
retries and a whole stream included, ends within `timeout_s`.

Every request goes through `_call` (one answer) or `_stream` (an SSE stream), and every byte through the HTTP client
that `_new_sdk` gives the SDK: a limit on what a server may send fits there, in one place. An SDK client belongs to
one event loop, so one `LLMClient` can be built at start-up and used from whichever loop serves requests (tests run
several loops).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx2
import openai

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
Payload = dict[str, Any]

_USER_AGENT = "stt-engine-postprocess"
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
_SUFFIXES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1")
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


def _as_dict(response: Any) -> Any:
    """The SDK's object as the JSON it came from (fields the server sent, extras such as vLLM's included)."""
    return response.to_dict() if isinstance(response, openai.BaseModel) else response


def _raise_if_error(payload: Payload, what: str) -> None:
    """Some proxies (and vLLM < 0.10.1 mid-stream) send an error envelope with status 200: it is an error."""
    message, kind = extract_error(payload)
    if message is not None and "choices" not in payload and "data" not in payload:
        raise LLMResponseError(f"{what}: {message}", upstream_type=kind)


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
        self.max_response_bytes = max_response_bytes
        self._client: openai.AsyncOpenAI | None = self._new_sdk()
        self._client_loop: asyncio.AbstractEventLoop | None = None  # bound on first use
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

    def _new_sdk(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.base_url + "/v1",
            # Never the OPENAI_API_KEY of the environment: that key is for OpenAI, not for this server.
            # A server started without --api-key ignores the header.
            api_key=self.api_key or "EMPTY",
            timeout=openai.Timeout(self.timeout_s, connect=self.connect_timeout_s),
            max_retries=self.max_retries,
            default_headers={"User-Agent": _USER_AGENT},
            http_client=openai.DefaultAsyncHttpxClient(
                transport=_CappedTransport(httpx2.AsyncHTTPTransport(), self.max_response_bytes)
            ),
        )

    def _sdk(self, *, retries: int | None = None, timeout_s: float | None = None) -> openai.AsyncOpenAI:
        """The SDK client of the running loop; `retries`/`timeout_s` give a variant for one call.

        The first client is made in `__init__` (building its TLS context takes tens of milliseconds, too long for
        the first `/health`) and belongs to the first loop that uses it; another loop gets a new one.
        """
        loop = asyncio.get_running_loop()
        if self._client_loop is None:
            self._client_loop = loop
        if self._client is None or self._client_loop is not loop:
            self._client = self._new_sdk()
            self._client_loop = loop
            self._discover_lock = None
        if self._discover_lock is None:
            self._discover_lock = asyncio.Lock()
        if retries is None and timeout_s is None:
            return self._client
        limit = self.timeout_s if timeout_s is None else timeout_s
        return self._client.with_options(
            max_retries=self.max_retries if retries is None else retries,
            timeout=openai.Timeout(limit, connect=min(self.connect_timeout_s, limit)),
        )

    async def aclose(self) -> None:
        """Close the connection pool (only if it belongs to the running loop; others are gone already)."""
        client, self._client = self._client, None
        if client is not None:
            try:
                if self._client_loop in (None, asyncio.get_running_loop()):
                    await client.close()
            except RuntimeError:
                pass

    def _error(self, exc: BaseException, path: str, limit: float | None = None) -> LLMError:
        """Our `LLMError` for whatever the SDK (or the time budget of `limit` seconds) raised."""
        url = self.url(path)
        cause: BaseException | None = exc
        while cause is not None:  # the size cap, however deep the SDK wrapped it
            if isinstance(cause, ResponseTooLarge):
                return LLMResponseError(
                    f"{url} sent more than {cause.limit} bytes; the response was dropped (VLLM_MAX_RESPONSE_BYTES)"
                )
            cause = cause.__cause__ or cause.__context__
        if isinstance(exc, openai.APIStatusError):
            # The SDK has read the body: our parser knows vLLM's envelopes and names the setting to check.
            response = exc.response
            return error_from_response(response.status_code, response.content, url)
        if isinstance(exc, openai.APITimeoutError) and type(exc.__cause__).__name__ == "ConnectTimeout":
            return LLMUnreachable(f"Could not connect to the LLM server at {url} within {self.connect_timeout_s:g} s")
        if isinstance(exc, (openai.APITimeoutError, TimeoutError)):
            return LLMTimeout(f"The LLM server at {url} did not answer within {limit or self.timeout_s:g} s")
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__
            reason = (str(cause) or type(cause).__name__) if cause is not None else exc.message
            return LLMUnreachable(f"Could not reach the LLM server at {url}: {reason}")
        if isinstance(exc, openai.APIError):  # an error event inside a 200 stream
            message, kind = extract_error({"error": exc.body}) if exc.body is not None else (exc.message, None)
            return LLMResponseError(f"LLM server failed mid-stream: {message or exc.message}", upstream_type=kind)
        return LLMResponseError(f"{url}: unexpected answer ({type(exc).__name__}: {exc})")

    async def _call(self, path: str, request: Callable[[], Awaitable[Any]], *, timeout_s: float | None = None) -> Any:
        """Run one SDK request (with its retries) within the time budget; its answer as plain JSON values."""
        limit = self.timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(limit):
                return _as_dict(await request())
        except (openai.OpenAIError, TimeoutError) as exc:
            raise self._error(exc, path, limit) from exc

    async def _json(self, path: str, request: Callable[[], Awaitable[Any]], *,
                    timeout_s: float | None = None) -> Payload:
        """`_call` for endpoints that answer a JSON object, which may still be an error envelope."""
        payload = await self._call(path, request, timeout_s=timeout_s)
        if not isinstance(payload, dict):
            raise LLMResponseError(f"{self.url(path)} did not answer with a JSON object: {str(payload)[:200]!r}")
        _raise_if_error(payload, "LLM server returned an error")
        return payload

    # --- discovery --------------------------------------------------------------------------------

    async def models(self, *, retries: int | None = None, timeout_s: float | None = None) -> list[ModelInfo]:
        """``GET /v1/models``: what the server serves, with context sizes when it reports them."""
        sdk = self._sdk(retries=retries, timeout_s=timeout_s)

        async def listing() -> Payload:
            page = await sdk.models.list()
            return {"data": [_as_dict(model) for model in page.data]}

        models = parse_models(await self._json("/v1/models", listing, timeout_s=timeout_s))
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
        self._sdk()
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
        self, model: str | None, max_tokens: int | None, temperature: float | None, extra: dict[str, Any] | None
    ) -> Payload:
        """The SDK call's arguments; `extra` (vLLM's own sampling options, ...) is merged into the JSON as is."""
        body: Payload = {
            "model": model or "",
            "max_tokens": self.max_tokens if max_tokens is None else max_tokens,
            "temperature": self.temperature if temperature is None else temperature,
        }
        if extra:
            body["extra_body"] = dict(extra)
        return body

    def _create(self, chat: bool) -> Callable[..., Awaitable[Any]]:
        sdk = self._sdk()
        return sdk.chat.completions.create if chat else sdk.completions.create

    async def _generate(self, path: str, body: Payload, *, chat: bool) -> Completion:
        async def send(model: str) -> Payload:
            return await self._json(path, lambda: self._create(chat)(**{**body, "model": model}))

        try:
            payload = await send(body["model"] or await self.resolve_model())
        except LLMModelNotFound:
            if self.configured_model is not None or body["model"]:
                raise
            # The server was restarted with another model since we looked: look again, once.
            payload = await send(await self.resolve_model(refresh=True))
        choices = payload.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise LLMResponseError(f"{self.url(path)} returned no choices: {str(payload)[:200]}")
        return Completion(
            text=_choice_text(choices[0], chat=chat, delta=False),
            model=str(payload.get("model") or body["model"] or self._cache.model or ""),
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
        body = {**self._body(model, max_tokens, temperature, extra), "messages": list(messages)}
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
        body = {**self._body(model, max_tokens, temperature, extra), "prompt": prompt}
        return await self._generate("/v1/completions", body, chat=False)

    async def _stream(self, path: str, body: Payload, *, chat: bool) -> AsyncIterator[StreamDelta]:
        body = {**body, "model": body["model"] or await self.resolve_model(), "stream": True}
        body.setdefault("stream_options", {"include_usage": True})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                stream = await self._create(chat)(**body)  # the SDK retried 429/5xx before the stream began
        except (openai.OpenAIError, TimeoutError) as exc:
            raise self._error(exc, path) from exc
        chunks = stream.__aiter__()
        try:
            while True:
                # A per-read deadline, not a context manager around the yields: the time the consumer
                # spends between chunks must not be cancelled from inside this generator.
                try:
                    chunk = _as_dict(await asyncio.wait_for(anext(chunks), max(0.0, deadline - loop.time())))
                except StopAsyncIteration:  # the SDK stops at `data: [DONE]`
                    return
                except (openai.OpenAIError, TimeoutError) as exc:
                    raise self._error(exc, path) from exc
                except ValueError as exc:
                    raise LLMResponseError(f"{self.url(path)} streamed a line that is not JSON: {exc}") from exc
                if not isinstance(chunk, dict):
                    raise LLMResponseError(f"{self.url(path)} streamed something that is not an object: {chunk!r:.200}")
                _raise_if_error(chunk, "LLM server failed mid-stream")
                choices = chunk.get("choices") or []
                first = choices[0] if choices and isinstance(choices[0], dict) else {}
                yield StreamDelta(
                    text=_choice_text(first, chat=chat, delta=True),
                    finish_reason=first.get("finish_reason"),
                    usage=chunk.get("usage"),
                    model=chunk.get("model"),
                )
        finally:
            await stream.close()

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
        body = {**self._body(model, max_tokens, temperature, extra), "messages": list(messages)}
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
        body = {**self._body(model, max_tokens, temperature, extra), "prompt": prompt}
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
            sdk = self._sdk(retries=0, timeout_s=limit)
            try:
                # cast_to=str: the body is not parsed, so vLLM's empty 200 is fine
                await self._call("/health", lambda: sdk.get(self.url("/health"), cast_to=str), timeout_s=limit)
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


class ResponseTooLarge(httpx2.ReadError):
    """An upstream body passed `VLLM_MAX_RESPONSE_BYTES`. A read error to the SDK, so it stops (and retries, as for
    any broken read); `LLMClient._error` names the setting."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"response larger than {limit} bytes")
        self.limit = limit


class _CappedStream(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, limit: int) -> None:
        self._inner, self._limit = inner, limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in self._inner:
            size += len(chunk)
            if size > self._limit:
                raise ResponseTooLarge(self._limit)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class _CappedTransport(httpx2.AsyncBaseTransport):
    """Every byte the SDK receives, whole bodies and streams alike (a line that never ends included), counts toward
    one bound per response: an upstream that never stops sending costs bounded memory."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, limit: int) -> None:
        self._inner, self._limit = inner, limit

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        return httpx2.Response(
            response.status_code, headers=response.headers, extensions=response.extensions,
            stream=_CappedStream(response.stream, self._limit),  # type: ignore[arg-type]
        )

    async def aclose(self) -> None:
        await self._inner.aclose()
