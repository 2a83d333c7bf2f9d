"""Which models the server serves, and when an extra one may load or must unload: pure policy, no threads.

`WHISPER_MODEL` is the default model; `WHISPER_MODELS` lists extra ones, each `name` or `id=name` (a name is
anything `WHISPER_MODEL` takes: a folder, a name under MODELS_DIR, `bundled`, `bundled-small`). A request's
`model` field picks one by id; OpenAI's own model names mean the default, so clients written for OpenAI keep
working unchanged. The registry (`stt_engine.model_registry`) applies these rules to loaded engines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# OpenAI's transcription model names (openai-python's AudioModel) and our own word for it: all mean the default.
OPENAI_ALIASES = frozenset({
    "whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "gpt-4o-transcribe-diarize",
    "gpt-4o-mini-transcribe-2025-12-15", "default",
})


@dataclass(frozen=True)
class ModelEntry:
    """One extra model: the id requests name it by, and the name or folder it is found under."""

    id: str
    name: str


def entry_id(name: str) -> str:
    """The stable id of a WHISPER_MODELS entry without `id=`: a folder's own name, else the name as written."""
    cleaned = name.strip().rstrip("/")
    if "/" in cleaned or cleaned.startswith((".", "~")):
        return Path(cleaned).name or cleaned
    return cleaned


def parse_entries(values: Sequence[str], default_ids: Sequence[str] = ()) -> list[ModelEntry]:
    """WHISPER_MODELS as entries. Raises ValueError for an id given twice, or one that means the default model
    (it could never be picked)."""
    entries: list[ModelEntry] = []
    taken = set(OPENAI_ALIASES) | set(default_ids)
    for value in values:
        given, sep, name = value.partition("=")
        model_id, name = (given.strip(), name.strip()) if sep else (entry_id(value), value.strip())
        if not model_id or not name:
            raise ValueError(f"WHISPER_MODELS entry {value!r}: write `name`, a folder, or `id=name`")
        if model_id in taken:
            raise ValueError(f"WHISPER_MODELS: the id {model_id!r} is taken (by the default model or another "
                             "entry); give this one its own with `id=name`")
        taken.add(model_id)
        entries.append(ModelEntry(model_id, name))
    return entries


# Measured (int8 on CPU, 2 workers + the all-cores instance): loading Whisper base (138 MB model.bin) grew the
# resident size by 389 MB, tiny.en (72 MB) by 222 MB; 1.25 x the weights per instance + 40 MB covers both.
WEIGHTS_FACTOR = 1.25
OVERHEAD_MB = 40


def estimate_mb(model_bin_bytes: int, instances: int) -> int:
    """Memory one loaded model takes, for the budget: its weights file once per model instance, times what
    CTranslate2's buffers and the scheduler's threads add (measured above), plus a fixed part. Rounded up."""
    return math.ceil(model_bin_bytes * max(1, instances) * WEIGHTS_FACTOR / (1 << 20)) + OVERHEAD_MB


def expired(last_used: float, now: float, ttl_s: float, busy: bool) -> bool:
    """An extra model unloads once idle (nothing queued or decoding) for `ttl_s`; `ttl_s` 0 keeps it."""
    return ttl_s > 0 and not busy and now - last_used >= ttl_s


@dataclass(frozen=True)
class Loaded:
    """A loaded model as the budget sees it."""

    id: str
    memory_mb: int
    busy: bool
    pinned: bool  # the default model: never unloaded
    last_used: float


def plan_load(need_mb: int, budget_mb: int, loaded: Sequence[Loaded]) -> list[str] | None:
    """Which loaded models to unload so that one needing `need_mb` fits in `budget_mb` (0 = no budget): none when
    it fits, else idle extra models, least recently used first. None when it cannot fit even so: the load is
    refused (503) instead of risking the process being killed for memory."""
    if budget_mb <= 0:
        return []
    used = sum(m.memory_mb for m in loaded)
    evict: list[str] = []
    for model in sorted((m for m in loaded if not m.busy and not m.pinned), key=lambda m: m.last_used):
        if used + need_mb <= budget_mb:
            break
        evict.append(model.id)
        used -= model.memory_mb
    return evict if used + need_mb <= budget_mb else None


def ever_fits(need_mb: int, budget_mb: int, loaded: Sequence[Loaded]) -> bool:
    """Whether a model needing `need_mb` could load once every other extra model is idle: False when the default
    model alone leaves too little of the budget, so waiting (a job) would never help."""
    return budget_mb <= 0 or need_mb + sum(m.memory_mb for m in loaded if m.pinned) <= budget_mb
