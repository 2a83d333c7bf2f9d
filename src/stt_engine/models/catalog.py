"""Short model names -> Hugging Face repositories of CTranslate2 Whisper conversions, and their folder names.

The mapping is the one faster-whisper 1.2.1 itself uses (`faster_whisper.utils._MODELS`), so `large-v3-turbo`
means the same weights whether a user downloads with us or lets faster-whisper fetch them. Any `owner/repo` id
works too; it is stored as `owner_repo`.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MODEL = "large-v3-turbo"

# Same repositories as faster_whisper.utils._MODELS (faster-whisper 1.2.1).
CATALOG: dict[str, str] = {
    "large-v3-turbo": "mobiuslabsgmbh/faster-whisper-large-v3-turbo",
    "large-v3": "Systran/faster-whisper-large-v3",
    "large-v2": "Systran/faster-whisper-large-v2",
    "large-v1": "Systran/faster-whisper-large-v1",
    "medium": "Systran/faster-whisper-medium",
    "medium.en": "Systran/faster-whisper-medium.en",
    "small": "Systran/faster-whisper-small",
    "small.en": "Systran/faster-whisper-small.en",
    "base": "Systran/faster-whisper-base",
    "base.en": "Systran/faster-whisper-base.en",
    "tiny": "Systran/faster-whisper-tiny",
    "tiny.en": "Systran/faster-whisper-tiny.en",
    "distil-large-v3": "Systran/faster-distil-whisper-large-v3",
    "distil-large-v3.5": "distil-whisper/distil-large-v3.5-ct2",
    "distil-large-v2": "Systran/faster-distil-whisper-large-v2",
    "distil-medium.en": "Systran/faster-distil-whisper-medium.en",
    "distil-small.en": "Systran/faster-distil-whisper-small.en",
}
ALIASES: dict[str, str] = {"turbo": "large-v3-turbo", "large": "large-v3"}

# Only these files are fetched: the weights, the config and the tokenizer (what faster-whisper loads), not the
# READMEs, images or PyTorch checkpoints some repositories also carry.
ALLOW_PATTERNS: tuple[str, ...] = (
    "config.json",
    "preprocessor_config.json",
    "model.bin",
    "tokenizer.json",
    "vocabulary.*",
)


@dataclass(frozen=True)
class CatalogEntry:
    """What `stt-engine download NAME` fetches and where it puts it (relative to MODELS_DIR)."""

    name: str
    repo_id: str
    dirname: str


def canonical_name(name: str) -> str:
    """`turbo` -> `large-v3-turbo`; other names unchanged."""
    return ALIASES.get(name, name)


def lookup(name: str) -> CatalogEntry:
    """Resolve a short name or an `owner/repo` id; raises `ValueError` listing the known names otherwise."""
    name = name.strip()
    if "/" in name:
        owner, _, repo = name.partition("/")
        if not owner or not repo or "/" in repo:
            raise ValueError(f"{name!r} is not a Hugging Face repo id (expected owner/name)")
        return CatalogEntry(name=name, repo_id=name, dirname=name.replace("/", "_"))
    canonical = canonical_name(name)
    repo_id = CATALOG.get(canonical)
    if repo_id is None:
        known = ", ".join(list(CATALOG) + list(ALIASES))
        raise ValueError(f"unknown model {name!r}: use one of {known}, or a Hugging Face repo id (owner/name)")
    return CatalogEntry(name=canonical, repo_id=repo_id, dirname=f"openai_whisper-{canonical}")
