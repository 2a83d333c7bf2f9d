"""Untrusted media is parsed only in decoder processes: whatever a file does to its decoder, the server lives on.

On the real server with the real model: 8/12/64-channel WAVs with channels=split and mix (sync route and jobs),
answered with a transcript or the 400 that names MAX_SPLIT_CHANNELS, the server's process unchanged; a decoder
child killed mid-decode fails only its request; a decoder out of memory gives a clear error; a Matroska file whose
header claims 10 s but holds 4 h is refused without the server's memory growing.
"""

from __future__ import annotations

import shutil
import signal
import struct
import subprocess
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from stt_engine import decoder
from stt_engine.audio import SAMPLE_RATE
from stt_engine.audio import decode as decode_here
from stt_engine.config import Settings
from stt_engine.errors import AudioTooLong, InvalidAudio, InvalidRequest
from tests.jobs_support import submit, wait_status
from tests.support import ServerURL, clip, error_rate, post_audio, reset_peak_rss, rss_mb, running_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed (.ci/run installs it)"),
]
ROUTE = "/v1/audio/transcriptions"
VOICES = ["en/jfk.flac", "en/librispeech_1089-134686-0000.flac", "en/ljspeech_LJ050-0131.wav",
          "en/librivox_sense_and_sensibility-0870.wav"]
WER_BOUND = 0.25
MEMORY_MB = 350  # the decoders' address-space limit here (a child starts at ~225 MB): 20 minutes fit, 50 do not
GROWTH_LIMIT_MB = 300


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def _write_wav(path: Path, channels: list[np.ndarray]) -> Path:
    """A 16-bit PCM WAV (no channel mask: FFmpeg knows no speaker layout for it) with one row per channel."""
    length = max(len(c) for c in channels)
    data = np.zeros((length, len(channels)), dtype=np.int16)
    for i, c in enumerate(channels):
        data[: len(c), i] = np.clip(c * 32767, -32768, 32767).astype(np.int16)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(len(channels))
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(data.tobytes())
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("decoder")
    voices = [decode_here(clip(v).path).samples for v in VOICES]
    out: dict[str, Path] = {}
    # 8 channels: four voices, then the same four a second later (distinct signals on every channel)
    delay = np.zeros(SAMPLE_RATE, dtype=np.float32)
    out["split8"] = _write_wav(folder / "8ch.wav", voices + [np.concatenate([delay, v]) for v in voices])
    for n in (8, 12, 64):  # one voice on every channel: the mix is that voice
        out[f"same{n}"] = _write_wav(folder / f"{n}ch-same.wav", [voices[0]] * n)
    # 20 minutes of speech as Opus: long enough to decode that a decoder can be killed in the middle of it (one
    # clip encoded, then looped without re-encoding: the same file to decode, made in a second instead of twenty)
    piece, out["long"] = folder / "piece.ogg", folder / "20min.ogg"
    _ffmpeg("-i", str(clip(VOICES[1]).path), "-ac", "1", "-c:a", "libopus", "-b:a", "24k", str(piece))
    _ffmpeg("-stream_loop", "-1", "-i", str(piece), "-t", "1200", "-c", "copy", str(out["long"]))
    out["50min"] = folder / "50min.flac"  # 50 minutes: 190 MB of samples, over what MEMORY_MB leaves a decoder
    _ffmpeg("-stream_loop", "-1", "-i", str(clip(VOICES[1]).path), "-t", "3000", "-ac", "1", "-ar", "16000",
            "-c:a", "flac", str(out["50min"]))
    # 4 hours of Opus in Matroska whose header says 10 s: the Segment Duration element patched
    minute, honest = folder / "1m.mka", folder / "4h.mka"
    _ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "60", "-c:a", "libopus", "-b:a", "6k", str(minute))
    _ffmpeg("-stream_loop", "-1", "-i", str(minute), "-t", "14400", "-c", "copy", str(honest))
    data = bytearray(honest.read_bytes())
    at = data.find(b"\x44\x89\x88")  # Duration, an 8-byte float in milliseconds
    assert at > 0 and struct.unpack(">d", data[at + 3:at + 11])[0] > 14_000_000
    data[at + 3:at + 11] = struct.pack(">d", 10_000.0)
    out["lying"] = folder / "lying.mka"
    out["lying"].write_bytes(data)
    return out


