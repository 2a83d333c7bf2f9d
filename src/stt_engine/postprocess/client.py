"""Async client for an OpenAI-compatible LLM server: vLLM first, and also llama.cpp, TGI and OpenAI.

The wire work is the `openai` SDK's `AsyncOpenAI`: requests, SSE streaming, retries of connection errors, 429 and
5xx with backoff that honours ``Retry-After`` (never of other 4xx), typed errors. Around it we keep what differs
between these servers: the base URL written with or without ``/v1``, vLLM's error envelopes (mapped to our
`LLMError`s by `errors.error_from_response`), ``/health`` that answers 200 with an empty body or does not exist,
model discovery through ``/v1/models`` with the context size under its several names, and a time budget: every call,
retries and a whole stream included, ends within `timeout_s`.

Every request goes through `_call` (one answer) or `_stream` (an SSE stream), and every byte through the HTTP client
that `_new_sdk` gives the SDK (`transport.capped_http_client`: a limit on what a server may send, in one place). The
SDK's exceptions become our `LLMError`s in `sdk_errors`; the answers are read in `responses`. An SDK client belongs to
one event loop, so one `LLMClient` can be built at start-up and used from whichever loop serves requests (tests run
several loops).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypedDict, Unpack, overload

import openai

from stt_engine.postprocess.errors import LLMError, LLMModelNotFound, LLMResponseError
from stt_engine.postprocess.responses import (
    Completion,
    ModelInfo,
    Payload,
    StreamDelta,
    as_dict,
    completion_of,
    delta_of,
    parse_models,
    raise_if_error,
)
from stt_engine.postprocess.sdk_errors import error_from_sdk
from stt_engine.postprocess.transport import DEFAULT_MAX_RESPONSE_BYTES, capped_http_client

if TYPE_CHECKING:
    from stt_engine.config import Settings

__all__ = ["Completion", "LLMClient", "Message", "ModelInfo", "Sampling", "StreamDelta", "normalize_base_url"]

Message = dict[str, str]

_USER_AGENT = "stt-engine-postprocess"
_SUFFIXES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1")


class Sampling(TypedDict, total=False):
    """Per-call choices of a generation; each left out (or None) takes the client's default."""

    model: str | None
    max_tokens: int | None
    temperature: float | None
    extra: dict[str, Any] | None  # vLLM's own sampling options, ...: merged into the request's JSON as is


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
            http_client=capped_http_client(self.max_response_bytes),
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
        return error_from_sdk(exc, self.url(path), limit_s=limit or self.timeout_s,
                              connect_timeout_s=self.connect_timeout_s)

    async def _call(self, path: str, request: Callable[[], Awaitable[Any]], *, timeout_s: float | None = None) -> Any:
        """Run one SDK request (with its retries) within the time budget; its answer as plain JSON values."""
        limit = self.timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(limit):
                return as_dict(await request())
        except (openai.OpenAIError, TimeoutError) as exc:
            raise self._error(exc, path, limit) from exc

    async def _json(self, path: str, request: Callable[[], Awaitable[Any]], *,
                    timeout_s: float | None = None) -> Payload:
        """`_call` for endpoints that answer a JSON object, which may still be an error envelope."""
        payload = await self._call(path, request, timeout_s=timeout_s)
        if not isinstance(payload, dict):
            raise LLMResponseError(f"{self.url(path)} did not answer with a JSON object: {str(payload)[:200]!r}")
        raise_if_error(payload, "LLM server returned an error")
        return payload

    # --- discovery --------------------------------------------------------------------------------

    async def models(self, *, retries: int | None = None, timeout_s: float | None = None) -> list[ModelInfo]:
        """``GET /v1/models``: what the server serves, with context sizes when it reports them."""
        sdk = self._sdk(retries=retries, timeout_s=timeout_s)

        async def listing() -> Payload:
            page = await sdk.models.list()
            return {"data": [as_dict(model) for model in page.data]}

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

    def _body(self, model: str | None = None, max_tokens: int | None = None, temperature: float | None = None,
              extra: dict[str, Any] | None = None) -> Payload:
        """The SDK call's arguments, the client's defaults where the call leaves them out."""
        body: Payload = {
            "model": model or "",
            "max_tokens": self.max_tokens if max_tokens is None else max_tokens,
            "temperature": self.temperature if temperature is None else temperature,
        }
        if extra:
            body["extra_body"] = dict(extra)
        return body

    @overload
    def generate(self, request: str | Sequence[Message], *, stream: Literal[False] = False,
                 **sampling: Unpack[Sampling]) -> Awaitable[Completion]: ...

    @overload
    def generate(self, request: str | Sequence[Message], *, stream: Literal[True],
                 **sampling: Unpack[Sampling]) -> AsyncIterator[StreamDelta]: ...

    def generate(self, request: str | Sequence[Message], *, stream: bool = False,
                 **sampling: Unpack[Sampling]) -> Awaitable[Completion] | AsyncIterator[StreamDelta]:
        """One generation. Chat messages go to ``POST /v1/chat/completions`` (the default, since instruct models
        need their chat template); a plain prompt string to ``POST /v1/completions`` (raw text completion, as the
        original `vllm_client.py` used). `stream=True` gives the answer as it comes (SSE): it ends at
        ``data: [DONE]``, and usage-only chunks are passed on."""
        chat = not isinstance(request, str)
        path = "/v1/chat/completions" if chat else "/v1/completions"
        body = {**self._body(**sampling), **({"messages": list(request)} if chat else {"prompt": request})}
        return self._stream(path, body, chat=chat) if stream else self._generate(path, body, chat=chat)

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
        return completion_of(payload, chat=chat, url=self.url(path), model=body["model"] or self._cache.model or "")

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
                    chunk = as_dict(await asyncio.wait_for(anext(chunks), max(0.0, deadline - loop.time())))
                except StopAsyncIteration:  # the SDK stops at `data: [DONE]`
                    return
                except (openai.OpenAIError, TimeoutError) as exc:
                    raise self._error(exc, path) from exc
                except ValueError as exc:
                    raise LLMResponseError(f"{self.url(path)} streamed a line that is not JSON: {exc}") from exc
                yield delta_of(chunk, chat=chat, url=self.url(path))
        finally:
            await stream.close()

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
