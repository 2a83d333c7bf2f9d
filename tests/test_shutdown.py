"""SIGTERM: the server stops accepting connections, lets the in-flight transcription finish, then exits 0.

Each test has its own server (it is signalled). Where the real model matters (an in-flight real transcription that
must come back right; a cut mid-decoding, where CTranslate2's threads must not take the process down) the server
runs the bundled model; the drain's policy (queued requests, uploads still arriving, post-processing) runs on the
stand-in engine with a fixed decode time, so its outcome does not depend on the machine's speed or load.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.fake_engine import FAKE_TEXT
from tests.llm_fixtures import VLLMStandIn
from tests.support import (
    REPO,
    Engine,
    clip,
    error_rate,
    free_port,
    serve_command,
    server_env,
    wait_queue,
    wait_ready,
)

LONG = "en/en_longform_librispeech_librivox_concat.wav"  # 77.7 s: several seconds of decoding on CPU
MEDIUM = "en/picovoice_diarization_test_3spk.wav"  # 19.8 s: still decoding when the listener closes, on CPU
SHORT = "en/picovoice_test_en.wav"  # 5.9 s

Outcome = dict[str, httpx.Response | BaseException]

# each test starts, signals and waits out a server of its own, with deliberate waits (slow uploads, LLM delays):
# in `make test`, not in the quick loop
pytestmark = pytest.mark.slow


@contextlib.contextmanager
def server_process(
    log_dir: Path, engine: Engine = "real", **env: str
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`stt-engine serve` as a child we signal ourselves (tests.support.running_server hides the process)."""
    port = free_port()
    full_env = server_env({"SERVER_HOST": "127.0.0.1", "SERVER_PORT": str(port), "LOG_DIR": str(log_dir),
                           "DATA_DIR": str(log_dir / "data"), **env})
    out = (log_dir / "server.out").open("wb")
    proc = subprocess.Popen(serve_command(engine), env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, log_dir / "server.out", 300)
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()


def _accepts_connections(base: str) -> bool:
    host, port = base.rsplit("/", 1)[-1].split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def _in_background(request: Callable[[], httpx.Response]) -> tuple[threading.Thread, Outcome]:
    """Run `request` on a thread; its response, or what it raised, lands in the returned dict under "response"."""
    result: Outcome = {}

    def run() -> None:
        try:
            result["response"] = request()
        except BaseException as exc:  # noqa: BLE001 - reported by the test's assertion
            result["response"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def _post_file(base: str, route: str, name: str, *, timeout: float, **data: str) -> Callable[[], httpx.Response]:
    """A multipart POST of the clip `name` to `route`, to run with `_in_background`."""
    path = clip(name).path

    def post() -> httpx.Response:
        with path.open("rb") as handle:
            return httpx.post(base + route, files={"file": handle}, data=data, timeout=timeout)

    return post


def _wait_until_queued(base: str, requests: int, worker: threading.Thread, result: Outcome) -> None:
    """Until /health shows `requests` requests queued or decoding, while `worker` runs."""
    wait_queue(base, f"{requests} requests queued", lambda q: q["requests"] >= requests or not worker.is_alive())
    assert worker.is_alive(), result


def test_sigterm_during_long_transcription(tmp_path: Path) -> None:
    # a grace far beyond the clip's decoding on any machine (120 s ran out under a load average of 25)
    with server_process(tmp_path, SHUTDOWN_GRACE_S="1200") as (proc, base):
        worker, result = _in_background(
            _post_file(base, "/v1/audio/transcriptions", MEDIUM, timeout=1300, language="en"))
        _wait_until_queued(base, 1, worker, result)
        time.sleep(0.5)  # well inside the decoding
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)

        # stops accepting new connections while the transcription is still running
        stop_deadline = time.monotonic() + 10
        while _accepts_connections(base) and time.monotonic() < stop_deadline:
            time.sleep(0.1)
        assert not _accepts_connections(base)
        assert worker.is_alive(), "the transcription ended before the listener closed; use a longer clip"

        worker.join(timeout=1300)
        response = result["response"]
        assert isinstance(response, httpx.Response), response
        assert response.status_code == 200, response.text
        assert error_rate(response.json()["text"], clip(MEDIUM)) <= 0.25
        assert proc.wait(timeout=60) == 0
        print(f"SHUTDOWN: request finished {time.monotonic() - signalled:.1f} s after SIGTERM; exit code 0")
    console = (tmp_path / "server.out").read_text(encoding="utf-8", errors="replace")
    assert "stopped" in console and "Traceback" not in console


