"""Shared test helpers: the real clips in ../shared/audio, text normalisation and error rates, a live server."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from stt_engine import textnorm
from stt_engine.textnorm import normalize  # noqa: F401  (tests import it from here)

REPO = Path(__file__).resolve().parents[1]
SHARED_AUDIO = REPO.parent / "shared" / "audio"


@dataclass(frozen=True)
class Clip:
    file: str
    language: str
    duration: float
    reference: str
    reference_alt: str

    @property
    def path(self) -> Path:
        return SHARED_AUDIO / self.file


def clips(language: str | None = None) -> list[Clip]:
    with (SHARED_AUDIO / "manifest.tsv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    out = [
        Clip(r["file"], r["language"], float(r["duration_seconds"]), r["reference"] or "", r["reference_alt"] or "")
        for r in rows
    ]
    return [c for c in out if language is None or c.language == language]


def clip(file: str) -> Clip:
    return next(c for c in clips() if c.file == file)


def error_rate(hypothesis: str, c: Clip) -> float:
    """WER (space-separated languages) or CER (ko, zh, ja), best of reference and reference_alt."""
    return textnorm.error_rate(hypothesis, (c.reference, c.reference_alt), c.language)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(env: dict[str, str] | None = None, ready_timeout: float = 120.0) -> Iterator[str]:
    """Start `stt-engine serve` on a free loopback port with `env` added; yield its base URL; stop it (SIGTERM)."""
    port = free_port()
    full_env = {**os.environ, "SERVER_HOST": "127.0.0.1", "SERVER_PORT": str(port), "LOG_LEVEL": "INFO"}
    full_env.setdefault("LOG_DIR", str(REPO / "logs" / "tests"))
    full_env.update(env or {})
    log_path = Path(full_env["LOG_DIR"]) / f"server-{port}.out"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stt_engine", "serve"], env=full_env, stdout=log_file, stderr=subprocess.STDOUT,
            cwd=str(REPO),
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + ready_timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode}: {log_path.read_text()[-3000:]}")
                try:
                    if httpx.get(base + "/health/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not ready in {ready_timeout}s: {log_path.read_text()[-3000:]}")
                time.sleep(0.25)
            yield base
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def post_audio(base: str, route: str, path: Path, timeout: float = 300.0, **fields: str) -> httpx.Response:
    with path.open("rb") as handle:
        return httpx.post(base + route, files={"file": (path.name, handle)}, data=fields, timeout=timeout)
