"""`stt-engine worker`: a GPU node that runs jobs from Redis through its own scheduler (no HTTP server).

Start as many as there are GPUs/nodes, all with the same JOBS_URL and a shared JOBS_STORAGE_DIR. SIGTERM hands
running jobs back to the queue; SIGKILL loses nothing either: the dead node's jobs are redelivered after
JOBS_HEARTBEAT_TIMEOUT_S.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from stt_engine.config import Settings
from stt_engine.errors import STTError

log = logging.getLogger("stt_engine.worker")


def run_worker(settings: Settings) -> int:
    from stt_engine.jobs.store import is_redis

    if not is_redis(settings):
        print("stt-engine worker: set JOBS_URL=redis://host:6379/0 (with SQLite, `stt-engine serve` runs the jobs)",
              file=sys.stderr)
        return 2
    try:
        return asyncio.run(_main(settings))
    except STTError as exc:
        print(f"stt-engine worker: cannot start: {exc.message}", file=sys.stderr)
        return 2


async def _main(settings: Settings) -> int:
    from starlette.concurrency import run_in_threadpool

    from stt_engine.jobs.service import JobService
    from stt_engine.model_registry import ModelRegistry
    from stt_engine.postprocess.service import PostProcessor
    from stt_engine.runtime import build_scheduler, load_engine, warm_up

    try:  # the same WHISPER_MODELS as the API nodes: a job names one by id (its scheduler is this node's own)
        models = ModelRegistry(settings)
    except ValueError as exc:
        raise STTError(str(exc)) from None
    engine = await run_in_threadpool(load_engine, settings, None)
    scheduler = build_scheduler(engine, settings, gate=models.gate)
    models.set_default(engine, scheduler)
    await warm_up(scheduler)
    if settings.models_preload:
        await models.preload()
    reaper = asyncio.ensure_future(models.run_reaper())  # MODEL_TTL_S unloads idle extra models here too
    postprocessor = PostProcessor.from_settings(settings)
    service = JobService(settings, get_scheduler=lambda: scheduler, get_postprocessor=lambda: postprocessor,
                         run_jobs=True, models=models)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start(upkeep=False)
    log.info("worker ready: %s on %s, %d jobs at once; extra models: %s", engine.resolved.name, engine.device,
             settings.jobs_concurrency, ", ".join(models.extra) or "none")
    await stop.wait()
    log.info("worker stopping: running jobs go back to the queue")
    await service.stop()
    reaper.cancel()
    await models.close(0)
    await postprocessor.aclose()
    await run_in_threadpool(scheduler.close, 0)
    return 0
