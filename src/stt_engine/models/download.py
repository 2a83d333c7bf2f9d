"""`stt-engine download NAME`: fetch a CTranslate2 Whisper model from the Hugging Face hub into a plain folder.

Run on a connected machine; the folder (with its `manifest.json`) is then carried to the air-gapped server.

How it stays safe:
- A short metadata request comes first (`HF_ENDPOINT`, timeout 10 s), so an offline machine or a dead mirror fails in
  well under a second with a message that says what to do, instead of hanging or printing a traceback.
- Files land in a hidden staging folder `.NAME.partial/` next to the target. huggingface_hub keeps its partial
  files there, so running the same command again resumes where it stopped.
- Every file is checked against the size (and, for LFS files, the sha256) the hub reported; only then is
  `manifest.json` written and the staging folder renamed into place. A half-written model therefore never carries a
  manifest, never sits under a name the server looks for, and can never pass `models verify`.

Tokens: `HF_TOKEN`, `HUGGINGFACE_HUB_TOKEN` or `HUGGING_FACE_HUB_TOKEN` (first set wins), else a stored `hf auth login`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stt_engine.errors import STTError
from stt_engine.models.catalog import ALLOW_PATTERNS, CatalogEntry, lookup
from stt_engine.models.verify import MANIFEST_NAME, sha256_file, verify_model_dir, write_manifest

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
TOKEN_VARIABLES = ("HF_TOKEN", "HUGGINGFACE_HUB_TOKEN", "HUGGING_FACE_HUB_TOKEN")


class DownloadError(STTError):
    """The model could not be fetched; the message says why and what to do."""

    code = "download_failed"


@dataclass(frozen=True)
class ExpectedFile:
    """A file as the hub describes it: size, plus sha256 (LFS files) or git blob id (small files)."""

    name: str
    size: int | None
    sha256: str | None
    blob_id: str | None


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    repo_id: str
    revision: str
    skipped: bool  # True when a verified copy was already there


def hub_token() -> str | None:
    """The first token set in the environment; None lets huggingface_hub fall back to a stored login."""
    for variable in TOKEN_VARIABLES:
        value = os.environ.get(variable, "").strip()
        if value:
            return value
    return None


def hub_endpoint() -> str:
    """`HF_ENDPOINT` (a mirror) or huggingface.co, read at call time so tests and wrappers can change it."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _offline_requested() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _wanted(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in ALLOW_PATTERNS)


def _lfs_sha256(lfs: Any) -> str | None:
    if lfs is None:
        return None
    value = lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
    return str(value).lower() if value else None


def git_blob_id(path: Path) -> str:
    """Git's object id of a file (sha1 of "blob <size>\\0" + content): how the hub identifies small files."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    digest.update(path.read_bytes())
    return digest.hexdigest()


def _explain_failure(exc: Exception, entry: CatalogEntry, endpoint: str, dest: Path) -> DownloadError:
    """Turn a huggingface_hub / HTTP exception into a message a user can act on."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    carry = (
        f"On an offline server, download on a connected machine instead (`stt-engine download {entry.name}`) and "
        f"copy the folder {dest} here, or build an offline bundle there (`stt-engine bundle --model {entry.name}`)."
    )
    if isinstance(exc, GatedRepoError):
        return DownloadError(
            f"{entry.repo_id} is gated: accept its terms on the hub and set HF_TOKEN (or HUGGINGFACE_HUB_TOKEN)."
        )
    if isinstance(exc, RevisionNotFoundError):
        return DownloadError(f"{entry.repo_id} has no such revision: {exc}")
    if isinstance(exc, RepositoryNotFoundError):
        return DownloadError(
            f"{entry.repo_id} was not found on {endpoint} (or it is private: set HF_TOKEN or HUGGINGFACE_HUB_TOKEN)."
        )
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            return DownloadError(f"{endpoint} refused access to {entry.repo_id} (HTTP {status}): set HF_TOKEN.")
        return DownloadError(f"{endpoint} answered an error for {entry.repo_id}: {exc}. {carry}")
    return DownloadError(
        f"Cannot reach the Hugging Face hub at {endpoint} ({type(exc).__name__}: {exc}). This machine looks offline "
        f"or the endpoint is wrong. {carry} Behind a mirror, set HF_ENDPOINT to its URL."
    )


