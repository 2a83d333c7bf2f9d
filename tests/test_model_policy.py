"""Which model a request gets, when an extra model unloads, and when a load is refused: pure policy
(`models/serving.py`) and the registry's lookup and budget, without a model or a server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from stt_engine.config import Settings
from stt_engine.errors import ModelMemoryExceeded, NotFound
from stt_engine.model_registry import ModelRegistry
from stt_engine.models import ResolvedModel
from stt_engine.models.serving import Loaded, entry_id, estimate_mb, ever_fits, expired, parse_entries, plan_load


def test_entries_get_stable_ids() -> None:
    entries = parse_entries(["bundled-small", "/srv/models/whisper-small/", "fast=tiny", "large-v3-turbo"])
    assert [(e.id, e.name) for e in entries] == [
        ("bundled-small", "bundled-small"), ("whisper-small", "/srv/models/whisper-small/"), ("fast", "tiny"),
        ("large-v3-turbo", "large-v3-turbo"),
    ]
    assert entry_id("~/models/medium") == "medium"


@pytest.mark.parametrize("values", [["a=x", "a=y"], ["whisper-1=x"], ["bundled"], ["=x"]])
def test_ids_that_could_never_be_picked_are_refused(values: list[str]) -> None:
    with pytest.raises(ValueError):
        parse_entries(values, default_ids=["bundled"])


def test_memory_estimate_counts_each_instance() -> None:
    assert estimate_mb(145_217_607, 1) == 174 + 40
    assert estimate_mb(145_217_607, 2) == 347 + 40  # measured: 389 MB for Whisper base with the solo instance


def test_ttl() -> None:
    assert expired(last_used=0, now=10, ttl_s=10, busy=False)
    assert not expired(last_used=0, now=9.9, ttl_s=10, busy=False)
    assert not expired(last_used=0, now=100, ttl_s=10, busy=True)  # never while it works
    assert not expired(last_used=0, now=1e9, ttl_s=0, busy=False)  # 0 = keep


def _loaded(model_id: str, mb: int, *, busy: bool = False, pinned: bool = False, used: float = 0) -> Loaded:
    return Loaded(model_id, mb, busy, pinned, used)


def test_budget_evicts_idle_models_least_recently_used_first() -> None:
    loaded = [_loaded("default", 300, pinned=True), _loaded("a", 200, used=5), _loaded("b", 200, used=1)]
    assert plan_load(500, 0, loaded) == []  # no budget
    assert plan_load(100, 1000, loaded) == []  # fits
    assert plan_load(400, 1000, loaded) == ["b"]
    assert plan_load(600, 1000, loaded) == ["b", "a"]


def test_budget_refuses_what_cannot_fit_without_touching_busy_or_default_models() -> None:
    loaded = [_loaded("default", 300, pinned=True), _loaded("a", 200, busy=True), _loaded("b", 200)]
    assert plan_load(600, 1000, loaded) is None
    assert plan_load(800, 1000, [_loaded("default", 300, pinned=True)]) is None


def _model_dir(path: Path, size: int) -> Path:
    path.mkdir(parents=True)
    with (path / "model.bin").open("wb") as handle:
        handle.truncate(size)  # sparse: the budget reads only the size
    for name in ("config.json", "tokenizer.json"):
        (path / name).write_text("{}")
    return path


def _registry(tmp_path: Path, **settings: object) -> ModelRegistry:
    config = Settings(_env_file=None, verify_model=False, whisper_device="cpu", whisper_num_workers=1, **settings)
    registry = ModelRegistry(config)
    default = ResolvedModel(_model_dir(tmp_path / "base", 300 << 20), "base", "setting")
    engine = SimpleNamespace(resolved=default, supported_languages=frozenset({"en"}))
    registry.set_default(engine, SimpleNamespace(queued_requests=0))  # type: ignore[arg-type]
    return registry


def test_openai_names_mean_the_default_and_unknown_ids_are_404(tmp_path: Path) -> None:
    registry = _registry(tmp_path, whisper_models=[str(tmp_path / "small")])
    for name in (None, "", "whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "base"):
        assert registry.lookup(name) is registry.default
    assert registry.lookup("small").name == str(tmp_path / "small")
    with pytest.raises(NotFound) as caught:
        registry.lookup("medium")
    assert (caught.value.status, caught.value.code, caught.value.error_type) == (
        404, "model_not_found", "invalid_request_error"
    )


def test_a_load_past_the_budget_is_refused_with_503(tmp_path: Path) -> None:
    _model_dir(tmp_path / "small", 400 << 20)
    registry = _registry(tmp_path, whisper_models=[str(tmp_path / "small")], model_memory_mb=600)
    assert registry.default.memory_mb == 375 + 40
    with pytest.raises(ModelMemoryExceeded) as caught:
        asyncio.run(registry.scheduler_for("small"))
    assert caught.value.status == 503 and caught.value.code == "model_memory_exceeded"
    assert "needs about 540 MB" in caught.value.message and "MODEL_MEMORY_MB=600" in caught.value.message
    assert caught.value.retryable is False and "can never fit" in caught.value.message  # 415 + 540 > 600
    assert registry.extra["small"].scheduler is None and registry.extra["small"].loading is None


def test_bundled_small_refuses_clearly_while_its_parts_are_incomplete() -> None:
    from stt_engine.errors import ModelNotFound
    from stt_engine.models.resolve import find_named_model

    with pytest.raises(ModelNotFound) as caught:
        find_named_model(Settings(_env_file=None), "bundled-small")
    assert "WHISPER_MODELS" in caught.value.message and "stt-engine download small" in caught.value.message


def test_api_unknown_id_is_404_and_a_missing_folder_is_503(tmp_path: Path) -> None:
    from tests.support import SHARED_AUDIO, app_client

    audio = {"file": ("jfk.flac", (SHARED_AUDIO / "en" / "jfk.flac").read_bytes())}
    with app_client(tmp_path, whisper_models=[f"gone={tmp_path / 'gone'}"]) as client:
        listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert listed["gone"]["loaded"] is False and listed["gone"]["default"] is False
        unknown = client.post("/v1/audio/transcriptions", files=audio, data={"model": "no-such-model"})
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "model_not_found"
        assert unknown.json()["error"]["type"] == "invalid_request_error"
        missing = client.post("/v1/audio/transcriptions", files=audio, data={"model": "gone"})
        assert missing.status_code == 503 and "was not found" in missing.json()["error"]["message"]
        assert client.post("/v1/audio/transcriptions", files=audio, data={"model": "whisper-1"}).status_code == 200


def test_an_unserved_partial_model_stops_the_server_at_start() -> None:
    with pytest.raises(ValueError, match="REALTIME_PARTIAL_MODEL"):
        ModelRegistry(Settings(_env_file=None, realtime_partial_model="small"))


def test_a_model_that_can_never_fit_is_not_worth_waiting_for() -> None:
    assert ever_fits(500, 0, [_loaded("default", 900, pinned=True)])  # no budget
    loaded = [_loaded("default", 300, pinned=True), _loaded("a", 600, busy=True)]
    assert plan_load(500, 1000, loaded) is None and ever_fits(500, 1000, loaded)  # once `a` is idle: a job waits
    assert not ever_fits(800, 1000, loaded)  # the default alone leaves too little: a job fails at once


def test_the_health_view_says_idle_time_and_loads(tmp_path: Path) -> None:
    now = [100.0]
    registry = _registry(tmp_path, whisper_models=[f"small={tmp_path / 'small'}"])
    registry.clock = lambda: now[0]
    registry.extra["small"].last_used, registry.extra["small"].loads = 40.0, 2
    by_id = {m["id"]: m for m in registry.health()}
    assert by_id["base"]["default"] is True and by_id["base"]["loaded"] is True and by_id["base"]["idle_seconds"] is None
    assert by_id["small"] == {"id": "small", "default": False, "loaded": False, "loads": 2, "memory_mb": None,
                              "load_seconds": None, "freed_mb": None, "idle_seconds": 60.0}


# --- the original route, jobs and /health on the stand-in engine (no audio is looked at) ------------------------
class _Stand:
    """A second stand-in model: `load_engine` patched in the registry, so an extra model "loads" at once and says
    which one it is in its text."""

    TEXT = "The small stand-in heard this."

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        self.folder = _model_dir(tmp_path / "small", 1 << 20)
        monkeypatch.setattr("stt_engine.model_registry.load_engine", lambda settings, resolved: self.engine())

    def engine(self) -> Any:
        from tests.fake_engine import FakeEngine

        engine = FakeEngine(self.TEXT)
        engine.supported_languages = frozenset({"en"})  # English-only, as tiny.en
        return engine


def _settings(stand: _Stand) -> dict[str, object]:
    return {"whisper_models": [f"small={stand.folder}"], "verify_model": False}


def test_transcribe_takes_a_model_and_refuses_an_unknown_one_in_its_own_shape(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fake_engine import FAKE_TEXT
    from tests.support import SHARED_AUDIO, app_client

    stand = _Stand(monkeypatch, tmp_path)
    audio = {"file": ("jfk.flac", (SHARED_AUDIO / "en" / "jfk.flac").read_bytes())}
    with app_client(tmp_path, **_settings(stand)) as client:
        default = client.post("/transcribe", files=audio).json()
        assert default["success"] is True and default["model"] == "fake-whisper" and FAKE_TEXT in default["text"]
        small = client.post("/transcribe", files=audio, data={"model": "small"}).json()
        assert small["model"] == "small" and _Stand.TEXT in small["text"], small
        assert client.post("/transcribe", files=audio, data={"model": "whisper-1"}).json()["model"] == "fake-whisper"
        unknown = client.post("/transcribe", files=audio, data={"model": "no-such-model"})
        assert unknown.status_code == 404
        assert unknown.json()["success"] is False and unknown.json()["error"]["code"] == "model_not_found"
        assert "GET /v1/models" in unknown.json()["error"]["message"]


def _wait_job(client: Any, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60  # a wait for the stand-in's instant run, not a timing bound
    while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] in ("queued", "processing"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


def test_a_job_runs_on_the_model_it_names_and_an_unknown_id_stores_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fake_engine import FAKE_TEXT
    from tests.support import SHARED_AUDIO, app_client

    stand = _Stand(monkeypatch, tmp_path)
    audio = {"file": ("jfk.flac", (SHARED_AUDIO / "en" / "jfk.flac").read_bytes())}
    with app_client(tmp_path, **_settings(stand)) as client:
        unknown = client.post("/v1/jobs", files=audio, data={"model": "no-such-model"})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
        assert client.get("/v1/jobs").json()["data"] == []  # refused before anything was stored
        small = client.post("/v1/jobs", files=audio, data={"model": "small"})
        assert small.status_code == 202 and small.json()["model"] == "small"
        default = client.post("/v1/jobs", files=audio, data={"model": "whisper-1"})
        assert default.json()["model"] == "default"
        small_job, default_job = _wait_job(client, small.json()["id"]), _wait_job(client, default.json()["id"])
        assert small_job["status"] == "completed" and _Stand.TEXT in small_job["result"]["text"], small_job
        assert default_job["status"] == "completed" and FAKE_TEXT in default_job["result"]["text"], default_job
        health = {m["id"]: m for m in client.get("/health").json()["models"]}
        assert health["small"]["loaded"] is True and health["small"]["loads"] == 1
        assert health["fake-whisper"]["default"] is True
        # once loaded, its languages are known: a language it cannot write is refused at submission, as a request is
        korean = client.post("/v1/jobs", files=audio, data={"model": "small", "language": "ko"})
        assert korean.status_code == 400 and korean.json()["error"]["code"] == "invalid_language", korean.text


def test_a_job_whose_model_never_fits_the_budget_fails_with_the_reason(tmp_path: Path) -> None:
    from tests.support import SHARED_AUDIO, app_client

    _model_dir(tmp_path / "big", 900 << 20)
    audio = {"file": ("jfk.flac", (SHARED_AUDIO / "en" / "jfk.flac").read_bytes())}
    settings = {"whisper_models": [f"big={tmp_path / 'big'}"], "verify_model": False, "model_memory_mb": 500}
    with app_client(tmp_path, **settings) as client:
        job = _wait_job(client, client.post("/v1/jobs", files=audio, data={"model": "big"}).json()["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "model_memory_exceeded", job
    assert "can never fit" in job["error"]["message"]


def test_job_records_without_a_model_mean_the_default() -> None:
    from stt_engine.jobs.models import Job

    old = Job.from_dict({"id": "job_1", "status": "queued"})  # stored before jobs had a model
    assert old.model is None and old.public()["model"] == "default"
    assert Job.from_dict(Job(id="job_2", model="small").to_dict()).public()["model"] == "small"


def test_a_job_waits_while_its_model_does_not_fit_yet_and_runs_once_it_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget refuses the load while other models are busy (retryable): the job stays on its first attempt,
    waits and tries again, as it waits for a full queue, instead of failing."""
    from tests.support import SHARED_AUDIO, app_client

    stand = _Stand(monkeypatch, tmp_path)
    refused: list[str] = []
    load = ModelRegistry.scheduler_for

    async def busy_at_first(self: ModelRegistry, name: str | None) -> Any:
        if name == "small" and not refused:
            refused.append(name)
            raise ModelMemoryExceeded("Other models hold the budget.", retryable=True)
        return await load(self, name)

    monkeypatch.setattr(ModelRegistry, "scheduler_for", busy_at_first)
    monkeypatch.setattr("stt_engine.jobs.runner.MODEL_WAIT_S", 0.2)
    audio = {"file": ("jfk.flac", (SHARED_AUDIO / "en" / "jfk.flac").read_bytes())}
    with app_client(tmp_path, **_settings(stand)) as client:
        job = _wait_job(client, client.post("/v1/jobs", files=audio, data={"model": "small"}).json()["id"])
    assert refused == ["small"], refused
    assert job["status"] == "completed" and job["attempts"] == 1 and _Stand.TEXT in job["result"]["text"], job
