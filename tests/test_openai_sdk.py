"""The official OpenAI SDK, pointed at our base URL, works unchanged with every response_format."""

from __future__ import annotations

import pytest
from openai import OpenAI

from tests.support import SHARED_AUDIO

JFK = SHARED_AUDIO / "en" / "jfk.flac"


@pytest.fixture(scope="module")
def sdk(server: str) -> OpenAI:
    return OpenAI(base_url=server + "/v1", api_key="not-needed", max_retries=0)


@pytest.mark.parametrize("fmt", ["json", "text", "srt", "vtt", "verbose_json"])
def test_sdk_transcription_formats(sdk: OpenAI, fmt: str) -> None:
    with JFK.open("rb") as handle:
        result = sdk.audio.transcriptions.create(model="whisper-1", file=handle, response_format=fmt)
    text = result if isinstance(result, str) else result.text
    assert "ask not what your country can do for you" in text.lower()
    if fmt == "verbose_json":
        assert result.language == "en" and result.segments and result.duration == pytest.approx(11.0, abs=0.1)
    if fmt == "vtt":
        assert text.startswith("WEBVTT")


def test_sdk_word_timestamps(sdk: OpenAI) -> None:
    with JFK.open("rb") as handle:
        result = sdk.audio.transcriptions.create(
            model="whisper-1", file=handle, response_format="verbose_json", timestamp_granularities=["word", "segment"]
        )
    assert result.words and result.words[0].word.lower().startswith("and")


def test_sdk_translation(sdk: OpenAI) -> None:
    with (SHARED_AUDIO / "es" / "picovoice_test_es.wav").open("rb") as handle:
        result = sdk.audio.translations.create(model="whisper-1", file=handle)
    assert result.text and result.text.isascii()


def test_sdk_error_is_parsed(sdk: OpenAI) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as info:
        sdk.audio.transcriptions.create(model="whisper-1", file=("notes.wav", b"this is text, not audio"))
    assert "not a supported audio" in str(info.value)
