"""Who spoke, on a transcript: the diarizer's speaker turns laid over Whisper's segments.

The diarizer (`stt_engine.diarize`) answers "who spoke when" on the mono audio; this module is the policy that joins
that to a transcript, shared by the routes, streams and jobs:

- every word takes the speaker whose turn overlaps it most (the nearest turn when none does);
- a segment whose words change speaker is split at that word boundary, so no segment spans two speakers; the pieces'
  texts are the segment's own words, so the transcript's text never changes;
- speakers are labelled A, B, ... in order of first appearance in the answer; a speaker the diarizer matched to a
  known reference keeps that name.

Diarization runs in a small executor of its own (DIARIZE_CONCURRENCY threads), never on the event loop and never in
the threads that decode uploads, so a long file's diarization holds up neither transcription nor short requests'
decoding.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import re
import threading
from collections.abc import Awaitable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from stt_engine.config import Settings
from stt_engine.errors import InvalidRequest, STTError, quote
from stt_engine.types import Segment, SpeakerSegment, Transcript, tidy_text

T = TypeVar("T")
MAX_KNOWN_SPEAKERS = 4  # as OpenAI's API
REFERENCE_PARAM = "known_speaker_references[]"


@dataclass
class DiarizeRequest:
    """A request's diarization choices, validated; `references` are the data URLs, `known` their decoded audio."""

    min_speakers: int | None = None
    max_speakers: int | None = None
    references: dict[str, str] = field(default_factory=dict)
    known: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.references)


def parse_request(
    names: Sequence[str] | None, references: Sequence[str] | None, min_speakers: int | None,
    max_speakers: int | None,
) -> DiarizeRequest:
    """`known_speaker_names[]` paired with `known_speaker_references[]` (up to 4), and the speaker-count hints."""
    names = [n.strip() for n in (names or []) if n and n.strip()]
    references = [r.strip() for r in (references or []) if r and r.strip()]
    if len(names) != len(references):
        raise InvalidRequest(
            f"known_speaker_names[] ({len(names)}) and known_speaker_references[] ({len(references)}) must come in "
            "pairs: one reference recording (a data: URL of 2-10 s of audio) per name.",
            param=REFERENCE_PARAM, code="invalid_speaker_reference",
        )
    if len(names) > MAX_KNOWN_SPEAKERS:
        raise InvalidRequest(f"At most {MAX_KNOWN_SPEAKERS} known speakers, got {len(names)}.",
                             param="known_speaker_names[]", code="invalid_speaker_reference")
    if len(set(names)) != len(names):
        raise InvalidRequest("known_speaker_names[] must be distinct.", param="known_speaker_names[]",
                             code="invalid_speaker_reference")
    for name, value in (("min_speakers", min_speakers), ("max_speakers", max_speakers)):
        if value is not None and not 1 <= value <= 32:
            raise InvalidRequest(f"{name} must be between 1 and 32, got {value}.", param=name)
    if min_speakers is not None and max_speakers is not None and min_speakers > max_speakers:
        raise InvalidRequest(f"min_speakers ({min_speakers}) is more than max_speakers ({max_speakers}).",
                             param="min_speakers")
    return DiarizeRequest(min_speakers, max_speakers, dict(zip(names, references)))


_DATA_URL = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,",
                       re.IGNORECASE)


def decode_reference(data_url: str, name: str, settings: Settings | None = None) -> np.ndarray:
    """A known speaker's reference recording (a `data:` URL, as OpenAI's API takes it) as 16 kHz mono samples.

    The one place references are decoded: blocking, call it off the event loop. Errors are 400s naming the speaker.
    """
    from stt_engine import decoder

    match = _DATA_URL.match(data_url)
    if match is None or not match.group("b64"):
        raise InvalidRequest(
            f"The reference for known speaker {quote(name)} is not a base64 data URL "
            "(data:audio/wav;base64,...).", param=REFERENCE_PARAM, code="invalid_speaker_reference",
        )
    try:
        raw = base64.b64decode(data_url[match.end():], validate=False)
    except (binascii.Error, ValueError):
        raw = b""
    try:
        return decoder.decode(raw, max_seconds=30.0).samples
    except STTError as exc:
        raise InvalidRequest(
            f"The reference for known speaker {quote(name)} is not decodable audio: {exc.message}",
            param=REFERENCE_PARAM, code="invalid_speaker_reference",
        ) from None


