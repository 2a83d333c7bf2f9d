"""Accuracy through /v1/audio/transcriptions on the real model: the corpus, the library itself, streams.

One file transcript of each clip (the language detected, as a client that names none gets it) serves every check
here, so no clip is decoded twice as a file (a long clip takes a while):

- the corpus: every English and Korean clip in ../shared/audio. The bounds are the measured corpus means of the
  bundled Whisper *base* model plus a margin (docs/performance.md, "Accuracy"); they catch regressions in the audio
  path (decode, VAD, batching, text tidying), not the model's quality;
- never worse than the library: the server against `WhisperModel.transcribe` on the same weights and options
  (language detected, beam 5, VAD on, `condition_on_previous_text=False`: what the server does by default) on the
  long clips, where decoding differences show (windowing, seek, fallback), and three short clips per language; the
  bound is the fidelity issue's: the server's error rate at most the library's x 1.02 + 0.002;
- a stream is the file, word for word, on every clip over 30 s (issue 21 section 3).

A plain clone (tests/data only) runs the library and stream checks on the clips it has; the corpus bounds need the
full set.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator

import pytest
from faster_whisper import WhisperModel, decode_audio

from stt_engine.config import Settings
from stt_engine.models import resolve_model
from tests.support import (
    HAVE_FULL_AUDIO,
    SHARED_AUDIO,
    Clip,
    clip,
    clips,
    error_rate,
    needs_full_audio,
    normalize,
    post_audio,
)

# measured on the bundled base model (int8, beam 5); see docs/performance.md
MEAN_BOUND = {"en": 0.15, "ko": 0.15}
LONG_CLIPS = {"en": "en/en_longform_librispeech_librivox_concat.wav", "ko": "ko/ett_longform_lmy_concat.wav"}

_FILE_TEXTS: dict[str, str] = {}  # the server's text of each clip sent as a file, shared by every check below


def _file_text(server: str, c: Clip) -> str:
    """The server's text for the clip sent as a file, the language left to the server (once per module)."""
    if c.file not in _FILE_TEXTS:
        response = post_audio(server, "/v1/audio/transcriptions", c.path, timeout=900, response_format="json")
        assert response.status_code == 200, response.text
        _FILE_TEXTS[c.file] = response.json()["text"]
    return _FILE_TEXTS[c.file]


# --- the corpus -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def results(server: str) -> dict[str, dict[str, tuple[str, float]]]:
    out: dict[str, dict[str, tuple[str, float]]] = {"en": {}, "ko": {}}
    for language in out:
        for c in clips(language):
            text = _file_text(server, c)
            out[language][c.file] = (text, error_rate(text, c))
    for language, rows in out.items():
        for file, (text, rate) in rows.items():
            print(f"{language} {rate:6.3f} {file}: {text[:80]}")
    return out


# the bounds are means over the whole ../shared/audio corpus and its long clips: not meaningful on tests/data alone
@needs_full_audio
@pytest.mark.parametrize("language", ["en", "ko"])
def test_corpus_mean_error_rate(results: dict, language: str) -> None:
    rates = [rate for _, rate in results[language].values()]
    mean = statistics.fmean(rates)
    print(f"{language}: mean {'WER' if language == 'en' else 'CER'} {mean:.3f} over {len(rates)} clips")
    assert mean <= MEAN_BOUND[language]


@needs_full_audio
@pytest.mark.parametrize("language", ["en", "ko"])
def test_long_clip_has_no_dropped_tail(results: dict, language: str) -> None:
    file = LONG_CLIPS[language]
    text, rate = results[language][file]
    c = next(c for c in clips(language) if c.file == file)
    hyp = normalize(text, language)
    if language == "en":
        last_words = normalize(c.reference, "en").split()[-6:]  # "...might have been made amiable himself"
        assert sum(w in hyp.split() for w in last_words) >= 5, text[-200:]
    else:
        # the last sentence ends "...최종 결과라고 해도, 불협화음과 부조화데요": its last words must be there
        assert "불협화" in hyp[-30:] or "부조" in hyp[-30:], text[-120:]
    assert rate <= MEAN_BOUND[language] + 0.05


# --- never worse than the library -----------------------------------------------------------------------------
FIDELITY_CLIPS = [
    LONG_CLIPS["en"], LONG_CLIPS["ko"],
    "en/jfk.flac", "en/librispeech_1089-134686-0000.flac", "en/ljspeech_LJ050-0131.wav",
    "ko/ett_lmy02132.wav", "ko/ett_kih00108.wav", "ko/picovoice_test_ko.wav",
]


@pytest.fixture(scope="module")
def library() -> Iterator[WhisperModel]:
    model = WhisperModel(str(resolve_model(Settings(_env_file=None)).path), compute_type="int8", local_files_only=True)
    yield model
    del model


@pytest.mark.parametrize("file", FIDELITY_CLIPS)
def test_server_is_as_accurate_as_the_library(server: str, library: WhisperModel, file: str) -> None:
    if not (SHARED_AUDIO / file).is_file():
        pytest.skip(f"{file} is only in ../shared/audio")
    c = clip(file)
    served = error_rate(_file_text(server, c), c)
    segments, info = library.transcribe(
        decode_audio(str(c.path)), beam_size=5, vad_filter=True, condition_on_previous_text=False,
    )
    reference = error_rate(" ".join(s.text.strip() for s in segments), c)
    assert info.language == c.language, f"the library heard {info.language}: no reference to hold the server to"
    print(f"{file}: server {served:.4f} library {reference:.4f}")
    assert served <= reference * 1.02 + 0.002, (served, reference)


# --- a stream is the file, word for word ------------------------------------------------------------------------
# `stream=true` decodes the same plan (sections, windows, prompts) as the request without it, so on every long clip
# the streamed text is the file's, word for word. The first delta's time is measured in bench/stream_bench.py.
LONG_SECONDS = 30.0


def _long_clips() -> list[str]:
    """Every clip over 30 s the manifest lists (the long Korean and English ones, and the long music clip)."""
    found = [c.file for c in clips() if c.duration > LONG_SECONDS]
    return found if HAVE_FULL_AUDIO else sorted(set(found) | {LONG_CLIPS["en"]})


def _streamed(base: str, c: Clip) -> tuple[list[str], dict]:
    """The deltas and the done event of the streamed request."""
    response = post_audio(base, "/v1/audio/transcriptions", c.path, timeout=900, response_format="json",
                          stream="true")
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
