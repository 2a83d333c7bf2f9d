"""Helpers for the realtime tests and measurements: clips as 24 kHz PCM, a paced streamer on the official SDK."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
from openai import AsyncOpenAI


def pcm16(path: Path, rate: int = 24000) -> bytes:
    """A clip as 16-bit mono PCM at `rate`, decoded and resampled by PyAV."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    pieces = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            frame.pts = None
            pieces += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    pieces += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(pieces).astype("<i2").tobytes()


def silence(seconds: float, rate: int = 24000, width: int = 2) -> bytes:
    return bytes(int(seconds * rate) * width)


@dataclass
class Stream:
    """What one paced session saw: events with their arrival time (seconds after the first append)."""

    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def of(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, e) for t, e in self.events if e["type"] == kind]

    def completed(self) -> list[dict[str, Any]]:
        return [e for _, e in self.of("conversation.item.input_audio_transcription.completed")]

    def deltas(self, item_id: str) -> list[tuple[float, str]]:
        return [(t, e["delta"]) for t, e in self.of("conversation.item.input_audio_transcription.delta")
                if e["item_id"] == item_id]


def vad_session(silence_ms: int = 1000) -> dict[str, Any]:
    """A transcription session's `session.update`: 24 kHz PCM, whisper-1, server VAD ending a turn after
    `silence_ms` of quiet."""
    return {"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 24000}, "transcription": {"model": "whisper-1"},
        "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                           "silence_duration_ms": silence_ms}}}}


async def stream_sdk(base: str, audio: bytes, session: dict[str, Any], *, rate: int = 24000, width: int = 2,
                     chunk_s: float = 0.1, speed: float = 1.0, expect_items: int | None = None,
                     settle_s: float = 20.0, api_key: str = "unused",
                     until: Callable[[Stream], bool] | None = None) -> Stream:
    """Send `audio` in `chunk_s` appends at real-time pace through `client.realtime.connect`, collect events until
    `expect_items` completed or `until(stream)` holds (or `settle_s` after the last append)."""
    client = AsyncOpenAI(base_url=base + "/v1", api_key=api_key, max_retries=0)
    out = Stream()
    async with client.realtime.connect(model="whisper-1", extra_query={"intent": "transcription"}) as conn:
        first = await conn.recv()
        assert first.type == "session.created", first
        await conn.session.update(session=session)
        t0 = time.monotonic()

        async def receive() -> None:
            async for ev in conn:
                data = ev.model_dump(exclude_unset=True) if hasattr(ev, "model_dump") else dict(ev)
                out.events.append((time.monotonic() - t0, data))

        receiver = asyncio.create_task(receive())
        step = int(rate * chunk_s) * width
        for i, offset in enumerate(range(0, len(audio), step)):
            await conn.input_audio_buffer.append(audio=base64.b64encode(audio[offset: offset + step]).decode())
            delay = t0 + (i + 1) * chunk_s / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline:
            if expect_items is not None and len(out.completed()) >= expect_items:
                break
            if until is not None and until(out):
                break
            await asyncio.sleep(0.05)
        receiver.cancel()
    await client.close()
    return out
