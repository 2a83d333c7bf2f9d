"""`manifest.json`: every model file's size and sha256, written when a model folder is made, checked before use.

Why: models reach air-gapped servers on USB disks and through file shares. A truncated copy, a flipped bit or a
forgotten `tokenizer.json` otherwise shows up as garbage text or a crash deep inside CTranslate2. With a manifest
the server names the bad file at start-up instead.

Why a full sha256 and not just sizes: a flipped byte keeps the size. Hashing large-v3 (about 3 GB in float16) takes
a few seconds once at start-up, which is cheap next to loading the model; `VERIFY_MODEL=false` skips it, and
`stt-engine models verify --quick` does the size-only check by hand.

Hidden entries (`.cache/huggingface/`, `.assembled-ok`) and `manifest.json` itself are not listed: they are
bookkeeping, not model content.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from stt_engine.errors import ModelNotFound

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "stt-engine-model-manifest/1"


class ModelVerificationError(ModelNotFound):
    """The model folder does not match its manifest: the server must not load it."""

    code = "model_verification_failed"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in large blocks (hashlib releases the GIL, so this runs at disk speed)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def model_files(folder: Path) -> list[str]:
    """Relative POSIX paths of the files that make up the model: everything but hidden entries and the manifest."""
    found: list[str] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            rel = Path(root, name).relative_to(folder).as_posix()
            if rel != MANIFEST_NAME:
                found.append(rel)
    return found


def build_manifest(folder: Path, *, name: str, source: dict[str, Any] | None = None,
                   hashes: dict[str, str] | None = None) -> dict[str, Any]:
    """Describe every model file of `folder` in a manifest dictionary (not yet written).

    `hashes` passes sha256 values already computed (download checks them anyway): hashing 3 GB twice is waste.
    """
    known = hashes or {}
    files = {
        rel: {"size": (folder / rel).stat().st_size, "sha256": known.get(rel) or sha256_file(folder / rel)}
        for rel in model_files(folder)
    }
    if not files:
        raise ValueError(f"{folder} holds no files to put in a manifest")
    return {
        "format": MANIFEST_FORMAT,
        "name": name,
        "source": source or {},
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "files": files,
    }


def write_manifest(folder: Path, *, name: str, source: dict[str, Any] | None = None,
                   hashes: dict[str, str] | None = None) -> Path:
    """Write `folder/manifest.json` atomically (temporary file, then rename) and return its path."""
    manifest = build_manifest(folder, name=name, source=source, hashes=hashes)
    target = folder / MANIFEST_NAME
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(manifest, out, indent=2, sort_keys=True)
            out.write("\n")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def read_manifest(folder: Path) -> dict[str, Any]:
    """Load and sanity-check `folder/manifest.json`; raises `ValueError` with the reason when it is unusable."""
    path = folder / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not files:
        raise ValueError(f"{path} lists no files")
    for rel, entry in files.items():
        parts = PurePosixPath(rel).parts
        if PurePosixPath(rel).is_absolute() or ".." in parts or not parts:
            raise ValueError(f"{path} names an unsafe path: {rel!r}")
        valid = isinstance(entry, dict) and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)
        if not valid:
            raise ValueError(f"{path}: entry {rel!r} needs an integer size and a sha256 string")
    return data


@dataclass
class VerificationResult:
    """What `verify_model_dir` found. `ok` is False when any listed file is missing, resized or altered."""

    folder: Path
    has_manifest: bool
    checked: int = 0
    full_hash: bool = True
    manifest_error: str | None = None
    missing: list[str] = field(default_factory=list)
    wrong_size: list[tuple[str, int, int]] = field(default_factory=list)  # (file, expected, actual)
    wrong_hash: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)  # present but not in the manifest: reported, not fatal

    @property
    def ok(self) -> bool:
        return self.has_manifest and not (self.manifest_error or self.missing or self.wrong_size or self.wrong_hash)

    @property
    def bad_files(self) -> list[str]:
        return self.missing + [name for name, _, _ in self.wrong_size] + self.wrong_hash

    def describe(self) -> str:
        """One human-readable paragraph: what is wrong, file by file."""
        if not self.has_manifest:
            return f"{self.folder}: no {MANIFEST_NAME} (create one with `stt-engine models manifest {self.folder}`)"
        if self.manifest_error:
            return f"{self.folder}: {self.manifest_error}"
        if self.ok:
            how = "sha256" if self.full_hash else "size only"
            extra = f"; not in the manifest: {', '.join(self.unlisted)}" if self.unlisted else ""
            return f"{self.folder}: OK ({self.checked} files, {how}){extra}"
        problems = [f"missing: {name}" for name in self.missing]
        problems += [f"wrong size: {name} ({actual} bytes, manifest says {expected})"
                     for name, expected, actual in self.wrong_size]
        problems += [f"checksum mismatch: {name}" for name in self.wrong_hash]
        return f"{self.folder}: FAILED verification: " + "; ".join(problems)


def verify_model_dir(folder: Path, *, full_hash: bool = True) -> VerificationResult:
    """Check every file listed in `folder/manifest.json`: present, right size and (unless `full_hash=False`) sha256.

    Sizes are checked for all files before any hashing, so a missing or truncated file is reported at once.
    """
    folder = Path(folder)
    result = VerificationResult(folder=folder, has_manifest=(folder / MANIFEST_NAME).is_file(), full_hash=full_hash)
    if not result.has_manifest:
        return result
    try:
        files: dict[str, dict[str, Any]] = read_manifest(folder)["files"]
    except ValueError as exc:
        result.manifest_error = str(exc)
        return result

    to_hash: list[str] = []
    for rel, entry in sorted(files.items()):
        path = folder / rel
        if not path.is_file():
            result.missing.append(rel)
            continue
        size = path.stat().st_size
        if size != entry["size"]:
            result.wrong_size.append((rel, entry["size"], size))
            continue
        to_hash.append(rel)
    if full_hash:
        for rel in to_hash:
            if sha256_file(folder / rel) != files[rel]["sha256"].lower():
                result.wrong_hash.append(rel)
    result.checked = len(files)
    result.unlisted = [rel for rel in model_files(folder) if rel not in files]
    return result


def require_verified(folder: Path, *, full_hash: bool = True) -> VerificationResult:
    """Verify `folder` and raise `ModelVerificationError` (naming the bad files and the way out) when it fails.

    A folder without a manifest passes: hand-made folders stay loadable; `models manifest DIR` adds one.
    """
    result = verify_model_dir(folder, full_hash=full_hash)
    if result.has_manifest and not result.ok:
        raise ModelVerificationError(
            f"Refusing to load the model: {result.describe()}. The copy is damaged or incomplete: copy the folder "
            "again (or re-run `stt-engine download`), check it with `stt-engine models verify DIR`, "
            "or set VERIFY_MODEL=false to load it anyway."
        )
    return result
