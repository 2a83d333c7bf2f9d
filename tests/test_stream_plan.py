"""A stream is decoded with the file's plan (issue 21 section 3): the scheduler policy that sends a stream's first
window first, on a stand-in engine. That the streamed text is the file's, word for word, on every long clip, is
checked on the real model in test_accuracy.py, which reuses the file transcripts it makes there anyway."""

from __future__ import annotations

from collections.abc import Sequence

from stt_engine.engine import Stream
from stt_engine.scheduler import Scheduler
from tests.test_scheduler import EN, StandInEngine, audio


# --- the first window goes first (scheduler policy, stand-in engine: no audio) --------------------------------
class _Recording(StandInEngine):
    """Records when each window starts and ends, and whether it ran on every core (`solo`)."""

    def __init__(self) -> None:
        super().__init__(workers=2, delay=0.05)
        self.events: list[tuple[str, int, bool]] = []

    def decode(self, streams: Sequence[Stream], *, solo: bool = False) -> None:
        with self._lock:
            self.events.extend(("start", s.index, solo) for s in streams)
        super().decode(streams, solo=solo)
        with self._lock:
            self.events.extend(("end", s.index, solo) for s in streams)


async def test_a_streams_first_window_goes_first_on_every_core() -> None:
    engine = _Recording()
    scheduler = Scheduler(engine, max_queue_seconds=10_000)
    await scheduler.transcribe(audio("stream", 120), EN, on_segments=lambda *_: None, first_text_early=True)
    assert engine.events[:2] == [("start", 0, True), ("end", 0, True)], engine.events
    assert {e[1] for e in engine.events} >= {0, 1, 2, 3}  # then the rest
    engine.events.clear()
    await scheduler.transcribe(audio("file", 120), EN)  # a file's windows start side by side at once
    scheduler.close(1)
    assert [e[0] for e in engine.events[:2]] == ["start", "start"], engine.events
