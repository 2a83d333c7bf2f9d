"""Mask personal data in Korean call transcripts: registration, phone, card and account numbers, e-mail.

Masks are typed (`[RRN]`, `[PHONE]`, `[CARD]`, `[ACCOUNT]`, `[EMAIL]`) so analytics still see what was said. Each
pattern is checked the way its issuer defines it (registration-number dates and checksums, the Luhn digit, Korean
area codes) so that dates, prices and order numbers stay readable.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from stdnum import luhn
from stdnum.kr import rrn as kr_rrn

MASKS = ("RRN", "PHONE", "CARD", "ACCOUNT", "EMAIL")

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# Registration numbers: YYMMDD, optional separator, a gender/century digit 1-8 (5-8: foreigners), six more digits.
_RRN = re.compile(r"(?<![\d-])(\d{2})(\d{2})(\d{2})(\s?[-–]\s?|\s)?([1-8]\d{6})(?![\d-])")
_RRN_WORDS = re.compile(r"주민|외국인\s?등록|등록\s?번호|resident", re.IGNORECASE)
# Card numbers: 13-19 digits, in groups separated by a space or a hyphen, or bare.
_CARD = re.compile(r"(?<![\d-])\d{4}(?:[ -]?\d{2,6}){2,4}(?![\d-])")
# Korean phone numbers: mobile 010/011/016-019, Seoul 02, regional 0xx, 070 (internet phones), +82 forms.
_PHONE = re.compile(
    r"(?<![\d-])(?:\+82[ -]?|\(?)(?:0?1[016789]|0?2|0?[3-6][1-5]|0?70)\)?[ .-]?\d{3,4}[ .-]?\d{4}(?![\d-])"
)
# Account numbers: 10-16 digits in 2-5 groups, or bare, near a bank or account word.
_ACCOUNT = re.compile(r"(?<![\d-])\d{2,7}(?:[ -]\d{2,7}){1,4}(?![\d-])|(?<![\d-])\d{10,16}(?![\d-])")
_BANK_WORDS = re.compile(
    r"은행|계좌|통장|입금|이체|송금|예금주|뱅크|국민|신한|우리|하나|농협|기업|새마을|우체국|수협|신협|씨티|케이뱅크|카카오|토스|"
    r"account|bank", re.IGNORECASE,
)
_NEAR = 25  # characters before a number in which a bank or account word must appear

# Spoken digits, Sino-Korean, read one by one ("공일공 일이삼사 오육칠팔").
_DIGIT_WORDS = {"공": "0", "영": "0", "일": "1", "이": "2", "삼": "3", "사": "4", "오": "5", "육": "6", "륙": "6",
                "칠": "7", "팔": "8", "구": "9"}
_SPOKEN = re.compile(r"(?<![가-힣])[공영일이삼사오육륙칠팔구0-9](?:[\s-]?[공영일이삼사오육륙칠팔구0-9]){8,12}(?![가-힣])")
# English digits read one by one ("zero one zero, one two three four ...").
_EN_DIGITS = {"zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
              "six": "6", "seven": "7", "eight": "8", "nine": "9"}
_EN_WORD = r"\b(?:zero|one|two|three|four|five|six|seven|eight|nine|oh|o|[0-9])\b"
_SPOKEN_EN = re.compile(rf"\b{_EN_WORD}(?:[\s,.-]+{_EN_WORD}){{8,12}}\b", re.IGNORECASE)


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    label: str


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def luhn_ok(number: str) -> bool:
    """The Luhn check digit of a card number (`stdnum.luhn`)."""
    return luhn.is_valid(number)


def rrn_checksum_ok(number: str) -> bool:
    """A registration number issued before October 2020 (residents and foreigners): `stdnum.kr.rrn` checks the
    birth date, the place code and the check digit. Foreigners' numbers (7th digit 5-8) used a check digit 2 higher
    than residents' under the old rule, which stdnum does not know: it is shifted back and checked the same way."""
    if kr_rrn.is_valid(number):
        return True
    return len(number) == 13 and number[6] in "5678" and kr_rrn.is_valid(number[:12] + str((int(number[12]) - 2) % 10))