def test_sigterm_when_idle_exits_0(tmp_path: Path) -> None:
    with server_process(tmp_path, "fake") as (proc, _base):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


@pytest.mark.parametrize("engine", ["fake", "real"])
def test_past_the_grace_a_request_gets_503_in_its_error_shape(tmp_path: Path, engine: Engine) -> None:
    """With SHUTDOWN_GRACE_S=1 a long transcription is cut off: its client gets a 503 in OpenAI's error shape
    (never uvicorn's plain 500), no upload is left behind, and the process exits 0, promptly. On the stand-in
    (6 s a decode step) the cut always lands mid-decode, so the 503 is required; on the real model the cut lands
    inside CTranslate2's decoding, whose threads must not take the process down (a 200 is allowed there: a fast
    machine may finish first)."""
    uploads = tmp_path / "tmp"  # the server's own TMPDIR: other servers on the machine write theirs to /tmp
    uploads.mkdir()
    slow = {"FAKE_ENGINE_DECODE_S": "6"} if engine == "fake" else {}
    with server_process(tmp_path, engine, SHUTDOWN_GRACE_S="1", TMPDIR=str(uploads), **slow) as (proc, base):
        worker, result = _in_background(
            _post_file(base, "/v1/audio/transcriptions", LONG, timeout=120))
        _wait_until_queued(base, 1, worker, result)
        time.sleep(0.4)  # past VAD, inside the decoding
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0  # promptly: the grace is 1 s, not the clip's decoding time
        worker.join(timeout=30)
        response = result["response"]
        assert isinstance(response, httpx.Response), response
        assert response.status_code in ((503,) if engine == "fake" else (200, 503)), response.text
        if response.status_code == 503:
            assert response.json()["error"]["code"] == "shutting_down", response.text
    assert not list(uploads.glob("stt-upload-*")), "an upload was left behind"


def _slow_upload(base: str, name: str, seconds: float) -> Callable[[], httpx.Response]:
    """A multipart POST of the clip `name` whose body takes `seconds` to arrive (a slow client, or a big file)."""
    boundary = "stt-engine-test-boundary"
    path = clip(name).path
    data = path.read_bytes()
    pieces = 20

    def body() -> Iterator[bytes]:
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
               "Content-Type: audio/wav\r\n\r\n").encode()
        step = len(data) // pieces + 1
        for i in range(0, len(data), step):
            yield data[i: i + step]
            time.sleep(seconds / pieces)
        yield (f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="language"\r\n\r\nen\r\n'
               f"--{boundary}--\r\n").encode()

    return lambda: httpx.post(base + "/v1/audio/transcriptions", content=body(), timeout=120,
                              headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})


def _wait_until_arriving(base: str, worker: threading.Thread, result: Outcome) -> None:
    """Until the server is serving a request besides this probe (the slow upload has reached it): SIGTERM before
    that would refuse the connection, which is not what these tests are about (and happened under load)."""
    deadline = time.monotonic() + 120
    while True:
        metrics = httpx.get(base + "/metrics", timeout=30).text
        line = next(x for x in metrics.splitlines() if x.startswith("stt_http_requests_in_flight "))
        if float(line.split()[1]) >= 2:  # the upload and this /metrics request
            return
        assert time.monotonic() < deadline and worker.is_alive(), result
        time.sleep(0.02)


def _served_or_refused(response: httpx.Response | BaseException, *, served: bool) -> None:
    """The promise: the (stand-in engine's) transcript (required when `served`), or a 503 in the route's error
    shape."""
    assert isinstance(response, httpx.Response), response
    if served or response.status_code == 200:
        assert response.status_code == 200, response.text
        assert FAKE_TEXT in response.json()["text"], response.text
    else:
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "shutting_down", response.text


