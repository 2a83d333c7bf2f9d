"""OpenAI Realtime transcription sessions: the configuration a client may set, and the events we send back.

Two dialects arrive on the same socket, and both are answered in the dialect they were asked in:

- GA (current): `session.update` with `session: {type: "transcription", audio: {input: {format, transcription,
  turn_detection, noise_reduction}}, include}`; formats are objects (`{"type": "audio/pcm", "rate": 24000}`).
- beta: `transcription_session.update`, or `session.update` with flat fields (`input_audio_format: "pcm16"`,
  `input_audio_transcription`, `turn_detection`), as older SDKs and speaches' clients send them.

An update is parsed into a new `SessionConfig` and applied only when all of it is valid, so a bad update leaves
the session as it was.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from openai.types.realtime import RealtimeError, RealtimeErrorEvent
from openai.types.realtime.audio_transcription import AudioTranscription
from openai.types.realtime.realtime_transcription_session_audio import RealtimeTranscriptionSessionAudio
from openai.types.realtime.realtime_transcription_session_audio_input import (
    NoiseReduction,
    RealtimeTranscriptionSessionAudioInput,
)
from openai.types.realtime.realtime_transcription_session_audio_input_turn_detection import SemanticVad, ServerVad
from openai.types.realtime.realtime_transcription_session_create_request import (
    RealtimeTranscriptionSessionCreateRequest,
)

Codec = Literal["pcm16", "pcmu", "pcma"]
PCM_RATES = (24000, 16000)  # 24 kHz is OpenAI's only PCM rate; 16 kHz is our extension (no resampling needed)
G711_RATE = 8000
# semantic_vad has no model here: its eagerness picks how long a pause ends a turn (OpenAI: low waits longest).
EAGERNESS_SILENCE_MS = {"low": 1500, "medium": 800, "auto": 800, "high": 500}
LOGPROBS_INCLUDE = "item.input_audio_transcription.logprobs"  # session.include: logprobs on the completed event
# OpenAI's noise reduction types. Accepted and echoed; no filter is applied (Whisper is trained on noisy audio, and
# a denoiser's artefacts cost it more accuracy than the noise), see docs/openai-compat.md.
NOISE_REDUCTION_TYPES = ("near_field", "far_field")


class ProtocolError(Exception):
    """A client event we cannot act on; answered with an `error` event, and the session goes on."""

    def __init__(self, message: str, *, code: str = "invalid_value", param: str | None = None,
                 error_type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.error_type = error_type


@dataclass(frozen=True)
class AudioFormat:
    codec: Codec = "pcm16"
    rate: int = 24000

    def ga(self) -> dict[str, Any]:
        if self.codec == "pcm16":
            return {"type": "audio/pcm", "rate": self.rate}
        return {"type": f"audio/{self.codec}"}

    def beta(self) -> str:
        return {"pcm16": "pcm16", "pcmu": "g711_ulaw", "pcma": "g711_alaw"}[self.codec]


@dataclass(frozen=True)
class TurnDetection:
    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    eagerness: str | None = None

    def sdk(self) -> ServerVad | SemanticVad:
        """As the SDK types it; both dialects write it the same way."""
        if self.type == "semantic_vad":
            return SemanticVad(type="semantic_vad", eagerness=self.eagerness or "auto")  # type: ignore[arg-type]
        return ServerVad(type="server_vad", threshold=self.threshold, prefix_padding_ms=self.prefix_padding_ms,
                         silence_duration_ms=self.silence_duration_ms)


@dataclass(frozen=True)
class SessionConfig:
    format: AudioFormat = field(default_factory=AudioFormat)
    model: str = "whisper-1"
    language: str | None = None
    prompt: str | None = None
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    noise_reduction: dict[str, Any] | None = None  # echoed back; no noise suppression is applied
    include: list[str] | None = None
    keywords: tuple[str, ...] = ()  # transcription.keywords: merged into the hotwords

    def transcription(self) -> dict[str, Any]:
        keywords = {"keywords": list(self.keywords)} if self.keywords else {}
        return {"model": self.model, "language": self.language, "prompt": self.prompt, **keywords}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


# --- parsing ------------------------------------------------------------------------------------------------
def _obj(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"'{param}' must be an object.", param=param, code="invalid_type")
    return value


def _number(value: Any, param: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ProtocolError(f"'{param}' must be a number from {low:g} to {high:g}, got {value!r}.", param=param)
    return float(value)


def _text(value: Any, param: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"'{param}' must be a string.", param=param, code="invalid_type")
    return value.strip() or None


def _format_ga(value: Any, param: str) -> AudioFormat:
    value = _obj(value, param)
    kind = value.get("type")
    if kind == "audio/pcm":
        rate = value.get("rate", 24000)
        if rate not in PCM_RATES:
            raise ProtocolError(
                f"Unsupported PCM rate {rate!r}: use 24000 (OpenAI's) or 16000.", param=f"{param}.rate"
            )
        return AudioFormat("pcm16", int(rate))
    if kind in ("audio/pcmu", "audio/pcma"):
        return AudioFormat("pcmu" if kind == "audio/pcmu" else "pcma", G711_RATE)
    raise ProtocolError(
        f"Unsupported audio format {kind!r}. Supported: 'audio/pcm' (16-bit little-endian mono, rate 24000 or "
        "16000), 'audio/pcmu' and 'audio/pcma' (G.711 at 8 kHz).",
        param=f"{param}.type",
    )


def _format_beta(value: Any, param: str) -> AudioFormat:
    formats = {"pcm16": AudioFormat("pcm16", 24000), "g711_ulaw": AudioFormat("pcmu", G711_RATE),
               "g711_alaw": AudioFormat("pcma", G711_RATE)}
    if isinstance(value, dict):  # some clients already send the GA object in the beta field
        return _format_ga(value, param)
    if value not in formats:
        raise ProtocolError(
            f"Unsupported input_audio_format {value!r}. Supported: pcm16 (24 kHz), g711_ulaw, g711_alaw.", param=param
        )
    return formats[value]


def _turn_detection(value: Any, param: str, current: TurnDetection | None) -> TurnDetection | None:
    if value is None:
        return None
    value = _obj(value, param)
    kind = value.get("type", "server_vad")
    base = current if current is not None and current.type == kind else TurnDetection()
    if kind == "server_vad":
        td = replace(base, type="server_vad")
        if "threshold" in value and value["threshold"] is not None:
            td = replace(td, threshold=_number(value["threshold"], f"{param}.threshold", 0.0, 1.0))
        if value.get("prefix_padding_ms") is not None:
            td = replace(td, prefix_padding_ms=int(_number(value["prefix_padding_ms"], f"{param}.prefix_padding_ms",
                                                           0, 5000)))
        if value.get("silence_duration_ms") is not None:
            td = replace(td, silence_duration_ms=int(
                _number(value["silence_duration_ms"], f"{param}.silence_duration_ms", 100, 10000)))
        return td
    if kind == "semantic_vad":
        eagerness = value.get("eagerness") or "auto"
        if eagerness not in EAGERNESS_SILENCE_MS:
            raise ProtocolError(f"Unknown eagerness {eagerness!r}: use low, medium, high or auto.",
                                param=f"{param}.eagerness")
        return TurnDetection("semantic_vad", silence_duration_ms=EAGERNESS_SILENCE_MS[eagerness], eagerness=eagerness)
    raise ProtocolError(f"Unsupported turn_detection type {kind!r}: use server_vad, semantic_vad or null.",
                        param=f"{param}.type")


def _transcription(value: Any, param: str, config: SessionConfig) -> SessionConfig:
    if value is None:  # OpenAI: null turns transcription off; here transcription is the whole point, so keep it
        return config
    value = _obj(value, param)
    out = config
    if "model" in value:
        out = replace(out, model=_text(value["model"], f"{param}.model") or config.model)
    if "language" in value:
        out = replace(out, language=_text(value["language"], f"{param}.language"))
    if "prompt" in value:
        out = replace(out, prompt=_text(value["prompt"], f"{param}.prompt"))
    if "keywords" in value:
        keywords = _include(value["keywords"], f"{param}.keywords") or []
        out = replace(out, keywords=tuple(k.strip() for k in keywords if k.strip()))
    return out


def _noise_reduction(value: Any, param: str) -> dict[str, Any] | None:
    """`null` or `{"type": "near_field" | "far_field", "strength": number}` (both optional), as OpenAI defines it."""
    if value is None:
        return None
    value = _obj(value, param)
    out: dict[str, Any] = {}
    if value.get("type") is not None:
        if value["type"] not in NOISE_REDUCTION_TYPES:
            raise ProtocolError(f"Unsupported noise_reduction type {value['type']!r}: use near_field, far_field or "
                                "null.", param=f"{param}.type")
        out["type"] = value["type"]
    if value.get("strength") is not None:
        out["strength"] = _number(value["strength"], f"{param}.strength", 0.0, 1e6)
    return out


def _include(value: Any, param: str, allowed: tuple[str, ...] | None = None) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"'{param}' must be a list of strings.", param=param, code="invalid_type")
    unknown = [v for v in value if allowed is not None and v not in allowed]
    if unknown:
        raise ProtocolError(f"Unsupported {param} value {unknown[0]!r}: use {', '.join(map(repr, allowed or ()))}.",
                            param=param)
    return list(value)


def _apply(config: SessionConfig, fields: dict[str, Any], params: dict[str, str], *, beta: bool) -> SessionConfig:
    """The settings present in `fields` (by our names; `params` gives each one's name on the wire), parsed over
    `config`. Both dialects carry the same settings in other places: only where they sit differs."""
    out = config
    if fields.get("format") is not None:
        out = replace(out, format=(_format_beta if beta else _format_ga)(fields["format"], params["format"]))
    if "transcription" in fields:
        out = _transcription(fields["transcription"], params["transcription"], out)
    if "turn_detection" in fields:
        out = replace(out, turn_detection=_turn_detection(
            fields["turn_detection"], params["turn_detection"], out.turn_detection))
    if "noise_reduction" in fields:
        out = replace(out, noise_reduction=_noise_reduction(fields["noise_reduction"], params["noise_reduction"]))
    if "include" in fields:
        out = replace(out, include=_include(fields["include"], "session.include", allowed=(LOGPROBS_INCLUDE,)))
    return out


_SETTINGS = ("format", "transcription", "turn_detection", "noise_reduction")
# Where the beta dialect puts each setting, flat in `session`.
_BETA_NAMES = {"format": "input_audio_format", "transcription": "input_audio_transcription",
               "turn_detection": "turn_detection", "noise_reduction": "input_audio_noise_reduction"}


def apply_ga(config: SessionConfig, session: Any) -> SessionConfig:
    """`session.update` in the GA shape. Only the fields present change; `turn_detection: null` turns VAD off."""
    session = _obj(session, "session")
    kind = session.get("type", "transcription")
    if kind != "transcription":
        raise ProtocolError(
            f"Session type {kind!r} is not served here: this server runs transcription sessions only "
            "(session.type = 'transcription', connect with ?intent=transcription).",
            param="session.type",
        )
    audio = session.get("audio")
    audio_input = _obj(audio, "session.audio").get("input") if audio is not None else None
    audio_input = _obj(audio_input, "session.audio.input") if audio_input is not None else {}
    fields = {name: audio_input[name] for name in _SETTINGS if name in audio_input}
    if "include" in session:
        fields["include"] = session["include"]
    return _apply(config, fields, {name: f"session.audio.input.{name}" for name in _SETTINGS}, beta=False)


def apply_beta(config: SessionConfig, session: Any) -> SessionConfig:
    """`transcription_session.update` (or a flat `session.update`) in the beta shape."""
    session = _obj(session, "session")
    fields = {name: session[wire] for name, wire in _BETA_NAMES.items() if wire in session}
    if "include" in session:
        fields["include"] = session["include"]
    return _apply(config, fields, {name: f"session.{wire}" for name, wire in _BETA_NAMES.items()}, beta=True)


def is_beta_session(session: Any) -> bool:
    """A `session.update` body in the flat beta shape rather than GA's `type`/`audio` one."""
    return isinstance(session, dict) and "type" not in session and "audio" not in session and any(
        k in session for k in ("input_audio_format", "input_audio_transcription", "turn_detection",
                               "input_audio_noise_reduction", "modalities")
    )


# --- rendering ----------------------------------------------------------------------------------------------
def render_ga(config: SessionConfig, session_id: str, expires_at: int | None) -> dict[str, Any]:
    """The session as the SDK reads it in `session.created`/`session.updated` (its transcription session type, with
    the `id`, `object` and `expires_at` that OpenAI's server sends besides)."""
    session = RealtimeTranscriptionSessionCreateRequest(
        type="transcription",
        id=session_id,  # type: ignore[call-arg]  # extras the SDK keeps as they are
        object="realtime.transcription_session",
        expires_at=expires_at,
        audio=RealtimeTranscriptionSessionAudio(input=RealtimeTranscriptionSessionAudioInput(
            transcription=AudioTranscription(**config.transcription()),
            turn_detection=config.turn_detection.sdk() if config.turn_detection else None,
            noise_reduction=None if config.noise_reduction is None else NoiseReduction(**config.noise_reduction),
        )),
        include=config.include,  # type: ignore[arg-type]  # parsing let only the SDK's values through
    ).to_dict()
    # 16 kHz PCM is our extension beyond the SDK's `rate: Literal[24000]`: the format is written as we serve it
    session["audio"]["input"]["format"] = config.format.ga()  # type: ignore[index]
    return session


def render_beta(config: SessionConfig, session_id: str, expires_at: int | None) -> dict[str, Any]:
    return {
        "id": session_id,
        "object": "realtime.transcription_session",
        "expires_at": expires_at,
        "modalities": ["text"],
        "input_audio_format": config.format.beta(),
        "input_audio_transcription": config.transcription(),
        "turn_detection": config.turn_detection.sdk().to_dict() if config.turn_detection else None,
        "input_audio_noise_reduction": config.noise_reduction,
        "include": config.include,
    }


def event(kind: str, **fields: Any) -> dict[str, Any]:
    """A server event with a fresh `event_id`."""
    return {"type": kind, "event_id": new_id("event"), **fields}


def error_event(message: str, *, code: str | None, param: str | None = None, event_id: str | None = None,
                error_type: str = "invalid_request_error") -> dict[str, Any]:
    """The SDK's `RealtimeErrorEvent`; `event_id` inside `error` names the client event that failed."""
    return RealtimeErrorEvent(
        type="error", event_id=new_id("event"),
        error=RealtimeError(type=error_type, code=code, message=message, param=param, event_id=event_id),
    ).to_dict()
