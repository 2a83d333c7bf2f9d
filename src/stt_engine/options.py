"""What a caller may choose per request, and how the API's and the CLI's raw values become those choices.

Both the routes and `stt-engine transcribe` build their `TranscribeOptions` here, so a value means the same thing
and fails with the same message wherever it comes from.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from stt_engine.config import Settings
from stt_engine.errors import InvalidRequest, quote
from stt_engine.openai_fields import VadParameters
from stt_engine.textproc.vocabulary import EMPTY as EMPTY_VOCABULARY
from stt_engine.textproc.vocabulary import Vocabulary, merge_hotwords
from stt_engine.types import Task

# faster-whisper's default schedule: decode at 0, and raise the temperature while a decode looks broken.
DEFAULT_TEMPERATURES: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class TranscribeOptions:
    """Every option that changes decoding. Frozen and hashable: all of it but the language is the batch key."""

    language: str | None = None
    task: Task = "transcribe"
    beam_size: int = 5
    best_of: int = 5
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    initial_prompt: str | None = None
    hotwords: str | None = None
    word_timestamps: bool = False
    vad_filter: bool = True
    condition_on_previous_text: bool = False
    vad: VadParameters | None = None  # chunking_strategy's VAD values; None: faster-whisper's defaults
    logprobs: bool = False  # include[]=logprobs: score each kept text token (one decoder pass per window)

    def __post_init__(self) -> None:
        if isinstance(self.vad, dict):  # options stored as plain data (jobs) come back hashable
            object.__setattr__(self, "vad", VadParameters(**self.vad))


def parse_language(value: str | None, supported: Collection[str]) -> str | None:
    """Empty/`auto` means detect. Accepts `ko`, `KO`, `ko-KR`, `ko_KR`; refuses what the model does not know."""
    if value is None or not value.strip() or value.strip().lower() == "auto":
        return None
    parts = value.strip().lower().replace("_", "-").split("-")
    code = parts[0]
    if code not in supported or len(parts) > 2 or (len(parts) == 2 and not 2 <= len(parts[1]) <= 4):
        raise InvalidRequest(
            f"Unsupported language {quote(value)}. Use an ISO-639-1 code this model knows (e.g. "
            f"{', '.join(c for c in ('ko', 'en', 'ja', 'zh') if c in supported)}), or leave it empty to detect it.",
            param="language", code="invalid_language",
        )
    return code


def parse_temperature(value: float | None) -> tuple[float, ...]:
    """OpenAI's meaning: 0 (the default) decodes deterministically and raises the temperature only when a decode
    fails; a value above 0 samples at exactly that temperature, as faster-whisper does when given one."""
    if value is None or value == 0:
        return DEFAULT_TEMPERATURES
    if not 0 < value <= 1:
        raise InvalidRequest(
            f"temperature must be between 0 and 1, got {value}.", param="temperature", code="invalid_temperature"
        )
    return (float(value),)


def build_options(
    settings: Settings,
    supported_languages: Collection[str],
    *,
    language: str | None,
    task: str = "transcribe",
    prompt: str | None = None,
    temperature: float | None = None,
    word_timestamps: bool = False,
    hotwords: str | None = None,
    beam_size: int | None = None,
    vad_filter: bool | None = None,
    vad: VadParameters | None = None,
    logprobs: bool = False,
    vocabulary: Vocabulary = EMPTY_VOCABULARY,
) -> TranscribeOptions:
    """Validate a request's raw values against the server's settings; raise `InvalidRequest` with the reason.

    `vocabulary` is the team's (VOCABULARY_FILE), read by the caller once (`load_vocabulary`): its terms come first
    in the hotwords, the request's own add to them. Pure: nothing here reads a file."""
    for name, text in (("prompt", prompt), ("hotwords", hotwords)):
        if text and len(text) > settings.max_prompt_chars:
            raise InvalidRequest(
                f"'{name}' is {len(text)} characters long; at most {settings.max_prompt_chars} are accepted "
                "(Whisper only uses the last 223 tokens of a prompt).",
                param=name, code="prompt_too_long",
            )
    if task not in ("transcribe", "translate"):
        raise InvalidRequest(f"task must be 'transcribe' or 'translate', not {quote(task)}.", param="task")
    hotwords = merge_hotwords(vocabulary, hotwords)
    if beam_size is not None and not 1 <= beam_size <= 20:
        raise InvalidRequest("beam_size must be between 1 and 20.", param="beam_size")
    return TranscribeOptions(
        language=parse_language(language, supported_languages) or settings.whisper_default_language,
        task="translate" if task == "translate" else "transcribe",
        beam_size=beam_size or settings.whisper_beam_size,
        temperatures=parse_temperature(temperature),
        initial_prompt=prompt.strip() if prompt and prompt.strip() else None,
        hotwords=hotwords.strip() if hotwords and hotwords.strip() else None,
        word_timestamps=word_timestamps,
        vad_filter=settings.whisper_vad_filter if vad_filter is None else vad_filter,
        condition_on_previous_text=settings.whisper_condition_on_previous_text,
        vad=vad,
        logprobs=logprobs,
    )
