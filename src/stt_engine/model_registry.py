"""The models one server serves: the default model and the WHISPER_MODELS, each with its own engine and scheduler.

Each model has its own `Scheduler` (its own ready set and workers): windows of different models never share a
batch, since a batch is one `generate` call on one model. Their decodes share one `CoreGate`: no more windows at
once than the machine's slots, the next slot to the request that ranks first across models. The default model is
loaded at start by the app and never unloaded; an extra one loads on its first request (off the event loop;
concurrent first requests share the one load) or at start with MODELS_PRELOAD, and unloads after MODEL_TTL_S
idle. MODEL_MEMORY_MB bounds what
all loaded models may take: a load that would pass it first unloads idle extra models, least recently used
first, and is refused with 503 `model_memory_exceeded` when that is not enough (policy: `models/serving.py`).

It lives below the API (routes call `scheduler_for`), so the job worker serves several models too (jobs/worker.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from stt_engine.config import Settings
from stt_engine.engine import has_solo_instance, resolve_device, resolve_workers
from stt_engine.engine.protocol import SpeechEngine
from stt_engine.errors import ModelMemoryExceeded, NotFound, NotReady, STTError, quote
from stt_engine.memory import release_memory, rss_bytes
from stt_engine.metrics import Metrics
from stt_engine.models import ResolvedModel
from stt_engine.models.resolve import find_named_model, verify
from stt_engine.models.serving import (
    OPENAI_ALIASES,
    Loaded,
    estimate_mb,
    ever_fits,
    expired,
    parse_entries,
    plan_load,
)
from stt_engine.runtime import build_scheduler, load_engine, warm_up
from stt_engine.scheduler import Scheduler
from stt_engine.scheduler.slots import CoreGate

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """One model the server answers for, loaded or not."""

    id: str
    name: str | None  # the WHISPER_MODELS name; None for the default model (loaded by the app)
    engine: SpeechEngine | None = None
    scheduler: Scheduler | None = None
    memory_mb: int = 0
    last_used: float = 0.0
    loads: int = 0
    load_seconds: float | None = None
    freed_mb: float | None = None  # resident memory the last unload gave back (None until that unload is done)
    languages: frozenset[str] | None = None  # what it can write, known once it has loaded (kept after an unload)
    loading: asyncio.Future[Scheduler] | None = None

    @property
    def default(self) -> bool:
        return self.name is None

    @property
    def busy(self) -> bool:
        return self.loading is not None or (self.scheduler is not None and self.scheduler.queued_requests > 0)


def model_instances(settings: Settings) -> int:
    """Model instances one `Engine` holds: the workers' model, plus the all-cores one on CPU (engine/__init__)."""
    device = resolve_device(settings.whisper_device)
    workers, _ = resolve_workers(settings, device)
    return 2 if has_solo_instance(settings, device, workers) else 1


def needed_mb(model: ResolvedModel, settings: Settings) -> int:
    weights = model.path / "model.bin"
    return estimate_mb(weights.stat().st_size if weights.is_file() else 0, model_instances(settings))