def check_references(request: DiarizeRequest, settings: Settings) -> None:
    """Decode and check every reference (blocking): 2-10 s with speech, or a 400 naming it."""
    diarizer = shared_diarizer(settings)
    for name, url in request.references.items():
        samples = decode_reference(url, name, settings)
        diarizer.check_reference(name, samples)
        request.known[name] = samples


# --- running the diarizer -------------------------------------------------------------------------------
_lock = threading.Lock()
_diarizers: dict[int, Any] = {}
_executors: dict[int, ThreadPoolExecutor] = {}


def shared_diarizer(settings: Settings) -> Any:
    """The process's one `Diarizer` (its model loads once, on first use, in a worker thread)."""
    from stt_engine.diarize import Diarizer, unavailable_reason

    with _lock:
        diarizer = _diarizers.get(id(settings))
        if diarizer is None:
            reason = unavailable_reason(settings)
            if reason is not None:
                raise STTError(f"Speaker diarization is not available on this server: {reason}", status=503,
                               code="diarization_unavailable")
            diarizer = _diarizers[id(settings)] = Diarizer(settings)
        return diarizer


def _executor(settings: Settings) -> ThreadPoolExecutor:
    with _lock:
        pool = _executors.get(id(settings))
        if pool is None:
            pool = _executors[id(settings)] = ThreadPoolExecutor(
                max_workers=settings.diarize_concurrency, thread_name_prefix="diarize"
            )
        return pool


def _run(settings: Settings, samples: np.ndarray, request: DiarizeRequest) -> list[Any]:
    if request.references and not request.known:
        check_references(request, settings)
    return shared_diarizer(settings).diarize(
        samples, min_speakers=request.min_speakers, max_speakers=request.max_speakers, known=request.known or None
    )


async def diarize(settings: Settings, samples: np.ndarray, request: DiarizeRequest) -> list[Any]:
    """The speaker turns of `samples` (16 kHz mono), in the diarization executor (DIARIZE_CONCURRENCY at once)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor(settings), _run, settings, samples, request)


async def with_turns(transcription: Awaitable[T], turns: Awaitable[list[Any]]) -> tuple[T, list[Any]]:
    """A transcription and the same audio's diarization, run at once; when either fails or the caller is
    cancelled, the other is dropped too (a diarization already running finishes in its thread, unheard)."""
    work = [asyncio.ensure_future(transcription), asyncio.ensure_future(turns)]
    try:
        transcript, found = await asyncio.gather(*work)
    except BaseException:
        for task in work:
            task.cancel()
        await asyncio.gather(*work, return_exceptions=True)
        raise
    return transcript, found


async def prepare(settings: Settings, request: DiarizeRequest) -> None:
    """Before any other work: the model loaded (or a 503 saying how to install it), and the references decoded and
    checked, so a bad one is a 400 before the upload is read."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(_executor(settings), check_references, request, settings)


# --- the policy: turns onto segments ----------------------------------------------------------------------
class Labels:
    """A, B, C ... in order of first appearance; a known speaker keeps its name."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        self.known = set(known)
        self.assigned: dict[str, str] = {}

    def __call__(self, raw: str) -> str:
        if raw in self.known:
            return raw
        label = self.assigned.get(raw)
        if label is None:
            taken = set(self.assigned.values()) | self.known
            index = 0
            while (label := _letter(index)) in taken:
                index += 1
            self.assigned[raw] = label
        return label

    def order(self, segments: Iterable[Any]) -> list[str]:
        """The speakers of `segments`, each once, in order of first appearance."""
        return list(dict.fromkeys(s.speaker for s in segments if getattr(s, "speaker", None) is not None))


def _letter(index: int) -> str:
    return chr(ord("A") + index) if index < 26 else f"S{index + 1}"


def speaker_at(turns: Sequence[Any], start: float, end: float) -> str | None:
    """The speaker whose turns overlap [start, end] most; when none does, the nearest turn's speaker."""
    if not turns:
        return None
    overlap: dict[str, float] = {}
    for t in turns:
        o = min(end, t.end) - max(start, t.start)
        if o > 0:
            overlap[t.speaker] = overlap.get(t.speaker, 0.0) + o
    if overlap:
        return max(overlap, key=lambda s: overlap[s])
    middle = (start + end) / 2
    return min(turns, key=lambda t: max(t.start - middle, middle - t.end)).speaker


