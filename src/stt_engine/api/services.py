"""What the routes share, in one typed object: `Services`, stored once as `app.state.services`.

`create_app` builds it with what the middleware needs before the app starts (settings, metrics, the memory
reclaimer, the in-flight count, the upload intake, the realtime session counts); the lifespan fills in what
starts with the app (post-processor, decoder pool, jobs) and, once loaded, the engine and its scheduler. Nothing
is created on a first request. Routes get it, or the part they need, through FastAPI's `Depends` (the aliases
below); middleware, the uvicorn server and websocket code read `app.state.services` directly.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends
from starlette.requests import HTTPConnection

from stt_engine.api.admission import Intake
from stt_engine.api.middleware import WorkInFlight
from stt_engine.config import Settings
from stt_engine.engine.protocol import SpeechEngine
from stt_engine.errors import NotReady, STTError
from stt_engine.jobs.service import JobService
from stt_engine.memory import MemoryReclaimer
from stt_engine.metrics import Metrics
from stt_engine.model_registry import ModelRegistry
from stt_engine.postprocess.service import PostProcessor
from stt_engine.scheduler import Scheduler
from stt_engine.textproc.vocabulary import Vocabulary, load_vocabulary


class RealtimeSessions:
    """Open `/v1/realtime` sessions, in all and per holder (API key or client address), for MAX_REALTIME_SESSIONS
    and REALTIME_MAX_SESSIONS_PER_KEY. Touched only on the event loop: no lock."""

    def __init__(self) -> None:
        self.open = 0
        self.by_holder: dict[str, int] = {}

    def held_by(self, holder: str) -> int:
        return self.by_holder.get(holder, 0)

    def opened(self, holder: str) -> None:
        self.open += 1
        self.by_holder[holder] = self.by_holder.get(holder, 0) + 1

    def closed(self, holder: str) -> None:
        self.open -= 1
        if self.by_holder.get(holder, 0) <= 1:
            self.by_holder.pop(holder, None)
        else:
            self.by_holder[holder] -= 1


@dataclass
class Services:
    """The server's shared parts. `engine`/`scheduler` are None until the model is loaded (`load_status` says how
    far it got); `jobs`/`postprocessor`/`decoders` are None outside the lifespan."""

    settings: Settings
    metrics: Metrics
    memory: MemoryReclaimer
    intake: Intake
    models: ModelRegistry  # the default model (once loaded) and the WHISPER_MODELS
    work_in_flight: WorkInFlight = field(default_factory=WorkInFlight)
    realtime: RealtimeSessions = field(default_factory=RealtimeSessions)
    started_at: float = field(default_factory=time.time)
    postprocessor: PostProcessor | None = None
    decoders: Any = None
    jobs: JobService | None = None
    engine: SpeechEngine | None = None
    scheduler: Scheduler | None = None
    load_status: str = "loading"  # loading, warming_up, ok, error
    load_error: str | None = None
    warmed_up: bool = False
    draining: bool = False  # SIGTERM: the scheduler is draining (cli's server sets it)

    @classmethod
    def create(cls, settings: Settings) -> Services:
        memory = MemoryReclaimer()
        built: list[Services] = []  # the scheduler gauges are read at registration, before `services` exists
        metrics = Metrics(get_scheduler=lambda: built[0].scheduler if built else None, memory=memory)
        built.append(cls(settings=settings, metrics=metrics, memory=memory, intake=Intake(settings),
                         models=ModelRegistry(settings, metrics)))
        return built[0]

    def start_draining(self) -> None:
        """SIGTERM: the scheduler starts draining at once (in a thread: it waits up to SHUTDOWN_GRACE_S), letting the
        POST requests already in flight in until then; what is still waiting at the end gets a 503."""
        scheduler = self.scheduler
        if scheduler is None or self.draining:
            return
        self.draining = True
        work = self.work_in_flight
        threading.Thread(
            target=scheduler.close, args=(self.settings.shutdown_grace_s, lambda: work.count > 0),
            name="stt-drain", daemon=True,
        ).start()

    def ready_scheduler(self, model: str | None = None) -> Scheduler:
        """The scheduler of the model `model` names (the request's `model`; None: the default), or 503 while it
        is not loaded. Requests keep the name, not the scheduler, so an unloaded model is not held alive."""
        scheduler = self.models.loaded(model)
        if scheduler is None:
            raise _still_loading()
        return scheduler

    def model_languages(self, model: str | None = None) -> frozenset[str]:
        """The languages of the model `model` names (options are parsed only once it is loaded; before, 503)."""
        return self.ready_scheduler(model).engine.supported_languages

    def vocabulary(self) -> Vocabulary:
        """The team's VOCABULARY_FILE (cached, read again when the file changes): hotwords and the LLM glossary."""
        return load_vocabulary(self.settings.vocabulary_file)


def _still_loading() -> NotReady:
    return NotReady("The model is still loading; retry in a few seconds.", headers={"Retry-After": "5"})


def services_of(connection: HTTPConnection) -> Services:
    """The app's `Services` (for code that has a request or websocket but no dependency injection)."""
    services: Services = connection.app.state.services
    return services


def get_services(connection: HTTPConnection) -> Services:
    return services_of(connection)


def get_settings_dep(connection: HTTPConnection) -> Settings:
    return services_of(connection).settings


def get_jobs(connection: HTTPConnection) -> JobService:
    """The jobs service, or 503 before the lifespan has started it (or after it stopped)."""
    service = services_of(connection).jobs
    if service is None:
        raise STTError("The jobs API is starting; retry in a few seconds.", status=503, code="jobs_not_ready",
                       headers={"Retry-After": "2"})
    return service


def get_postprocessor(connection: HTTPConnection) -> PostProcessor:
    """The shared `PostProcessor`, or 503 outside the lifespan."""
    processor = services_of(connection).postprocessor
    if processor is None:
        raise STTError("Post-processing is not available on this server", code="postprocess_unavailable", status=503)
    return processor


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
JobsDep = Annotated[JobService, Depends(get_jobs)]
PostProcessorDep = Annotated[PostProcessor, Depends(get_postprocessor)]
