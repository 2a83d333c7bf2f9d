"""The FastAPI application: lifespan loads the model off the event loop, so /health answers 503 while loading."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import swagger_ui_bundle
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from stt_engine import __version__, decoder
from stt_engine.api.diarization import router as diarization_router
from stt_engine.api.errors import install_error_handlers
from stt_engine.api.jobs_routes import router as jobs_router
from stt_engine.api.middleware import BodyGuardMiddleware, RequestContextMiddleware
from stt_engine.api.models_routes import router as models_router
from stt_engine.api.postprocess_routes import router as postprocess_router
from stt_engine.api.realtime_routes import router as realtime_router
from stt_engine.api.routes import router
from stt_engine.api.security import install_security
from stt_engine.api.services import Services
from stt_engine.api.web import install_web
from stt_engine.config import Settings, get_settings
from stt_engine.engine.protocol import SpeechEngine
from stt_engine.errors import STTError
from stt_engine.jobs.service import start_jobs
from stt_engine.models import ResolvedModel
from stt_engine.postprocess.service import PostProcessor
from stt_engine.runtime import build_scheduler, load_engine, warm_up

log = logging.getLogger(__name__)

__all__ = ["build_scheduler", "create_app", "install_docs", "load_engine", "warm_up"]  # start-up glue: runtime


def create_app(
    settings: Settings | None = None, *, model: ResolvedModel | None = None, engine: SpeechEngine | None = None
) -> FastAPI:
    """Build the app; `model` is an already resolved (and verified) model folder, found again when omitted.
    `engine`: an engine already loaded (or a stand-in, for tests of the HTTP layer), used instead of loading one."""
    settings = settings or get_settings()

    services = Services.create(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.postprocessor = PostProcessor.from_settings(settings)
        services.decoders = decoder.start(settings)  # uploads are parsed only in these child processes
        loader = asyncio.ensure_future(_load(services, model, engine))
        reaper = asyncio.ensure_future(services.models.run_reaper())
        services.jobs = await start_jobs(
            settings, get_scheduler=lambda: services.scheduler, get_postprocessor=lambda: services.postprocessor,
            metrics=services.metrics, models=services.models,
        )
        try:
            yield
        finally:
            loader.cancel()
            reaper.cancel()
            jobs, services.jobs = services.jobs, None  # routes answer 503 from here on
            if jobs is not None:
                await jobs.stop()  # running jobs go back to the queue before the schedulers stop
            await services.models.close(settings.shutdown_grace_s)
            if services.scheduler is not None:
                await run_in_threadpool(services.scheduler.close, settings.shutdown_grace_s)
            await services.postprocessor.aclose()
            await run_in_threadpool(decoder.stop)

    app = FastAPI(
        title="stt-engine",
        version=__version__,
        description="Self-hosted speech-to-text: Whisper (faster-whisper) behind the original `/transcribe` "
        "contract and the OpenAI audio API.",
        lifespan=lifespan,
        docs_url=None,  # served by install_docs from the package's own Swagger UI files, never from a CDN
        redoc_url=None,
    )
    app.state.services = services
    install_error_handlers(app)
    # add_middleware wraps: the last added runs first. Order, outside in: request id/access log/metrics, CORS,
    # API key (an unauthenticated upload gets 401, not 413), upload size guard.
    app.add_middleware(
        BodyGuardMiddleware, max_upload_mb=settings.max_upload_mb, body_timeout_s=settings.server_body_timeout_s,
        metrics=services.metrics,
    )
    install_security(app, settings)
    app.add_middleware(RequestContextMiddleware, metrics=services.metrics, router=app.router,
                       work=services.work_in_flight, memory=services.memory)
    app.include_router(router)
    app.include_router(models_router)
    app.include_router(diarization_router)
    app.include_router(postprocess_router)
    install_docs(app, settings)
    install_web(app)
    app.include_router(jobs_router)
    app.include_router(realtime_router)
    return app


DOCS_STATIC = "/docs/static"


def install_docs(app: FastAPI, settings: Settings) -> None:
    """`/docs` from the Swagger UI files shipped in the `swagger-ui-bundle-v2` package: the page makes no request
    beyond this server, so it works air-gapped. With API_KEYS set the schema declares a bearer scheme, so the
    page's Authorize button asks for the key and sends it with every "Try it out"."""
    app.mount(DOCS_STATIC, StaticFiles(directory=str(swagger_ui_bundle.swagger_ui_path)), name="docs-static")
    oauth2_redirect = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_STATIC}/favicon-32x32.png",
            oauth2_redirect_url=oauth2_redirect,
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get(oauth2_redirect, include_in_schema=False)
    async def docs_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    if not settings.api_keys:
        return
    plain_openapi = app.openapi

    def openapi_with_bearer() -> dict[str, Any]:
        schema = plain_openapi()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["apiKey"] = {
            "type": "http", "scheme": "bearer", "description": "One of the server's API_KEYS.",
        }
        schema["security"] = [{"apiKey": []}]
        for path in settings.auth_open_paths:
            for operation in schema.get("paths", {}).get(path, {}).values():
                operation["security"] = [{}, {"apiKey": []}]  # open; a key only adds details
        return schema

    app.openapi = openapi_with_bearer  # type: ignore[method-assign]


async def _load(services: Services, model: ResolvedModel | None, given: SpeechEngine | None) -> None:
    """Load (or take) the engine, build its scheduler and warm it up; `services.load_status` says how far it got."""
    settings, metrics = services.settings, services.metrics
    try:
        started = time.perf_counter()
        engine = given if given is not None else await run_in_threadpool(load_engine, settings, model)
        metrics.model_load_seconds.set(time.perf_counter() - started)
        scheduler = services.scheduler = build_scheduler(engine, settings, metrics, services.models.gate)
        services.engine = engine
        services.models.set_default(engine, scheduler)
        services.load_status = "warming_up"
        started = time.perf_counter()
        await warm_up(scheduler)
        metrics.model_warmup_seconds.set(time.perf_counter() - started)
        services.warmed_up = True
        metrics.model_ready.set(1)
        services.load_status = "ok"
        log.info("ready: serving %s on %s", engine.resolved.name, engine.device)
        if settings.models_preload:
            await services.models.preload()
    except STTError as exc:
        services.load_status = "error"
        services.load_error = exc.message
        log.error("model failed to load: %s", exc.message)
    except Exception:
        services.load_status = "error"
        services.load_error = "The model failed to load; the server log has the details."
        log.exception("model failed to load")
