"""The test clips: one reader of `manifest.tsv` for the benchmark, the bench/ scripts and (if they like) the tests.

A manifest is a tab-separated file beside the audio with the columns file, language, duration_seconds, reference
and reference_alt (more columns are ignored). `../shared/audio` holds the full set; `tests/data` a small one.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from stt_engine import textnorm

REPO = Path(__file__).resolve().parents[3]
SAMPLE_RATE = 16000


def default_audio_dir() -> Path:
    """../shared/audio (beside the checkout, or the working directory) when present, else the repo's tests/data."""
    for candidate in (Path("../shared/audio"), REPO.parent / "shared" / "audio", Path("tests/data"),
                      REPO / "tests" / "data"):
        if (candidate / "manifest.tsv").is_file():
            return candidate
    return Path("../shared/audio")


@dataclass(frozen=True)
class Clip:
    """One manifest row. `duration` is 0.0 where the manifest leaves it empty (`with_duration` measures it)."""

    file: str
    language: str
    duration: float
    reference: str
    reference_alt: str
    audio_dir: Path

    @property
    def path(self) -> Path:
        return self.audio_dir / self.file

    @property
    def name(self) -> str:
        return self.file

    @property
    def references(self) -> tuple[str, ...]:
        """The non-empty references (spoken form, written form)."""
        return tuple(r for r in (self.reference, self.reference_alt) if r.strip())

    @property
    def scored(self) -> bool:
        """Whether an error rate can be computed: a reference, a language, and the file itself."""
        return bool(self.references) and self.language not in ("", "none") and self.path.is_file()

    def error_rate(self, text: str) -> float:
        """WER (space-separated languages) or CER (ko, zh, ja) of `text`, best of the two references."""
        return textnorm.error_rate(text, self.references, self.language)

    @property
    def metric(self) -> str:
        return textnorm.metric(self.language)


def read_manifest(audio_dir: Path) -> list[Clip]:
    """Every row of `audio_dir/manifest.tsv`, in file order (filter with `Clip.scored` and the fields)."""
    with (Path(audio_dir) / "manifest.tsv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [
        Clip(row["file"], (row.get("language") or "").strip(),
             float(row["duration_seconds"]) if (row.get("duration_seconds") or "").strip() else 0.0,
             row.get("reference") or "", row.get("reference_alt") or "", Path(audio_dir))
        for row in rows
    ]


def by_file(clips: Sequence[Clip]) -> dict[str, Clip]:
    return {c.file: c for c in clips}


def with_duration(clip: Clip) -> Clip:
    """The clip with its duration measured from the audio when the manifest left it empty."""
    if clip.duration:
        return clip
    from faster_whisper import decode_audio

    return replace(clip, duration=len(decode_audio(str(clip.path), sampling_rate=SAMPLE_RATE)) / SAMPLE_RATE)


def pick_short(clips: Sequence[Clip], languages: Sequence[str], low: float, high: float, limit: int | None) -> list[Clip]:
    """Clips of `low`-`high` s in `languages`; with `limit`, that many, the shortest of each language in turn
    (so a reduced run still mixes the languages)."""
    short = [c for c in clips if c.language in languages and low <= c.duration <= high]
    if limit is None:
        return short
    queues = {lang: sorted((c for c in short if c.language == lang), key=lambda c: c.duration) for lang in languages}
    picked: list[Clip] = []
    while len(picked) < limit and any(queues.values()):
        for lang in languages:
            if queues[lang] and len(picked) < limit:
                picked.append(queues[lang].pop(0))
    return picked
