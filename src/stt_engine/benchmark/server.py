"""One way to start `stt-engine serve` for a measurement and wait until it is ready (the benchmark and the bench/
scripts share it), and a peak-memory sampler for any process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from stt_engine.benchmark.clips import REPO


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(base: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    """Poll /health/ready until 200; fail with the console's tail when the process exits or `timeout` runs out (a
    generous bound on starting, not a speed check). The benchmark and the tests start servers through this."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} during start-up:\n{_tail(log_path)}")
        try:
            if httpx.get(base + "/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server was not ready in {timeout:.0f} s:\n{_tail(log_path)}")
        time.sleep(0.1)


def _tail(log_path: Path, chars: int = 3000) -> str:
    try:
        return log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return ""


class RssSampler:
    """Peak resident memory of one process, sampled every 50 ms in a background thread."""

    def __init__(self, pid: int) -> None:
        import psutil

        self._process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self._process.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.05)

    def reset(self) -> None:
        self.peak = 0

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20

    def stop(self) -> None:
        self._stop.set()


class ServerProcess:
    """`stt-engine serve` (this interpreter, so PYTHONPATH and the venv carry over) on a free loopback port with
    `env` added (or on `port`), started in `cwd` (the checkout by default). Its console goes to `log_path`, kept, or
    to a temporary file removed at `stop()`; the tail is in the error when start-up fails. `health` is its /health
    once ready."""

    def __init__(self, env: dict[str, str] | None = None, ready_timeout: float = 300.0,
                 log_path: Path | None = None, cwd: Path | None = REPO, port: int | None = None) -> None:
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._keep_log = log_path is not None
        if log_path is None:
            handle, name = tempfile.mkstemp(prefix="stt-engine-bench-", suffix=".log")
            os.close(handle)
            log_path = Path(name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        full_env = {**os.environ, **(env or {}), "SERVER_HOST": "127.0.0.1", "SERVER_PORT": str(self.port)}
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "stt_engine", "serve"], env=full_env, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=str(cwd) if cwd else None)
        self.pid = self.proc.pid
        self._rss: RssSampler | None = None
        try:
            self._wait_ready(ready_timeout)
            self.health: dict[str, Any] = httpx.get(self.base + "/health", timeout=10).json()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        wait_ready(self.base, self.proc, self.log_path, timeout)

    @property
    def rss(self) -> RssSampler:
        """The server's peak-RSS sampler, started on first use (needs psutil: the `bench` extra)."""
        if self._rss is None:
            self._rss = RssSampler(self.pid)
        return self._rss

    def log_tail(self, chars: int = 3000) -> str:
        return _tail(self.log_path, chars)

    def transcribe(self, path: Path, payload: bytes | None = None, language: str | None = None,
                   **fields: str) -> str:
        """POST the file to /v1/audio/transcriptions (json) and return its text; raises on an error status."""
        data = {"response_format": "json", **({"language": language} if language else {}), **fields}
        body = payload if payload is not None else path.read_bytes()
        response = httpx.post(self.base + "/v1/audio/transcriptions", files={"file": (path.name, body)},
                              data=data, timeout=1800)
        response.raise_for_status()
        return str(response.json()["text"])

    def stop(self, grace: float = 60.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds."""
        if self._rss is not None:
            self._rss.stop()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._keep_log:
            self.log_path.unlink(missing_ok=True)


@contextmanager
def serving(env: dict[str, str] | None = None, ready_timeout: float = 300.0, log_path: Path | None = None,
            cwd: Path | None = REPO, port: int | None = None) -> Iterator[ServerProcess]:
    """A ready `ServerProcess` for the block; stopped after it, whatever happens."""
    server = ServerProcess(env, ready_timeout, log_path, cwd, port)
    try:
        yield server
    finally:
        server.stop()
