"""Jobs cannot crash-loop: a job whose run takes the process down is started at most JOBS_MAX_ATTEMPTS times, then
failed for good (one webhook), and can be retried by hand. Real server and worker processes (and a real
redis-server) killed with SIGKILL mid-run, on the stand-in engine: these tests count attempts and states and never
look at what was said (test_jobs.py runs jobs end to end on the real model); `FAKE_ENGINE_DECODE_S` keeps each run
going long enough to be killed."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from stt_engine.jobs.models import JobStatus
from tests.fake_engine import FAKE_TEXT
from tests.jobs_support import (
    Proc,
    Receiver,
    RedisServer,
    get_job,
    start_server,
    start_worker,
    submit,
    wait_status,
    webhook_receiver,
)
from tests.support import clip

FINISHED = {"completed", "failed", "cancelled"}
MAX_ATTEMPTS = 3
LONG = "en/en_longform_librispeech_librivox_concat.wav"  # 78 s
# each run's one decode step lasts this long, so the kill lands while it runs (the test waits for `processing`)
FAKE = {"FAKE_ENGINE_DECODE_S": "5"}


def check_completed(job: dict, duration: float) -> None:
    """Completed on its first start, with a transcript of its own upload (the stand-in hears the whole audio)."""
    assert job["status"] == "completed" and job["attempts"] == 1, job
    assert FAKE_TEXT in job["result"]["text"] and job["result"]["duration"] == pytest.approx(duration, abs=0.1), job


def _deliveries(receiver: Receiver, job_id: str, at_least: int, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mine = [d for d in receiver.deliveries if d["json"]["id"] == job_id]
        if len(mine) >= at_least:
            return mine
        time.sleep(0.1)
    return [d for d in receiver.deliveries if d["json"]["id"] == job_id]


def kill_while_running(base: str, victim: Proc, job_id: str, attempt: int) -> None:
    """Kill `victim` (SIGKILL) once the job runs its `attempt`-th start (a dead run's record still says
    `processing` with the previous count until the job is started again)."""
    deadline = time.monotonic() + 600
    while True:
        job = get_job(base, job_id)
        if job is not None and job["status"] == "processing" and job["attempts"] == attempt:
            break
        assert job is None or job["status"] in ("queued", "processing"), job
        assert time.monotonic() < deadline, f"attempt {attempt} never started: {job}"
        time.sleep(0.2)
    victim.kill9()


def check_exhausted(base: str, receiver: Receiver, job_id: str) -> None:
    """Failed with job_attempts_exhausted after MAX_ATTEMPTS starts; its webhook delivered once."""
    job = wait_status(base, job_id, FINISHED)
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "job_attempts_exhausted" and job["attempts"] == MAX_ATTEMPTS, job
    assert "JOBS_MAX_ATTEMPTS" in job["error"]["message"]
    _deliveries(receiver, job_id, 1)
    time.sleep(2)
    hooks = [d for d in receiver.deliveries if d["json"]["id"] == job_id]
    assert len(hooks) == 1 and hooks[0]["json"]["status"] == "failed", hooks
    assert hooks[0]["json"]["error"]["code"] == "job_attempts_exhausted"
    assert get_job(base, job_id)["webhook"]["status"] == "delivered"


@pytest.mark.slow  # processes killed and restarted 3 times, Redis redelivery: not for the quick loop
def test_a_job_killed_with_its_server_max_attempts_times_fails_once_and_can_be_retried(tmp_path: Path) -> None:
    env = {"DATA_DIR": str(tmp_path), "JOBS_CONCURRENCY": "1", "JOBS_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
           "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1", **FAKE}
    long = clip(LONG)
    with webhook_receiver() as receiver:
        server = start_server(env, engine="fake")
        try:
            job_id = submit(server.base, long.path, language="en", webhook_url=receiver.url).json()["id"]
            for attempt in range(1, MAX_ATTEMPTS + 1):
                kill_while_running(server.base, server, job_id, attempt)
                server = start_server(env, engine="fake")
            check_exhausted(server.base, receiver, job_id)
            assert f"job {job_id} started" not in server.tail(200_000)  # never started again

            # the node is healthy: a new job on the same DATA_DIR completes
            short = clip("en/jfk.flac")
            new_id = submit(server.base, short.path, language="en").json()["id"]
            check_completed(wait_status(server.base, new_id, FINISHED), short.duration)

            # retried by hand: runs again from attempt 1 and completes (its webhook fires again, once)
            retried = httpx.post(f"{server.base}/v1/jobs/{job_id}/retry", timeout=30)
            assert retried.status_code == 202, retried.text
            assert retried.json()["status"] == "queued" and retried.json()["attempts"] == 0
            assert retried.json()["error"] is None
            again = httpx.post(f"{server.base}/v1/jobs/{job_id}/retry", timeout=30)  # not failed any more
            assert again.status_code == 409 and again.json()["error"]["code"] == "job_not_retryable", again.text
            check_completed(wait_status(server.base, job_id, FINISHED), long.duration)
            hooks = _deliveries(receiver, job_id, 2)
            assert [d["json"]["status"] for d in hooks] == ["failed", "completed"], hooks
            missing = httpx.post(f"{server.base}/v1/jobs/job_doesnotexist/retry", timeout=30)
            assert missing.status_code == 404
        finally:
            server.kill9()


@pytest.mark.slow  # processes killed and restarted 3 times, Redis redelivery: not for the quick loop
def test_redis_a_job_whose_worker_is_killed_max_attempts_times_fails_once(tmp_path: Path) -> None:
    """The same on many nodes: Dramatiq redelivers the dead worker's message, and the start it leads to is counted
    in Redis before the run begins; the start after the last one fails the job instead of running it."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("redis-server is required in CI: scripts/system-deps.sh installs it")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    env = {"JOBS_URL": redis.url, "JOBS_STORAGE_DIR": str(tmp_path / "shared"), "DATA_DIR": str(tmp_path / "data"),
           "JOBS_HEARTBEAT_TIMEOUT_S": "5", "JOBS_CONCURRENCY": "1", "JOBS_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
           "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1", **FAKE}
    procs: list[Proc] = []
    try:
        with webhook_receiver() as receiver:
            api = start_server({**env, "JOBS_LOCAL_WORKER": "false"}, engine="fake")
            procs.append(api)
            worker = start_worker(env, engine="fake")
            procs.append(worker)
            job_id = submit(api.base, clip(LONG).path, language="en", webhook_url=receiver.url).json()["id"]
            for attempt in range(1, MAX_ATTEMPTS + 1):
                kill_while_running(api.base, worker, job_id, attempt)
                worker = start_worker(env, engine="fake")
                procs.append(worker)
            check_exhausted(api.base, receiver, job_id)
            assert f"job {job_id} started" not in worker.tail(200_000)

            short = clip("en/jfk.flac")
            new_id = submit(api.base, short.path, language="en").json()["id"]
            check_completed(wait_status(api.base, new_id, FINISHED), short.duration)
            retried = httpx.post(f"{api.base}/v1/jobs/{job_id}/retry", timeout=30)  # through the queue
            assert retried.status_code == 202 and retried.json()["attempts"] == 0, retried.text
            job = wait_status(api.base, job_id, {"processing"})
            assert job["attempts"] == 1, job
            assert httpx.delete(f"{api.base}/v1/jobs/{job_id}", timeout=30).json()["status"] == "cancelled"
    finally:
        for p in procs:
            p.kill9()
        redis.stop()


