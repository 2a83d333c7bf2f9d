"""normalize=numbers: spoken numbers to written form with NeMo's Korean inverse text normalisation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stt_engine import textnorm
from tests.support import clips, post_audio, running_server

pytest.importorskip("nemo_text_processing", reason="the [itn] extra is not installed")


@pytest.fixture(scope="module")
def itn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    cache = tmp_path_factory.mktemp("itn")
    with running_server({"NORMALIZE_CACHE_DIR": str(cache)}) as base:
        yield base


def test_spoken_references_become_written(tmp_path_factory: pytest.TempPathFactory) -> None:
    """NeMo on the shared clips' spoken-form references: CER against the written-form reference falls (measured:
    summed over the 7 Korean clips with both forms, 0.637 -> 0.301)."""
    from stt_engine.textproc.numbers import normalize_text

    cache = tmp_path_factory.mktemp("itn-unit")
    before = after = 0.0
    for c in clips("ko"):
        if c.reference == c.reference_alt:
            continue
        before += textnorm.error_rate(c.reference, (c.reference_alt,), "ko")
        after += textnorm.error_rate(normalize_text(c.reference, "ko", cache), (c.reference_alt,), "ko")
    assert after < before * 0.6, (before, after)


def test_asr_output_is_not_harmed_on_shared_korean_clips(itn_server: str) -> None:
    """Whisper base already writes digits on these clips (2016년 7월 4일, 15kg, 20대, 300C), so normalize=numbers
    has little left to do; it must not make either CER worse by more than it improves the written one."""
    korean = [c for c in clips("ko") if c.reference != c.reference_alt and c.duration < 30]
    assert korean, "no Korean clip with both reference forms"
    spoken = {"raw": 0.0, "numbers": 0.0}
    written = {"raw": 0.0, "numbers": 0.0}
    rows = []
    for c in korean:
        raw = post_audio(itn_server, "/v1/audio/transcriptions", c.path, language="ko").json()["text"]
        r = post_audio(itn_server, "/v1/audio/transcriptions", c.path, language="ko", normalize="numbers")
        assert r.status_code == 200, r.text
        normalized = r.json()["text"]
        for name, text in (("raw", raw), ("numbers", normalized)):
            spoken[name] += textnorm.error_rate(text, (c.reference,), "ko")
            written[name] += textnorm.error_rate(text, (c.reference_alt,), "ko")
        rows.append((c.file, raw, normalized))
    gain = written["raw"] - written["numbers"]
    loss = spoken["numbers"] - spoken["raw"]
    assert gain >= 0, (written, rows)
    assert loss <= gain, (spoken, written, rows)


def test_normalize_is_validated(itn_server: str) -> None:
    c = clips("ko")[0]
    r = post_audio(itn_server, "/v1/audio/transcriptions", c.path, normalize="roman")
    assert r.status_code == 400 and r.json()["error"]["param"] == "normalize"
