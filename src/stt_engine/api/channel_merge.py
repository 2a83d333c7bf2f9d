"""channels=split for a stream: the channels' segments merged, as they arrive, as far as every channel has come."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from stt_engine import channels as channels_mod
from stt_engine.audio import DecodedAudio
from stt_engine.options import TranscribeOptions
from stt_engine.types import Segment, Transcript

EMPTY = Transcript(text="", language=None, language_probability=0.0, duration=0.0, duration_after_vad=0.0,
                   segments=[])


@dataclass
class ChannelMerge:
    """channels=split for a stream: the channels planned and transcribed as for a file (`channels.plan_split`,
    `transcribe_planned`), each with its own segment callback, and their segments merged as far as every channel
    has come."""

    plan: channels_mod.ChannelPlan
    template: DecodedAudio  # the upload's format, without its samples (the mono mix is not kept)
    duration: float

    @classmethod
    async def start(cls, decoded: DecodedAudio, tracks: list[np.ndarray], names: list[str] | None) -> ChannelMerge:
        channel_plan = await channels_mod.plan_split(decoded, tracks, names)
        template = channels_mod.track_audio(np.zeros(0, dtype=np.float32), decoded)
        return cls(channel_plan, template, decoded.duration)

    @property
    def channels(self) -> list[int]:
        return [channel for channel, _ in self.plan.tracks]

    @property
    def speakers(self) -> list[str]:
        return self.plan.speakers

    async def transcribe(self, options: TranscribeOptions,
                         one_track: Callable[[int, DecodedAudio], Awaitable[Transcript]]) -> Transcript:
        return await channels_mod.transcribe_planned(self.plan, self.template, self.duration, options, one_track)

    def final_so_far(self, received: dict[int, list[Segment]], languages: dict[int, str | None],
                     finished: set[int]) -> tuple[list[Segment], str | None]:
        """The merged segments whose place in the final order is known: those that start before the latest segment
        of every unfinished channel (a channel's later segments start no earlier than its latest)."""
        frontier = min(
            (float(received[c][-1].start) if received.get(c) else 0.0 for c in self.channels if c not in finished),
            default=float("inf"),
        )
        partial = [(c, dataclasses.replace(EMPTY, language=languages.get(c), segments=received.get(c, [])))
                   for c in self.channels]
        merged = channels_mod.merge(partial, self.speakers, 0.0)
        return [s for s in merged.segments if float(s.start) < frontier], merged.language