def fetch_repo_files(entry: CatalogEntry, *, endpoint: str, token: str | None, revision: str | None,
                     timeout: float) -> tuple[str, list[ExpectedFile]]:
    """Ask the hub for the commit and the list of model files (with sizes and hashes). Raises on any failure."""
    from huggingface_hub import HfApi

    info = HfApi(endpoint=endpoint, token=token).model_info(
        entry.repo_id, revision=revision, files_metadata=True, timeout=timeout
    )
    files = [
        ExpectedFile(s.rfilename, s.size, _lfs_sha256(s.lfs), s.blob_id)
        for s in (info.siblings or [])
        if _wanted(s.rfilename)
    ]
    return str(info.sha), files


def snapshot(entry: CatalogEntry, *, staging: Path, endpoint: str, token: str | None, revision: str,
             timeout: float) -> None:
    """Download the wanted files of one commit into `staging` (resumable: huggingface_hub keeps partial files there)."""
    from huggingface_hub import snapshot_download

    snapshot_download(
        entry.repo_id,
        revision=revision,
        local_dir=staging,
        allow_patterns=list(ALLOW_PATTERNS),
        token=token,
        endpoint=endpoint,
        etag_timeout=timeout,
    )


def check_downloaded(staging: Path, expected: list[ExpectedFile]) -> dict[str, str]:
    """Compare the staged files with what the hub promised; return their sha256 (for the manifest).

    Raises `DownloadError` naming the first file that is missing, short or altered.
    """
    hashes: dict[str, str] = {}
    for item in expected:
        path = staging / item.name
        if not path.is_file():
            raise DownloadError(f"download incomplete: {item.name} is missing; run the same command again to resume")
        if item.size is not None and path.stat().st_size != item.size:
            raise DownloadError(
                f"download incomplete: {item.name} has {path.stat().st_size} bytes, the hub says {item.size}; "
                "run the same command again to resume"
            )
        digest = sha256_file(path)
        if item.sha256 and digest != item.sha256:
            path.unlink()
            raise DownloadError(f"{item.name} does not match the hub's sha256; it was removed, run the command again")
        if not item.sha256 and item.blob_id and git_blob_id(path) != item.blob_id:
            path.unlink()
            raise DownloadError(f"{item.name} does not match the hub's blob id; it was removed, run the command again")
        hashes[item.name] = digest
    return hashes


def download_model(name: str, *, dest: Path | None = None, models_dir: Path = Path("models"),
                   revision: str | None = None, timeout: float = 10.0, force: bool = False) -> DownloadResult:
    """Fetch model `name` (short name or repo id) into `dest` (default `models_dir/<dirname>`), with a manifest."""
    try:
        entry = lookup(name)
    except ValueError as exc:
        raise DownloadError(str(exc), code="unknown_model") from exc
    dest = Path(dest) if dest is not None else Path(models_dir) / entry.dirname
    endpoint = hub_endpoint()
    token = hub_token()

    if not force and (dest / MANIFEST_NAME).is_file() and verify_model_dir(dest).ok:
        log.info("%s is already present and verified", dest)
        return DownloadResult(dest, entry.repo_id, "", skipped=True)
    if _offline_requested():
        raise DownloadError(
            f"HF_HUB_OFFLINE is set, so nothing can be downloaded. Unset it on a connected machine, run "
            f"`stt-engine download {entry.name}` there and copy {dest} to this one."
        )

    try:
        commit, expected = fetch_repo_files(entry, endpoint=endpoint, token=token, revision=revision, timeout=timeout)
    except Exception as exc:  # any failure here means "could not talk to the hub": explain, don't trace back
        raise _explain_failure(exc, entry, endpoint, dest) from exc
    if not any(item.name == "model.bin" for item in expected):
        raise DownloadError(
            f"{entry.repo_id} has no model.bin, so it is not a CTranslate2 model. For a Transformers checkpoint, "
            "download it and run `stt-engine convert SRC DEST`."
        )

    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.partial"
    log.info("downloading %s@%s from %s into %s", entry.repo_id, commit[:12], endpoint, dest)
    try:
        snapshot(entry, staging=staging, endpoint=endpoint, token=token, revision=commit, timeout=timeout)
    except Exception as exc:
        err = _explain_failure(exc, entry, endpoint, dest)
        raise DownloadError(f"{err.message} Partial files are kept in {staging}; the same command resumes.") from exc

    hashes = check_downloaded(staging, expected)
    shutil.rmtree(staging / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping, not model content
    source = {"type": "huggingface", "repo_id": entry.repo_id, "revision": commit, "endpoint": endpoint}
    write_manifest(staging, name=entry.name, source=source, hashes=hashes)
    if dest.exists():
        old = dest.parent / f".{dest.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(staging, dest)
    return DownloadResult(dest, entry.repo_id, commit, skipped=False)
