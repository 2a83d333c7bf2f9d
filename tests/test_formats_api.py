"""Response formats: srt/vtt parse with monotonic timestamps; verbose_json words lie within their segments.

srt on the real model (cues from real decoding of a long clip); the other formats render the stand-in engine's
transcript (`fake_server`: several timed segments, no model), since only the rendering is under test there.
"""

from __future__ import annotations

import re

import pytest

from tests.fake_engine import FAKE_TEXT
from tests.support import SHARED_AUDIO, post_audio

LONG_EN = SHARED_AUDIO / "en" / "en_longform_librispeech_librivox_concat.wav"
SRT_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)$")
VTT_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d\d\d) --> (\d\d):(\d\d):(\d\d)\.(\d\d\d)$")


def _seconds(parts: tuple[str, ...]) -> float:
    h, m, s, ms = map(int, parts)
    return h * 3600 + m * 60 + s + ms / 1000


def _check_cues(cues: list[tuple[float, float]], duration: float) -> None:
    assert cues, "no cues"
    previous_end = 0.0
    for start, end in cues:
        assert start <= end <= duration + 0.05
        assert start >= previous_end - 0.01, "cues overlap or go backwards"
        previous_end = end


@pytest.fixture(scope="module")
def long_srt(server: str) -> str:
    response = post_audio(server, "/v1/audio/transcriptions", LONG_EN, response_format="srt", language="en")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/x-subrip")
    return response.text


def test_srt_is_well_formed(long_srt: str) -> None:
    blocks = [b for b in long_srt.strip().split("\n\n") if b.strip()]
    cues = []
    for number, block in enumerate(blocks, start=1):
        lines = block.split("\n")
        assert lines[0] == str(number)
        match = SRT_TIME.match(lines[1])
        assert match, lines[1]
        assert lines[2].strip()
        cues.append((_seconds(match.groups()[:4]), _seconds(match.groups()[4:])))
    _check_cues(cues, 77.69)


def test_vtt_is_well_formed(fake_server: str) -> None:
    response = post_audio(fake_server, "/v1/audio/transcriptions", LONG_EN, response_format="vtt", language="en")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/vtt")
    lines = response.text.split("\n")
    assert lines[0] == "WEBVTT"
    cues = []
    for line in lines:
        if "-->" in line:
            match = VTT_TIME.match(line)
            assert match, line
            cues.append((_seconds(match.groups()[:4]), _seconds(match.groups()[4:])))
    _check_cues(cues, 77.69)


def test_text_format_is_plain(fake_server: str) -> None:
    response = post_audio(
        fake_server, "/v1/audio/transcriptions", SHARED_AUDIO / "en" / "jfk.flac", response_format="text"
    )
    assert response.headers["content-type"].startswith("text/plain")
    assert FAKE_TEXT in response.text and not response.text.lstrip().startswith("{")


def test_verbose_json_words_within_segments(fake_server: str) -> None:
    response = post_audio(
        fake_server, "/v1/audio/transcriptions", SHARED_AUDIO / "en" / "jfk.flac",
        response_format="verbose_json", **{"timestamp_granularities[]": "word"},
    )
    body = response.json()
    assert body["language"] == "en" and body["duration"] == pytest.approx(11.0, abs=0.1)
    assert len(body["segments"]) > 1
    segments, words = body["segments"], body["words"]
    assert segments and words
    for seg in segments:
        assert {"avg_logprob", "compression_ratio", "no_speech_prob", "start", "end", "text"} <= set(seg)
    for word in words:
        assert word["start"] <= word["end"]
        assert any(s["start"] - 0.05 <= word["start"] and word["end"] <= s["end"] + 0.05 for s in segments), word
