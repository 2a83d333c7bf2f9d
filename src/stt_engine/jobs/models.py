"""The job record and how a transcript is kept in it (JSON that any node can render in every response format)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from stt_engine.formats import ResponseFormat, render
from stt_engine.options import TranscribeOptions
from stt_engine.types import DroppedSegment, ProcessedTranscript, Segment, SpeakerSegment, Transcript, Word


class JobStatus(str, Enum):
    queued = "queued"
    processing = "processing"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.completed, JobStatus.failed, JobStatus.cancelled)


FINISHED = frozenset(s.value for s in JobStatus if s.finished)


def new_job_id() -> str:
    """Sortable by creation time (hex milliseconds first), unguessable (random tail)."""
    return f"job_{int(time.time() * 1000):012x}{secrets.token_hex(8)}"


def owner_of(api_key: str | None) -> str:
    """Jobs belong to the hash of the caller's API key (never the key itself); "" on an open server."""
    if not api_key:
        return ""
    return hashlib.sha256(api_key.encode("utf-8", "surrogateescape")).hexdigest()


def request_fingerprint(path: str | Path, fields: Iterable[tuple[str, str]]) -> str:
    """What makes two submissions "the same request" for an Idempotency-Key: the file's bytes and the form fields
    (sorted, so their order does not matter). Reads the file: call it off the event loop."""
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256")
    digest.update(b"\0" + json.dumps(sorted(fields), ensure_ascii=False).encode())
    return digest.hexdigest()


@dataclass
class Job:
    """Everything a node needs to run, report and deliver one job. Stored as JSON; fields are plain values."""

    id: str
    status: str = JobStatus.queued.value
    owner: str = ""
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    filename: str = ""
    audio_path: str = ""  # relative to JOBS_STORAGE_DIR
    duration: float = 0.0
    progress_seconds: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)
    include_words: bool = False
    postprocess: str | None = None
    postprocess_prompt: str | None = None
    # The call-centre choices, resolved against the settings when the job was accepted, so that it runs as accepted.
    # None in records from before they existed: then the settings' redact/normalize defaults apply, and channels mix.
    redact: str | None = None  # pii | none
    normalize: str | None = None  # numbers | none
    channels: str | None = None  # split | mix
    known_speaker_names: list[str] | None = None
    diarize: dict[str, Any] | None = None  # speakers.request_to_dict: who spoke, on mono audio
    model: str | None = None  # the id of the WHISPER_MODELS model it decodes with; None: the default (older records)
    webhook_url: str | None = None
    webhook_secret: str | None = None
    idempotency_key: str | None = None
    request_fingerprint: str | None = None  # sha256 of the upload and form fields: a reused key must match it
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    postprocess_result: dict[str, Any] | None = None
    attempts: int = 0  # times a node started it (a restart or a dead worker makes it >1)
    worker: str | None = None  # the run that owns it now; only that run may finish it
    webhook_status: str | None = None  # pending | delivered | failed
    webhook_attempts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def transcribe_options(self) -> TranscribeOptions:
        values = dict(self.options)
        values["temperatures"] = tuple(values.get("temperatures") or ())
        if self.diarize and self.channels != "split":  # word timings split segments where the speaker changes
            values["word_timestamps"] = True
        return TranscribeOptions(**values)

    def public(self, *, include_result: bool = True) -> dict[str, Any]:
        """The API's view: never the secret, the owner or internal bookkeeping."""
        body: dict[str, Any] = {
            "id": self.id,
            "object": "transcription.job",
            "status": self.status,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "filename": self.filename,
            "duration": round(self.duration, 3),
            "progress": {
                "seconds_done": round(min(self.progress_seconds, self.duration), 3),
                "seconds_total": round(self.duration, 3),
                "fraction": round(min(1.0, self.progress_seconds / self.duration), 4) if self.duration else 0.0,
            },
            "redact": self.redact,
            "normalize": self.normalize,
            "channels": self.channels or "mix",
            "known_speaker_names": self.known_speaker_names,
            "diarize": self.diarize is not None,
            "model": self.model or "default",  # "default" means the server's default model, as in a request
            "attempts": self.attempts,
            "error": self.error,
            "webhook": {"url": self.webhook_url, "status": self.webhook_status, "attempts": self.webhook_attempts}
            if self.webhook_url else None,
        }
        if include_result and self.status == JobStatus.completed.value and self.result is not None:
            result = render(transcript_from_dict(self.result), ResponseFormat.verbose_json, self.include_words)
            assert isinstance(result, dict)
            if self.postprocess_result is not None:
                result["postprocess"] = self.postprocess_result
            body["result"] = result
        return body


def options_to_dict(options: TranscribeOptions) -> dict[str, Any]:
    values = dataclasses.asdict(options)
    values["temperatures"] = list(options.temperatures)
    return values


def transcript_to_dict(t: Transcript) -> dict[str, Any]:
    """Every field `formats.render` reads, words, speakers and the text-processing report included, so any format
    can be produced later exactly as the sync routes produce it."""
    data: dict[str, Any] = {
        "text": t.text,
        "language": t.language,
        "language_probability": float(t.language_probability),
        "duration": float(t.duration),
        "duration_after_vad": float(t.duration_after_vad),
        "task": t.task,
        "segments": [
            {
                "id": s.id, "seek": s.seek, "start": float(s.start), "end": float(s.end), "text": s.text,
                "tokens": [int(x) for x in s.tokens], "avg_logprob": float(s.avg_logprob),
                "compression_ratio": float(s.compression_ratio), "no_speech_prob": float(s.no_speech_prob),
                "temperature": None if s.temperature is None else float(s.temperature),
                "words": None if s.words is None else [
                    {"start": float(w.start), "end": float(w.end), "word": w.word, "probability": float(w.probability)}
                    for w in s.words
                ],
            }
            | ({"speaker": s.speaker, "channel": s.channel} if getattr(s, "speaker", None) is not None else {})
            for s in t.segments
        ],
    }
    if isinstance(t, ProcessedTranscript):
        data["dropped_segments"] = [d.as_dict() for d in t.dropped_segments]
        data["redactions"] = t.redactions
        data["original_text"] = t.original_text
    return data


def transcript_from_dict(data: dict[str, Any]) -> Transcript:
    segments = [
        (SpeakerSegment if s.get("speaker") is not None else Segment)(
            **{**s, "words": None if s.get("words") is None else [Word(**w) for w in s["words"]]}
        )
        for s in data["segments"]
    ]
    base = Transcript(
        text=data["text"], language=data["language"], language_probability=data["language_probability"],
        duration=data["duration"], duration_after_vad=data["duration_after_vad"], segments=segments,
        task=data.get("task", "transcribe"),
    )
    if "dropped_segments" not in data:  # a result stored before the report was kept
        return base
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(Transcript)}
    return ProcessedTranscript(
        **fields,
        dropped_segments=[
            DroppedSegment(d["id"], d["start"], d["end"], d["text"], tuple(d["reasons"]))
            for d in data["dropped_segments"]
        ],
        redactions=data.get("redactions"), original_text=data.get("original_text"),
    )
