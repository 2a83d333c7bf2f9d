"""Spoken numbers to written form ("이천십육년 칠월 사일" -> "2016년 7월 4일"): NVIDIA NeMo's inverse text
normalisation, an optional extra (`pip install 'stt-engine[itn]'`).

NeMo's grammars are weighted finite-state transducers compiled by pynini on first use and cached as .far files
under NORMALIZE_CACHE_DIR, so later starts load them at once.

NeMo 1.2's Korean grammar reads a number only when it is written as one word, but Korean spacing (and Whisper)
separates a number at 만/억/조 ("삼만 이천 원"), which NeMo turns into two numbers ("30000 ₩2000"): a wrong amount.
Such a number is joined into one word first. Its dates and times also lose their spaces ("2016년7월", "3 :30"),
which are put back afterwards. Whatever else NeMo cannot read it leaves as spoken.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import re
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from stt_engine.errors import InvalidRequest
from stt_engine.types import Transcript, join_segments

log = logging.getLogger(__name__)

# Languages NeMo's package has inverse-normalisation grammars for.
ITN_LANGUAGES = frozenset({"ar", "de", "en", "es", "fr", "he", "hi", "hy", "ja", "ko", "mr", "pt", "ru", "sv", "vi", "zh"})

_lock = threading.Lock()
_normalizers: dict[str, Any] = {}


def available() -> bool:
    return importlib.util.find_spec("nemo_text_processing") is not None


def check_available() -> None:
    """Refuse `normalize=numbers` up front when the extra is not installed."""
    if not available():
        raise InvalidRequest(
            "normalize=numbers needs NeMo text processing on the server: pip install 'stt-engine[itn]'.",
            param="normalize", code="normalize_unavailable",
        )


def _normalizer(language: str, cache_dir: Path | None) -> Any:
    with _lock:  # one compile per language, whoever asks first
        if language not in _normalizers:
            from nemo_text_processing.inverse_text_normalization.inverse_normalize import InverseNormalizer

            if cache_dir is not None:
                cache_dir.mkdir(parents=True, exist_ok=True)
            log.info("loading NeMo inverse text normalisation for %s", language)
            _normalizers[language] = InverseNormalizer(
                lang=language, cache_dir=str(cache_dir) if cache_dir else None
            )
        return _normalizers[language]


_KO_NUMERALS = "영일이삼사오육칠팔구십백천만억조"
_KO_HEAD = re.compile(f"[{_KO_NUMERALS}]+(?:[점쩜][{_KO_NUMERALS}]+)?")
_KO_NATIVE_HOUR = re.compile(r"(?:한|두|세|네|다섯|여섯|일곱|여덟|아홉|열|열한|열두)(?=시)")
_KO_LARGE_UNIT = re.compile(f"[{_KO_NUMERALS}]*[만억조]")
_KO_POWERS = set("십백천만억조")
# What follows a number: counters and units, attached ("칠월") or as the next word ("삼천 원"). 일 (day) counts only
# attached: as a word of its own it is far more often "work" ("이 일을").
_KO_UNITS = (
    "년", "월", "일", "시", "분", "초", "원", "달러", "불", "퍼센트", "프로", "킬로그램", "킬로미터", "킬로", "키로",
    "그램", "센티미터", "밀리미터", "미터", "센티", "밀리", "리터", "층", "번", "호", "동", "개", "명", "세", "대", "차",
    "회", "배", "도", "박", "주", "평", "씨씨",
)
# Numerals that are everyday words too ("그럼 이만", "천만에요", "오만과 편견", "천사"): a number only with a
# unit after them.
_KO_AMBIGUOUS = frozenset({
    "이만", "일이", "이일", "일일", "십만", "천사", "만일", "천만", "오만", "이천", "사천", "구구", "삼삼", "오오",
})
# Units that make a one-syllable numeral a number when attached; others make everyday words ("이번", "이동",
# "오세요", "일원", "이분", "오차").
_KO_ONE_SYLLABLE_UNITS = ("년", "월", "층", "킬로그램", "킬로미터", "킬로", "퍼센트", "프로", "달러", "씨씨")
# Words NeMo writes as symbols ("퍼센트" -> "%"): they may leave the text when their symbol appears.
_KO_SYMBOLS = (
    ("킬로그램", "kg"), ("킬로미터", "km"), ("센티미터", "cm"), ("밀리미터", "mm"), ("그램", "g"), ("미터", "m"),
    ("리터", "l"), ("퍼센트", "%"), ("프로", "%"), ("씨씨", "cc"), ("원", "₩"), ("시", ":"), ("분", ":"), ("도", "°"),
    ("점", "."), ("쩜", "."),
)
# Particles and endings after a number ("이천팔년에", "오쩜사칠의"): kept aside while NeMo reads the number.
_KO_PARTICLES = (
    "에서", "에게", "으로", "까지", "부터", "이에요", "이요", "입니다", "이고", "이며", "이나", "정도", "쯤", "에", "을",
    "를", "은", "는", "이", "가", "의", "로", "와", "과", "도", "만", "요",
)
_TRAILING_PUNCTUATION = re.compile(r"[^\w%]+$")
_DIGIT_RUN = re.compile(r"\d+(?:[.,:]\d+)*")


def _ko_unit_length(rest: str) -> int:
    return max((len(u) for u in _KO_UNITS if rest.startswith(u)), default=0)


def _ko_unit_word(word: str) -> bool:
    """A unit as a word of its own after a number ("삼천 원"); 일 is not one (see _KO_UNITS)."""
    return bool(_ko_unit_length(word)) and not word.startswith("일")


def _ko_particle(text: str) -> bool:
    return text in _KO_PARTICLES or any(text.startswith(p) for p in ("입니다", "이에요", "이었"))


def _ko_number_word(word: str) -> tuple[str, str, str] | None:
    """A spoken number's numeral, the unit after it and a particle after that ("이천팔년에" -> 이천팔, 년, 에),
    or None."""
    head = _KO_HEAD.match(word) or _KO_NATIVE_HOUR.match(word)
    if head is None or head.end() == 0:
        return None
    rest = _TRAILING_PUNCTUATION.sub("", word[head.end():])
    unit = rest[: _ko_unit_length(rest)]
    particle = rest[len(unit):]
    if not rest or (unit and (not particle or _ko_particle(particle))) or _ko_particle(rest):
        return head.group(), unit, particle
    return None


def korean_number_spans(words: list[str]) -> list[tuple[int, int]]:
    """Where NeMo may write numbers: runs of words [start, end) that are spoken numbers, and only where the number
    is evident (a power such as 십/천/만 in a numeral of two syllables or more, a decimal point, or a unit after
    it). NeMo 1.2's Korean grammar reads any numeral syllable as a number ("일이 많아요" -> "1 2 많아요",
    "오늘 이 일을" -> "오늘 2 일을"), and those syllables are everyday words; this keeps it to real numbers.
    A run ends at punctuation, and a bare numeral after a unit starts a new run ("십팔세 사이" is not "십팔세 4 2"),
    except a day after a month ("칠월 사일")."""
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(words):
        j, evident, after_unit = i, False, ""
        while j < len(words):
            word = words[j]
            if word in ("점", "쩜") and j > i and j + 1 < len(words) and _KO_HEAD.match(words[j + 1]):
                evident, j = True, j + 1
                continue
            parsed = _ko_number_word(word)
            if parsed is None:
                break
            numeral, unit, particle = parsed
            native_hour = _KO_NATIVE_HOUR.match(word) is not None
            if len(numeral) == 1 and unit and not native_hour and (particle or unit not in _KO_ONE_SYLLABLE_UNITS):
                break
            strong = bool(unit) or "점" in numeral or "쩜" in numeral or (
                len(numeral) >= 2 and bool(_KO_POWERS & set(numeral)) and numeral not in _KO_AMBIGUOUS
            )
            day = after_unit.startswith("월") and numeral.endswith("일")
            if (after_unit and not strong and not day) or (particle and not strong):
                break
            evident = evident or strong or day
            after_unit = unit
            j += 1
            if particle or _TRAILING_PUNCTUATION.search(word):
                break
        ends_bare = j > i and not _TRAILING_PUNCTUATION.search(words[j - 1]) and not after_unit
        if ends_bare and j < len(words) and not _KO_HEAD.match(words[j]) and _ko_unit_word(words[j]):
            evident, j = True, j + 1  # the unit as a word of its own: "삼천 원", "백 퍼센트"
        if j > i and evident:
            spans.append((i, j))
        i = max(j, i + 1)
    return spans


def join_spaced_korean_numbers(text: str) -> str:
    """"일억 이천만 오천 원" -> "일억이천만오천 원", "이십육 점 칠" -> "이십육점칠": a number spaced at 만/억/조 (as
    Korean spelling writes it) or around its decimal point, made one word, which is how NeMo reads numbers. The next
    word continues the number only when it is all numerals, or numerals then 원, or a numeral run of two or more
    ending in 십/백/천 ("오천개"); so "이만 오늘" and "이만 구조를" stay apart."""
    text = re.sub(f"(?<=[{_KO_NUMERALS}]) ?[점쩜] ?(?=[{_KO_NUMERALS}])", "점", text)
    out: list[str] = []
    for word in text.split(" "):
        head = _KO_HEAD.match(word)
        continues = head is not None and (
            head.end() == len(word) or word[head.end()] == "원"
            or (head.end() >= 2 and word[head.end() - 1] in "십백천")
        )
        if out and continues and _KO_LARGE_UNIT.fullmatch(out[-1]):
            out[-1] += word
        else:
            out.append(word)
    return " ".join(out)


def _respace(text: str) -> str:
    """NeMo's Korean spacing made Korean: a date's parts apart ("2016년7월4일" -> "2016년 7월 4일"), a time whole
    ("3 :30" -> "3:30"), a unit or counter on its number ("15 kg" -> "15kg", "9 번" -> "9번")."""
    text = re.sub(r"(\d[년월])(?=\d)", r"\1 ", text)
    text = re.sub(r"(\d) :(\d)", r"\1:\2", text)
    text = re.sub(r"(\d) (kg|km|cm|mm|g|m|l|cc|%|°)(?![A-Za-z])", r"\1\2", text)
    return re.sub(r"(\d) (?=[가-힣])", lambda m: m.group(1) if _ko_unit_length(m.string[m.end():]) else m.group(), text)


def _hangul(text: str) -> str:
    return "".join(c for c in text if "가" <= c <= "힣")


def kept_meaning(spoken: str, written: str) -> bool:
    """Whether NeMo's writing of one spoken number says the same: it has digits, no more separate numbers than
    the spoken words, and every other word kept (or written as its symbol). Guards against what NeMo 1.2 does to
    some Korean ("사일" -> "4 1", "삼십분" -> "30")."""
    if not _DIGIT_RUN.search(written) or len(_DIGIT_RUN.findall(written)) > len(spoken.split()):
        return False
    letters = "".join(c for c in _hangul(_KO_NATIVE_HOUR.sub("", spoken)) if c not in _KO_NUMERALS)
    for word, symbol in _KO_SYMBOLS:
        if symbol in written.lower():
            letters = letters.replace(word, "")
    kept = iter(_hangul(written))
    return all(c in kept for c in letters)


def _normalize_korean(text: str, normalizer: Any) -> str:
    """NeMo on each evident spoken number only, kept only where it says the same; every other word stays as it
    was."""
    words = text.split(" ")
    out: list[str] = []
    done = 0
    for start, end in korean_number_spans(words):
        out.extend(words[done:start])
        original = " ".join(words[start:end])
        parsed = _ko_number_word(words[end - 1])
        punctuation = _TRAILING_PUNCTUATION.search(original)
        tail = (parsed[2] if parsed else "") + (punctuation.group() if punctuation else "")
        spoken = join_spaced_korean_numbers(original[: len(original) - len(tail)])
        written = _respace(normalizer.inverse_normalize(spoken, verbose=False))
        out.append(written + tail if kept_meaning(spoken, written) else original)
        done = end
    out.extend(words[done:])
    return " ".join(out)


@lru_cache(maxsize=4096)  # a stream re-reads the segments final so far after each batch
def normalize_text(text: str, language: str, cache_dir: Path | None = None) -> str:
    if not text.strip():
        return text
    lead = text[: len(text) - len(text.lstrip())]
    normalizer = _normalizer(language, cache_dir)
    if language == "ko":  # what NeMo's Korean grammar gets wrong is kept out of it (see korean_number_spans)
        return lead + _normalize_korean(text.strip(), normalizer)
    return lead + normalizer.inverse_normalize(text.strip(), verbose=False)


def normalize_transcript(transcript: Transcript, cache_dir: Path | None = None) -> Transcript:
    """Numbers written in the text and every segment (words keep their spoken form: their timings are per word).
    A language without grammars passes through unchanged."""
    language = transcript.language
    if not language or language not in ITN_LANGUAGES or not transcript.segments:
        return transcript
    segments = [dataclasses.replace(s, text=normalize_text(s.text, language, cache_dir)) for s in transcript.segments]
    return dataclasses.replace(transcript, segments=segments, text=join_segments(segments, language))