@pytest.mark.parametrize("signal_after", [0.3, 1.5])
def test_sigterm_during_an_upload_serves_it_within_the_grace(tmp_path: Path, signal_after: float) -> None:
    """A request whose body is still arriving when SIGTERM comes was accepted before it: it is transcribed (the
    drain waits for it and admits it), not refused; then the process exits 0."""
    with server_process(tmp_path, "fake", SHUTDOWN_GRACE_S="120", FAKE_ENGINE_DECODE_S="0.5") as (proc, base):
        worker, result = _in_background(_slow_upload(base, SHORT, 3.0))
        _wait_until_arriving(base, worker, result)
        time.sleep(signal_after)
        proc.send_signal(signal.SIGTERM)
        worker.join(timeout=240)
        _served_or_refused(result.get("response", RuntimeError("no response")), served=True)
        assert proc.wait(timeout=60) == 0


def test_an_upload_still_arriving_past_the_grace_gets_503_in_its_error_shape(tmp_path: Path) -> None:
    with server_process(tmp_path, "fake", SHUTDOWN_GRACE_S="1") as (proc, base):
        worker, result = _in_background(_slow_upload(base, SHORT, 4.0))
        _wait_until_arriving(base, worker, result)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        worker.join(timeout=60)
        _served_or_refused(result.get("response", RuntimeError("no response")), served=False)
        assert result["response"].status_code == 503  # type: ignore[union-attr]
        assert proc.wait(timeout=60) == 0


@pytest.mark.parametrize("grace", ["300", "1"])
def test_sigterm_with_requests_queued(tmp_path: Path, grace: str) -> None:
    """One worker busy with a long file and two short requests queued behind it when SIGTERM comes: with room in
    the grace all three are transcribed; past it each gets its transcript or a 503 in the error shape. The
    stand-in engine takes 5 s a request (long enough for the other two to queue behind the first: the test waits
    for /health to count them), so "room in the grace" (300 s for 15 s of work) does not depend on the machine's
    speed, as it did with a real 78 s clip and a 60 s grace."""
    clips = (LONG, SHORT, SHORT)
    with server_process(tmp_path, "fake", SHUTDOWN_GRACE_S=grace, FAKE_ENGINE_DECODE_S="5") as (proc, base):
        posts = [_post_file(base, "/v1/audio/transcriptions", name, timeout=300, language="en")
                 for name in clips]
        running = [_in_background(posts[0])]
        _wait_until_queued(base, 1, *running[0])
        running += [_in_background(post) for post in posts[1:]]
        _wait_until_queued(base, 3, *running[-1])
        proc.send_signal(signal.SIGTERM)
        for worker, _ in running:
            worker.join(timeout=400)
        for _, result in running:
            _served_or_refused(result.get("response", RuntimeError("no response")), served=grace == "300")
        assert proc.wait(timeout=60) == 0


def test_sigterm_during_post_processing(tmp_path: Path, vllm: VLLMStandIn) -> None:
    """SIGTERM while the LLM is still writing a summary (4 s, inside the grace): the client gets its transcript and
    the summary, then the process exits 0."""
    vllm.behaviour.delay_s = 4.0
    with server_process(tmp_path, "fake", SHUTDOWN_GRACE_S="120", VLLM_BASE_URL=vllm.base_url,
                        VLLM_TIMEOUT_S="60") as (proc, base):
        worker, result = _in_background(_post_file(base, "/transcribe", SHORT, timeout=120,
                                                   language="en", postprocess="summarize"))
        deadline = time.monotonic() + 60
        while not vllm.generation_requests():
            assert time.monotonic() < deadline and worker.is_alive(), result
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        worker.join(timeout=240)
        response = result.get("response", RuntimeError("no response"))
        _served_or_refused(response, served=True)
        assert response.json()["postprocess"]["text"], response.text  # type: ignore[union-attr]
        assert proc.wait(timeout=60) == 0
