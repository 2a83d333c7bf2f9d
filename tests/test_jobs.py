"""Jobs on one machine (SQLite, the default): the real model, real clips, a real server process."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fake_engine import FAKE_TEXT
from tests.jobs_support import Proc, start_server, submit, wait_status, webhook_receiver
from tests.support import clip, error_rate, wait_queue

KEY = "jobs-test-key"
OTHER = "jobs-other-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
FINISHED = {"completed", "failed", "cancelled"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    data = tmp_path_factory.mktemp("jobs-data")
    # webhooks go to receivers on 127.0.0.1 (and the server itself): loopback is allowed only when listed
    proc = start_server({"DATA_DIR": str(data), "API_KEYS": f"{KEY},{OTHER}", "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1"})
    try:
        yield proc
    finally:
        proc.stop()


def test_submit_poll_result_in_every_format_equals_sync(server: Proc) -> None:
    c = clip("en/jfk.flac")
    r = submit(server.base, c.path, AUTH, language="en")
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and r.headers["location"] == f"/v1/jobs/{job['id']}"
    done = wait_status(server.base, job["id"], FINISHED, headers=AUTH)
    assert done["status"] == "completed", done
    assert done["progress"]["seconds_done"] == pytest.approx(c.duration, abs=0.1)
    assert done["result"]["text"] and done["result"]["segments"]
    assert error_rate(done["result"]["text"], c) < 0.15
    for fmt in ("json", "text", "srt", "vtt", "verbose_json"):
        with c.path.open("rb") as handle:
            sync = httpx.post(server.base + "/v1/audio/transcriptions", files={"file": (c.path.name, handle)},
                              data={"language": "en", "response_format": fmt}, headers=AUTH, timeout=300)
        assert sync.status_code == 200
        result = httpx.get(f"{server.base}/v1/jobs/{job['id']}/result", params={"response_format": fmt},
                           headers=AUTH, timeout=30)
        assert result.status_code == 200, result.text
        assert result.headers["content-type"].split(";")[0] == sync.headers["content-type"].split(";")[0]
        if fmt in ("json", "verbose_json"):
            assert result.json()["text"] == sync.json()["text"]
            if fmt == "verbose_json":
                assert [s["text"] for s in result.json()["segments"]] == [s["text"] for s in sync.json()["segments"]]
        else:
            assert result.text == sync.text


def test_webhook_signed_and_retried_after_a_500(server: Proc) -> None:
    c = clip("ko/ett_pfi00017.wav")
    with webhook_receiver(fail_first=1) as receiver:
        r = submit(server.base, c.path, AUTH, language="ko", webhook_url=receiver.url, webhook_secret="s3cret")
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        wait_status(server.base, job_id, FINISHED, headers=AUTH)
        deadline = time.monotonic() + 60
        while len(receiver.deliveries) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(receiver.deliveries) == 2, receiver.deliveries
        for delivery in receiver.deliveries:
            assert delivery["json"] == {"id": job_id, "object": "transcription.job", "status": "completed"}
            assert receiver.signature_ok(delivery, "s3cret")
            assert not receiver.signature_ok(delivery, "wrong")
        assert receiver.deliveries[1]["time"] - receiver.deliveries[0]["time"] >= 0.9  # backed off
        time.sleep(0.5)
        assert len(receiver.deliveries) == 2  # delivered once it succeeded: no more
    job = httpx.get(f"{server.base}/v1/jobs/{job_id}", headers=AUTH).json()
    assert job["webhook"]["status"] == "delivered" and job["webhook"]["attempts"] == 2
    assert "s3cret" not in json.dumps(job)


def test_webhook_to_the_server_itself_does_not_deadlock(server: Proc) -> None:
    c = clip("en/picovoice_test_en.wav")
    r = submit(server.base, c.path, AUTH, webhook_url=server.base + "/v1/models")
    job_id = r.json()["id"]
    wait_status(server.base, job_id, FINISHED, headers=AUTH)
    deadline = time.monotonic() + 120  # a hang guard: how soon is not the point
    while (job := httpx.get(f"{server.base}/v1/jobs/{job_id}", headers=AUTH).json())["webhook"]["attempts"] < 1:
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    # no deadlock: the server answered its own webhook (401, no key), where a blocked loop would have timed it out
    failure = re.search(rf"webhook for {job_id} failed \(attempt 1/\d+\): (.*)", server.log.read_text(errors="replace"))
    assert failure and failure[1].startswith("HTTP 4"), server.tail()
    assert job["status"] == "completed", job
    assert httpx.get(server.base + "/health", timeout=30).status_code == 200


def test_idempotency_key_returns_the_same_job(server: Proc) -> None:
    c = clip("en/picovoice_test_en.wav")
    headers = {**AUTH, "Idempotency-Key": "upload-42"}
    first = submit(server.base, c.path, headers)
    second = submit(server.base, c.path, headers)
    assert first.status_code == 202 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    # the same key with another request is refused, never answered with the first job (the upload would be lost)
    for changed in (submit(server.base, clip("en/jfk.flac").path, headers),
                    submit(server.base, c.path, headers, language="en")):
        assert changed.status_code == 422, changed.text
        error = changed.json()["error"]
        assert error["code"] == "idempotency_key_reused" and first.json()["id"] in error["message"], error
    assert submit(server.base, c.path, headers).status_code == 200  # and the original still replays
    other = submit(server.base, c.path, {**AUTH, "Idempotency-Key": "upload-43"})
    assert other.json()["id"] != first.json()["id"]
    # keys are per API key: another caller's identical key is its own job
    theirs = submit(server.base, c.path, {"Authorization": f"Bearer {OTHER}", "Idempotency-Key": "upload-42"})
    assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]
    for job_id in (first.json()["id"], other.json()["id"]):
        wait_status(server.base, job_id, FINISHED, headers=AUTH)


def test_cancelling_a_running_job_stops_it(server: Proc) -> None:
    c = clip("ko/ett_longform_lmy_concat.wav")
    job_id = submit(server.base, c.path, AUTH, language="ko").json()["id"]
    wait_status(server.base, job_id, {"processing"}, headers=AUTH)
    time.sleep(1.0)
    r = httpx.delete(f"{server.base}/v1/jobs/{job_id}", headers=AUTH)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    wait_queue(server.base, "drop of the cancelled job's chunks", lambda q: not q["requests"], headers=AUTH)
    assert httpx.get(f"{server.base}/v1/jobs/{job_id}", headers=AUTH).json()["status"] == "cancelled"
    assert httpx.get(f"{server.base}/v1/jobs/{job_id}/result", headers=AUTH).status_code == 409
    # a finished job is deleted, audio and all
    assert httpx.delete(f"{server.base}/v1/jobs/{job_id}", headers=AUTH).json()["deleted"] is True
    assert httpx.get(f"{server.base}/v1/jobs/{job_id}", headers=AUTH).status_code == 404


def test_bad_input_and_ownership(server: Proc, tmp_path: Path) -> None:
    before = httpx.get(server.base + "/v1/jobs", params={"limit": 100}, headers=AUTH).json()["data"]
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 100)
    r = submit(server.base, text, AUTH)
    with text.open("rb") as handle:
        sync = httpx.post(server.base + "/v1/audio/transcriptions", files={"file": (text.name, handle)}, headers=AUTH)
    assert 400 <= r.status_code < 500 and r.status_code == sync.status_code, r.text
    assert r.json()["error"]["code"] == sync.json()["error"]["code"]
    after = httpx.get(server.base + "/v1/jobs", params={"limit": 100}, headers=AUTH).json()["data"]
    assert len(after) == len(before)  # no job was created

    r = httpx.get(server.base + "/v1/jobs/job_doesnotexist", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
    c = clip("en/picovoice_test_en.wav")
    for bad in ("not a url", "ftp://example.com/x", "http://", "http://host:99999/x",
                "http://127.0.0.1:9/hook\r\nX-Injected: 1",  # CRLF: once accepted, then a delivery that died
                "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/",  # cloud metadata
                "http://10.0.0.1/hook", "http://127.0.0.2/hook", "https://example.com/hook"):  # not listed
        r = submit(server.base, c.path, AUTH, webhook_url=bad)
        assert r.status_code == 400 and r.json()["error"]["param"] == "webhook_url", (bad, r.text)
        assert r.json()["error"]["message"], r.text
    assert submit(server.base, c.path, AUTH, language="xx").status_code == 400

    assert submit(server.base, c.path).status_code == 401  # API_KEYS set: jobs need a key
    assert httpx.get(server.base + "/v1/jobs").status_code == 401
    mine = [submit(server.base, c.path, AUTH).json()["id"] for _ in range(3)][-1]
    theirs = {"Authorization": f"Bearer {OTHER}"}
    assert httpx.get(f"{server.base}/v1/jobs/{mine}", headers=theirs).status_code == 404
    assert httpx.delete(f"{server.base}/v1/jobs/{mine}", headers=theirs).status_code == 404
    their_ids = {j["id"] for j in httpx.get(server.base + "/v1/jobs", headers=theirs).json()["data"]}
    assert mine not in their_ids

    page1 = httpx.get(server.base + "/v1/jobs", params={"limit": 2}, headers=AUTH).json()
    page2 = httpx.get(server.base + "/v1/jobs", params={"limit": 2, "after": page1["last_id"]}, headers=AUTH).json()
    assert page1["has_more"] and not {j["id"] for j in page1["data"]} & {j["id"] for j in page2["data"]}
    assert httpx.get(server.base + "/v1/jobs", params={"status": "nope"}, headers=AUTH).status_code == 400


@pytest.mark.slow  # a kill and restart, jobs at 5 s each: not for the quick loop
def test_kill_9_with_jobs_queued_and_processing_loses_nothing(tmp_path: Path) -> None:
    """On the stand-in engine (what was said is test_submit_poll_result_in_every_format_equals_sync's business):
    after a SIGKILL, the running job and the queued ones each complete on the restarted server, from their own
    upload (the stand-in hears the whole of it); each decode step takes 5 s, so the kill lands mid-run."""
    env = {"DATA_DIR": str(tmp_path), "JOBS_CONCURRENCY": "1", "FAKE_ENGINE_DECODE_S": "5"}
    chosen = [clip("en/en_longform_librispeech_librivox_concat.wav"), clip("en/jfk.flac"), clip("ko/ett_lmy02132.wav")]
    first = start_server(env, engine="fake")
    try:
        ids = [submit(first.base, c.path, language=c.language).json()["id"] for c in chosen]
        wait_status(first.base, ids[0], {"processing"})
        first.kill9()
    finally:
        first.kill9()
    second = start_server(env, engine="fake")
    try:
        for job_id, c in zip(ids, chosen):
            job = wait_status(second.base, job_id, FINISHED, timeout=600)
            assert job["status"] == "completed", job
            assert FAKE_TEXT in job["result"]["text"], job
            assert job["result"]["duration"] == pytest.approx(c.duration, abs=0.1), (c.file, job["result"])
        assert httpx.get(f"{second.base}/v1/jobs/{ids[0]}").json()["attempts"] == 2
    finally:
        second.stop()


def test_a_failed_postprocess_keeps_the_transcript(server: Proc) -> None:
    """No LLM is configured here: post-processing fails, the transcript is still there."""
    c = clip("en/picovoice_test_en.wav")
    job_id = submit(server.base, c.path, AUTH, language="en", postprocess="correct").json()["id"]
    job = wait_status(server.base, job_id, FINISHED, headers=AUTH)
    assert job["status"] == "completed", job
    assert error_rate(job["result"]["text"], c) < 0.3
    assert job["result"]["postprocess"]["error"]["code"] == "llm_not_configured"
    body = httpx.get(f"{server.base}/v1/jobs/{job_id}/result", params={"response_format": "json"}, headers=AUTH).json()
    assert body["text"] == job["result"]["text"] and body["postprocess"]["error"]
    assert submit(server.base, c.path, AUTH, postprocess="no-such-task").status_code == 400


async def test_retention_deletes_old_finished_jobs_and_their_audio(tmp_path: Path) -> None:
    """Pure bookkeeping (no model): the sweep removes what finished before JOBS_RETENTION_HOURS, nothing else."""
    from stt_engine.config import Settings
    from stt_engine.jobs.models import Job, JobStatus
    from stt_engine.jobs.service import JobService

    settings = Settings(_env_file=None, data_dir=tmp_path, jobs_retention_hours=1)
    service = JobService(settings, get_scheduler=lambda: None, get_postprocessor=lambda: None, run_jobs=False)
    now = time.time()
    jobs = {
        "old": Job(id="job_old", status=JobStatus.completed.value, finished_at=now - 7200),
        "recent": Job(id="job_recent", status=JobStatus.failed.value, finished_at=now - 60),
        "queued": Job(id="job_queued", created_at=now - 7200),
    }
    for job in jobs.values():
        await service.store.insert(job)
        service.job_dir(job.id).mkdir(parents=True)
        (service.job_dir(job.id) / "upload").write_bytes(b"x")
    assert await service.sweep() == 1
    assert await service.store.get("job_old") is None and not service.job_dir("job_old").exists()
    for name in ("recent", "queued"):
        assert await service.store.get(jobs[name].id) is not None and service.job_dir(jobs[name].id).exists()
    await service.stop()