class ModelRegistry:
    """Model id -> loaded engine and scheduler. Used on the event loop only (loads run in a thread)."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.default = ServedModel("default", None)
        extra = parse_entries(settings.whisper_models, [settings.whisper_model] if settings.whisper_model else [])
        self.extra: dict[str, ServedModel] = {e.id: ServedModel(e.id, e.name) for e in extra}
        self._lock = asyncio.Lock()  # one load or unload at a time: the budget sees every change
        # Every model's workers are sized for the whole machine: with several models, their windows share one set
        # of decoding slots, handed out across models by priority (scheduler.slots.CoreGate).
        self.gate = CoreGate(resolve_workers(settings, resolve_device(settings.whisper_device))[0]) \
            if self.extra else None
        partial = settings.realtime_partial_model
        if partial and partial not in self.extra and partial not in OPENAI_ALIASES | {settings.whisper_model}:
            raise ValueError(f"REALTIME_PARTIAL_MODEL={partial!r} is not a served model: give an id of WHISPER_MODELS")

    # --- the default model (loaded by the app's start-up) ----------------------------------------------
    def set_default(self, engine: SpeechEngine, scheduler: Scheduler) -> None:
        self.default.engine, self.default.scheduler = engine, scheduler
        self.default.id = engine.resolved.name
        self.default.languages = engine.supported_languages
        self.default.loads = 1
        self.default.load_seconds = getattr(engine, "load_seconds", None)
        try:
            self.default.memory_mb = needed_mb(engine.resolved, self.settings)
        except OSError:
            self.default.memory_mb = 0

    # --- lookup -----------------------------------------------------------------------------------------
    def lookup(self, name: str | None) -> ServedModel:
        """The model a request's `model` names: none, OpenAI's names and the default's own names mean the default.
        An unknown id is a 404 `model_not_found`, as OpenAI answers it."""
        if not name or name in OPENAI_ALIASES or name == self.default.id or name == self.settings.whisper_model:
            return self.default
        model = self.extra.get(name)
        if model is None:
            raise NotFound(
                f"The model {quote(name)} does not exist on this server; GET /v1/models lists the served ones.",
                code="model_not_found", param="model",
            )
        return model

    async def scheduler_for(self, name: str | None) -> Scheduler:
        """The scheduler of the model `name` picks, loading it first if needed (off the event loop)."""
        model = self.lookup(name)
        model.last_used = self.clock()
        if model.scheduler is not None:
            return model.scheduler
        if model.default:
            raise NotReady("The model is still loading; retry in a few seconds.", headers={"Retry-After": "5"})
        if model.loading is None:
            model.loading = asyncio.ensure_future(self._load(model))
        return await asyncio.shield(model.loading)

    def loaded(self, name: str | None) -> Scheduler | None:
        """The scheduler of the model `name` picks if it is loaded now. Requests keep the name, not the scheduler:
        a keep-alive connection holds its last request's state, which must not keep an unloaded model alive."""
        return self.lookup(name).scheduler

    # --- loading and unloading --------------------------------------------------------------------------
    async def _load(self, model: ServedModel) -> Scheduler:
        assert model.name is not None
        try:
            async with self._lock:
                if model.scheduler is not None:
                    return model.scheduler
                resolved = await asyncio.to_thread(self._resolve, model.name)
                need = needed_mb(resolved, self.settings)
                await self._make_room(model, need)
                started = time.perf_counter()
                try:
                    engine = await asyncio.to_thread(load_engine, self.settings, resolved)
                except Exception as exc:
                    log.exception("model %s failed to load", model.id)
                    raise STTError(f"The model {quote(model.id)} failed to load: {exc}", status=503,
                                   code="model_load_failed") from None
                scheduler = build_scheduler(engine, self.settings, self.metrics, self.gate)
                await warm_up(scheduler)
                model.engine, model.scheduler, model.memory_mb, model.freed_mb = engine, scheduler, need, None
                model.languages = engine.supported_languages
                model.load_seconds = time.perf_counter() - started
                model.loads += 1
                model.last_used = self.clock()
                log.info("model %s loaded in %.1f s (about %d MB)", model.id, model.load_seconds, need)
                return scheduler
        finally:
            model.loading = None

    def _resolve(self, name: str) -> ResolvedModel:
        return verify(self.settings, find_named_model(self.settings, name))

    def _as_loaded(self, model: ServedModel) -> Loaded:
        return Loaded(model.id, model.memory_mb, model.busy, model.default, model.last_used)

    async def _make_room(self, model: ServedModel, need: int) -> None:
        loaded = [self._as_loaded(m) for m in self.models() if m.scheduler is not None]
        evict = plan_load(need, self.settings.model_memory_mb, loaded)
        if evict is None:
            used, budget = sum(m.memory_mb for m in loaded), self.settings.model_memory_mb
            if not ever_fits(need, budget, loaded):
                raise ModelMemoryExceeded(
                    f"Loading the model {quote(model.id)} needs about {need} MB; with the default model's "
                    f"{self.default.memory_mb} MB it can never fit in MODEL_MEMORY_MB={budget}. Raise the budget, "
                    "or use another model.", retryable=False,
                )
            raise ModelMemoryExceeded(
                f"Loading the model {quote(model.id)} needs about {need} MB; {used} MB of MODEL_MEMORY_MB="
                f"{budget} are held by models in use. Retry when they are idle, or use another model.",
                headers={"Retry-After": "30"},
            )
        for model_id in evict:
            await self._unload(self.extra[model_id], "to make room")

    async def _unload(self, model: ServedModel, why: str) -> None:
        scheduler = model.scheduler
        if scheduler is None or model.default:
            return
        before = rss_bytes()
        model.scheduler = model.engine = None
        await asyncio.to_thread(scheduler.close, self.settings.shutdown_grace_s)
        del scheduler
        await asyncio.to_thread(_free)
        model.freed_mb = round((before - rss_bytes()) / (1 << 20), 1)
        log.info("model %s unloaded (%s): %.0f MB given back", model.id, why, model.freed_mb)

    async def unload_idle(self) -> list[str]:
        """Unload every extra model idle for MODEL_TTL_S; the ids unloaded."""
        gone: list[str] = []
        async with self._lock:
            now = self.clock()
            for model in self.extra.values():
                if model.scheduler is None:
                    continue
                if model.busy:
                    model.last_used = now  # idle time counts from when it was last seen working
                elif expired(model.last_used, now, self.settings.model_ttl_s, busy=False):
                    await self._unload(model, f"idle {self.settings.model_ttl_s:g} s")
                    gone.append(model.id)
        return gone

    async def run_reaper(self) -> None:
        """Check for idle models until cancelled (a task of the app's lifespan)."""
        ttl = self.settings.model_ttl_s
        if ttl <= 0 or not self.extra:
            return
        interval = max(0.5, min(ttl / 4, 30.0))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.unload_idle()
            except Exception:
                log.exception("unloading idle models failed")

    async def preload(self) -> None:
        """MODELS_PRELOAD: load every extra model now; one that fails is logged and loads on first use again."""
        for model in list(self.extra.values()):
            try:
                await self.scheduler_for(model.id)
            except STTError as exc:
                log.error("model %s not preloaded: %s", model.id, exc.message)

    async def close(self, grace_s: float) -> None:
        """Stop the extra models' schedulers (the app stops the default one)."""
        for model in self.extra.values():
            if model.scheduler is not None:
                scheduler, model.scheduler, model.engine = model.scheduler, None, None
                await asyncio.to_thread(scheduler.close, grace_s)

    # --- what /v1/models shows -----------------------------------------------------------------------------
    def models(self) -> list[ServedModel]:
        return [self.default, *self.extra.values()]

    def describe(self, created: int) -> list[dict[str, Any]]:
        """OpenAI's model objects, with whether each is loaded now (extra fields the SDK keeps)."""
        return [
            {"id": model.id, "object": "model", "created": created, "owned_by": "stt-engine", **_state(model)}
            for model in self._listed()
        ]

    def health(self) -> list[dict[str, Any]]:
        """What `/health` shows of each served model: `/v1/models`' fields, and how long it has been idle
        (`idle_seconds`: None before its first request; 0 while it works), against MODEL_TTL_S."""
        now = self.clock()
        return [
            {"id": model.id, **_state(model),
             "idle_seconds": None if not model.last_used else 0.0 if model.busy else round(now - model.last_used, 1)}
            for model in self._listed()
        ]

    def _listed(self) -> Iterator[ServedModel]:
        """The models `/v1/models` and `/health` list: all but a default model that has not loaded yet."""
        return (model for model in self.models() if not (model.default and model.engine is None))


def _state(model: ServedModel) -> dict[str, Any]:
    return {
        "default": model.default, "loaded": model.scheduler is not None, "loads": model.loads,
        "memory_mb": model.memory_mb or None, "load_seconds": _round(model.load_seconds), "freed_mb": model.freed_mb,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _free() -> None:
    """Collect the unloaded model's objects now and hand their memory back to the system."""
    gc.collect()
    release_memory()
