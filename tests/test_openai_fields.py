"""The newer fields of OpenAI's audio API, checked against the SDK's own types on the real server and model:
`usage` in every JSON answer and stream/realtime event, `include[]=logprobs`, `chunking_strategy`, `keywords[]`, and
the realtime session's `noise_reduction`, `prompt`, `language` and logprobs include."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from typing import Any

import openai
import pytest
from faster_whisper.audio import decode_audio
from openai import OpenAI
from openai.types.audio import (
    Transcription,
    TranscriptionDiarized,
    TranscriptionTextDeltaEvent,
    TranscriptionTextDoneEvent,
    TranscriptionVerbose,
)
from openai.types.realtime import ConversationItemInputAudioTranscriptionCompletedEvent, SessionUpdatedEvent
from websockets.sync.client import connect

from stt_engine.api import schemas
from stt_engine.config import Settings
from stt_engine.engine.prepare import prepare
from stt_engine.errors import InvalidRequest
from stt_engine.openai_fields import (
    ChunkingChoice,
    RequestFields,
    VadParameters,
    merge_keywords,
    parse_chunking_strategy,
    parse_include,
)
from stt_engine.options import TranscribeOptions, build_options
from tests.realtime_support import pcm16
from tests.support import clip, error_rate

JFK = clip("en/jfk.flac")
EN = clip("en/librispeech_1089-134686-0000.flac")
BOUND = 0.15  # the bundled base model scores 0.0-0.05 on these clips


@pytest.fixture(scope="module")
def sdk(server: str) -> OpenAI:
    return OpenAI(base_url=server + "/v1", api_key="not-needed", max_retries=0, timeout=600)


def _text_of(logprobs: list[Any]) -> str:
    """The text the logprobs' tokens spell, from their bytes (a token may hold part of a character)."""
    return bytes(int(b) for entry in logprobs for b in entry.bytes).decode("utf-8").strip()


def _check_logprobs(logprobs: list[Any] | None, text: str) -> None:
    assert logprobs, "include[]=logprobs returned none"
    assert all(e.logprob is not None and e.logprob <= 0 and e.token is not None for e in logprobs)
    assert _text_of(logprobs) == text.strip()  # one entry per token of the text, in order
    mean = sum(e.logprob for e in logprobs) / len(logprobs)
    assert math.exp(mean) > 0.5, mean  # a clear clip: the model is confident on average


# --- usage ------------------------------------------------------------------------------------------------------
def test_usage_in_json_verbose_and_diarized(sdk: OpenAI) -> None:
    for fmt, model, ours in (("json", Transcription, schemas.TranscriptionJson),
                             ("verbose_json", TranscriptionVerbose, schemas.TranscriptionVerbose),
                             ("diarized_json", TranscriptionDiarized, schemas.TranscriptionDiarized)):
        with JFK.path.open("rb") as handle:
            raw = sdk.audio.transcriptions.with_raw_response.create(
                model="whisper-1", file=handle, response_format=fmt)
        ours.model_validate(json.loads(raw.text))  # our OpenAPI schema (extra fields forbidden) describes it too
        result = model.model_validate(json.loads(raw.text))
        assert result.usage is not None and result.usage.type == "duration", fmt
        assert result.usage.seconds == pytest.approx(JFK.duration, abs=0.1), fmt
        assert error_rate(result.text, JFK) < BOUND, (fmt, result.text)


# --- logprobs ---------------------------------------------------------------------------------------------------
def test_logprobs_in_json_do_not_change_the_text(sdk: OpenAI) -> None:
    c = clip("ko/ett_kih00108.wav")  # Korean: syllables span tokens, so bytes matter
    with c.path.open("rb") as handle:
        plain = sdk.audio.transcriptions.create(model="whisper-1", file=handle, language="ko")
    with c.path.open("rb") as handle:
        scored = sdk.audio.transcriptions.create(model="whisper-1", file=handle, language="ko", include=["logprobs"])
    assert isinstance(scored, Transcription)
    schemas.TranscriptionJson.model_validate(scored.model_dump(exclude_none=True))
    assert plain.logprobs is None  # a request that did not ask pays nothing and gets nothing
    assert scored.text == plain.text
    assert error_rate(scored.text, c) < 0.2, scored.text
    _check_logprobs(scored.logprobs, scored.text)
    assert scored.usage is not None and scored.usage.seconds == pytest.approx(c.duration, abs=0.1)


def test_stream_deltas_and_done_carry_logprobs_and_usage(sdk: OpenAI) -> None:
    with EN.path.open("rb") as handle:
        stream = sdk.audio.transcriptions.create(
            model="whisper-1", file=handle, language="en", stream=True, include=["logprobs"])
        events = list(stream)
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    done = [e for e in events if e.type == "transcript.text.done"]
    assert deltas and len(done) == 1, events
    for event in deltas:
        assert isinstance(event, TranscriptionTextDeltaEvent) and event.logprobs, event
    final = done[0]
    assert isinstance(final, TranscriptionTextDoneEvent)
    assert error_rate(final.text, EN) < BOUND, final.text
    _check_logprobs(final.logprobs, final.text)
    assert [e.token for d in deltas for e in d.logprobs or []] == [e.token for e in final.logprobs or []]
    assert final.usage is not None and final.usage.type == "duration"
    assert final.usage.seconds == pytest.approx(EN.duration, abs=0.1)


