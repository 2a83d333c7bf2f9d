"""Fuzzing with schemathesis against the live server's own `/openapi.json`: no 5xx, no crash, and the server still
transcribes afterwards. The server is a real `serve` process on the stand-in engine (`fake_server`): the generated
requests test the HTTP layer (validation, error shapes), and none carries real speech, so no model is loaded.

Bounded by count, not by time (a time budget made the case count, and so the pass, depend on the machine's load):
`EXAMPLES` generated cases (valid and invalid data) per operation and mode.
"""

from __future__ import annotations

import time
from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode

from tests.fake_engine import FAKE_TEXT
from tests.support import SHARED_AUDIO, post_audio

EXAMPLES = 40  # per operation and generation mode (valid data, invalid data)


@pytest.mark.slow
def test_fuzz_no_server_errors(fake_server: str) -> None:
    """Every operation, with schema-valid and schema-violating data. (schemathesis' lazy pytest loader does not
    work with pytest 9, so the operations are driven through its Python API.)"""
    schema = schemathesis.openapi.from_url(fake_server + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 6
    started = time.monotonic()
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    unconfigured: list[str] = []

    def check(case: schemathesis.Case) -> None:
        response = case.call(timeout=60)
        if _llm_not_configured(case, response):
            unconfigured.append(case.path)  # the documented answer on a server without an LLM (the session's)
            return
        statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=[not_a_server_error])
            assert response.status_code < 500, response.text
            headers = {k.lower(): v[0] if isinstance(v, list) else v for k, v in response.headers.items()}
            assert headers.get("x-request-id")
            if response.status_code >= 400 and headers.get("content-type", "").startswith("application/json"):
                assert "error" in response.json()
        except AssertionError as exc:  # keep going: report every failing operation at once
            failures.append(f"{case.method} {case.path}: {exc}"[:500])
            raise

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run = settings(
                max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck),
            )(given(case=operation.as_strategy(generation_mode=mode))(check))
            try:
                run()
            except (Unsatisfiable, AssertionError):
                pass  # an operation with nothing to break (no parameters) cannot have negative cases
            except Exception as exc:  # noqa: BLE001 - a transport error means the server went away: a failure
                failures.append(f"{operation.method.upper()} {operation.path} [{mode.value}]: {exc!r}"[:500])

    total = sum(statuses.values()) + len(unconfigured)
    print(f"FUZZ: {total} cases on {len(operations)} operations in {time.monotonic() - started:.0f} s, "
          f"statuses {dict(sorted(statuses.items()))}, {len(unconfigured)} x 503 llm_not_configured")
    assert not failures, failures
    assert total >= 200
    assert not any(code >= 500 for code in statuses)


def _llm_not_configured(case: schemathesis.Case, response: object) -> bool:
    """`/v1/postprocess` answers 503 `llm_not_configured` when no VLLM_BASE_URL is set: not a server error."""
    if case.path != "/v1/postprocess" or getattr(response, "status_code", 0) != 503:
        return False
    try:
        return response.json()["error"]["code"] == "llm_not_configured"  # type: ignore[attr-defined]
    except (ValueError, KeyError, TypeError):
        return False


@pytest.mark.slow
def test_server_healthy_after_fuzzing(fake_server: str) -> None:
    assert httpx.get(fake_server + "/health/ready").status_code == 200
    response = post_audio(fake_server, "/transcribe", SHARED_AUDIO / "en" / "speech_recognition_english_123.wav")
    assert response.status_code == 200 and FAKE_TEXT in response.json()["text"]
