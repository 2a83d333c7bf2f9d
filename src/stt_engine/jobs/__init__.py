"""Jobs: asynchronous transcription of long recordings (submit, poll, webhook).

One record per job lives in a `JobStore` (SQLite on one machine, Redis for many nodes); the uploaded audio lives
in `JOBS_STORAGE_DIR`. A `JobExecutor` runs one job through the node's own scheduler, so jobs batch with each other
and with interactive requests; what decides *when* a job runs differs per mode (`runner.EmbeddedRunner` polls
SQLite, `dramatiq_queue.DramatiqQueue` consumes a Redis queue).
"""

from stt_engine.jobs.backend import open_store
from stt_engine.jobs.models import Job, JobStatus
from stt_engine.jobs.store import JobStore

__all__ = ["Job", "JobStatus", "JobStore", "open_store"]