@pytest.fixture(scope="module")
def server() -> Iterator[ServerURL]:
    with running_server({"DECODER_MEMORY_MB": str(MEMORY_MB), "DECODER_PROCESSES": "2"}) as base:
        yield base


def _alive(server: ServerURL) -> None:
    """The same server process answers: nothing killed it or replaced it."""
    assert psutil.Process(server.pid).is_running()
    assert httpx.get(server + "/health", timeout=10).status_code == 200


def _decoders(server: ServerURL) -> list[psutil.Process]:
    return [p for p in psutil.Process(server.pid).children()
            if "stt_engine.decoder" in " ".join(p.cmdline())]


def _by_channel(segments: list[dict]) -> dict[int, str]:
    out: dict[int, list[str]] = {}
    for s in segments:
        out.setdefault(s["channel"], []).append(s["text"])
    return {k: " ".join(v) for k, v in out.items()}


def _check_split8(segments: list[dict]) -> None:
    text = _by_channel(segments)
    assert set(text) == set(range(8)), text
    for channel, voice in enumerate(VOICES * 2):
        assert error_rate(text[channel], clip(voice)) <= WER_BOUND, (channel, text[channel])


def test_eight_channels_split_sync(server: ServerURL, files: dict[str, Path]) -> None:
    r = post_audio(server, ROUTE, files["split8"], language="en", response_format="diarized_json", channels="split")
    assert r.status_code == 200, r.text
    _check_split8(r.json()["segments"])
    _alive(server)


@pytest.mark.parametrize("n", [8, 12, 64])
def test_any_channel_count_mixes(server: ServerURL, files: dict[str, Path], n: int) -> None:
    r = post_audio(server, ROUTE, files[f"same{n}"], language="en", channels="mix")
    assert r.status_code == 200, r.text
    assert error_rate(r.json()["text"], clip(VOICES[0])) <= WER_BOUND, r.text
    _alive(server)


@pytest.mark.parametrize("n", [12, 64])
def test_split_over_the_limit_is_refused(server: ServerURL, files: dict[str, Path], n: int) -> None:
    r = post_audio(server, ROUTE, files[f"same{n}"], language="en", channels="split")
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "too_many_channels" and "MAX_SPLIT_CHANNELS" in error["message"], error
    assert f"{n} channels" in error["message"] and "at most 8" in error["message"], error
    r = submit(server, files[f"same{n}"], language="en", channels="split")
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_channels", r.text
    _alive(server)


def test_channels_as_jobs(server: ServerURL, files: dict[str, Path]) -> None:
    split = submit(server, files["split8"], language="en", channels="split")
    mixed = submit(server, files["same64"], language="en", channels="mix")
    assert split.status_code == 202 and mixed.status_code == 202, (split.text, mixed.text)
    job = wait_status(server, split.json()["id"], {"completed", "failed"}, timeout=600)
    assert job["status"] == "completed", job
    _check_split8(job["result"]["segments"])
    job = wait_status(server, mixed.json()["id"], {"completed", "failed"}, timeout=600)
    assert job["status"] == "completed", job
    assert error_rate(job["result"]["text"], clip(VOICES[0])) <= WER_BOUND, job["result"]["text"]
    _alive(server)


