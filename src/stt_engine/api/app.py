"""The FastAPI application: lifespan loads the model off the event loop, so /health answers 503 while loading."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from stt_engine import __version__
from stt_engine.api.errors import install_error_handlers
from stt_engine.api.postprocess_routes import router as postprocess_router
from stt_engine.api.middleware import RequestContextMiddleware, UploadLimitMiddleware
from stt_engine.api.realtime_routes import router as realtime_router
from stt_engine.api.routes import router
from stt_engine.api.security import install_security
from stt_engine.audio import SAMPLE_RATE, DecodedAudio
from stt_engine.config import Settings, get_settings
from stt_engine.engine import Engine, TranscribeOptions
from stt_engine.errors import STTError
from stt_engine.metrics import Metrics
from stt_engine.models import ResolvedModel, resolve_model
from stt_engine.postprocess.service import PostProcessor
from stt_engine.scheduler import Scheduler

log = logging.getLogger(__name__)


def load_engine(settings: Settings, model: ResolvedModel | None = None) -> Engine:
    """Resolve and verify the model unless given, then load it (blocking: seconds for base, more for large)."""
    return Engine(model or resolve_model(settings), settings)


async def warm_up(scheduler: Scheduler) -> None:
    """One real decode of a second of quiet noise through the request path, so the first user request doesn't
    pay for lazy initialisation."""
    noise = (np.random.default_rng(0).standard_normal(SAMPLE_RATE) * 0.01).astype(np.float32)
    options = TranscribeOptions(language="en", vad_filter=False, temperatures=(0.0,))
    await scheduler.transcribe(DecodedAudio(noise, "warmup", SAMPLE_RATE, 1), options)


def build_scheduler(engine: Engine, settings: Settings, metrics: Metrics | None = None) -> Scheduler:
    return Scheduler(
        engine,
        batch_wait_ms=settings.whisper_batch_wait_ms,
        max_queued_requests=settings.max_queued_requests,
        max_queue_seconds=settings.max_queue_seconds,
        timeout_base_s=settings.request_timeout_base_s,
        timeout_rtf=settings.request_timeout_rtf,
        on_batch=metrics.observe_batch if metrics is not None else None,
    )


def create_app(settings: Settings | None = None, *, model: ResolvedModel | None = None) -> FastAPI:
    """Build the app; `model` is an already resolved (and verified) model folder, found again when omitted."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.postprocessor = PostProcessor.from_settings(settings)
        loader = asyncio.ensure_future(_load(app, settings, model))
        try:
            yield
        finally:
            loader.cancel()
            scheduler: Scheduler | None = app.state.scheduler
            if scheduler is not None:
                await run_in_threadpool(scheduler.close, settings.shutdown_grace_s)
            await app.state.postprocessor.aclose()

    app = FastAPI(
        title="stt-engine",
        version=__version__,
        description="Self-hosted speech-to-text: Whisper (faster-whisper) behind the original `/transcribe` "
        "contract and the OpenAI audio API.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = None
    app.state.scheduler = None
    app.state.postprocessor = None
    app.state.load_status = "loading"
    app.state.load_error = None
    app.state.warmed_up = False
    app.state.started_at = time.time()
    app.state.metrics = Metrics(get_scheduler=lambda: app.state.scheduler)
    install_error_handlers(app)
    # add_middleware wraps: the last added runs first. Order, outside in: request id/access log/metrics, CORS,
    # API key (an unauthenticated upload gets 401, not 413), upload size guard.
    app.add_middleware(UploadLimitMiddleware, max_upload_mb=settings.max_upload_mb, metrics=app.state.metrics)
    install_security(app, settings)
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics, router=app.router)
    app.include_router(router)
    app.include_router(postprocess_router)
    app.include_router(realtime_router)
    return app


async def _load(app: FastAPI, settings: Settings, model: ResolvedModel | None) -> None:
    metrics: Metrics = app.state.metrics
    try:
        started = time.perf_counter()
        engine = await run_in_threadpool(load_engine, settings, model)
        metrics.model_load_seconds.set(time.perf_counter() - started)
        app.state.scheduler = build_scheduler(engine, settings, metrics)
        app.state.engine = engine
        app.state.load_status = "warming_up"
        started = time.perf_counter()
        await warm_up(app.state.scheduler)
        metrics.model_warmup_seconds.set(time.perf_counter() - started)
        app.state.warmed_up = True
        metrics.model_ready.set(1)
        app.state.load_status = "ok"
        log.info("ready: serving %s on %s", engine.resolved.name, engine.device)
    except STTError as exc:
        app.state.load_status = "error"
        app.state.load_error = exc.message
        log.error("model failed to load: %s", exc.message)
    except Exception as exc:
        app.state.load_status = "error"
        app.state.load_error = f"{type(exc).__name__}: {exc}"
        log.exception("model failed to load")
