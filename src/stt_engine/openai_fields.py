"""The newer fields of OpenAI's audio API: `usage`, `include[]=logprobs`, `chunking_strategy`, `keywords[]`.

Their parsing and rendering live here so the routes only pass them along. What each maps to (docs/openai-compat.md):

- `chunking_strategy`: `"auto"` is our VAD with its defaults; `{"type": "server_vad", threshold, prefix_padding_ms,
  silence_duration_ms}` is the same VAD (Silero, as faster-whisper runs it) with those values for this request.
  The SDK sends an object as bracketed form fields (`chunking_strategy[type]=server_vad`); curl users send it as
  one JSON string; both are read.
- `include[]=logprobs`: each text token's log-probability (`engine/decode.py` scores the kept tokens with one
  teacher-forced decoder pass per window, only for requests that ask).
- `keywords[]`: vocabulary hints, merged after `hotwords` (same prompt slot, same length limit).
- `usage`: `{"type": "duration", "seconds": <input audio length>}`, as OpenAI bills whisper-1.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from stt_engine.errors import InvalidRequest, quote

INCLUDE_VALUES = ("logprobs",)
_CHUNKING = "chunking_strategy"
_CHUNKING_MAX_CHARS = 500  # the longest server_vad object is about 110 characters
# OpenAI's server_vad fields -> faster-whisper VadOptions fields, with the bounds we accept.
_VAD_FIELDS: dict[str, tuple[str, float, float]] = {
    "threshold": ("threshold", 0.0, 1.0),
    "prefix_padding_ms": ("speech_pad_ms", 0, 5000),
    "silence_duration_ms": ("min_silence_duration_ms", 0, 10000),
}


@dataclass(frozen=True)
class VadParameters:
    """A request's VAD settings (None fields keep faster-whisper's defaults). Hashable: it sits in the options."""

    threshold: float | None = None
    speech_pad_ms: int | None = None
    min_silence_duration_ms: int | None = None

    def vad_options(self) -> dict[str, Any]:
        """Keyword arguments for `faster_whisper.vad.VadOptions`."""
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass(frozen=True)
class ChunkingChoice:
    """What `chunking_strategy` asked for: `vad_filter` None means the server's default (field absent)."""

    vad_filter: bool | None = None
    vad: VadParameters | None = None


def usage(duration_seconds: float) -> dict[str, Any]:
    """OpenAI's duration usage object for a request whose input audio lasted `duration_seconds`."""
    return {"type": "duration", "seconds": round(max(0.0, float(duration_seconds)), 3)}


def parse_include(values: Iterable[str] | None) -> bool:
    """`include[]`: True when `logprobs` is asked for. Repeated fields or one comma-separated value."""
    items = {v.strip() for item in (values or []) for v in item.split(",") if v.strip()}
    unknown = sorted(items - set(INCLUDE_VALUES))
    if unknown:
        raise InvalidRequest(
            f"Unsupported include[] value(s) {unknown}; this server supports: {', '.join(INCLUDE_VALUES)}.",
            param="include", code="invalid_include",
        )
    return "logprobs" in items


def merge_keywords(hotwords: str | None, keywords: Iterable[str] | None) -> str | None:
    """`hotwords` then each of `keywords[]` not already in them, comma-separated (Whisper reads them as a prompt)."""
    parts = [hotwords.strip()] if hotwords and hotwords.strip() else []
    seen = {p.strip().casefold() for part in parts for p in part.split(",")}
    for keyword in keywords or []:
        for word in keyword.split(","):
            word = word.strip()
            if word and word.casefold() not in seen:
                seen.add(word.casefold())
                parts.append(word)
    return ", ".join(parts) if parts else None


def chunking_from_form(form: Mapping[str, Any]) -> ChunkingChoice:
    """`chunking_strategy` from a multipart form: the plain field ("auto" or a JSON object) or the SDK's bracketed
    fields (`chunking_strategy[threshold]`, ...)."""
    bracketed = {
        key[len(_CHUNKING) + 1: -1]: value for key, value in form.items()
        if key.startswith(f"{_CHUNKING}[") and key.endswith("]")
    }
    plain = form.get(_CHUNKING)
    if bracketed:
        if plain is not None:
            raise InvalidRequest(
                "Send chunking_strategy either as one field or as chunking_strategy[...] fields, not both.",
                param=_CHUNKING, code="invalid_chunking_strategy",
            )
        return parse_chunking_strategy(bracketed)
    return parse_chunking_strategy(plain)


