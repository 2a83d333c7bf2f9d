"""A cap on what an LLM server may send: every byte the `openai` SDK receives passes through `CappedTransport`.

Whole bodies and streams alike (a line that never ends included) count toward one bound per response, so an upstream
that never stops sending costs bounded memory (`VLLM_MAX_RESPONSE_BYTES`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2
import openai

DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024


class ResponseTooLarge(httpx2.ReadError):
    """An upstream body passed `VLLM_MAX_RESPONSE_BYTES`. A read error to the SDK, so it stops (and retries, as for
    any broken read); `sdk_errors.error_from_sdk` names the setting."""

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


class CappedTransport(httpx2.AsyncBaseTransport):
    """Wraps a transport so that no response body (whole or streamed) passes `limit` bytes."""

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


def capped_http_client(limit: int) -> httpx2.AsyncClient:
    """The SDK's own default HTTP client (its timeouts, limits and redirects) over a capped transport."""
    return openai.DefaultAsyncHttpxClient(transport=CappedTransport(httpx2.AsyncHTTPTransport(), limit))
