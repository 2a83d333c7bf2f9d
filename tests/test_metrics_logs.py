"""`/metrics` parses and moves with the requests just made; every request has an id and one access log line;
transcripts stay out of the logs by default."""

from __future__ import annotations

import json
import random
import re
import string
import time
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import SHARED_AUDIO, TEST_LOG_DIR, post_audio

SHORT = SHARED_AUDIO / "en" / "speech_recognition_english_123.wav"  # 2.74 s
ROUTE = "/v1/audio/transcriptions"
LOG_DIR = TEST_LOG_DIR  # where tests.support.running_server points the session server's LOG_DIR


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as {(name, sorted labels): value}, via prometheus_client's own parser."""
    response = httpx.get(base + "/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_with_requests(server: str) -> None:
    before = scrape(server)
    for _ in range(2):
        assert post_audio(server, ROUTE, SHORT).status_code == 200
    assert httpx.post(server + ROUTE, files={"file": ("x.wav", b"not audio")}).status_code == 400
    assert post_audio(server, "/transcribe", SHORT, postprocess="correct").status_code == 200
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("stt_http_requests_total", method="POST", route=ROUTE, status="200") == 2
    assert delta("stt_http_requests_total", method="POST", route=ROUTE, status="400") == 1
    assert delta("stt_http_request_duration_seconds_count", method="POST", route=ROUTE) == 3
    assert delta("stt_audio_seconds_processed_total", route=ROUTE) == pytest.approx(2 * 2.74, abs=0.05)
    assert delta("stt_realtime_factor_count", route=ROUTE) == 2
    assert 0 < delta("stt_realtime_factor_sum", route=ROUTE) < 10
    assert delta("stt_transcription_seconds_count", route="/transcribe") == 1
    assert delta("stt_scheduler_jobs_total", outcome="completed") == 3
    assert delta("stt_batch_chunks_count") >= 1
    assert delta("stt_postprocess_calls_total", task="correct") == 1
    assert delta("stt_postprocess_failures_total", task="correct", error="llm_not_configured") == 1
    # gauges and start-up figures
    assert value(after, "stt_model_load_seconds") > 0 and value(after, "stt_model_warmup_seconds") > 0
    assert value(after, "stt_model_ready") == 1
    assert ("stt_queue_depth", ()) in after and ("stt_queue_audio_seconds", ()) in after
    assert delta("stt_queue_wait_seconds_count") == 3  # one histogram, no hand-computed quantile gauge beside it
    assert not any(name == "stt_queue_wait_recent_seconds" for name, _ in after)
    assert value(after, "stt_http_requests_in_flight") >= 1  # the scrape itself
    assert value(after, "process_resident_memory_bytes") > 50e6
    # the scrape is counted too, under its route template
    assert value(after, "stt_http_requests_total", method="GET", route="/metrics", status="200") >= 1


def test_unknown_paths_share_one_label(server: str) -> None:
    for n in range(3):
        httpx.get(f"{server}/no/such/path/{n}")
    samples = scrape(server)
    assert value(samples, "stt_http_requests_total", method="GET", route="<unmatched>", status="404") >= 3
    assert not any("/no/such" in str(labels) for _, labels in samples)


def _log_lines(request_id: str, base: str, timeout: float = 60.0) -> list[dict]:
    """JSON log lines carrying `request_id` (the file is shared by the test servers; ids are unique)."""
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for path in sorted(LOG_DIR.glob("stt-engine.jsonl*")):
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                if request_id in line:
                    found.append(json.loads(line))
        if any(entry.get("logger") == "stt_engine.access" for entry in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_request_id_echoed_and_access_line_written(server: str) -> None:
    request_id = f"test-{time.time_ns()}"
    with SHORT.open("rb") as handle:
        response = httpx.post(
            server + ROUTE, files={"file": (SHORT.name, handle)}, headers={"X-Request-ID": request_id}, timeout=120
        )
    assert response.status_code == 200 and response.headers["x-request-id"] == request_id
    text = response.json()["text"]

    entries = _log_lines(request_id, server)
    access = [e for e in entries if e.get("logger") == "stt_engine.access"]
    assert len(access) == 1, entries
    line = access[0]
    assert line["request_id"] == request_id and line["route"] == ROUTE and line["status"] == 200
    assert line["method"] == "POST" and line["duration_ms"] > 0
    assert line["audio_seconds"] == pytest.approx(2.74, abs=0.05)
    assert line["processing_seconds"] > 0 and line["rtf"] == pytest.approx(
        line["processing_seconds"] / line["audio_seconds"], rel=0.01
    )
    # LOG_TRANSCRIPTS is off by default: the text is nowhere in this request's lines
    assert all(text not in json.dumps(e, ensure_ascii=False) and "transcript" not in e for e in entries)

    # the console log is human-readable and carries the id too
    port = urlsplit(server).port
    console = (LOG_DIR / f"server-{port}.out").read_text(encoding="utf-8", errors="replace")
    assert re.search(rf"\[{re.escape(request_id)}\] POST {ROUTE} 200 \d+ms audio=2\.7\d*s rtf=", console)


def test_request_id_generated_when_absent_or_unsafe(server: str) -> None:
    plain = httpx.get(server + "/health")
    assert re.fullmatch(r"[0-9a-f]{32}", plain.headers["x-request-id"])
    unsafe = httpx.get(server + "/health", headers={"X-Request-ID": "bad id\twith spaces" + "x" * 200})
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe.headers["x-request-id"])


def test_error_bodies_carry_the_request_id(server: str) -> None:
    response = httpx.post(server + ROUTE, files={"file": ("x.wav", b"")}, headers={"X-Request-ID": "err-123"})
    assert response.status_code == 400
    assert response.json()["error"]["request_id"] == "err-123" == response.headers["x-request-id"]


def test_health_liveness_and_readiness(server: str) -> None:
    assert httpx.get(server + "/health").status_code == 200
    ready = httpx.get(server + "/health/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["status"] == "ok"



SWEEP_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "PROPFIND", "FOO",
                 "M-SEARCH"]


def test_metrics_stay_small_after_sweeping_every_route_with_every_method(server: str) -> None:
    """Every registered path (from the OpenAPI schema, plus the mounts and pages) and some random ones, called with
    every method, including ones no route takes: /metrics stays under 200 kB, methods fall into the closed set
    and routes into the templates plus one label for the unknown."""
    schema = httpx.get(server + "/openapi.json", timeout=30).json()
    paths = [re.sub(r"\{[^}]+\}", "x1", path) for path in schema["paths"]]
    paths += ["/", "/docs", "/docs/static/swagger-ui.css", "/web/", "/web/none.js", "/metrics", "/health/ready"]
    rng = random.Random(18)
    paths += ["/" + "".join(rng.choice(string.ascii_lowercase + "/%.") for _ in range(rng.randint(1, 30)))
              for _ in range(40)]
    with httpx.Client(base_url=server, timeout=30) as client:
        for _ in range(2):
            for path in paths:
                for method in SWEEP_METHODS:
                    client.request(method, path)
    text = httpx.get(server + "/metrics", timeout=30).text
    size = len(text.encode())
    timed = re.findall(r"^stt_http_request_duration_seconds_count\{(.*)\}", text, re.M)
    print(f"/metrics after {len(paths)} paths x {len(SWEEP_METHODS)} methods: {size} bytes, "
          f"{len(timed)} latency series")
    assert size < 200_000, size
    samples = scrape(server)
    methods = {dict(labels).get("method") for name, labels in samples if name == "stt_http_requests_total"}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}, methods
    routes = {re.sub(r":\w+\}", "}", dict(labels)["route"])  # `{model_id:path}` is `{model_id}` in the schema
              for name, labels in samples if name == "stt_http_requests_total"}
    templates = set(schema["paths"]) | {"/", "/docs", "/docs/static", "/web", "/openapi.json", "/docs/oauth2-redirect",
                                        "<unmatched>"}
    assert routes <= templates, routes - templates
    # the latency histogram has series only for what an endpoint served: no "other" method, no unknown route
    assert not [labels for labels in timed if 'method="other"' in labels or "<unmatched>" in labels], timed


def test_method_label_is_a_closed_set() -> None:
    from stt_engine.metrics import Metrics, method_label

    assert [method_label(m) for m in ("GET", "OPTIONS", "TRACE", "CONNECT", "PROPFIND", "get", "x" * 9000)] == [
        "GET", "OPTIONS", "other", "other", "other", "other", "other"]
    metrics = Metrics()
    for method in ("GET", "PROPFIND", "FOO", "TRACE"):
        metrics.observe_request(method, "/health", 405, 0.01)
        metrics.observe_request(method, "<unmatched>", 404, 0.01, served=False)
    text = metrics.render().decode()
    assert "stt_http_request_duration_seconds_count{" not in text  # nothing an endpoint served: counted, not timed
    assert text.count("stt_http_requests_total{") == 4  # GET and other, on two routes
