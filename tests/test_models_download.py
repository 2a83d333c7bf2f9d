"""`stt-engine download`: fails fast and clearly offline, never leaves a half model that verifies, and writes a
manifest only after every file matched what the hub promised.

The hub itself is unreachable from here, so the offline cases use real sockets (a closed port, a server that never
answers) and the success / interruption cases replace the two network calls with fakes.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stt_engine.models import download as dl
from stt_engine.models.catalog import lookup
from stt_engine.models.verify import MANIFEST_NAME, read_manifest, verify_model_dir
from tests.support import free_port

REPO = Path(__file__).resolve().parents[1]




@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A TCP port that accepts connections (kernel backlog) but never answers: a black-holed mirror."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def _download(models_dir: Path, *extra: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run `stt-engine download`; a hang (no timeout where there should be one) shows up as TimeoutExpired after
    300 s, far above any honest failure however loaded the machine. How fast it fails is printed, not asserted."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "stt_engine", "download", "tiny", "--models-dir", str(models_dir), *extra],
        capture_output=True, text=True, timeout=300, env={**clean, **env}, cwd=REPO,
    )
    print(f"download failed after {time.monotonic() - started:.1f} s")
    return proc, time.monotonic() - started


def _assert_nothing_verifiable(models_dir: Path) -> None:
    target = models_dir / lookup("tiny").dirname
    assert not target.exists(), "a failed download must not create the model folder"
    for folder in models_dir.rglob("*"):
        if folder.is_dir():
            assert not verify_model_dir(folder).ok, f"{folder} passes verification after a failed download"


def test_unreachable_endpoint_fails_within_seconds_with_advice(tmp_path: Path) -> None:
    proc, _ = _download(tmp_path, env={"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    assert proc.returncode != 0
    assert "Cannot reach the Hugging Face hub" in proc.stderr
    assert "connected machine" in proc.stderr and "HF_ENDPOINT" in proc.stderr
    assert "Traceback" not in proc.stderr
    _assert_nothing_verifiable(tmp_path)


def test_silent_endpoint_times_out(tmp_path: Path, silent_endpoint: str) -> None:
    proc, _ = _download(tmp_path, "--timeout", "2", env={"HF_ENDPOINT": silent_endpoint})
    assert proc.returncode != 0  # it gave up by itself: the endpoint never answers
    assert "Cannot reach the Hugging Face hub" in proc.stderr
    _assert_nothing_verifiable(tmp_path)


def test_offline_mode_refuses_at_once(tmp_path: Path) -> None:
    proc, _ = _download(tmp_path, env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode != 0 and "HF_HUB_OFFLINE is set" in proc.stderr


def test_tokens_and_endpoint_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in dl.TOKEN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert dl.hub_token() is None
    monkeypatch.setenv("HUGGINGFACE_HUB_TOKEN", "hf_legacy")
    assert dl.hub_token() == "hf_legacy"
    monkeypatch.setenv("HF_TOKEN", "hf_new")
    assert dl.hub_token() == "hf_new"
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example/")
    assert dl.hub_endpoint() == "https://mirror.example"


def test_catalog_matches_faster_whisper() -> None:
    from faster_whisper.utils import _MODELS

    for name in ("large-v3-turbo", "turbo", "large-v3", "medium", "small", "base", "tiny"):
        assert lookup(name).repo_id == _MODELS[name]
    assert lookup("large-v3-turbo").dirname == "openai_whisper-large-v3-turbo"
    assert lookup("turbo").dirname == "openai_whisper-large-v3-turbo"
    assert lookup("Systran/faster-whisper-small").dirname == "Systran_faster-whisper-small"
    with pytest.raises(ValueError, match="unknown model"):
        lookup("huge")


# --- the download path with fake network calls --------------------------------------------------------------

FILES = {"model.bin": b"\x00weights" * 1000, "config.json": b'{"a": 1}', "tokenizer.json": b'{"t": 2}',
         "vocabulary.json": b'["x"]'}


def _expected() -> list[dl.ExpectedFile]:
    out = []
    for name, data in FILES.items():
        if name == "model.bin":  # an LFS file: the hub gives its sha256
            out.append(dl.ExpectedFile(name, len(data), hashlib.sha256(data).hexdigest(), None))
        else:  # a small git file: the hub gives its blob id
            blob = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
            out.append(dl.ExpectedFile(name, len(data), None, blob))
    return out


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Replace the metadata call and the snapshot download; `state["fail_after"]` interrupts after N files."""
    state: dict[str, object] = {"fail_after": None, "corrupt": None, "calls": 0}
    monkeypatch.setattr(dl, "fetch_repo_files", lambda *a, **k: ("c" * 40, _expected()))

    def snapshot(entry: object, *, staging: Path, **kwargs: object) -> None:
        state["calls"] = int(state["calls"]) + 1  # type: ignore[call-overload]
        staging.mkdir(parents=True, exist_ok=True)
        (staging / ".cache" / "huggingface").mkdir(parents=True, exist_ok=True)
        for index, (name, data) in enumerate(FILES.items()):
            if state["fail_after"] is not None and index >= state["fail_after"]:  # type: ignore[operator]
                (staging / name).write_bytes(data[: len(data) // 2])  # a partial file, as a dropped link leaves
                raise ConnectionError("connection reset by peer")
            if (staging / name).is_file() and (staging / name).read_bytes() == data:
                continue  # resumed: already complete
            (staging / name).write_bytes(b"evil" + data[4:] if name == state["corrupt"] else data)

    monkeypatch.setattr(dl, "snapshot", snapshot)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return state


def test_download_writes_a_verified_manifest(tmp_path: Path, fake_hub: dict[str, object]) -> None:
    result = dl.download_model("tiny", models_dir=tmp_path)
    target = tmp_path / "openai_whisper-tiny"
    assert result.path == target and not result.skipped
    assert verify_model_dir(target).ok
    manifest = read_manifest(target)
    assert set(manifest["files"]) == set(FILES)
    assert manifest["source"]["repo_id"] == "Systran/faster-whisper-tiny"
    assert not (target / ".cache").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["openai_whisper-tiny"]  # no staging left behind
    again = dl.download_model("tiny", models_dir=tmp_path)
    assert again.skipped and fake_hub["calls"] == 1


def test_interrupted_download_leaves_nothing_verifiable_and_resumes(tmp_path: Path,
                                                                    fake_hub: dict[str, object]) -> None:
    fake_hub["fail_after"] = 2
    with pytest.raises(dl.DownloadError, match="resumes"):
        dl.download_model("tiny", models_dir=tmp_path)
    _assert_nothing_verifiable(tmp_path)
    staging = tmp_path / ".openai_whisper-tiny.partial"
    assert staging.is_dir() and not (staging / MANIFEST_NAME).exists()

    fake_hub["fail_after"] = None
    result = dl.download_model("tiny", models_dir=tmp_path)
    assert verify_model_dir(result.path).ok and not staging.exists()


def test_corrupted_file_is_rejected(tmp_path: Path, fake_hub: dict[str, object]) -> None:
    fake_hub["corrupt"] = "model.bin"
    with pytest.raises(dl.DownloadError, match="sha256"):
        dl.download_model("tiny", models_dir=tmp_path)
    _assert_nothing_verifiable(tmp_path)
    fake_hub["corrupt"] = "config.json"
    with pytest.raises(dl.DownloadError, match="blob id"):
        dl.download_model("tiny", models_dir=tmp_path / "second")
    _assert_nothing_verifiable(tmp_path / "second")


def test_repo_without_model_bin_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dl, "fetch_repo_files",
                        lambda *a, **k: ("c" * 40, [dl.ExpectedFile("config.json", 2, None, None)]))
    with pytest.raises(dl.DownloadError, match="stt-engine convert"):
        dl.download_model("openai/whisper-tiny", models_dir=tmp_path)


def test_thin_download_model_script_delegates(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "download_model.py"), "--help"], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0 and "HF_ENDPOINT" in proc.stdout