def parse_chunking_strategy(value: Any) -> ChunkingChoice:
    """`"auto"`, a server_vad object (or its JSON text), or nothing. Values arrive as strings from a form."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return ChunkingChoice()
    if isinstance(value, str):
        text = value.strip()
        if len(text) > _CHUNKING_MAX_CHARS:  # also keeps json.loads from deep nesting
            raise _bad_chunking(f"chunking_strategy is {len(text)} characters long; at most "
                                f"{_CHUNKING_MAX_CHARS} are accepted.")
        if text.lower() == "auto":
            return ChunkingChoice(vad_filter=True)
        try:
            value = json.loads(text)
        except ValueError:
            raise _bad_chunking(f"chunking_strategy must be 'auto' or a server_vad object, not {quote(text)}.") \
                from None
        if value == "auto":
            return ChunkingChoice(vad_filter=True)
    if not isinstance(value, dict):
        raise _bad_chunking("chunking_strategy must be 'auto' or an object with type 'server_vad'.")
    kind = value.get("type")
    if kind != "server_vad":
        raise _bad_chunking(f"chunking_strategy.type must be 'server_vad', not {quote(str(kind))}.")
    unknown = sorted(set(value) - {"type", *_VAD_FIELDS})
    if unknown:
        raise _bad_chunking(f"Unknown chunking_strategy field(s) {unknown}; "
                            f"known: type, {', '.join(_VAD_FIELDS)}.")
    chosen: dict[str, Any] = {}
    for name, (ours, low, high) in _VAD_FIELDS.items():
        if value.get(name) is None or value.get(name) == "":
            continue
        number = _number(value[name], f"chunking_strategy.{name}", low, high)
        chosen[ours] = number if name == "threshold" else int(round(number))
    return ChunkingChoice(vad_filter=True, vad=VadParameters(**chosen))


def _number(value: Any, param: str, low: float, high: float) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not low <= number <= high:
        raise _bad_chunking(f"{param} must be a number from {low:g} to {high:g}, got {quote(str(value))}.")
    return number


def _bad_chunking(message: str) -> InvalidRequest:
    return InvalidRequest(message, param=_CHUNKING, code="invalid_chunking_strategy")


# --- logprobs ---------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet (Whisper's tokenizer), character -> byte: a token's exact bytes, even when
    it holds part of a multi-byte character (Korean syllables often span two tokens)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codes)}


def token_bytes(hf_tokenizer: Any, token_id: int) -> bytes:
    """The bytes token `token_id` stands for."""
    piece = hf_tokenizer.id_to_token(token_id) or ""
    table = _byte_decoder()
    return bytes(table[ch] for ch in piece if ch in table)


def token_logprobs(hf_tokenizer: Any, token_ids: list[int], logprobs: list[float]) -> list[dict[str, Any]]:
    """OpenAI's `logprobs` entries for text tokens: the token's text (invalid UTF-8 pieces replaced), its
    log-probability and its bytes."""
    out = []
    for token_id, logprob in zip(token_ids, logprobs):
        raw = token_bytes(hf_tokenizer, token_id)
        out.append({"token": raw.decode("utf-8", errors="replace"), "logprob": round(float(logprob), 6),
                    "bytes": list(raw)})
    return out


def transcript_logprobs(segments: Iterable[Any]) -> list[dict[str, Any]]:
    """The logprobs entries of `segments`, in order (segments decoded without logprobs add none)."""
    return [entry for s in segments for entry in (getattr(s, "logprobs", None) or [])]


@dataclass(frozen=True)
class RequestFields:
    """The newer transcription form fields of one request, read and checked."""

    logprobs: bool = False
    keywords: tuple[str, ...] = ()
    chunking: ChunkingChoice = ChunkingChoice()

    @classmethod
    def from_form(cls, form: Any) -> RequestFields:
        """From the request's multipart form (a starlette `FormData`): `include[]` / `keywords[]` (repeated, or
        without the brackets) and `chunking_strategy` in either of its shapes."""
        def values(name: str) -> list[str]:
            return [v for key in (f"{name}[]", name) for v in form.getlist(key) if isinstance(v, str)]

        return cls(
            logprobs=parse_include(values("include")),
            keywords=tuple(values("keywords")),
            chunking=chunking_from_form({k: v for k, v in form.items() if isinstance(v, str)}),
        )

    def check(self, *, json_format: bool, redact: bool, split_channels: bool) -> None:
        """Refuse the combinations logprobs cannot serve: OpenAI returns them with `json` only; masked text would
        leak through its tokens; channels=split relabels segments without their scores."""
        if not self.logprobs:
            return
        reason = None
        if not json_format:
            reason = "include[]=logprobs needs response_format=json (as OpenAI's API)."
        elif redact:
            reason = "include[]=logprobs cannot be combined with redact=pii: the tokens would show the masked text."
        elif split_channels:
            reason = "include[]=logprobs is not available with channels=split."
        if reason:
            raise InvalidRequest(reason, param="include", code="invalid_include")
