"""Helpers for the jobs tests: server and worker processes we can kill -9, a real redis-server, job polling."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.support import REAL_MODEL_OFF, REPO, Engine, free_port, serve_command, server_env, wait_ready

# Few threads per process: the test machine has 2 cores shared with others.
LIGHT = {"WHISPER_NUM_WORKERS": "1", "WHISPER_CPU_THREADS": "2", "LOG_LEVEL": "INFO"}


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log: Path
    base: str = ""

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()


def _spawn(command: list[str], env: dict[str, str], name: str) -> Proc:
    full = server_env({**LIGHT, **env})
    log = Path(full["LOG_DIR"]) / f"{name}.out"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=full, stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO),
                                start_new_session=True)
    return Proc(proc, log)


def start_server(env: dict[str, str], timeout: float = 300, engine: Engine = "real") -> Proc:
    """`stt-engine serve` on a free port, returned once /health/ready answers 200 (killable, unlike running_server).
    `engine="fake"`: on tests/fake_engine.py, for tests of the jobs machinery that do not look at the transcript."""
    port = free_port()
    p = _spawn(serve_command(engine), {"SERVER_HOST": "127.0.0.1", "SERVER_PORT": str(port), **env},
               f"jobs-server-{port}")
    p.base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(p.base, p.proc, p.log, timeout)
    except RuntimeError:
        p.kill9()
        raise
    return p


def start_worker(env: dict[str, str], timeout: float = 300, engine: Engine = "real") -> Proc:
    """`stt-engine worker`, returned once it logs "worker ready"; `engine="fake"` as for `start_server`."""
    if engine == "fake":
        command = [sys.executable, "-m", "tests.fake_engine", "worker"]
    elif os.environ.get(REAL_MODEL_OFF):
        raise RuntimeError(f"{REAL_MODEL_OFF} is set (the no-model tier) but a test started a worker; mark it")
    else:
        command = [sys.executable, "-m", "stt_engine", "worker"]
    p = _spawn(command, env, f"jobs-worker-{free_port()}")
    deadline = time.monotonic() + timeout
    while "worker ready" not in p.log.read_text(errors="replace"):
        if p.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {p.proc.returncode}: {p.tail()}")
        if time.monotonic() > deadline:
            p.kill9()
            raise RuntimeError(f"worker not ready in {timeout}s: {p.tail()}")
        time.sleep(0.25)
    return p


class RedisServer:
    """Debian's redis-server on a free loopback port, persisting every write (AOF) so a restart loses nothing."""

    def __init__(self, directory: Path) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (scripts/system-deps.sh installs it)")
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no"],
            stdout=(self.dir / "redis.log").open("ab"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), __import__("socket").create_connection(("127.0.0.1", self.port), 1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def submit(base: str, path: Path, headers: dict[str, str] | None = None, **fields: str) -> httpx.Response:
    with path.open("rb") as handle:
        return httpx.post(base + "/v1/jobs", files={"file": (path.name, handle)}, data=fields,
                          headers=headers or {}, timeout=120)


def get_job(base: str, job_id: str, headers: dict[str, str] | None = None) -> dict[str, Any] | None:
    """The job, or None while the server (or its store) is unreachable."""
    try:
        r = httpx.get(f"{base}/v1/jobs/{job_id}", headers=headers or {}, timeout=10)
    except httpx.HTTPError:
        return None
    if r.status_code >= 500:
        return None
    assert r.status_code == 200, r.text
    return r.json()


def wait_status(base: str, job_id: str, statuses: set[str], timeout: float = 300,
                headers: dict[str, str] | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        job = get_job(base, job_id, headers) or job
        if job is not None and job["status"] in statuses:
            return job
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} not {statuses} within {timeout}s: {job}")


@dataclass
class Receiver:
    """A local webhook receiver: answers 500 to the first `fail_first` deliveries, records every one."""

    fail_first: int = 0
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def signature_ok(self, delivery: dict[str, Any], secret: str) -> bool:
        expected = "sha256=" + hmac.new(
            secret.encode(), delivery["headers"]["x-stt-timestamp"].encode() + b"." + delivery["raw"], hashlib.sha256
        ).hexdigest()
        return hmac.compare_digest(expected, delivery["headers"].get("x-stt-signature", ""))


@contextlib.contextmanager
def webhook_receiver(fail_first: int = 0) -> Iterator[Receiver]:
    receiver = Receiver(fail_first=fail_first)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("content-length", 0)))
            with lock:
                receiver.deliveries.append({"raw": raw, "json": json.loads(raw), "time": time.monotonic(),
                                            "headers": {k.lower(): v for k, v in self.headers.items()}})
                failing = len(receiver.deliveries) <= receiver.fail_first
            self.send_response(500 if failing else 200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
