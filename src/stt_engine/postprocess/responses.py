"""What an OpenAI-compatible server answers, read tolerantly: model listings, completions and stream chunks.

The SDK hands back its objects; we read them as the JSON they came from (`as_dict`), so fields only some servers
send (vLLM's `max_model_len`, llama.cpp's `meta.n_ctx`) are kept, and an error envelope sent with status 200 (some
proxies, vLLM < 0.10.1 mid-stream) is still an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import openai

from stt_engine.postprocess.errors import LLMResponseError, extract_error

Payload = dict[str, Any]

# Keys under which servers report a model's context size in /v1/models (vLLM, llama.cpp, others).
_CONTEXT_KEYS = ("max_model_len", "context_length", "context_window", "max_context_length", "n_ctx")


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


def choice_text(choice: dict[str, Any], *, chat: bool, delta: bool) -> str:
    """The text of one choice: a chat message's (or stream delta's) content, or a text completion's text."""
    if not chat:
        return str(choice.get("text") or "")
    message = choice.get("delta" if delta else "message") or {}
    return str(message.get("content") or "") if isinstance(message, dict) else ""


def as_dict(response: Any) -> Any:
    """The SDK's object as the JSON it came from (fields the server sent, extras such as vLLM's included)."""
    return response.to_dict() if isinstance(response, openai.BaseModel) else response


def raise_if_error(payload: Payload, what: str) -> None:
    """Some proxies (and vLLM < 0.10.1 mid-stream) send an error envelope with status 200: it is an error."""
    message, kind = extract_error(payload)
    if message is not None and "choices" not in payload and "data" not in payload:
        raise LLMResponseError(f"{what}: {message}", upstream_type=kind)


def completion_of(payload: Payload, *, chat: bool, url: str, model: str) -> Completion:
    """A non-streamed answer's first choice; `model` when the server does not name the one that answered."""
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise LLMResponseError(f"{url} returned no choices: {str(payload)[:200]}")
    return Completion(
        text=choice_text(choices[0], chat=chat, delta=False),
        model=str(payload.get("model") or model),
        finish_reason=choices[0].get("finish_reason"),
        usage=payload.get("usage"),
    )


def delta_of(chunk: Any, *, chat: bool, url: str) -> StreamDelta:
    """One stream chunk as a `StreamDelta` (a chunk without choices carries only usage)."""
    if not isinstance(chunk, dict):
        raise LLMResponseError(f"{url} streamed something that is not an object: {chunk!r:.200}")
    raise_if_error(chunk, "LLM server failed mid-stream")
    choices = chunk.get("choices") or []
    first = choices[0] if choices and isinstance(choices[0], dict) else {}
    return StreamDelta(
        text=choice_text(first, chat=chat, delta=True),
        finish_reason=first.get("finish_reason"),
        usage=chunk.get("usage"),
        model=chunk.get("model"),
    )
