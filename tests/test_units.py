"""Pure logic: timestamp formatting, option parsing, model-folder naming. No model needed."""

from __future__ import annotations

import os
import threading

import pytest

from stt_engine.engine import on_lowered_thread, resolve_compute_type, tidy_text
from stt_engine.errors import InvalidRequest, quote
from stt_engine.formats import timestamp
from stt_engine.models.resolve import candidate_dirnames
from stt_engine.options import DEFAULT_TEMPERATURES, parse_language, parse_temperature

LANGUAGES = frozenset({"en", "ko", "ja", "zh", "de"})


@pytest.mark.parametrize(
    ("seconds", "srt", "vtt"),
    [(0, "00:00:00,000", "00:00:00.000"), (3661.5, "01:01:01,500", "01:01:01.500"), (59.9996, "00:01:00,000", "00:01:00.000")],
)
def test_timestamps(seconds: float, srt: str, vtt: str) -> None:
    assert timestamp(seconds, ",") == srt and timestamp(seconds, ".") == vtt


@pytest.mark.parametrize(("value", "code"), [(None, None), ("", None), ("auto", None), ("KO", "ko"), ("ko-KR", "ko"), ("en_US", "en")])
def test_parse_language(value: str | None, code: str | None) -> None:
    assert parse_language(value, LANGUAGES) == code


@pytest.mark.parametrize("value", ["xx", "korean", "k", "en-" + "x" * 10_000, "fr"])
def test_parse_language_rejects_unknown(value: str) -> None:
    with pytest.raises(InvalidRequest, match="Unsupported language") as caught:
        parse_language(value, LANGUAGES)
    assert len(caught.value.message) < 300, "a bad value is quoted, never echoed whole"


def test_quote_is_short_and_printable() -> None:
    assert quote("a\r\nb" + "x" * 100).isprintable() and len(quote("x" * 10_000)) < 80


def test_temperature_semantics() -> None:
    assert parse_temperature(None) == DEFAULT_TEMPERATURES == parse_temperature(0)
    assert parse_temperature(0.5) == (0.5,), "a temperature above 0 samples at exactly that temperature"
    for bad in (-1, 5):
        with pytest.raises(InvalidRequest, match="between 0 and 1"):
            parse_temperature(bad)


def test_text_tidying() -> None:
    assert tidy_text("  안녕하세요.   반갑습니다 ") == "안녕하세요. 반갑습니다"


def test_compute_type_auto() -> None:
    assert resolve_compute_type("auto", "cuda") == "float16"
    assert resolve_compute_type("auto", "cpu") == "int8"
    assert resolve_compute_type("int8_float16", "cuda") == "int8_float16"


def test_model_name_lookup() -> None:
    assert "openai_whisper-large-v3-turbo" in candidate_dirnames("large-v3-turbo")
    assert "Systran_faster-whisper-small" in candidate_dirnames("Systran/faster-whisper-small")


def test_threads_started_while_a_model_is_built_on_a_lowered_thread_keep_its_lower_priority() -> None:
    """CTranslate2's worker threads are started while the model is built; Linux gives them the builder's nice."""
    def build() -> int:
        seen: list[int] = []
        child = threading.Thread(target=lambda: seen.append(os.getpriority(os.PRIO_PROCESS, 0)))
        child.start()
        child.join()
        return seen[0]

    before = os.getpriority(os.PRIO_PROCESS, 0)
    assert on_lowered_thread(5, build) == min(19, before + 5)
    assert on_lowered_thread(0, build) == before
    assert os.getpriority(os.PRIO_PROCESS, 0) == before  # the caller's own priority is untouched


def test_the_engine_keeps_numpys_blas_on_the_calling_thread() -> None:
    """OpenBLAS's own threads would spin on the cores the model's threads need (engine.one_blas_thread)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from stt_engine.engine import one_blas_thread

    with threadpool_limits():  # restores this process's limits afterwards
        one_blas_thread()
        blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
        assert blas and all(pool["num_threads"] == 1 for pool in blas)
