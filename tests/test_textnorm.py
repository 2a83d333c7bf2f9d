"""Text normalisation and error rates (`stt_engine.textnorm`), shared by the tests and `stt-engine bench`."""

from __future__ import annotations

import pytest

from stt_engine.textnorm import error_rate, metric, normalize


def test_normalize_folds_case_punctuation_and_numbers() -> None:
    assert normalize("Mr. Smith, 12 apples!", "en") == "mister smith twelve apples"
    assert normalize("Don't  STOP", "en") == "dont stop"
    assert normalize("안녕하세요. 반갑습니다!", "ko") == "안녕하세요반갑습니다"


def test_metric_by_language() -> None:
    assert [metric(lang) for lang in ("ko", "zh", "ja", "en", "de")] == ["cer", "cer", "cer", "wer", "wer"]


def test_error_rate_best_of_references() -> None:
    spoken, written = "십오킬로그램을 초과한", "15kg을 초과한"
    assert error_rate("15kg을 초과한", (spoken, written), "ko") == 0.0
    assert error_rate("one two three four", ("one two three five", ""), "en") == pytest.approx(0.25)
    assert error_rate("", ("hello",), "en") == 1.0
    with pytest.raises(ValueError):
        error_rate("hello", ("", "  "), "en")
