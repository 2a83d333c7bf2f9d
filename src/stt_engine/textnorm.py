"""Whisper-style text normalisation and error rates against reference transcripts (tests and `stt-engine bench`).

Case, punctuation and spacing are folded before scoring; Korean, Chinese and Japanese are scored per character (CER)
because their word boundaries are not stable, the other languages per word (WER). A clip may carry two references
(spoken and written form, e.g. "십오킬로그램" and "15kg"): the better of the two counts.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

CJK = frozenset({"ko", "zh", "ja"})
_EN_NUMBERS = {str(n): word for n, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split()
)}


def metric(language: str) -> str:
    """"cer" for ko/zh/ja, else "wer"."""
    return "cer" if language in CJK else "wer"


def normalize(text: str, language: str) -> str:
    """Case, punctuation and spacing folded; CJK keeps only letters/digits (scored per character)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = text.replace("mr.", "mister").replace(" mr ", " mister ")
    text = re.sub(r"^mr ", "mister ", text)
    text = re.sub(r"[^\w\s']|_", " ", text)
    text = text.replace("'", "")
    if language in CJK:
        return re.sub(r"\s+", "", text)
    if language == "en":
        text = re.sub(r"\b\d{1,2}\b", lambda m: _EN_NUMBERS.get(m.group(), m.group()), text)
    return " ".join(text.split())


def error_rate(hypothesis: str, references: Iterable[str], language: str) -> float:
    """WER (space-separated languages) or CER (ko, zh, ja) after `normalize`, the best over the given references.

    An empty hypothesis scores 1.0 (everything deleted). Raises ValueError when no reference is given.
    """
    import jiwer  # a test/bench dependency; the server never scores text

    refs = [normalize(r, language) for r in references if r and r.strip()]
    if not refs:
        raise ValueError("no reference text to score against")
    hyp = normalize(hypothesis, language)
    if not hyp:
        return 1.0
    score = jiwer.cer if language in CJK else jiwer.wer
    return min(float(score(ref, hyp)) for ref in refs)
