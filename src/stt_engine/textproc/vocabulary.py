"""A team's vocabulary (VOCABULARY_FILE): the names and terms the model should spell right.

One term a line, optionally followed by ` | ` and the forms it is heard or misspelled as:

    자동이체 | 자동이 채
    수하물 | 수암을
    Kubernetes | 쿠버네티스 | 쿠버 네티스

The terms feed decoding (`hotwords`), the aliases an exact-match correction of the transcript, and the terms the
LLM `correct` prompt, so the same list serves all three.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from stt_engine.types import Segment, Transcript

HOTWORDS_MAX_CHARS = 400  # Whisper reads at most ~223 prompt tokens; the request's own hotwords come after these


@dataclass(frozen=True)
class Vocabulary:
    terms: tuple[str, ...]
    aliases: tuple[tuple[str, str], ...]  # (heard form, term), longest heard form first

    @property
    def hotwords(self) -> str:
        out = ""
        for term in self.terms:
            if len(out) + len(term) + 2 > HOTWORDS_MAX_CHARS:
                break
            out = f"{out}, {term}" if out else term
        return out

    def correct(self, text: str) -> str:
        """Replace every known misspelling by its term (whole words for Latin script, any place for Hangul)."""
        for heard, term in self.aliases:
            text = _alias_pattern(heard).sub(lambda _m, t=term: t, text)
        return text

    def glossary(self) -> str:
        """The instruction added to the LLM `correct` prompt."""
        return "Spell these names and terms exactly as written here (team vocabulary): " + ", ".join(self.terms)

    def llm_prompt(self, task: str, prompt: str | None) -> str | None:
        """The prompt for LLM `task`: for `correct`, the glossary goes first (the team's spelling of its names and
        terms), then the caller's own prompt; other tasks get the caller's prompt as it is."""
        if task != "correct" or not self.terms:
            return prompt
        return self.glossary() + (f"\n{prompt}" if prompt and prompt.strip() else "")


EMPTY = Vocabulary((), ())


@lru_cache(maxsize=256)
def _alias_pattern(heard: str) -> re.Pattern[str]:
    body = re.escape(heard).replace(r"\ ", r"\s+")
    left = r"(?<![A-Za-z0-9])" if re.match(r"[A-Za-z0-9]", heard) else ""
    right = r"(?![A-Za-z0-9])" if re.search(r"[A-Za-z0-9]$", heard) else ""
    return re.compile(left + body + right, re.IGNORECASE)


def parse(text: str) -> Vocabulary:
    terms: list[str] = []
    aliases: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("|")]
        term = parts[0]
        if not term:
            continue
        terms.append(term)
        aliases.extend((heard, term) for heard in parts[1:] if heard and heard != term)
    aliases.sort(key=lambda pair: -len(pair[0]))
    return Vocabulary(tuple(dict.fromkeys(terms)), tuple(aliases))


@lru_cache(maxsize=8)
def _load(path: str, mtime: float) -> Vocabulary:
    return parse(Path(path).read_text(encoding="utf-8"))


def load_vocabulary(path: Path | str | None) -> Vocabulary:
    """The file's vocabulary, re-read when it changes; empty without a file."""
    if not path:
        return EMPTY
    return _load(str(path), os.stat(path).st_mtime)


def merge_hotwords(vocabulary: Vocabulary, request_hotwords: str | None) -> str | None:
    """The team's terms, then the request's own hotwords (which add to them)."""
    parts = [p for p in (vocabulary.hotwords, (request_hotwords or "").strip()) if p]
    return ", ".join(parts) if parts else None


def correct_transcript(transcript: Transcript, vocabulary: Vocabulary) -> Transcript:
    """The transcript with known misspellings replaced in its text and segments (words that are a whole alias too)."""
    if not vocabulary.aliases:
        return transcript
    segments: list[Segment] = []
    changed = False
    for s in transcript.segments:
        text = vocabulary.correct(s.text)
        words = s.words
        if words:
            fixed = [dataclasses.replace(w, word=vocabulary.correct(w.word)) for w in words]
            if any(a.word != b.word for a, b in zip(fixed, words)):
                words = fixed
        if text != s.text or words is not s.words:
            changed = True
            s = dataclasses.replace(s, text=text, words=words)
        segments.append(s)
    text = vocabulary.correct(transcript.text)
    if not changed and text == transcript.text:
        return transcript
    return dataclasses.replace(transcript, text=text, segments=segments)