def _runs(labels: list[str | None]) -> list[tuple[str | None, int, int]]:
    """Consecutive equal labels as (label, first, last+1); a lone word between two runs of one other speaker
    joins them (a boundary off by a word, not a turn)."""
    smoothed = list(labels)
    for i in range(1, len(smoothed) - 1):
        if smoothed[i - 1] == smoothed[i + 1] != smoothed[i]:
            smoothed[i] = smoothed[i - 1]
    runs: list[tuple[str | None, int, int]] = []
    for i, label in enumerate(smoothed):
        if runs and runs[-1][0] == label:
            runs[-1] = (label, runs[-1][1], i + 1)
        else:
            runs.append((label, i, i + 1))
    return runs


def split_segment(segment: Segment, turns: Sequence[Any]) -> list[tuple[str | None, Segment]]:
    """The segment as pieces of one speaker each, split at word boundaries; the pieces' texts join to its text.

    Without word timings (or when they do not spell the segment's text, e.g. after masking), the whole segment
    goes to the speaker who overlaps it most."""
    words = segment.words or []
    whole = [(speaker_at(turns, float(segment.start), float(segment.end)), segment)]
    if not words or tidy_text("".join(w.word for w in words)) != tidy_text(segment.text):
        return whole
    runs = _runs([speaker_at(turns, float(w.start), float(w.end)) for w in words])
    if len(runs) == 1:
        return [(runs[0][0], segment)]
    pieces = []
    for k, (label, first, last) in enumerate(runs):
        own = words[first:last]
        pieces.append((label, dataclasses.replace(
            segment,
            start=float(segment.start) if k == 0 else float(own[0].start),
            end=float(segment.end) if k == len(runs) - 1 else float(own[-1].end),
            text=tidy_text("".join(w.word for w in own)),
            tokens=list(segment.tokens) if k == 0 else [],
            words=own,
        )))
    return pieces


class SpeakerAssigner:
    """Turns onto segments, one batch after another (a stream's segments as they become final, or a whole
    transcript at once), with labels and ids that continue from batch to batch."""

    def __init__(self, turns: Sequence[Any], known: Iterable[str] = (), keep_words: bool = False) -> None:
        self.turns = sorted(turns, key=lambda t: t.start)
        self.labels = Labels(known)
        self.keep_words = keep_words
        self.next_id = 0

    def segments(self, segments: Iterable[Segment]) -> list[SpeakerSegment]:
        out = []
        for segment in segments:
            for raw, piece in split_segment(segment, self.turns):
                fields = {f.name: getattr(piece, f.name) for f in dataclasses.fields(Segment)}
                fields["id"] = self.next_id
                if not self.keep_words:
                    fields["words"] = None
                self.next_id += 1
                out.append(SpeakerSegment(**fields, speaker=self.labels(raw) if raw is not None else None))
        return out

    def transcript(self, transcript: Transcript) -> Transcript:
        """The transcript with speakers: same text (and report fields), segments split by speaker."""
        return dataclasses.replace(transcript, segments=self.segments(transcript.segments))


def label_turns(turns: Sequence[Any], known: Iterable[str] = ()) -> list[dict[str, Any]]:
    """`/v1/audio/diarization`'s turns: times and speakers, labelled as a transcript's would be."""
    labels = Labels(known)
    return [{"start": round(float(t.start), 3), "end": round(float(t.end), 3), "speaker": labels(t.speaker)}
            for t in sorted(turns, key=lambda t: t.start)]


def speakers_of(transcript: Transcript) -> list[str]:
    """The transcript's speakers, each once, in order of first appearance."""
    return Labels().order(transcript.segments)


# --- jobs: the request as stored with the job -------------------------------------------------------------------
def request_to_dict(request: DiarizeRequest | None) -> dict[str, Any] | None:
    """What a job stores of its diarization choices (the references as their data URLs, checked at submission)."""
    if request is None:
        return None
    return {"min_speakers": request.min_speakers, "max_speakers": request.max_speakers,
            "references": dict(request.references)}


def request_from_dict(data: dict[str, Any] | None) -> DiarizeRequest | None:
    if not data:
        return None
    return DiarizeRequest(data.get("min_speakers"), data.get("max_speakers"), dict(data.get("references") or {}))
