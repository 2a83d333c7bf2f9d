"""Spoken numbers to written form ("이천십육년 칠월 사일" -> "2016년 7월 4일"): NVIDIA NeMo's inverse text
normalisation, an optional extra (`pip install 'stt-engine[itn]'`).

NeMo's grammars are weighted finite-state transducers compiled by pynini on first use (minutes on a small CPU) and
cached as .far files under NORMALIZE_CACHE_DIR, so later starts load them in seconds.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from stt_engine.engine import Transcript
from stt_engine.engine.assemble import join_segments
from stt_engine.errors import InvalidRequest

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


@lru_cache(maxsize=4096)  # a stream re-reads the segments final so far after each batch
def normalize_text(text: str, language: str, cache_dir: Path | None = None) -> str:
    if not text.strip():
        return text
    lead = text[: len(text) - len(text.lstrip())]
    return lead + _normalizer(language, cache_dir).inverse_normalize(text.strip(), verbose=False)


def normalize_transcript(transcript: Transcript, cache_dir: Path | None = None) -> Transcript:
    """Numbers written in the text and every segment (words keep their spoken form: their timings are per word).
    A language without grammars passes through unchanged."""
    language = transcript.language
    if not language or language not in ITN_LANGUAGES or not transcript.segments:
        return transcript
    segments = [dataclasses.replace(s, text=normalize_text(s.text, language, cache_dir)) for s in transcript.segments]
    return dataclasses.replace(transcript, segments=segments, text=join_segments(segments, language))
