"""The same speech in other containers/codecs/rates gives the original's text (ffmpeg makes the files)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import SHARED_AUDIO, clip, error_rate, post_audio

SOURCE = SHARED_AUDIO / "en" / "jfk.flac"
VARIANTS = {
    "mp3": ["-c:a", "libmp3lame", "-b:a", "64k"],
    "opus.ogg": ["-c:a", "libopus", "-b:a", "32k"],
    "m4a": ["-c:a", "aac", "-b:a", "64k"],
    "webm": ["-c:a", "libopus", "-b:a", "32k"],
    "8k.wav": ["-ar", "8000", "-ac", "1", "-c:a", "pcm_s16le"],
}

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def original_rate(server: str) -> float:
    return error_rate(post_audio(server, "/transcribe", SOURCE).json()["text"], clip("en/jfk.flac"))


def _make(tmp: Path, suffix: str, args: list[str]) -> Path:
    out = tmp / f"jfk.{suffix}"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(SOURCE), *args, str(out)], check=True)
    return out


@pytest.mark.parametrize("suffix", list(VARIANTS))
def test_reencoded_audio(server: str, tmp_path: Path, original_rate: float, suffix: str) -> None:
    path = _make(tmp_path, suffix, VARIANTS[suffix])
    body = post_audio(server, "/transcribe", path).json()
    assert body["success"] is True, body
    assert error_rate(body["text"], clip("en/jfk.flac")) <= original_rate + 0.05, body["text"]


def test_mp4_video_with_audio_track(server: str, tmp_path: Path) -> None:
    out = tmp_path / "jfk.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=blue:s=160x120:r=10", "-i", str(SOURCE),
         "-shortest", "-c:v", "mpeg4", "-c:a", "aac", "-b:a", "64k", str(out)],
        check=True,
    )
    body = post_audio(server, "/transcribe", out).json()
    assert body["success"] is True, body
    assert error_rate(body["text"], clip("en/jfk.flac")) <= 0.15
