"""Exceptions for talking to the LLM server, and the parser that turns its error bodies into them.

OpenAI-compatible servers disagree on how they report errors, so every shape we know is read here, in
one place, and mapped to a small set of exceptions that callers can switch on:

* vLLM >= 0.10.1 and OpenAI: ``{"error": {"message", "type", "param", "code"}}``
* vLLM < 0.10.1: ``{"object": "error", "message", "type", "param", "code"}``
* vLLM's API-key middleware and TGI: ``{"error": "Unauthorized"}`` / ``{"error": "...", "error_type": "..."}``
* FastAPI-style proxies: ``{"detail": ...}``; anything else: the first bytes of the body as text.

They subclass `STTError` so that, should one ever escape to the API layer, it still becomes a clean
502/503/504 instead of a 500; the post-processing service normally catches them and reports them in
the response's ``postprocess.error`` instead.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from stt_engine.errors import STTError

_BODY_SNIPPET_CHARS = 300


class LLMError(STTError):
    """Any failure of the LLM server or of the connection to it, after the `openai` SDK's retries (connection
    errors, 429 and 5xx, honouring `Retry-After`) gave up: what the caller sees is final.
    """

    status = 502
    code = "llm_error"
    error_type = "server_error"

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int | None = None,
        upstream_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status
        self.upstream_type = upstream_type

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able form used in responses (``postprocess.error``)."""
        return {
            "code": self.code,
            "message": self.message,
            "upstream_status": self.upstream_status,
            "upstream_type": self.upstream_type,
        }


class LLMNotConfigured(LLMError):
    """`VLLM_BASE_URL` is not set, so there is no server to ask."""

    status = 503
    code = "llm_not_configured"


class LLMUnreachable(LLMError):
    """No connection could be made or kept (refused, DNS, reset): the server is down or the URL wrong."""

    status = 503
    code = "llm_unreachable"


class LLMTimeout(LLMError):
    """The server did not answer within the time budget (`VLLM_TIMEOUT_S`, retries included)."""

    status = 504
    code = "llm_timeout"


class LLMAuthError(LLMError):
    """401/403: `VLLM_API_KEY` is missing or wrong."""

    code = "llm_auth_failed"


class LLMModelNotFound(LLMError):
    """404 for the model: `VLLM_MODEL` names a model the server does not serve."""

    code = "llm_model_not_found"


class LLMBadRequest(LLMError):
    """Any other 4xx: the server refused this request; sending it again will not help."""

    code = "llm_bad_request"


class LLMContextLengthExceeded(LLMBadRequest):
    """The prompt plus `max_tokens` does not fit the model's context window."""

    code = "llm_context_length_exceeded"


class LLMRateLimited(LLMError):
    """429: the server stayed busy through the retries."""

    status = 503
    code = "llm_rate_limited"


class LLMServerError(LLMError):
    """5xx: the server failed (engine dead, overloaded, proxy error) through the retries."""

    code = "llm_server_error"


class LLMResponseError(LLMError):
    """The server answered 2xx with something that is not an OpenAI-shaped response."""

    code = "llm_bad_response"


def _text_of(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def extract_error(payload: Any) -> tuple[str | None, str | None]:
    """(message, type) from any known error envelope, or (None, None) when `payload` is not one."""
    if not isinstance(payload, dict):
        return None, None
    error = payload.get("error")
    if isinstance(error, dict):  # OpenAI, vLLM >= 0.10.1, llama.cpp
        message = error.get("message")
        kind = error.get("type")
        return (_text_of(message) if message is not None else _text_of(error)), (str(kind) if kind else None)
    if isinstance(error, str):  # vLLM's auth middleware, TGI
        kind = payload.get("error_type") or payload.get("type")
        return error, (str(kind) if kind else None)
    if payload.get("object") == "error":  # vLLM < 0.10.1
        kind = payload.get("type")
        return _text_of(payload.get("message", "")), (str(kind) if kind else None)
    if "detail" in payload:  # FastAPI-based proxies
        return _text_of(payload["detail"]), None
    return None, None


def _looks_like_context_overflow(message: str, kind: str | None) -> bool:
    text = f"{kind or ''} {message}".lower()
    return any(
        marker in text
        for marker in ("context length", "context_length", "context size", "exceed_context", "context window")
    )


def error_from_response(status: int, body: bytes, url: str) -> LLMError:
    """Turn an HTTP error response into the matching `LLMError`, with a message a person can act on."""
    message: str | None = None
    kind: str | None = None
    with contextlib.suppress(ValueError, UnicodeDecodeError):  # not JSON: the body's text is the message
        message, kind = extract_error(json.loads(body))
    if message is None:
        snippet = body[:_BODY_SNIPPET_CHARS].decode("utf-8", "replace").strip()
        message = snippet or "(empty body)"
    described = f"LLM server returned HTTP {status}" + (f" ({kind})" if kind else "") + f": {message}"
    kwargs: dict[str, Any] = {"upstream_status": status, "upstream_type": kind}
    if status in (401, 403):
        return LLMAuthError(f"{described} - check VLLM_API_KEY", **kwargs)
    if status == 404:
        if "model" in message.lower():
            return LLMModelNotFound(f"{described} - check VLLM_MODEL (or unset it to use the served model)", **kwargs)
        return LLMBadRequest(f"{described} - is {url} an OpenAI-compatible endpoint? check VLLM_BASE_URL", **kwargs)
    if status == 429:
        return LLMRateLimited(described, **kwargs)
    if status >= 500:
        return LLMServerError(described, **kwargs)
    if _looks_like_context_overflow(message, kind):
        return LLMContextLengthExceeded(described, **kwargs)
    return LLMBadRequest(described, **kwargs)
