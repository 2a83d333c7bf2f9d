"""LocalAgreement-2 (Macháček et al., 2023, "Turning Whisper into Real-Time Transcription System") as pure functions.

The growing turn is decoded again and again; text is sent only once two consecutive hypotheses agree on it, so
partial text rarely has to be taken back. Sent text cannot be taken back at all (deltas are append-only), so when a
later hypothesis, or the final decode of the whole turn, disagrees with what was already sent, the new text is
aligned after the sent text instead of replacing it: the concatenated deltas always equal the completed transcript.

Tokens are words with their leading whitespace (`" fellow"`), or single characters for languages written without
spaces (zh, ja), so joining tokens gives back the text exactly.
"""

from __future__ import annotations

import re
import unicodedata
from difflib import SequenceMatcher

CHARACTER_LANGUAGES = frozenset({"zh", "ja", "yue", "th", "lo", "my", "bo"})
_WORD = re.compile(r"\s*\S+")
_CHAR = re.compile(r"\s*\S")


def tokens(text: str, language: str | None) -> list[str]:
    text = text.strip()
    return (_CHAR if language in CHARACTER_LANGUAGES else _WORD).findall(text)


def _key(token: str) -> str:
    """What two tokens must share to be the same word when aligning: case and punctuation folded."""
    folded = unicodedata.normalize("NFKC", token).lower()
    return "".join(ch for ch in folded if ch.isalnum())


def agreed_prefix(previous: list[str], current: list[str]) -> int:
    """How many leading tokens two consecutive hypotheses share exactly."""
    n = 0
    for a, b in zip(previous, current):
        if a != b:
            break
        n += 1
    return n


def continuation(sent: list[str], hypothesis: list[str]) -> int:
    """Index in `hypothesis` where the text after the already `sent` tokens begins.

    When `sent` is a prefix of `hypothesis` (the usual case) that is `len(sent)`; otherwise the two are aligned on
    folded words and the point after the last matching word, skipping as many words as `sent` has left over, is taken.
    """
    m = len(sent)
    if hypothesis[:m] == sent:
        return m
    matcher = SequenceMatcher(None, [_key(t) for t in sent], [_key(t) for t in hypothesis], autojunk=False)
    blocks = [b for b in matcher.get_matching_blocks() if b.size]
    if not blocks:
        return min(m, len(hypothesis))
    last = blocks[-1]
    after = last.b + last.size
    return min(len(hypothesis), after + (m - (last.a + last.size)))


def join(new_tokens: list[str], sent_text: str) -> str:
    """The delta text for `new_tokens` appended after `sent_text` (no leading space at the start of an item)."""
    text = "".join(new_tokens)
    return text.lstrip() if not sent_text else text


def partial_delta(sent: list[str], previous: list[str] | None, current: list[str]) -> list[str]:
    """Tokens to send now: the part of the agreed prefix of the last two hypotheses beyond what was sent."""
    if previous is None:
        return []
    agreed = current[: agreed_prefix(previous, current)]
    start = continuation(sent, agreed)
    return agreed[start:]


def final_delta(sent: list[str], final: list[str]) -> list[str]:
    """Tokens of the final transcript that complete the sent text."""
    return final[continuation(sent, final):]
