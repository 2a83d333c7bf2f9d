"""Accuracy on every English and Korean clip in ../shared/audio, through /v1/audio/transcriptions.

Bounds are the measured corpus means of the bundled Whisper *base* model plus a margin (README, "Accuracy").
They catch regressions in the audio path (decode, VAD, batching, text tidying), not the model's quality.
"""

from __future__ import annotations

import statistics

import pytest

from tests.support import clips, error_rate, needs_full_audio, normalize, post_audio

# the bounds are means over the whole ../shared/audio corpus and its long clips: not meaningful on tests/data alone
pytestmark = needs_full_audio

# measured on the bundled base model (int8, beam 5); see README
MEAN_BOUND = {"en": 0.15, "ko": 0.15}
LONG_CLIPS = {"en": "en/en_longform_librispeech_librivox_concat.wav", "ko": "ko/ett_longform_lmy_concat.wav"}


@pytest.fixture(scope="module")
def results(server: str) -> dict[str, dict[str, tuple[str, float]]]:
    out: dict[str, dict[str, tuple[str, float]]] = {"en": {}, "ko": {}}
    for language in out:
        for c in clips(language):
            response = post_audio(server, "/v1/audio/transcriptions", c.path, response_format="json")
            assert response.status_code == 200, response.text
            text = response.json()["text"]
            out[language][c.file] = (text, error_rate(text, c))
    for language, rows in out.items():
        for file, (text, rate) in rows.items():
            print(f"{language} {rate:6.3f} {file}: {text[:80]}")
    return out


@pytest.mark.parametrize("language", ["en", "ko"])
def test_corpus_mean_error_rate(results: dict, language: str) -> None:
    rates = [rate for _, rate in results[language].values()]
    mean = statistics.fmean(rates)
    print(f"{language}: mean {'WER' if language == 'en' else 'CER'} {mean:.3f} over {len(rates)} clips")
    assert mean <= MEAN_BOUND[language]


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
