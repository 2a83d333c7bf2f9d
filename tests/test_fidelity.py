"""Never worse than the library: the server against `WhisperModel.transcribe` on the same weights and options.

Language given, beam 5, VAD on, `condition_on_previous_text=False`: what the server does by default. The long
clips are where decoding differences show (windowing, seek, fallback); three short clips per language guard the
common case. The bound is the issue's: the server's error rate at most the library's x 1.02 + 0.002.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from faster_whisper import WhisperModel, decode_audio

from stt_engine.config import Settings
from stt_engine.models import resolve_model
from tests.support import HAVE_FULL_AUDIO, SHARED_AUDIO, Clip, clip, clips, error_rate, post_audio

CLIPS = [
    "en/en_longform_librispeech_librivox_concat.wav", "ko/ett_longform_lmy_concat.wav",
    "en/jfk.flac", "en/librispeech_1089-134686-0000.flac", "en/ljspeech_LJ050-0131.wav",
    "ko/ett_lmy02132.wav", "ko/ett_kih00108.wav", "ko/picovoice_test_ko.wav",
]


_FILE_TEXTS: dict[str, str] = {}  # the server's text of a clip as a file, kept for the stream test below


def _data(c: Clip, stream: bool = False) -> dict[str, str]:
    data = {"model": "whisper-1", "response_format": "json"}
    if c.language != "none":
        data["language"] = c.language
    if stream:
        data["stream"] = "true"
    return data


def _file_text(server: str, c: Clip) -> str:
    """The server's text for the clip sent as a file (once per module: a long clip takes a while)."""
    if c.file not in _FILE_TEXTS:
        response = post_audio(server, "/v1/audio/transcriptions", c.path, timeout=900, **_data(c))
        assert response.status_code == 200, response.text
        _FILE_TEXTS[c.file] = response.json()["text"]
    return _FILE_TEXTS[c.file]


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
    served = error_rate(_file_text(server, c), c)
    segments, _ = library.transcribe(
        decode_audio(str(c.path)), language=c.language, beam_size=5, vad_filter=True,
        condition_on_previous_text=False,
    )
    reference = error_rate(" ".join(s.text.strip() for s in segments), c)
    print(f"{file}: server {served:.4f} library {reference:.4f}")
    assert served <= reference * 1.02 + 0.002, (served, reference)


# --- a stream is as accurate as a file (issue 21 section 3) ---------------------------------------------------
# `stream=true` decodes the same plan (sections, windows, prompts) as the request without it, so on every long clip
# the streamed text is the file's, word for word. The first delta's time is measured in bench/stream_bench.py.
LONG_SECONDS = 30.0
LONG_EN = "en/en_longform_librispeech_librivox_concat.wav"  # in tests/data too: runs in a plain clone


def _long_clips() -> list[str]:
    """Every clip over 30 s the manifest lists (the long Korean and English ones, and the long music clip)."""
    found = [c.file for c in clips() if c.duration > LONG_SECONDS]
    return found if HAVE_FULL_AUDIO else sorted(set(found) | {LONG_EN})


def _streamed(base: str, c: Clip) -> tuple[list[str], dict]:
    """The deltas and the done event of the streamed request."""
    with c.path.open("rb") as handle:
        response = httpx.post(base + "/v1/audio/transcriptions", files={"file": (c.path.name, handle)},
                              data=_data(c, stream=True), timeout=900)
    assert response.status_code == 200, response.text
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert events and events[-1]["type"] == "transcript.text.done", events[-3:]
    return [e["delta"] for e in events if e["type"] == "transcript.text.delta"], events[-1]


@pytest.mark.parametrize("file", _long_clips())
def test_a_stream_is_the_file_word_for_word(server: str, file: str) -> None:
    c = clip(file)
    whole = _file_text(server, c)
    deltas, done = _streamed(server, c)
    assert done["text"] == whole, "the streamed text must be the file's text"
    assert "".join(deltas) == done["text"], "the deltas concatenate to the done text"
    if c.reference:
        assert whole, f"{file}: no text"
        assert error_rate(done["text"], c) == error_rate(whole, c)
        print(f"{file}: {'CER' if c.language in ('ko', 'zh', 'ja') else 'WER'} {error_rate(whole, c):.3f} "
              f"streamed and as a file, {len(deltas)} deltas")
