"""Drop the stock phrases Whisper invents on silence, noise and music, and collapse repetition loops.

VAD removes most invented text, but not what Whisper writes at the edges of speech or under music, and not when VAD
is off. A phrase list alone would also delete real speech ("감사합니다" said at the end of a call), so a segment is
dropped only when its text is a known phrase *and* the decoder's own evidence for it is weak. Nothing disappears
silently: every drop is returned (for `dropped_segments` in verbose_json) and counted in metrics.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from stt_engine.types import DroppedSegment, Segment, Transcript, join_segments

# Evidence thresholds. faster-whisper itself skips a window when no_speech_prob > 0.6 and avg_logprob < -1; a
# known phrase needs less to be doubted.
NO_SPEECH_HIGH = 0.5
LOGPROB_LOW = -1.0
# A segment that is not clearly confident: at a speech edge, this is enough for a known phrase to go.
CONFIDENT_LOGPROB = -0.5
CONFIDENT_NO_SPEECH = 0.2
EDGE_GAP_S = 1.5  # silence (no segment) this long before or after a segment makes it a speech edge
MIN_SECONDS_PER_CHAR = 0.03  # faster than any speaker: the text was not heard in that time
MAX_SECONDS_PER_CHAR = 1.5  # a few syllables stretched over many seconds of music

# A unit of 1 to 30 characters said 4 or more times in a row (optionally separated by spaces or punctuation).
_LOOP = re.compile(r"(\S.{0,29}?)(?:[\s,.!?…~]*\1){3,}", re.DOTALL)


@dataclass(frozen=True)
class PhraseList:
    """Known invented phrases of one language: compacted literals and whole-text regular expressions."""

    literals: frozenset[str]
    patterns: tuple[re.Pattern[str], ...]

    def matches(self, text: str) -> bool:
        key = compact(text)
        if not key:
            return False
        return key in self.literals or any(p.fullmatch(key) for p in self.patterns)


def compact(text: str) -> str:
    """Lower case, without spaces, punctuation or symbols: how phrases are compared."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if unicodedata.category(ch)[0] in "LN")


def _parse(lines: list[str], literals: set[str], patterns: list[re.Pattern[str]]) -> None:
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("re:"):
            patterns.append(re.compile(line[3:].strip()))
        elif key := compact(line):
            literals.add(key)


@lru_cache(maxsize=32)
def load_phrases(language: str | None, extra_file: str | None = None) -> PhraseList:
    """The shipped list for `language` (empty when none ships) plus HALLUCINATION_PHRASES_FILE's lines.

    The extra file holds one phrase a line; a line may start with a language code and a tab (`ko<TAB>...`) to apply
    to that language only; lines without one apply to every language.
    """
    literals: set[str] = set()
    patterns: list[re.Pattern[str]] = []
    if language and re.fullmatch(r"[a-z]{2,3}", language):
        data = resources.files("stt_engine.textproc").joinpath("hallucinations", f"{language}.txt")
        if data.is_file():
            _parse(data.read_text(encoding="utf-8").splitlines(), literals, patterns)
    if extra_file:
        own: list[str] = []
        for line in Path(extra_file).read_text(encoding="utf-8").splitlines():
            lang, sep, rest = line.partition("\t")
            if sep and re.fullmatch(r"[a-z]{2,3}", lang.strip()):
                if lang.strip() == language:
                    own.append(rest)
            else:
                own.append(line)
        _parse(own, literals, patterns)
    return PhraseList(frozenset(literals), tuple(patterns))


def collapse_loops(text: str) -> str:
    """A unit repeated four or more times in a row ("웃음 웃음 웃음 웃음", "아아아아아아") becomes one."""
    return _LOOP.sub(lambda m: m.group(1), text)


def _weak_evidence(segments: list[Segment], i: int, duration: float) -> list[str]:
    s = segments[i]
    reasons = _own_weak_evidence(s)
    if not _confident(s) and _at_edge(segments, i, duration):
        reasons.append("speech_edge")
    return reasons