def test_stream_without_logprobs_still_reports_usage(sdk: OpenAI) -> None:
    with JFK.path.open("rb") as handle:
        events = list(sdk.audio.transcriptions.create(model="whisper-1", file=handle, stream=True))
    done = events[-1]
    assert isinstance(done, TranscriptionTextDoneEvent) and done.logprobs is None
    assert all(getattr(e, "logprobs", None) is None for e in events)
    assert done.usage is not None and done.usage.seconds == pytest.approx(JFK.duration, abs=0.1)


# --- chunking_strategy and keywords --------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["auto", {"type": "server_vad", "threshold": 0.4, "prefix_padding_ms": 300,
                                                "silence_duration_ms": 500}])
def test_chunking_strategy_from_the_sdk(sdk: OpenAI, strategy: Any) -> None:
    with JFK.path.open("rb") as handle:
        result = sdk.audio.transcriptions.create(
            model="whisper-1", file=handle, chunking_strategy=strategy, response_format="verbose_json")
    assert isinstance(result, TranscriptionVerbose)
    assert error_rate(result.text, JFK) < BOUND, result.text


def test_chunking_strategy_as_one_json_field(server: str) -> None:
    import httpx

    value = json.dumps({"type": "server_vad", "silence_duration_ms": 800})
    with JFK.path.open("rb") as handle:
        response = httpx.post(server + "/v1/audio/transcriptions", files={"file": ("jfk.flac", handle)},
                              data={"chunking_strategy": value}, timeout=600)
    assert response.status_code == 200, response.text
    assert error_rate(Transcription.model_validate(response.json()).text, JFK) < BOUND


def test_server_vad_values_reach_the_vad() -> None:
    """A shorter silence_duration_ms cuts the same speech at more pauses: the request's values are the VAD's."""
    samples = decode_audio(str(EN.path))
    settings = Settings()
    languages = frozenset({"en"})

    def speech(vad: VadParameters | None) -> list[dict]:
        options = build_options(settings, languages, language="en", vad=vad)
        return prepare(samples, len(samples) / 16000, options, 1).speech

    default = speech(None)
    short = speech(parse_chunking_strategy({"type": "server_vad", "silence_duration_ms": 100}).vad)
    strict = speech(parse_chunking_strategy('{"type": "server_vad", "threshold": 0.999}').vad)
    assert len(short) > len(default), (short, default)
    kept = sum(c["end"] - c["start"] for c in strict)
    assert kept < sum(c["end"] - c["start"] for c in default)


def test_keywords_from_the_sdk_are_accepted(sdk: OpenAI) -> None:
    with JFK.path.open("rb") as handle:
        result = sdk.audio.transcriptions.create(model="whisper-1", file=handle, keywords=["Americans", "country"])
    assert error_rate(result.text, JFK) < BOUND, result.text


def test_field_parsing() -> None:
    assert merge_keywords("Kubernetes, kubectl", ["kubectl", "Helm", "etcd, Helm"]) == "Kubernetes, kubectl, Helm, etcd"
    assert merge_keywords(None, []) is None and merge_keywords(" ", ["a"]) == "a"
    assert parse_include(["logprobs"]) and not parse_include(None)
    assert parse_chunking_strategy(None) == ChunkingChoice()
    assert parse_chunking_strategy("auto") == ChunkingChoice(vad_filter=True)
    assert parse_chunking_strategy({"type": "server_vad", "threshold": "0.3", "prefix_padding_ms": "200",
                                    "silence_duration_ms": "700"}).vad == VadParameters(0.3, 200, 700)
    for bad in ("manual", '{"type": "semantic"}', {"type": "server_vad", "threshold": 2},
                {"type": "server_vad", "eagerness": "low"}, "[1]", "[" * 100000, {"type": "server_vad", "threshold": [1]}):
        with pytest.raises(InvalidRequest) as info:
            parse_chunking_strategy(bad)
        assert info.value.code == "invalid_chunking_strategy"
    stored = build_options(Settings(), {"en"}, language="en", vad=VadParameters(0.3, 200, 700), logprobs=True)
    assert TranscribeOptions(**dataclasses.asdict(stored)) == stored  # survives a job's plain-data round trip
    hash(stored)
    with pytest.raises(InvalidRequest):
        parse_include(["segments"])
    with pytest.raises(InvalidRequest):
        RequestFields(logprobs=True).check(json_format=True, redact=True, split_channels=False)


