"""A stand-in engine for tests of the HTTP layer that never look at what was said: auth, input refused before
decoding, response formats, hardening, OpenAPI. It satisfies `stt_engine.engine.protocol.SpeechEngine`, loads
nothing and "hears" `FAKE_TEXT` in any audio, so these tests run without a model, in-process
(`support.app_client`) or as a real `serve` process (`support.running_server(env, engine="fake")`).

Everything on the user's audio path (accuracy, decoding, streams, jobs end to end, live) keeps the real model.

`python -m tests.fake_engine serve` is `stt-engine serve` with this engine: the whole server (uvicorn, logging, the
SIGTERM drain) but no model load; `python -m tests.fake_engine worker` is `stt-engine worker` the same way (jobs
machinery tests that kill workers: attempts, redelivery, nothing lost).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Hashable, Sequence
from dataclasses import replace
from pathlib import Path

from stt_engine.audio import DecodedAudio
from stt_engine.engine.job import Job, Stream
from stt_engine.models import ResolvedModel
from stt_engine.options import TranscribeOptions
from stt_engine.types import Segment, Transcript, Word

FAKE_TEXT = "The stand-in engine heard this."
SEGMENT_S = 5.0  # one segment per this much audio, so subtitles have several cues
FAKE_MODEL = ResolvedModel(Path("/nonexistent/fake-model"), "fake-whisper", "setting")
# the languages the bundled multilingual model accepts, so language validation behaves as on the real server
LANGUAGES = frozenset(
    "af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha haw he hi hr ht hu hy id "
    "is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr ms mt my ne nl nn no oc pa pl ps pt ro ru sa sd si "
    "sk sl sn so sq sr su sv sw ta te tg th tk tl tr tt uk ur uz vi yi yo zh yue".split()
)


class FakeEngine:
    """One stream per request, decoded in one step; the transcript is `FAKE_TEXT` spread over the whole audio
    (words evenly timed when asked for), in the requested language or English."""

    resolved = FAKE_MODEL
    device = "cpu"
    compute_type = "int8"
    workers = 1
    threads = 1
    batch_size = 1
    supported_languages = LANGUAGES

    def __init__(self, text: str = FAKE_TEXT, decode_s: float = 0.0) -> None:
        self.text = text
        self.decode_s = decode_s  # how long each decode step takes: for tests of timeouts and slow decoding
        self.requests = 0
        self.decodes = 0

    def prepare(self, audio: DecodedAudio, options: TranscribeOptions, streamed: bool = False) -> Job:
        self.requests += 1
        samples = len(audio.samples)
        job = Job(options=options, samples=audio.samples, duration=audio.duration,
                  speech=[{"start": 0, "end": samples}], language=options.language)
        job.streams = [Stream(job, 0, 0, samples)]
        return job

    def batch_key(self, job: Job) -> Hashable:
        return replace(job.options, language=None)

    def decode(self, streams: Sequence[Stream], *, solo: bool = False) -> None:
        """Takes `decode_s`, except the first step (the start-up warm-up), so a slow stand-in starts at once."""
        if self.decodes:
            time.sleep(self.decode_s)
        self.decodes += 1
        for stream in streams:
            stream.job.language = stream.job.language or "en"
            stream.seek = stream.frames

    def final_segments(self, job: Job) -> list[Segment]:
        """`FAKE_TEXT` once per `SEGMENT_S` of audio (none for under 0.2 s), words evenly timed when asked for."""
        if job.duration <= 0.2 or not all(s.done for s in job.streams):
            return []
        starts = [i * SEGMENT_S for i in range(math.ceil(job.duration / SEGMENT_S))]
        return [self._segment(i, start, min(start + SEGMENT_S, job.duration), job.options.word_timestamps)
                for i, start in enumerate(starts)]

    def _segment(self, index: int, start: float, end: float, words: bool) -> Segment:
        parts = self.text.split()
        step = (end - start) / len(parts)
        timed = [Word(start + i * step, start + (i + 1) * step, f" {w}", 0.9) for i, w in enumerate(parts)]
        return Segment(index, 0, start, end, f" {self.text}", [], -0.2, 1.1, 0.01, timed if words else None, 0.0)

    def transcript(self, job: Job) -> Transcript:
        segments = self.final_segments(job)
        text = " ".join(s.text.strip() for s in segments)
        return Transcript(text, job.language, 1.0, job.duration, job.duration, segments, task=job.options.task)


def serve() -> int:
    """`stt-engine serve` (or `worker`) with a `FakeEngine`: no model is resolved, verified or loaded.
    `FAKE_ENGINE_DECODE_S` in the environment sets its `decode_s`."""
    import stt_engine.api.app as app_module
    import stt_engine.models as models
    import stt_engine.runtime as runtime
    from stt_engine import cli

    def engine() -> FakeEngine:
        return FakeEngine(decode_s=float(os.environ.get("FAKE_ENGINE_DECODE_S", "0")))

    create_app = app_module.create_app
    models.resolve_model = lambda settings: FAKE_MODEL  # type: ignore[assignment]
    app_module.create_app = lambda settings=None, **kw: create_app(settings, engine=engine())  # type: ignore[assignment]
    runtime.load_engine = lambda settings, model=None: engine()  # type: ignore[assignment,return-value]  # the worker's
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(serve())
