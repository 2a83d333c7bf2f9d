"""Uploads of odd shapes: a huge video frame beside the speech, many channels, files cut short in every container.

Only audio is decoded (a 16000x16000 PNG video frame costs almost nothing), any channel count is mixed down, and a
file missing its end gets 400 `truncated_audio` whatever the container, while the complete file still transcribes.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import wave
import zlib
from pathlib import Path

import numpy as np
import pytest

from tests.support import SHARED_AUDIO, clip, error_rate, post_audio, shared_server

SPEECH = "en/picovoice_test_en.wav"  # 5.9 s, 16 kHz mono, in the in-repo set
pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed (.ci/run installs it)")


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def _huge_png(path: Path, side: int = 16000) -> None:
    """A 16000x16000 RGB PNG of one colour: 0.7 MB on disk, 768 MB of pixels once decoded."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + side * 3)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def video_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("video")
    png = folder / "frame.png"
    _huge_png(png)
    out = {}
    for suffix in ("mkv", "mp4"):
        out[suffix] = folder / f"speech_and_frame.{suffix}"
        _ffmpeg("-i", str(png), "-i", str(SHARED_AUDIO / SPEECH), "-map", "0:v", "-map", "1:a", "-c:v", "copy",
                "-c:a", "aac", str(out[suffix]))
    return out


# Files are parsed in decoder processes; under this address-space limit a 768 MB frame cannot be decoded there, so a
# transcript (rather than 400 decoder_out_of_memory) shows the frame was skipped. The server's own RSS says nothing
# about it any more: no media is parsed in its process.
SMALL_DECODERS = {"DECODER_MEMORY_MB": "400"}


@pytest.mark.parametrize("suffix", ["mkv", "mp4"])
def test_video_frame_is_never_decoded(video_files: dict[str, Path], suffix: str) -> None:
    base = shared_server(SMALL_DECODERS)
    body = post_audio(base, "/transcribe", video_files[suffix]).json()
    assert body["success"] is True, body
    assert error_rate(body["text"], clip(SPEECH)) <= 0.2, body["text"]


@pytest.mark.parametrize("channels", [9, 32, 255])
def test_any_channel_count_is_mixed_down(server: str, tmp_path: Path, channels: int) -> None:
    with wave.open(str(SHARED_AUDIO / SPEECH)) as source:
        mono = np.frombuffer(source.readframes(source.getnframes()), dtype=np.int16)
        rate = source.getframerate()
    gains = np.where(np.arange(channels) % 2 == 0, 1.0, 0.5)  # a microphone array: every channel hears the speaker
    frames = (mono[:, None] * gains[None, :]).astype(np.int16)
    path = tmp_path / f"{channels}ch.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames.tobytes())
    body = post_audio(server, "/v1/audio/transcriptions", path, response_format="json", language="en").json()
    assert "text" in body, body
    assert error_rate(body["text"], clip(SPEECH)) <= 0.2, body["text"]


# container -> ffmpeg arguments; each file is then cut to 30 % and 60 % of its bytes
CONTAINERS = {
    "mp3": ["-c:a", "libmp3lame", "-b:a", "64k"],
    "m4a": ["-c:a", "aac", "-b:a", "64k"],
    "faststart.m4a": ["-c:a", "aac", "-b:a", "64k", "-movflags", "+faststart"],
    "ogg": ["-c:a", "libopus", "-b:a", "32k"],
    "webm": ["-c:a", "libopus", "-b:a", "32k"],
    "flac": ["-c:a", "flac"],
}


@pytest.fixture(scope="module")
def complete_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("complete")
    out = {}
    for suffix, args in CONTAINERS.items():
        out[suffix] = folder / f"speech.{suffix}"
        _ffmpeg("-i", str(SHARED_AUDIO / SPEECH), *args, str(out[suffix]))
    return out


@pytest.mark.parametrize("fraction", [0.3, 0.6])
@pytest.mark.parametrize("suffix", list(CONTAINERS))
def test_truncated_file_is_refused(
    fake_server: str, tmp_path: Path, complete_files: dict[str, Path], suffix: str, fraction: float
) -> None:
    """Refused before decoding (on the stand-in engine: a cut file that got through would come back 200)."""
    data = complete_files[suffix].read_bytes()
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(data[: int(len(data) * fraction)])
    response = post_audio(fake_server, "/v1/audio/transcriptions", cut)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "truncated_audio", response.text


def test_wav_shorter_than_its_header_is_refused(fake_server: str, tmp_path: Path) -> None:
    """The header declares 4.1 s, the file holds 2.3 s."""
    with wave.open(str(SHARED_AUDIO / SPEECH)) as source:
        rate = source.getframerate()
        pcm = source.readframes(int(4.1 * rate))
    path = tmp_path / "short.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
    data = path.read_bytes()
    path.write_bytes(data[: 44 + int(2.3 * rate) * 2])
    response = post_audio(fake_server, "/transcribe", path)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "truncated_audio", response.text


@pytest.mark.parametrize("suffix", list(CONTAINERS))
def test_complete_file_is_transcribed(server: str, complete_files: dict[str, Path], suffix: str) -> None:
    response = post_audio(server, "/v1/audio/transcriptions", complete_files[suffix], language="en")
    assert response.status_code == 200, response.text
    assert error_rate(response.json()["text"], clip(SPEECH)) <= 0.2, response.text
