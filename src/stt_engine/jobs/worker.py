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
    from stt_engine.postprocess.service import PostProcessor
    from stt_engine.runtime import build_scheduler, load_engine, warm_up

    engine = await run_in_threadpool(load_engine, settings, None)
    scheduler = build_scheduler(engine, settings)
    await warm_up(scheduler)
    postprocessor = PostProcessor.from_settings(settings)
    service = JobService(settings, get_scheduler=lambda: scheduler, get_postprocessor=lambda: postprocessor,
                         run_jobs=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start(upkeep=False)
    log.info("worker ready: %s on %s, %d jobs at once", engine.resolved.name, engine.device, settings.jobs_concurrency)
    await stop.wait()
    log.info("worker stopping: running jobs go back to the queue")
    await service.stop()
    await postprocessor.aclose()
    await run_in_threadpool(scheduler.close, 0)
    return 0
