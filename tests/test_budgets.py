"""Descriptor and memory budgets on the real server with the real model.

Descriptors: a server started under `ulimit -n 256` keeps a reserve for uploads' files, logs, the model and the
decoders, and caps connections at the rest. 300 slow-header connections then leave uploads answered 200 or 503 with
Retry-After (never a 500), and once the attack is over uploads succeed with the right text.

Memory: after a mixed load (long and short files, streams, split channels, bad files, a few at once) the idle RSS
comes back within 25% of the figure after start-up and warm-up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from stt_engine.api.server import FDS_PER_CONNECTION, descriptor_budget, reserved_descriptors
from stt_engine.config import Settings
from stt_engine.errors import descriptors_exhausted
from stt_engine.memory import MemoryReclaimer, release_memory, rss_bytes, should_trim
from tests.support import clip, error_rate, post_audio, rss_mb, running_server

ROUTE = "/v1/audio/transcriptions"
NOFILE = 256
SLOW_CONNECTIONS = 300
HEADER_TIMEOUT_S = 6.0


# --- policy -------------------------------------------------------------------------------------------------
def test_budget_keeps_a_reserve_and_caps_connections() -> None:
    settings = Settings(_env_file=None)
    reserve = reserved_descriptors(settings)
    low = descriptor_budget(NOFILE, settings)
    assert low.reserve == reserve and 0 < low.max_connections == (NOFILE - reserve) // FDS_PER_CONNECTION
    assert low.max_connections * FDS_PER_CONNECTION + reserve <= NOFILE
    assert descriptor_budget(1 << 20, settings).max_connections == settings.server_max_connections
    assert descriptor_budget(10, settings).max_connections == 1  # never zero: the server still serves
    # more decoders or jobs at once keep more back
    assert reserved_descriptors(Settings(_env_file=None, max_concurrent_decodes=8)) > reserve


def test_descriptor_exhaustion_is_recognised_through_wrapping() -> None:
    emfile = OSError(24, "Too many open files")
    wrapped = RuntimeError("There was an error parsing the body")
    wrapped.__cause__ = emfile
    assert descriptors_exhausted(emfile) and descriptors_exhausted(wrapped)
    assert descriptors_exhausted(FileNotFoundError(2, "No usable temporary directory found in ['/tmp']"))
    assert not descriptors_exhausted(FileNotFoundError(2, "No such file")) and not descriptors_exhausted(None)


# --- a server under a low open-file limit (`running_server(open_files=...)`) ----------------------------------
def _metric(base: str, name: str) -> float:
    for line in httpx.get(base + "/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise LookupError(name)


def test_slow_connections_under_a_low_open_file_limit_never_make_uploads_fail() -> None:
    jfk = clip("en/jfk.flac")
    env = {"SERVER_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S), "LOG_LEVEL": "INFO"}
    with running_server(env, open_files=NOFILE) as base:
        cap = _metric(base, "stt_connection_limit")
        expected = descriptor_budget(NOFILE, Settings(_env_file=None)).max_connections
        assert cap == expected, (cap, expected)
        port = int(base.rsplit(":", 1)[1])

        answers: list[tuple[int, str | None, str]] = []  # status, Retry-After, text or error
        stop = threading.Event()

        def upload_loop() -> None:
            while not stop.is_set():
                try:
                    response = post_audio(base, ROUTE, jfk.path, timeout=120)
                    body = response.json()  # JSON, refusals included
                    text = body.get("text") or body["error"]["code"]
                    answers.append((response.status_code, response.headers.get("retry-after"), text))
                except httpx.TransportError as exc:  # no answer at all: reported below, never a 500
                    answers.append((0, None, type(exc).__name__))
                time.sleep(0.3)

        socks: list[socket.socket] = []
        uploader = threading.Thread(target=upload_loop, daemon=True)
        try:
            for _ in range(SLOW_CONNECTIONS):  # bounded, loopback only
                sock = socket.socket()
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sock.connect(("127.0.0.1", port))
                socks.append(sock)
            uploader.start()
            started = time.monotonic()
            while time.monotonic() - started < HEADER_TIMEOUT_S + 4:  # a header line a second from each
                for sock in socks:
                    with contextlib.suppress(OSError):
                        sock.send(b"GET /health HTTP/1.1\r\nHost: x\r\n" if time.monotonic() - started < 1
                                  else f"X-Slow-{int(time.monotonic())}: 1\r\n".encode())
                time.sleep(1.0)
        finally:
            stop.set()
            uploader.join(timeout=180)
            for sock in socks:
                sock.close()
        refused = _metric(base, "stt_connections_refused_total")
        statuses = [status for status, _, _ in answers]
        print(f"cap {cap:.0f} connections under ulimit -n {NOFILE}; {refused:.0f} refused at accept; uploads during "
              f"the attack: {statuses}")
        assert answers and 500 not in statuses, answers
        for status, retry_after, text in answers:
            assert status in (200, 503, 0), (status, text)
            if status == 503:
                assert retry_after and int(retry_after) > 0, (status, retry_after, text)
            if status == 200:
                assert error_rate(text, jfk) < 0.1, text
        assert statuses.count(0) <= len(statuses) // 2, answers  # resets are rare; most get an answer
        assert refused > 0

        # after the attack: uploads succeed, with the right text
        time.sleep(HEADER_TIMEOUT_S)
        for _ in range(3):
            response = post_audio(base, ROUTE, jfk.path, timeout=120)
            assert response.status_code == 200, response.text
            assert error_rate(response.json()["text"], jfk) < 0.1, response.text
        log = base.log_path.read_text(errors="replace")
        assert "unhandled error" not in log and " 500 " not in log, log[-3000:]


# --- memory ---------------------------------------------------------------------------------------------------
def test_reclaimer_trims_only_after_noticeable_growth() -> None:
    """The policy, with a fake resident size: small requests cost a measurement, growth past the step a trim
    (scheduled, not run inline), and a trim resets the baseline to where it left the process."""
    rss = [500 << 20]
    trims: list[int] = []

    def fake_trim() -> bool:
        trims.append(rss[0])
        rss[0] -= 300 << 20
        return True

    reclaimer = MemoryReclaimer(growth=32 << 20, measure=lambda: rss[0], trim=fake_trim)
    scheduled: list[object] = []
    rss[0] += 10 << 20  # a small request
    assert not reclaimer.after_request(scheduled.append) and not scheduled
    rss[0] += 400 << 20  # a long file
    assert reclaimer.after_request(scheduled.append) and len(scheduled) == 1 and not trims
    reclaimer.trim_now()
    assert trims == [910 << 20] and reclaimer.after_last_trim == rss[0] == 610 << 20
    assert reclaimer.trims == 1 and reclaimer.released == 300 << 20
    rss[0] += 20 << 20
    assert not reclaimer.after_request(scheduled.append)  # under the step again
    assert should_trim(100, 50, growth=50) and not should_trim(99, 50, growth=50)
    assert release_memory() in (True, False) and rss_bytes() > 0  # the real ones run here


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed (.ci/run installs it)")
def test_idle_memory_comes_back_after_a_mixed_load(tmp_path: Path) -> None:
    jfk, libri = clip("en/jfk.flac"), clip("en/librispeech_1089-134686-0000.flac")
    long_en, korean = clip("en/en_longform_librispeech_librivox_concat.wav"), clip("ko/ett_lmy02132.wav")
    short, music = clip("en/speech_recognition_english_123.wav"), clip("none/music_brahms_hungarian_dance_5.wav")
    stereo = tmp_path / "call.wav"  # one speaker per channel
    _ffmpeg("-i", str(jfk.path), "-i", str(libri.path), "-filter_complex",
            "[0:a]aformat=channel_layouts=mono[l];[1:a]aformat=channel_layouts=mono[r];[l][r]amerge=inputs=2[a]",
            "-map", "[a]", "-ar", "16000", str(stereo))
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(long_en.path.read_bytes()[:200_000])
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(os.urandom(50_000))

    with running_server() as base:
        def post(path: Path, route: str = ROUTE, **fields: str) -> httpx.Response:
            return post_audio(base, route, path, timeout=1200, **fields)  # a loaded CI machine is slow, not wrong

        loads = {
            "long": lambda: post(long_en.path),
            "korean": lambda: post(korean.path, language="ko"),
            "short": lambda: post(jfk.path),
            "original": lambda: post(short.path, "/transcribe"),
            "stream": lambda: post(libri.path, stream="true"),
            "split": lambda: post(stereo, channels="split", response_format="verbose_json"),
            "garbage": lambda: post(garbage),
            "truncated": lambda: post(truncated),
            "music": lambda: post(music.path),
        }
        assert post(jfk.path).status_code == 200  # the pools a first request builds
        time.sleep(2)
        warm = rss_mb(base.pid)
        order = ["long", "short", "stream", "split", "garbage", "truncated", "original", "music", "korean",
                 "split", "stream", "short"]
        with ThreadPoolExecutor(4) as pool:
            statuses = dict(zip(order, pool.map(lambda name: loads[name]().status_code, order)))
        after = rss_mb(base.pid)
        peak = rss_mb(base.pid, "VmHWM")
        # 504 only when a loaded machine makes a request outlast its timeout; never a 500
        assert statuses["garbage"] == 400 and set(statuses.values()) <= {200, 400, 504}, statuses
        deadline = time.monotonic() + 30
        while (idle := rss_mb(base.pid)) > warm * 1.25 and time.monotonic() < deadline:
            time.sleep(1.0)  # a short settle: the last request's memory is handed back after its answer
        reported = _metric(base, "process_resident_memory_bytes") / 2**20
        health = httpx.get(base + "/health", timeout=30).json()["memory"]
        assert health["rss_mb"] > 0 and health["trims"] >= 1 and _metric(base, "stt_memory_trims_total") >= 1
        print(f"RSS: {warm:.0f} MB after warm-up, {after:.0f} MB after the load (peak {peak:.0f} MB), "
              f"{idle:.0f} MB idle ({idle / warm:.2f}x); /metrics says {reported:.0f} MB")
        assert idle <= warm * 1.25, f"idle RSS {idle:.0f} MB, {warm:.0f} MB after warm-up"
