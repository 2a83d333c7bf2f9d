"""A stream is as accurate as a file (issue 21 section 3): `stream=true` decodes the same plan (sections, windows,
prompts) as the request without it, so on every long clip the streamed text is the file's text, word for word.

Real server, real model, real long clips. The first delta's time is a timing, measured in bench/stream_bench.py,
not asserted here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import httpx
import pytest

from stt_engine.engine import Stream
from stt_engine.scheduler import Scheduler
from tests.support import HAVE_FULL_AUDIO, Clip, clip, clips, error_rate, post_audio
from tests.test_scheduler import EN, StandInEngine, audio

LONG_SECONDS = 30.0
LONG_EN = "en/en_longform_librispeech_librivox_concat.wav"  # in tests/data too: runs in a plain clone


def _long_clips() -> list[str]:
    """Every clip over 30 s the manifest lists (the long Korean and English ones, and the long music clip)."""
    found = [c.file for c in clips() if c.duration > LONG_SECONDS]
    return found if HAVE_FULL_AUDIO else sorted(set(found) | {LONG_EN})


def _data(c: Clip, stream: bool) -> dict[str, str]:
    data = {"model": "whisper-1", "response_format": "json"}
    if c.language != "none":
        data["language"] = c.language
    if stream:
        data["stream"] = "true"
    return data


def _streamed(base: str, c: Clip) -> tuple[list[str], dict]:
    """The deltas and the done event of the streamed request."""
    with c.path.open("rb") as handle:
        response = httpx.post(base + "/v1/audio/transcriptions", files={"file": (c.path.name, handle)},
                              data=_data(c, stream=True), timeout=900)
    assert response.status_code == 200, response.text
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert events and events[-1]["type"] == "transcript.text.done", events[-3:]
    return [e["delta"] for e in events if e["type"] == "transcript.text.delta"], events[-1]


@pytest.mark.parametrize("file", _long_clips())
def test_a_stream_is_the_file_word_for_word(server: str, file: str) -> None:
    c = clip(file)
    response = post_audio(server, "/v1/audio/transcriptions", c.path, timeout=900, **_data(c, stream=False))
    assert response.status_code == 200, response.text
    whole = response.json()["text"]
    deltas, done = _streamed(server, c)
    assert done["text"] == whole, "the streamed text must be the file's text"
    assert "".join(deltas) == done["text"], "the deltas concatenate to the done text"
    if c.reference:
        assert whole, f"{file}: no text"
        assert error_rate(done["text"], c) == error_rate(whole, c)
        print(f"{file}: {'CER' if c.language in ('ko', 'zh', 'ja') else 'WER'} {error_rate(whole, c):.3f} "
              f"streamed and as a file, {len(deltas)} deltas")


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