def _confident(s: Segment) -> bool:
    return s.avg_logprob > CONFIDENT_LOGPROB and s.no_speech_prob < CONFIDENT_NO_SPEECH


def always_kept(segment: Segment) -> bool:
    """Whether the filter keeps this segment whatever its neighbours are: its own evidence is strong, so no
    position at a speech edge or run of repeats can make it drop it (a stream may send it before the next one)."""
    s = _collapsed(segment)
    return _confident(s) and not _own_weak_evidence(s)


def _own_weak_evidence(s: Segment) -> list[str]:
    """The doubts a segment carries by itself, whatever surrounds it."""
    reasons = []
    if s.no_speech_prob >= NO_SPEECH_HIGH:
        reasons.append("no_speech_prob")
    if s.avg_logprob <= LOGPROB_LOW:
        reasons.append("avg_logprob")
    chars = max(1, len(compact(s.text)))
    length = float(s.end) - float(s.start)
    if length < chars * MIN_SECONDS_PER_CHAR:
        reasons.append("too_short")
    elif length > chars * MAX_SECONDS_PER_CHAR and length > 4.0:
        reasons.append("too_long")
    return reasons


def _at_edge(segments: list[Segment], i: int, duration: float) -> bool:
    """First or last segment, or one with a long stretch of nothing before or after it."""
    s = segments[i]
    before = segments[i - 1].end if i > 0 else 0.0
    after = segments[i + 1].start if i + 1 < len(segments) else duration
    return i == 0 or i == len(segments) - 1 or s.start - before >= EDGE_GAP_S or after - s.end >= EDGE_GAP_S


def _collapsed(segment: Segment) -> Segment:
    text = collapse_loops(segment.text)
    if text == segment.text:
        return segment
    words = segment.words
    if words:  # keep the words that make up the collapsed text
        kept, length, target = [], 0, len(compact(text))
        for w in words:
            if length >= target:
                break
            kept.append(w)
            length += len(compact(w.word))
        words = kept
    return dataclasses.replace(segment, text=text, words=words)


def _loop_runs(segments: list[Segment], min_run: int = 3) -> set[int]:
    """Indexes of segments in runs of `min_run` or more consecutive segments with the same text: the decoder
    looping over music or noise (each is still dropped only on weak evidence)."""
    found: set[int] = set()
    start = 0
    keys = [compact(s.text) for s in segments]
    for i in range(1, len(segments) + 1):
        if i == len(segments) or keys[i] != keys[start]:
            if keys[start] and i - start >= min_run:
                found.update(range(start, i))
            start = i
    return found


def filter_transcript(
    transcript: Transcript, *, extra_file: str | None = None, enabled: bool = True
) -> tuple[Transcript, list[DroppedSegment]]:
    """The transcript without invented stock phrases and with repetition loops collapsed; what was dropped.

    Pure: the input is not changed. A segment goes only when its text is on the language's list and at least one
    piece of evidence is weak (see `_weak_evidence`); clear, confident speech saying the same words is kept.
    """
    if not enabled or not transcript.segments:
        return transcript, []
    phrases = load_phrases(transcript.language, extra_file)
    segments = [_collapsed(s) for s in transcript.segments]
    kept: list[Segment] = []
    dropped: list[DroppedSegment] = []
    looping = _loop_runs(segments)
    for i, s in enumerate(segments):
        if phrases.matches(s.text) or i in looping:
            reasons = _weak_evidence(segments, i, transcript.duration)
            if reasons:
                if i in looping:
                    reasons.insert(0, "repetition")
                dropped.append(DroppedSegment(s.id, s.start, s.end, s.text.strip(), tuple(reasons)))
                continue
        kept.append(s)
    if not dropped and all(a is b for a, b in zip(segments, transcript.segments)):
        return transcript, []
    text = join_segments(kept, transcript.language)
    return dataclasses.replace(transcript, segments=kept, text=text), dropped
