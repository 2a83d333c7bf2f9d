"""Jobs across nodes: a real redis-server, an API-only server (on the stand-in engine: it runs no job) and two
`stt-engine worker` processes on the real model."""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.jobs_support import Proc, RedisServer, start_server, start_worker, submit, wait_status, webhook_receiver
from tests.support import clip, error_rate

FINISHED = {"completed", "failed", "cancelled"}
SHORT = ["en/jfk.flac", "ko/ett_pfi00017.wav", "en/picovoice_test_en.wav", "ko/ett_pma00031.wav",
         "en/ljspeech_LJ050-0131.wav", "ko/ett_ada00005.wav", "en/librivox_sense_and_sensibility-0870.wav",
         "ko/ett_pfd00004.wav", "en/speech_recognition_english_123.wav", "ko/ett_kih00108.wav"]


@dataclass
class Cluster:
    redis: RedisServer
    api: Proc
    workers: list[Proc]
    env: dict[str, str]

    def worker_running(self, job_id: str) -> Proc:
        """The worker whose log says it started `job_id` last."""
        for worker in self.workers:
            if f"job {job_id} started" in worker.log.read_text(errors="replace"):
                return worker
        raise AssertionError(f"no worker started {job_id}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("redis-server is required in CI: scripts/system-deps.sh installs it")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    root = tmp_path_factory.mktemp("jobs-redis")
    redis = RedisServer(root / "redis")
    redis.start()
    env = {"JOBS_URL": redis.url, "JOBS_STORAGE_DIR": str(root / "shared"), "DATA_DIR": str(root / "data"),
           "JOBS_HEARTBEAT_TIMEOUT_S": "10", "JOBS_CONCURRENCY": "2", "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1"}
    procs: list[Proc] = []
    try:
        # the API node runs no job (JOBS_LOCAL_WORKER=false): the stand-in engine spares a model load, and a job
        # it ran by mistake would fail `_check` (the stand-in's text is not the clip's)
        api = start_server({**env, "JOBS_LOCAL_WORKER": "false"}, engine="fake")
        procs.append(api)
        workers = [start_worker(env), start_worker(env)]
        procs.extend(workers)
        yield Cluster(redis, api, workers, env)
    finally:
        for p in procs:
            p.stop()
        redis.stop()


def _check(job: dict, file: str) -> None:
    c = clip(file)
    assert job["status"] == "completed", job
    assert error_rate(job["result"]["text"], c) < 0.3, (file, job["result"]["text"])


def test_ten_jobs_complete_once_each_on_both_workers(cluster: Cluster) -> None:
    with webhook_receiver() as receiver:
        ids = {}
        for file in SHORT:
            r = submit(cluster.api.base, clip(file).path, language=clip(file).language, webhook_url=receiver.url)
            assert r.status_code == 202, r.text
            ids[r.json()["id"]] = file
        for job_id, file in ids.items():
            job = wait_status(cluster.api.base, job_id, FINISHED, timeout=600)
            _check(job, file)
            assert job["attempts"] == 1
        deadline = time.monotonic() + 120  # a hang guard
        while len(receiver.deliveries) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        per_job = Counter(d["json"]["id"] for d in receiver.deliveries)
        assert per_job == Counter({job_id: 1 for job_id in ids})  # one webhook per job
    ran = [sum(f"job {j} started" in w.log.read_text() for j in ids) for w in cluster.workers]
    assert sum(ran) == len(ids) and all(ran), ran  # both nodes took work, no job ran twice
    listed = httpx.get(cluster.api.base + "/v1/jobs", params={"status": "completed", "limit": 100}).json()["data"]
    assert set(ids) <= {j["id"] for j in listed}


def test_redis_down_for_5_s_loses_nothing(cluster: Cluster) -> None:
    files = ["en/picovoice_diarization_test_3spk.wav", "ko/ett_lmy02132.wav", "en/jfk.flac", "ko/ett_kih00108.wav"]
    ids = {submit(cluster.api.base, clip(f).path, language=clip(f).language).json()["id"]: f for f in files}
    wait_status(cluster.api.base, next(iter(ids)), {"processing", "completed"})
    cluster.redis.stop()
    try:
        r = httpx.get(f"{cluster.api.base}/v1/jobs/{next(iter(ids))}", timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "jobs_unavailable"
        time.sleep(5)
    finally:
        cluster.redis.start()
    for job_id, file in ids.items():
        _check(wait_status(cluster.api.base, job_id, FINISHED, timeout=600), file)
    # and the cluster still takes new work
    job_id = submit(cluster.api.base, clip("en/jfk.flac").path, language="en").json()["id"]
    _check(wait_status(cluster.api.base, job_id, FINISHED, timeout=300), "en/jfk.flac")


def test_worker_killed_mid_job_its_job_completes_elsewhere(cluster: Cluster) -> None:
    file = "en/en_longform_librispeech_librivox_concat.wav"
    job_id = submit(cluster.api.base, clip(file).path, language="en").json()["id"]
    wait_status(cluster.api.base, job_id, {"processing"})
    time.sleep(1)
    victim = cluster.worker_running(job_id)
    victim.kill9()
    killed_at = time.monotonic()
    survivor = next(w for w in cluster.workers if w is not victim)
    job = wait_status(cluster.api.base, job_id, FINISHED, timeout=400)
    _check(job, file)
    assert job["attempts"] == 2
    assert f"job {job_id} started" in survivor.log.read_text()
    # redelivered after the heartbeat timeout (how soon is a matter of speed and Dramatiq's redelivery: reported)
    print(f"finished elsewhere {time.monotonic() - killed_at:.0f} s after the kill")
