"""Never worse than the library: the server against `WhisperModel.transcribe` on the same weights and options.

Language given, beam 5, VAD on, `condition_on_previous_text=False`: what the server does by default. The long
clips are where decoding differences show (windowing, seek, fallback); three short clips per language guard the
common case. The bound is the issue's: the server's error rate at most the library's x 1.02 + 0.002.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from faster_whisper import WhisperModel, decode_audio

from stt_engine.config import Settings
from stt_engine.models import resolve_model
from tests.support import SHARED_AUDIO, clip, error_rate, post_audio

CLIPS = [
    "en/en_longform_librispeech_librivox_concat.wav", "ko/ett_longform_lmy_concat.wav",
    "en/jfk.flac", "en/librispeech_1089-134686-0000.flac", "en/ljspeech_LJ050-0131.wav",
    "ko/ett_lmy02132.wav", "ko/ett_kih00108.wav", "ko/picovoice_test_ko.wav",
]


@pytest.fixture(scope="module")
def library() -> Iterator[WhisperModel]:
    model = WhisperModel(str(resolve_model(Settings(_env_file=None)).path), compute_type="int8", local_files_only=True)
    yield model
    del model


@pytest.mark.parametrize("file", CLIPS)
def test_server_is_as_accurate_as_the_library(server: str, library: WhisperModel, file: str) -> None:
    if not (SHARED_AUDIO / file).is_file():
        pytest.skip(f"{file} is only in ../shared/audio")
    c = clip(file)
    response = post_audio(server, "/v1/audio/transcriptions", c.path, language=c.language, response_format="json")
    assert response.status_code == 200, response.text
    served = error_rate(response.json()["text"], c)
    segments, _ = library.transcribe(
        decode_audio(str(c.path)), language=c.language, beam_size=5, vad_filter=True,
        condition_on_previous_text=False,
    )
    reference = error_rate(" ".join(s.text.strip() for s in segments), c)
    print(f"{file}: server {served:.4f} library {reference:.4f}")
    assert served <= reference * 1.02 + 0.002, (served, reference)
