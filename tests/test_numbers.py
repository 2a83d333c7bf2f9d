"""normalize=numbers: spoken numbers to written form with NeMo's Korean inverse text normalisation."""

from __future__ import annotations

from pathlib import Path

import pytest

from stt_engine import textnorm
from stt_engine.textproc.numbers import kept_meaning, korean_number_spans
from tests.support import clips, post_audio


def _spans(text: str) -> list[str]:
    words = text.split(" ")
    return [" ".join(words[a:b]) for a, b in korean_number_spans(words)]


def test_only_evident_numbers_are_handed_to_nemo() -> None:
    """Numeral syllables are everyday words: only a number with a power, a decimal point or a unit is one."""
    assert _spans("이천십육년 칠월 사일 사우디아라비아의") == ["이천십육년 칠월 사일"]
    assert _spans("양념 반반이랑 삼백씨씨 주세요") == ["삼백씨씨"]
    assert _spans("삼만 이천 원입니다") == ["삼만 이천 원입니다"]
    assert _spans("이십육 점 칠 퍼센트 올랐어요") == ["이십육 점 칠 퍼센트"]
    assert _spans("구 번 출구로 오세요") == ["구 번"]
    assert _spans("이천구년, 이천십년 시즌") == ["이천구년,", "이천십년"]
    for everyday in ("그럼 이만 끊겠습니다", "일이 많아요", "오늘 이 일을 끝내요", "이가 아파요", "사이좋게 지내요",
                     "천천히 말씀해 주세요", "일을 했어요", "사과 세 개 주세요", "이번 주에 이동해요", "천만에요",
                     "오만과 편견", "천사가 왔어요", "만일 그렇다면", "회사 일원으로", "이분이 오셨어요", "오차가 있어요",
                     "사세요"):
        assert _spans(everyday) == [], everyday
    assert _spans("십육세에서 십팔세 사이") == ["십육세에서", "십팔세"]  # 사이 ("between") is not a number


def test_a_writing_that_changes_the_meaning_is_refused() -> None:
    """What NeMo 1.2 does to some Korean numbers, caught before it reaches a transcript."""
    assert kept_meaning("칠월 사일", "7월 4일")
    assert kept_meaning("삼만이천 원", "₩32000")
    assert kept_meaning("이십육점칠 퍼센트", "26.7%")
    assert not kept_meaning("사일", "4 1")  # two numbers out of one
    assert not kept_meaning("삼십분", "30")  # the minutes dropped
    assert not kept_meaning("십오킬로그램을", "십오킬로그램을")  # nothing written


@pytest.fixture(scope="module")
def itn_cache(itn_cache_dir: Path) -> Path:
    pytest.importorskip("nemo_text_processing", reason="the [itn] extra is not installed")
    return itn_cache_dir


@pytest.mark.slow  # compiling NeMo's Korean grammars takes about half a minute of CPU (once per session)
def test_spoken_korean_numbers_are_written(itn_cache: Path) -> None:
    from stt_engine.textproc.numbers import normalize_text

    cases = {
        "이천십육년 칠월 사일 사우디아라비아의": "2016년 7월 4일 사우디아라비아의",
        "삼만 이천 원입니다": "32000원입니다",  # NeMo alone: "30000 이천원입니다"
        "일억 이천만 원.": "₩120000000.",  # NeMo alone: "100000000 ₩20000000"
        "이십육 점 칠 퍼센트 올랐어요": "26.7% 올랐어요",
        "십오킬로그램을 초과한": "15kg을 초과한",
        "오후 세시 삼십분에 봬요": "오후 3:30에 봬요",
        "이천구년, 이천십년 시즌": "2009년, 2010년 시즌",
        "그럼 이만 끊겠습니다": "그럼 이만 끊겠습니다",  # NeMo alone: "그럼 20000 끊겠습니다"
        "오늘 이 일을 끝내요": "오늘 이 일을 끝내요",  # NeMo alone: "오늘 2 일을 끝내요"
        "2016년 7월 4일 15kg": "2016년 7월 4일 15kg",
    }
    for spoken, written in cases.items():
        assert normalize_text(spoken, "ko", itn_cache) == written, spoken


@pytest.fixture(scope="module")
def itn_server(itn_cache: Path, server: str) -> str:
    """The session's server: its NORMALIZE_CACHE_DIR is `itn_cache`, so the grammars are built once."""
    return server


@pytest.mark.slow  # the grammars, as above
def test_spoken_references_become_written(itn_cache: Path) -> None:
    """The shared clips' spoken-form references as a transcript that speaks its numbers (what Korean models trained
    on spoken-form transcripts write): CER against the written-form reference falls (measured: summed over the 7
    Korean clips with both forms, 0.637 -> 0.273; NeMo alone 0.301), and nothing else changes."""
    from stt_engine.textproc.numbers import normalize_text

    cache = itn_cache
    before = after = 0.0
    for c in clips("ko"):
        if c.reference == c.reference_alt:
            continue
        before += textnorm.error_rate(c.reference, (c.reference_alt,), "ko")
        after += textnorm.error_rate(normalize_text(c.reference, "ko", cache), (c.reference_alt,), "ko")
    if before == 0:
        pytest.skip("no Korean clip here whose two reference forms differ in numbers (../shared/audio has 7)")
    assert after < before * 0.5, (before, after)


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


def test_normalize_is_validated(fake_server: str) -> None:
    c = clips("ko")[0]
    r = post_audio(fake_server, "/v1/audio/transcriptions", c.path, normalize="roman")
    assert r.status_code == 400 and r.json()["error"]["param"] == "normalize"
