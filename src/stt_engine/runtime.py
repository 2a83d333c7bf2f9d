"""Loading the model and starting the scheduler: the start-up glue `serve` (api.app), `worker` and the CLI share.

It lives below the API so the job worker and the CLI can load a model without importing the HTTP layer.
"""

from __future__ import annotations

import numpy as np

from stt_engine.audio import SAMPLE_RATE, DecodedAudio
from stt_engine.config import Settings
from stt_engine.engine import Engine
from stt_engine.engine.protocol import SpeechEngine
from stt_engine.metrics import Metrics
from stt_engine.models import ResolvedModel, resolve_model
from stt_engine.options import TranscribeOptions
from stt_engine.scheduler import Priority, Scheduler
from stt_engine.scheduler.slots import CoreGate


def load_engine(settings: Settings, model: ResolvedModel | None = None) -> Engine:
    """Resolve and verify the model unless given, then load it (blocking: seconds for base, more for large)."""
    return Engine(model or resolve_model(settings), settings)


async def warm_up(scheduler: Scheduler) -> None:
    """One real decode of a second of quiet noise through the request path, so the first user request doesn't
    pay for lazy initialisation. Quiet enough that Whisper hears nothing: at 0.01 the base model wrote "I'm sorry,"
    for 224 tokens with beam 5, about 5 s of CPU at every start; at 0.001 the same decode takes about 1 s."""
    noise = (np.random.default_rng(0).standard_normal(SAMPLE_RATE) * 0.001).astype(np.float32)
    options = TranscribeOptions(language="en", vad_filter=False, temperatures=(0.0,))
    await scheduler.transcribe(
        DecodedAudio(noise, "warmup", SAMPLE_RATE, 1), options, priority=Priority.LIVE, exclusive=True, timed=False
    )


def build_scheduler(engine: SpeechEngine, settings: Settings, metrics: Metrics | None = None,
                    gate: CoreGate | None = None) -> Scheduler:
    return Scheduler(
        engine,
        batch_wait_ms=settings.whisper_batch_wait_ms,
        max_queued_requests=settings.max_queued_requests,
        max_queue_seconds=settings.max_queue_seconds,
        timeout_base_s=settings.request_timeout_base_s,
        timeout_rtf=settings.request_timeout_rtf,
        on_batch=metrics.observe_batch if metrics is not None else None,
        gate=gate,
    )