def _valid_birth(mm: str, dd: str) -> bool:
    return 1 <= int(mm) <= 12 and 1 <= int(dd) <= 31


def _free(spans: list[Span], start: int, end: int) -> bool:
    return all(end <= s.start or start >= s.end for s in spans)


def find_pii(text: str) -> list[Span]:
    """Non-overlapping spans of personal data in `text`, in order."""
    spans: list[Span] = []

    def add(start: int, end: int, label: str) -> None:
        if _free(spans, start, end):
            spans.append(Span(start, end, label))

    for m in _EMAIL.finditer(text):
        add(m.start(), m.end(), "EMAIL")
    for m in _RRN.finditer(text):
        _, mm, dd, sep, _rest = m.groups()
        if not _valid_birth(mm, dd):
            continue
        number = _digits(m.group())
        near_word = _RRN_WORDS.search(text[max(0, m.start() - _NEAR):m.start()])
        # after October 2020 the last six digits are random: a hyphenated number with a valid date is one by format
        if (sep and sep.strip()) or near_word or rrn_checksum_ok(number):
            add(m.start(), m.end(), "RRN")
    for m in _CARD.finditer(text):
        number = _digits(m.group())
        if 13 <= len(number) <= 19 and luhn_ok(number):
            add(m.start(), m.end(), "CARD")
    for m in _PHONE.finditer(text):
        number = _digits(m.group())
        if m.group().startswith("+82") or number.startswith("0"):
            add(m.start(), m.end(), "PHONE")
    for m in _SPOKEN.finditer(text):
        spoken = "".join(_DIGIT_WORDS.get(ch, ch) for ch in m.group() if not ch.isspace() and ch != "-")
        if any(not ch.isdigit() for ch in m.group() if not ch.isspace() and ch != "-") and spoken.startswith("0") and _PHONE.fullmatch(spoken):
            add(m.start(), m.end(), "PHONE")
    for m in _SPOKEN_EN.finditer(text):
        spoken = "".join(_EN_DIGITS.get(w.lower(), w) for w in re.findall(_EN_WORD, m.group(), re.IGNORECASE))
        if spoken.startswith("0") and _PHONE.fullmatch(spoken):
            add(m.start(), m.end(), "PHONE")
    for m in _ACCOUNT.finditer(text):
        number = _digits(m.group())
        if 10 <= len(number) <= 16 and _BANK_WORDS.search(text[max(0, m.start() - _NEAR):m.start()]):
            add(m.start(), m.end(), "ACCOUNT")
    return sorted(spans, key=lambda s: s.start)


def apply_spans(text: str, spans: list[Span]) -> str:
    out, last = [], 0
    for s in spans:
        out.append(text[last:s.start])
        out.append(f"[{s.label}]")
        last = s.end
    out.append(text[last:])
    return "".join(out)


def redact(text: str) -> tuple[str, Counter[str]]:
    """`text` with personal data masked, and how many of each type."""
    spans = find_pii(text)
    return apply_spans(text, spans), Counter(s.label for s in spans)


def redact_pieces(pieces: list[str], separator: str = "") -> list[str]:
    """Mask pieces of one text (a transcript's segments, or its words) as their joined text is masked: a number
    read over several pieces becomes one mask on the first of them, its rest removed from the others."""
    joined = separator.join(pieces)
    spans = find_pii(joined)
    if not spans:
        return list(pieces)
    out: list[str] = []
    pos = 0
    for piece in pieces:
        start, end = pos, pos + len(piece)
        pos = end + len(separator)
        parts, cursor = [], start
        for s in spans:
            if s.end <= start or s.start >= end:
                continue
            parts.append(joined[cursor:max(cursor, s.start)])
            if s.start >= start:
                parts.append(f"[{s.label}]")
            cursor = max(cursor, min(end, s.end))
        parts.append(joined[cursor:end])
        out.append("".join(parts))
    return out


def redact_words(words: list[str]) -> list[str]:
    """Words carry their own spaces: joined as they are."""
    return redact_pieces(words)