async def test_the_attempt_is_counted_before_the_run_and_the_last_start_fails_it(tmp_path: Path) -> None:
    """The state machine alone (SQLite, no model): each claim is a committed write; the claim after the last
    allowed start fails the job (webhook pending) instead; a graceful hand-back returns its attempt; a retry by
    hand starts over."""
    from stt_engine.jobs.models import Job
    from stt_engine.jobs.store import SQLiteJobStore

    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    await store.insert(Job(id="job_a", webhook_url="https://hooks.example.com/x"))
    for attempt in range(1, 3):
        claimed = await store.claim("job_a", f"run{attempt}", 2)
        assert claimed is not None and claimed.status == "processing" and claimed.attempts == attempt
        reopened = SQLiteJobStore(tmp_path / "jobs.sqlite3")  # what a restarted process reads: already counted
        assert (await reopened.get("job_a")).attempts == attempt
        await reopened.close()
    assert await store.requeue("job_a", "run2")  # SIGTERM: handed back in good order, the attempt returned
    assert (await store.get("job_a")).attempts == 1
    assert (await store.claim("job_a", "run3", 2)).attempts == 2
    failed = await store.claim("job_a", "run4", 2)  # run3 died; the next start would be the third
    assert failed is not None and failed.status == "failed" and failed.attempts == 2
    assert failed.error["code"] == "job_attempts_exhausted" and failed.webhook_status == "pending"
    assert failed.worker is None and failed.finished_at is not None
    assert await store.claim("job_a", "run5", 2) is None  # never started again
    assert await store.finish("job_a", "run3", JobStatus.completed) is None  # nor finished by the dead run

    retried = await store.retry("job_a")
    assert retried is not None and (retried.status, retried.attempts, retried.error) == ("queued", 0, None)
    assert retried.webhook_status is None and retried.finished_at is None
    assert await store.retry("job_a") is None  # only failed or cancelled jobs
    assert (await store.claim("job_a", "run6", 2)).attempts == 1
    assert not await store.requeue("job_a", "someone-else")  # only the run that holds it hands it back
    assert await store.requeue_orphan("job_a")  # left processing by a process that died: queued, the attempt kept
    orphan = await store.get("job_a")
    assert (orphan.status, orphan.worker, orphan.attempts) == ("queued", None, 1)
    assert not await store.requeue_orphan("job_a")  # not processing: unchanged

    await store.insert(Job(id="job_b", error={"code": "decode_crashed", "message": "the decoder died"}))
    for attempt in range(2):
        await store.claim("job_b", f"b{attempt}", 2)
    kept = await store.claim("job_b", "b2", 2)  # a recorded error of its last attempt is kept
    assert kept.status == "failed" and kept.error["code"] == "decode_crashed" and kept.error["attempts"] == 2
    await store.close()


async def test_a_retry_that_cannot_be_queued_leaves_the_job_failed(tmp_path: Path) -> None:
    """Redis mode, queue down: the retry answers 503 and the job stays failed (not queued with no message)."""
    from stt_engine.config import Settings
    from stt_engine.jobs.models import Job
    from stt_engine.jobs.service import JobService
    from stt_engine.jobs.store import JobsUnavailable

    class QueueDown:
        async def enqueue(self, job_id: str) -> None:
            raise JobsUnavailable("Could not queue the job (Redis unreachable).")

    service = JobService(Settings(_env_file=None, data_dir=tmp_path), get_scheduler=lambda: None,
                         get_postprocessor=lambda: None, run_jobs=False)
    service.queue = QueueDown()  # type: ignore[assignment]
    await service.store.insert(Job(id="job_f", status="failed", attempts=3, error={"code": "job_attempts_exhausted"}))
    with pytest.raises(JobsUnavailable):
        await service.retry("job_f")
    job = await service.store.get("job_f")
    assert (job.status, job.attempts, job.error) == ("failed", 3, {"code": "job_attempts_exhausted"})
    service.queue = None
    await service.stop()