@pytest.mark.parametrize(("fields", "code"), [
    ({"chunking_strategy": "sometimes"}, "invalid_chunking_strategy"),
    ({"include": ["tokens"]}, "invalid_include"),
    ({"include": ["logprobs"], "response_format": "verbose_json"}, "invalid_include"),
])
def test_bad_fields_get_a_clear_400(sdk: OpenAI, fields: dict[str, Any], code: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.audio.transcriptions.create(model="whisper-1", file=("a.wav", b"RIFF"), **fields)
    assert info.value.code == code, info.value


# --- realtime ---------------------------------------------------------------------------------------------------
def _ws(base: str) -> str:
    return base.replace("http://", "ws://") + "/v1/realtime?intent=transcription"


def _until(ws: Any, kind: str) -> list[dict[str, Any]]:
    seen = []
    while True:
        seen.append(json.loads(ws.recv(timeout=300)))
        if seen[-1]["type"] in (kind, "error"):
            return seen


def test_realtime_noise_reduction_prompt_language_and_logprobs(server: str) -> None:
    audio = pcm16(EN.path)
    with connect(_ws(server)) as ws:
        _until(ws, "session.created")
        ws.send(json.dumps({"type": "session.update", "session": {
            "type": "transcription", "include": ["item.input_audio_transcription.logprobs"],
            "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 24000}, "noise_reduction": {"type": "near_field"},
                "transcription": {"model": "whisper-1", "language": "en", "prompt": "A man speaks about stew.",
                                  "keywords": ["turnips", "mutton"]},
                "turn_detection": None}}}}))
        updated = _until(ws, "session.updated")[-1]
        assert updated["type"] == "session.updated", updated
        session = SessionUpdatedEvent.model_validate(updated).session
        audio_input = session.audio.input  # type: ignore[union-attr]
        assert audio_input.noise_reduction.type == "near_field"
        assert audio_input.transcription.prompt == "A man speaks about stew."
        assert audio_input.transcription.language == "en"
        assert audio_input.transcription.keywords == ["turnips", "mutton"]
        assert session.include == ["item.input_audio_transcription.logprobs"]

        ws.send(json.dumps({"type": "session.update", "session": {
            "type": "transcription", "audio": {"input": {"noise_reduction": {"type": "studio"}}}}}))
        refused = _until(ws, "session.updated")[-1]
        assert refused["type"] == "error" and "noise_reduction" in refused["error"]["param"], refused

        for offset in range(0, len(audio), 32000):
            ws.send(json.dumps({"type": "input_audio_buffer.append",
                                "audio": base64.b64encode(audio[offset: offset + 32000]).decode()}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        done = _until(ws, "conversation.item.input_audio_transcription.completed")[-1]
    completed = ConversationItemInputAudioTranscriptionCompletedEvent.model_validate(done)
    assert error_rate(completed.transcript, EN) < BOUND, completed.transcript
    assert completed.usage.type == "duration"
    assert completed.usage.seconds == pytest.approx(EN.duration, abs=0.1)
    assert completed.logprobs and all(e.logprob <= 0 for e in completed.logprobs)
    spelled = bytes(b for e in completed.logprobs for b in e.bytes).decode("utf-8")
    assert error_rate(spelled, EN) < BOUND


def test_realtime_beta_noise_reduction_is_accepted(server: str) -> None:
    with connect(_ws(server)) as ws:
        _until(ws, "session.created")
        ws.send(json.dumps({"type": "transcription_session.update", "session": {
            "input_audio_format": "pcm16", "input_audio_noise_reduction": {"type": "far_field", "strength": 0.5},
            "input_audio_transcription": {"model": "whisper-1", "language": "ko", "prompt": "상담"}}}))
        updated = _until(ws, "transcription_session.updated")[-1]
    assert updated["type"] == "transcription_session.updated", updated
    assert updated["session"]["input_audio_noise_reduction"] == {"type": "far_field", "strength": 0.5}
    assert updated["session"]["input_audio_transcription"]["prompt"] == "상담"


# --- the engine: logprobs of windows decoded in one batch ----------------------------------------------------------
def test_batched_windows_get_the_logprobs_they_get_alone() -> None:
    """Windows of two requests in one `generate` batch are scored from their own slice of the batch's encoder
    output: the same tokens and (within float noise) the same log-probabilities as each decoded alone."""
    from stt_engine.audio import decode
    from stt_engine.engine import Engine
    from stt_engine.models import resolve_model
    settings = Settings(_env_file=None, whisper_device="cpu", whisper_num_workers=1, whisper_cpu_threads=2)
    engine = Engine(resolve_model(settings), settings)
    options = TranscribeOptions(language="en", logprobs=True)

    def entries(batched: bool) -> list[list[dict]]:
        jobs = [engine.prepare(decode(c.path), options) for c in (JFK, EN)]
        while not all(job.finished for job in jobs):
            ready = [next(s for s in job.streams if not s.done) for job in jobs if not job.finished]
            if batched:
                engine.decode(ready)
            else:
                for stream in ready:
                    engine.decode([stream])
        return [[e for s in engine.transcript(job).segments for e in s.logprobs] for job in jobs]

    alone, together = entries(False), entries(True)
    for one, both in zip(alone, together):
        assert [e["token"] for e in one] == [e["token"] for e in both] and one
        assert max(abs(a["logprob"] - b["logprob"]) for a, b in zip(one, both)) < 0.05
