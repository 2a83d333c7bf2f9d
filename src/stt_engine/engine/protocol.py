"""What the app and the scheduler need from a speech engine, so `create_app(settings, engine=...)` can be given one.

`stt_engine.engine.Engine` (faster-whisper) is the one the server runs. Tests of the HTTP layer that never look at
what was said (auth, refused input, formats, OpenAPI) give the app a stand-in that satisfies this protocol, so they
run in-process without loading a model.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from stt_engine.audio import DecodedAudio
    from stt_engine.engine.job import Job, Stream
    from stt_engine.models import ResolvedModel
    from stt_engine.options import TranscribeOptions
    from stt_engine.types import Segment, Transcript


@runtime_checkable
class SpeechEngine(Protocol):
    """A loaded model the scheduler drives: `prepare` a request into streams, `decode` windows of several streams
    in one batch, then `final_segments`/`transcript` assemble the result. The attributes are what `/health`,
    `/v1/models` and the scheduler's sizing read."""

    resolved: ResolvedModel
    device: str
    compute_type: str
    workers: int
    threads: int
    batch_size: int
    supported_languages: frozenset[str]

    def prepare(self, audio: DecodedAudio, options: TranscribeOptions, streamed: bool = False) -> Job: ...

    def batch_key(self, job: Job) -> Hashable: ...

    def decode(self, streams: Sequence[Stream], *, solo: bool = False) -> None: ...

    def final_segments(self, job: Job) -> list[Segment]: ...

    def transcript(self, job: Job) -> Transcript: ...
