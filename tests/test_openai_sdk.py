"""The official OpenAI SDK, pointed at our base URL, works unchanged with every response_format.

What the SDK parses is the wire format, so it is checked against the stand-in engine (`fake_server`, no model);
translation, which is about what the model writes, on the real one.
"""

from __future__ import annotations

import pytest
from openai import OpenAI

from tests.fake_engine import FAKE_TEXT
from tests.support import SHARED_AUDIO

JFK = SHARED_AUDIO / "en" / "jfk.flac"


def _client(base: str) -> OpenAI:
    return OpenAI(base_url=base + "/v1", api_key="not-needed", max_retries=0)


@pytest.fixture(scope="module")
def sdk(fake_server: str) -> OpenAI:
    return _client(fake_server)


@pytest.mark.parametrize("fmt", ["json", "text", "srt", "vtt", "verbose_json"])
def test_sdk_transcription_formats(sdk: OpenAI, fmt: str) -> None:
    with JFK.open("rb") as handle:
        result = sdk.audio.transcriptions.create(model="whisper-1", file=handle, response_format=fmt)
    text = result if isinstance(result, str) else result.text
    assert FAKE_TEXT in text
    if fmt == "verbose_json":
        assert result.language == "en" and result.segments and result.duration == pytest.approx(11.0, abs=0.1)
    if fmt == "vtt":
        assert text.startswith("WEBVTT")


def test_sdk_word_timestamps(sdk: OpenAI) -> None:
    with JFK.open("rb") as handle:
        result = sdk.audio.transcriptions.create(
            model="whisper-1", file=handle, response_format="verbose_json", timestamp_granularities=["word", "segment"]
        )
    assert result.words and result.words[0].word.strip() == FAKE_TEXT.split()[0]
    assert all(w.start <= w.end for w in result.words)


def test_sdk_translation(server: str) -> None:
    with (SHARED_AUDIO / "es" / "picovoice_test_es.wav").open("rb") as handle:
        result = _client(server).audio.translations.create(model="whisper-1", file=handle)
    assert result.text and result.text.isascii()


def test_sdk_error_is_parsed(sdk: OpenAI) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as info:
        sdk.audio.transcriptions.create(model="whisper-1", file=("notes.wav", b"this is text, not audio"))
    assert "not a supported audio" in str(info.value)
