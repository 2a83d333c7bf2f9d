"""Admission of an upload: queue room taken from its header's length, a decoding slot, then the decode itself.

The route's checks come before any work: a full queue refuses before the upload is stored, a long file before it is
decoded, and decoding stops when the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
from fastapi import Request, UploadFile
from starlette.concurrency import run_in_threadpool

from stt_engine import decoder
from stt_engine.api.uploads import require_file, stored_upload
from stt_engine.audio import DecodedAudio
from stt_engine.config import Settings
from stt_engine.errors import STTError
from stt_engine.memory import release_memory
from stt_engine.scheduler import Scheduler
from stt_engine.scheduler.slots import RankedSlots

if TYPE_CHECKING:
    from stt_engine.api.services import Services


def picked_model(request: Request) -> str | None:
    """The `model` the request picked (kept in its state by the route), None for the default."""
    return getattr(request.state, "model", None)


class Intake:
    """Uploads whose header has been read but which are not yet in the scheduler's queue.

    They count toward the queue's bounds, so a burst of uploads is refused from their headers within moments instead
    of after all of them were decoded; and at most MAX_CONCURRENT_DECODES of them decode at once, the shorter
    (by the header's length) first within an age bound (`policy.slot_rank`), plus one slot only short files take,
    so a short upload is never decoded after the long ones that came before it.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.seconds = 0.0
        self.count = 0
        self.decoding = RankedSlots(settings.max_concurrent_decodes)

    @contextlib.contextmanager
    def reserve(self, scheduler: Scheduler, seconds: float) -> Iterator[None]:
        """Hold room for `seconds` of audio until it is decoded; the scheduler's admission, counting the uploads
        still decoding, refuses (429, or 422 for a file that can never fit) when there is none."""
        scheduler.admit(seconds, pending_requests=self.count, pending_seconds=self.seconds)
        self.seconds += seconds
        self.count += 1
        try:
            yield
        finally:
            self.seconds -= seconds
            self.count -= 1

    def decoding_slot(self, seconds: float | None = None) -> contextlib.AbstractAsyncContextManager[None]:
        """One of the MAX_CONCURRENT_DECODES slots, shared by every upload that is decoded (transcriptions and job
        intake); `seconds`, the length the header declares, decides the order (None: unknown, served as long)."""
        return self.decoding.slot(seconds)


async def wait_for_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body has been read, so the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _decode_admitted(
    request: Request, intake: Intake, scheduler: Scheduler, settings: Settings, path: str, *, split: bool = False,
    channels_out: list[np.ndarray] | None = None,
) -> DecodedAudio:
    """Read the header, take queue room for the length it states, then decode; refusals come before the work.

    With `split` (channels=split) every channel is queued on its own, so the room taken is channels × length, and
    the channels of a multi-channel upload go into `channels_out`. Both steps run in a decoder process
    (`stt_engine.decoder`); the length is counted from the packets, so a lying header cannot buy room. Decoding
    stops at MAX_AUDIO_SECONDS whatever the header said, and when the client goes away.
    """
    source = await run_in_threadpool(decoder.probe, path, max_seconds=settings.max_audio_seconds)
    if split:
        decoder.split_channel_limit(source.channels, settings)
    seconds = (source.length_seconds or 0.0) * (max(1, source.channels) if split else 1)
    with intake.reserve(scheduler, seconds):
        stop = threading.Event()
        watcher = asyncio.ensure_future(wait_for_disconnect(request))
        watcher.add_done_callback(lambda _: stop.set())
        try:
            async with intake.decoding_slot(seconds):
                if stop.is_set():
                    raise STTError("Client disconnected.", status=499, code="client_closed_request")
                if split:
                    decoded, tracks = await run_in_threadpool(
                        decoder.decode_split, path, max_seconds=settings.max_audio_seconds, stop=stop,
                        max_channels=settings.max_split_channels,
                    )
                    if channels_out is not None:
                        channels_out.extend(tracks)
                    del tracks
                else:
                    decoded = await run_in_threadpool(
                        decoder.decode, path, max_seconds=settings.max_audio_seconds, stop=stop
                    )
        finally:
            watcher.cancel()
    if decoded.duration > 30:
        await run_in_threadpool(release_memory)  # what decoding freed goes back to the OS
    return decoded


async def receive_audio(
    request: Request, services: Services, upload: UploadFile | None, *,
    channels_out: list[np.ndarray] | None = None,
) -> DecodedAudio:
    """Check that the request can be served, then store and decode its upload (bounded by the settings).

    With `channels_out` (channels=split), a multi-channel upload's channels are also decoded one by one into it."""
    settings = services.settings
    upload = require_file(upload)
    scheduler = services.ready_scheduler(picked_model(request))
    scheduler.admit(0.0)  # a full queue answers 429 before we spend time storing the upload
    async with stored_upload(upload, settings) as path:
        decoded = await _decode_admitted(request, services.intake, scheduler, settings, path,
                                         split=channels_out is not None, channels_out=channels_out)
    request.state.audio_seconds = decoded.duration
    return decoded
