"""channels=split: a stereo call, one speaker per channel, each transcribed through the scheduler and labelled."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest

from stt_engine.api.schemas import TranscribeResponse, TranscriptionDiarized, TranscriptionVerbose
from stt_engine.channels import plan, same_signal, speaker_names
from tests.support import clip, error_rate, post_audio

LEFT = "ko/ett_pma00031.wav"  # speaker pma (F), from 0 s
RIGHT = "ko/ett_kih00108.wav"  # speaker kih (M), from 3 s
NAMES = {"known_speaker_names[]": ["상담원", "고객"]}
CER_BOUND = 0.3  # as for the files alone


def test_plan_policy() -> None:
    rng = np.random.default_rng(0)
    speech = rng.normal(0, 0.1, 16000).astype(np.float32)
    other = rng.normal(0, 0.1, 16000).astype(np.float32)
    silent = np.zeros(16000, dtype=np.float32)
    assert same_signal(speech, speech * 0.5) and not same_signal(speech, other)
    p = plan([speech, speech.copy()], None)
    assert p.copies and [c for c, _ in p.tracks] == [0]
    p = plan([speech, silent], ["agent"])
    assert p.silent == [1] and [c for c, _ in p.tracks] == [0] and p.speakers == ["agent", "B"]
    assert speaker_names(["상담원"], 3) == ["상담원", "B", "C"]


@pytest.fixture(scope="module")
def call(tmp_path_factory: pytest.TempPathFactory) -> Path:
    left, right = clip(LEFT), clip(RIGHT)
    out = tmp_path_factory.mktemp("calls") / "call.wav"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-i", str(left.path), "-i", str(right.path), "-filter_complex",
         "[0:a]aresample=16000,aformat=channel_layouts=mono,apad=whole_dur=13[l];"
         "[1:a]aresample=16000,aformat=channel_layouts=mono,adelay=3000:all=1[r];"
         "[l][r]amerge=inputs=2,aformat=channel_layouts=stereo[a]", "-map", "[a]", "-ar", "16000", str(out)],
        check=True,
    )
    return out


def _by_speaker(segments: list[dict]) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    for s in segments:
        out.setdefault(s["speaker"], []).append(s["text"])
    return {k: " ".join(v) for k, v in out.items()}


def test_stereo_call_diarized_json(server: str, call: Path) -> None:
    r = post_audio(server, "/v1/audio/transcriptions", call, language="ko", response_format="diarized_json",
                   channels="split", **NAMES)
    assert r.status_code == 200, r.text
    body = r.json()
    TranscriptionDiarized.model_validate(body)
    segments = body["segments"]
    assert all(s["type"] == "transcript.text.segment" and s["text"] for s in segments)
    assert [s["start"] for s in segments] == sorted(s["start"] for s in segments)  # merged in time order
    text = _by_speaker(segments)
    assert set(text) == {"상담원", "고객"}
    assert error_rate(text["상담원"], clip(LEFT)) <= CER_BOUND, text
    assert error_rate(text["고객"], clip(RIGHT)) <= CER_BOUND, text
    assert all(s["start"] >= 2.5 for s in segments if s["speaker"] == "고객")
    assert {s["channel"] for s in segments if s["speaker"] == "상담원"} == {0}


def test_stereo_call_srt_vtt_text_and_original_route(server: str, call: Path) -> None:
    route = "/v1/audio/transcriptions"
    srt = post_audio(server, route, call, language="ko", response_format="srt", channels="split", **NAMES).text
    cues = [b.split("\n")[2] for b in srt.strip().split("\n\n")]
    assert any(c.startswith("[상담원] ") for c in cues) and any(c.startswith("[고객] ") for c in cues), srt
    vtt = post_audio(server, route, call, language="ko", response_format="vtt", channels="split").text
    assert "<v A>" in vtt and "<v B>" in vtt, vtt  # no names given: A, B
    body = post_audio(server, "/transcribe", call, language="ko", channels="split", **NAMES).json()
    TranscribeResponse.model_validate(body)
    assert body["success"] and {s["speaker"] for s in body["segments"]} == {"상담원", "고객"}
    agent = " ".join(s["text"] for s in body["segments"] if s["speaker"] == "상담원")
    assert error_rate(agent, clip(LEFT)) <= CER_BOUND


def test_mono_copied_to_stereo_is_transcribed_once(server: str, tmp_path: Path) -> None:
    source = clip("ko/ett_pfi00017.wav")
    copy = tmp_path / "dual_mono.wav"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(source.path), "-ac", "2", "-ar", "16000",
                    str(copy)], check=True)
    before = httpx.get(server + "/health").json()["queue"]["completed"]
    body = post_audio(server, "/v1/audio/transcriptions", copy, language="ko", response_format="verbose_json",
                      channels="split").json()
    after = httpx.get(server + "/health").json()["queue"]["completed"]
    TranscriptionVerbose.model_validate(body)
    assert after - before == 1, (before, after)  # one scheduler request, not two
    assert {s["speaker"] for s in body["segments"]} == {"A"}
    assert error_rate(body["text"], source) <= 0.2


def test_silent_channel_is_not_sent(server: str, tmp_path: Path) -> None:
    source = clip("ko/ett_pfi00017.wav")
    one_sided = tmp_path / "one_sided.wav"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-i", str(source.path), "-filter_complex",
         "[0:a]aresample=16000,aformat=channel_layouts=mono,pan=stereo|c0=c0|c1=0*c0[a]", "-map", "[a]",
         str(one_sided)], check=True,
    )
    before = httpx.get(server + "/health").json()["queue"]["completed"]
    body = post_audio(server, "/transcribe", one_sided, language="ko", channels="split", **NAMES).json()
    after = httpx.get(server + "/health").json()["queue"]["completed"]
    assert after - before == 1, (before, after)  # the muted customer line never reached the scheduler
    assert {s["speaker"] for s in body["segments"]} == {"상담원"}
    assert error_rate(body["text"], source) <= 0.2


def test_stereo_call_streams_diarized_segments(server: str, call: Path) -> None:
    """stream=true with channels=split: OpenAI's diarized stream. Each segment is announced as a
    `transcript.text.segment` event with its speaker once every channel has passed it; the deltas add up to the
    done text, and the done event carries the same segments."""
    r = post_audio(server, "/v1/audio/transcriptions", call, language="ko", response_format="diarized_json",
                   channels="split", stream="true", **NAMES)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    done = events[-1]
    assert done["type"] == "transcript.text.done", events
    segments = [e for e in events if e["type"] == "transcript.text.segment"]
    assert segments and all({"id", "start", "end", "speaker", "text"} <= set(s) for s in segments)
    assert [s["start"] for s in segments] == sorted(s["start"] for s in segments)  # merged in time order
    assert [(s["id"], s["text"]) for s in segments] == [(s["id"], s["text"]) for s in done["segments"]]
    assert "".join(e["delta"] for e in events if e["type"] == "transcript.text.delta") == done["text"]
    text = _by_speaker(segments)
    assert set(text) == {"상담원", "고객"}
    assert error_rate(text["상담원"], clip(LEFT)) <= CER_BOUND, text
    assert error_rate(text["고객"], clip(RIGHT)) <= CER_BOUND, text
    assert all(s["start"] >= 2.5 for s in segments if s["speaker"] == "고객")