def test_killed_decoder_fails_only_its_request(server: ServerURL, files: dict[str, Path]) -> None:
    result: dict[str, httpx.Response] = {}

    def send() -> None:
        result["long"] = post_audio(server, ROUTE, files["long"], language="en")

    sender = threading.Thread(target=send)
    sender.start()
    busy: psutil.Process | None = None
    deadline = time.monotonic() + 120
    while busy is None and time.monotonic() < deadline and sender.is_alive():
        for child in _decoders(server):  # the one decoding: it has used more than a second of CPU on this file
            try:
                if sum(child.cpu_times()[:2]) > 1.5 and child.cpu_percent(interval=0.2) > 10:
                    busy = child
                    break
            except psutil.Error:
                continue
    assert busy is not None, "no decoder was seen decoding the long file"
    busy.send_signal(signal.SIGKILL)
    sender.join(timeout=300)
    r = result["long"]
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "decoder_crashed" and "SIGKILL" in error["message"], error
    _alive(server)
    r = post_audio(server, ROUTE, clip(VOICES[0]).path, language="en")  # the next request is served
    assert r.status_code == 200 and error_rate(r.json()["text"], clip(VOICES[0])) <= WER_BOUND, r.text
    assert busy.pid not in [p.pid for p in _decoders(server)]


def test_decoder_out_of_memory_is_a_clear_error(server: ServerURL, files: dict[str, Path]) -> None:
    r = post_audio(server, ROUTE, files["50min"], language="en")
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] in {"decoder_out_of_memory", "decoder_crashed"}, error
    assert "DECODER_MEMORY_MB" in error["message"] or "decoder process" in error["message"], error
    _alive(server)
    r = post_audio(server, ROUTE, clip(VOICES[1]).path, language="en")
    assert r.status_code == 200 and error_rate(r.json()["text"], clip(VOICES[1])) <= WER_BOUND, r.text


def test_lying_duration_is_refused_from_the_packets(server: ServerURL, files: dict[str, Path]) -> None:
    reset_peak_rss(server.pid)
    before = rss_mb(server.pid)
    started = time.perf_counter()
    r = post_audio(server, ROUTE, files["lying"])
    elapsed = time.perf_counter() - started
    growth = rss_mb(server.pid, "VmHWM") - before
    print(f"lying 4 h Matroska (header: 10 s): {r.status_code} in {elapsed:.2f} s, server peak +{growth:.0f} MB")
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "audio_too_long", r.text
    assert growth < GROWTH_LIMIT_MB
    _alive(server)


# --- the pool itself, without a server ------------------------------------------------------------------------------


@pytest.fixture
def pool_settings() -> Iterator[Settings]:
    settings = Settings(_env_file=None, decoder_processes=1, decoder_max_files=2)
    decoder.start(settings)
    yield settings
    decoder.stop()


def test_errors_cross_the_process_boundary_intact(pool_settings: Settings) -> None:
    with pytest.raises(InvalidAudio) as caught:
        decoder.decode(b"not audio at all" * 64)
    assert caught.value.status == 400 and caught.value.code == "unsupported_format"
    with pytest.raises(AudioTooLong) as too_long:
        decoder.probe(clip(VOICES[0]).path, max_seconds=2.0)
    assert too_long.value.status == 422 and "MAX_AUDIO_SECONDS" in too_long.value.message
    with pytest.raises(FileNotFoundError):
        decoder.decode("/nonexistent/audio.wav")


def test_children_are_recycled_and_samples_match(pool_settings: Settings) -> None:
    path = clip(VOICES[0]).path
    here = decode_here(path)
    seen = set()
    for _ in range(3):
        decoded = decoder.decode(path)
        assert np.array_equal(decoded.samples, here.samples)
        seen.add(tuple(decoder.pool().pids()))
        time.sleep(0.5)
    deadline = time.monotonic() + 30
    while not decoder.pool().pids() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len({pid for pids in seen for pid in pids}) >= 2  # after DECODER_MAX_FILES=2 a new child took over


def test_split_limit_policy() -> None:
    settings = Settings(_env_file=None, max_split_channels=8)
    decoder.split_channel_limit(8, settings)
    with pytest.raises(InvalidRequest) as caught:
        decoder.split_channel_limit(9, settings)
    assert caught.value.status == 400 and "at most 8 (MAX_SPLIT_CHANNELS)" in caught.value.message
