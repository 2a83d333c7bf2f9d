"""`models verify` and the start-up check, on the real bundled model and on damaged copies of it.

A flipped byte (same size, different sha256) and a missing file must both be reported by name, make
`stt-engine models verify` exit 1, and make the server refuse to start unless VERIFY_MODEL=false.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stt_engine.config import Settings
from stt_engine.models.bundled import BUNDLED_NAME, assemble_bundled_model, bundled_parts_available
from stt_engine.models.cli import cmd_models_verify
from stt_engine.models.resolve import resolve_model
from stt_engine.models.verify import (
    MANIFEST_NAME,
    ModelVerificationError,
    read_manifest,
    verify_model_dir,
    write_manifest,
)

pytestmark = pytest.mark.skipif(not bundled_parts_available(),
                                reason="the bundled model packages (stt-engine[bundled-model]) are not installed")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundled_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled Whisper base, assembled (with its manifest) into a private cache folder."""
    return assemble_bundled_model(tmp_path_factory.mktemp("cache"))


def _copy(model: Path, dest: Path) -> Path:
    shutil.copytree(model, dest)
    return dest


@pytest.fixture(scope="module")
def flipped(bundled_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the model with one byte of model.bin inverted: same size, wrong sha256."""
    copy = _copy(bundled_model, tmp_path_factory.mktemp("flipped") / "model")
    with (copy / "model.bin").open("r+b") as handle:
        handle.seek(70_000_000)
        byte = handle.read(1)
        handle.seek(70_000_000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    return copy


@pytest.fixture(scope="module")
def missing(bundled_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the model without tokenizer.json."""
    copy = _copy(bundled_model, tmp_path_factory.mktemp("missing") / "model")
    (copy / "tokenizer.json").unlink()
    return copy


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stt_engine", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, cwd=REPO)


def test_bundled_assembly_writes_a_manifest_listing_every_file(bundled_model: Path) -> None:
    files = read_manifest(bundled_model)["files"]
    assert set(files) == {"model.bin", "config.json", "tokenizer.json", "vocabulary.json"}
    assert files["model.bin"]["sha256"] == "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"


def test_verify_passes_on_the_bundled_model(bundled_model: Path) -> None:
    result = verify_model_dir(bundled_model)
    assert result.ok, result.describe()
    assert result.checked == 4
    proc = _cli("models", "verify", str(bundled_model))
    assert proc.returncode == 0, proc.stderr
    assert "OK (4 files, sha256)" in proc.stdout


def test_verify_fails_on_a_flipped_byte(flipped: Path) -> None:
    result = verify_model_dir(flipped)
    assert not result.ok
    assert result.wrong_hash == ["model.bin"] and not result.missing and not result.wrong_size
    proc = _cli("models", "verify", str(flipped))
    assert proc.returncode == 1
    assert "checksum mismatch: model.bin" in proc.stderr


def test_quick_verify_checks_sizes_only(flipped: Path, missing: Path) -> None:
    assert verify_model_dir(flipped, full_hash=False).ok  # documented: --quick cannot see a flipped byte
    assert not verify_model_dir(missing, full_hash=False).ok


def test_verify_fails_on_a_missing_file(missing: Path) -> None:
    result = verify_model_dir(missing)
    assert not result.ok and result.missing == ["tokenizer.json"]
    proc = _cli("models", "verify", "--json", str(missing))
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["ok"] is False and report["missing"] == ["tokenizer.json"]


def test_verify_fails_on_a_truncated_file(bundled_model: Path, tmp_path: Path) -> None:
    copy = _copy(bundled_model, tmp_path / "model")
    with (copy / "vocabulary.json").open("r+b") as handle:
        handle.truncate(1000)
    result = verify_model_dir(copy)
    assert not result.ok
    assert result.wrong_size[0][0] == "vocabulary.json"
    assert "wrong size: vocabulary.json" in result.describe()


def test_a_manifest_cannot_point_outside_the_folder(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"x")
    manifest = {"files": {"../etc/passwd": {"size": 1, "sha256": "0" * 64}}}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    result = verify_model_dir(tmp_path)
    assert not result.ok and "unsafe path" in (result.manifest_error or "")


def test_folder_without_manifest_is_reported_not_passed(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"x")
    result = verify_model_dir(tmp_path)
    assert not result.ok and not result.has_manifest
    assert "models manifest" in result.describe()
    write_manifest(tmp_path, name="hand-made")
    assert verify_model_dir(tmp_path).ok


def test_unlisted_files_are_reported_but_not_fatal(bundled_model: Path, tmp_path: Path) -> None:
    copy = _copy(bundled_model, tmp_path / "model")
    (copy / "notes.txt").write_text("hello")
    result = verify_model_dir(copy)
    assert result.ok and result.unlisted == ["notes.txt"]


def test_resolve_model_refuses_a_damaged_model_and_names_the_file(flipped: Path, missing: Path) -> None:
    with pytest.raises(ModelVerificationError) as caught:
        resolve_model(Settings(whisper_model=str(flipped), verify_model=True))
    assert "model.bin" in caught.value.message and "VERIFY_MODEL=false" in caught.value.message
    with pytest.raises(ModelVerificationError) as caught:
        resolve_model(Settings(whisper_model=str(missing), verify_model=True))
    assert "missing: tokenizer.json" in caught.value.message


def test_resolve_model_loads_a_damaged_model_when_told_to(flipped: Path) -> None:
    resolved = resolve_model(Settings(whisper_model=str(flipped), verify_model=False))
    assert resolved.path == flipped.resolve()


def test_resolve_model_passes_the_good_bundled_model(bundled_model: Path) -> None:
    resolved = resolve_model(Settings(whisper_model="bundled", model_cache_dir=bundled_model.parent))
    assert resolved.path == bundled_model and resolved.source == "bundled"


def test_old_bundled_cache_without_manifest_is_rebuilt(tmp_path: Path, bundled_model: Path) -> None:
    cache = tmp_path / "cache"
    _copy(bundled_model, cache / BUNDLED_NAME)
    (cache / BUNDLED_NAME / MANIFEST_NAME).unlink()
    path = assemble_bundled_model(cache)
    assert verify_model_dir(path).ok


def test_server_refuses_to_start_on_a_flipped_model(flipped: Path, tmp_path: Path) -> None:
    proc = _cli("serve", "--port", "1", env={"WHISPER_MODEL": str(flipped), "LOG_DIR": str(tmp_path / "logs"),
                                             "VERIFY_MODEL": "true"})
    assert proc.returncode == 2
    assert "Refusing to load the model" in proc.stderr and "checksum mismatch: model.bin" in proc.stderr


def test_models_verify_defaults_to_the_model_the_server_would_load(bundled_model: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from stt_engine.config import get_settings

    monkeypatch.setenv("WHISPER_MODEL", str(bundled_model))
    get_settings.cache_clear()
    try:
        assert cmd_models_verify(argparse.Namespace(dir=None, quick=False, json=False)) == 0
    finally:
        get_settings.cache_clear()
