"""Who spoke, through the API: diarized_json on mono audio, known speakers by reference, srt/vtt/text, streams,
`/v1/audio/diarization`, `/transcribe diarize=true`, jobs, and the official SDK's types (real model, real speech).

One server for the module (its own DATA_DIR, for the job). Mixes are built here from clips of different speakers,
so the truth is known by construction; references are cut from other recordings of the same speakers.
"""

from __future__ import annotations

import base64
import io
import json
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from stt_engine.api.schemas import DiarizationResponse, TranscribeResponse, TranscriptionDiarized
from stt_engine.audio import SAMPLE_RATE, decode
from stt_engine.diarize import SpeakerTurn
from stt_engine.speakers import SpeakerAssigner, parse_request
from stt_engine.types import Segment, Transcript, Word
from tests.support import clip, post_audio, running_server

THREE = "en/picovoice_diarization_test_3spk.wav"  # turns: "and so it begins" | "...crocodile..." | "ladies and..."
CALL = "en/stereo_diarization_2ch.wav"  # one speaker per channel, talking at once
LMY, KIH, PMA = "ko/ett_lmy02132.wav", "ko/ett_kih00108.wav", "ko/ett_pma00031.wav"  # three Korean speakers
LMY_OTHER = "ko/ett_longform_lmy_concat.wav"  # 27 other utterances of lmy
GAP = np.zeros(int(0.7 * SAMPLE_RATE), dtype=np.float32)


# --- pure policy: turns onto segments ---------------------------------------------------------------------------
def _segment(words: list[tuple[float, float, str]]) -> Segment:
    w = [Word(s, e, t, 0.9) for s, e, t in words]
    return Segment(id=0, seek=0, start=w[0].start, end=w[-1].end, text="".join(x.word for x in w).strip(),
                   tokens=[1], avg_logprob=-0.1, compression_ratio=1.0, no_speech_prob=0.0, words=w,
                   temperature=0.0)


def test_a_segment_across_a_speaker_change_is_split_at_the_nearest_word() -> None:
    seg = _segment([(0.0, 0.4, " So"), (0.4, 0.9, " it"), (0.9, 1.3, " begins."), (1.5, 1.9, " This"),
                    (1.9, 2.3, " is"), (2.3, 2.8, " what.")])
    turns = [SpeakerTurn(0.0, 1.35, "B"), SpeakerTurn(1.4, 3.0, "Ann")]
    t = Transcript(text=seg.text, language="en", language_probability=1.0, duration=3.0, duration_after_vad=3.0,
                   segments=[seg])
    out = SpeakerAssigner(turns, ["Ann"]).transcript(t)
    assert [(s.speaker, s.text) for s in out.segments] == [("A", "So it begins."), ("Ann", "This is what.")]
    assert out.text == t.text and [s.id for s in out.segments] == [0, 1] and out.segments[0].words is None
    # one word inside the other speaker's turn is a boundary error, not a turn
    lone = SpeakerAssigner([SpeakerTurn(0.0, 0.4, "A"), SpeakerTurn(0.4, 0.95, "B"), SpeakerTurn(0.95, 3, "A")])
    assert [s.speaker for s in lone.segments([seg])] == ["A"]


def test_references_pair_with_names() -> None:
    with pytest.raises(Exception, match="pairs"):
        parse_request(["Ann"], [], None, None)
    with pytest.raises(Exception, match="max_speakers"):
        parse_request(None, None, 3, 2)


# --- audio helpers ----------------------------------------------------------------------------------------------
def _samples(file: str) -> np.ndarray:
    return decode(clip(file).path).samples


def _wav(samples: np.ndarray) -> bytes:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm)
    return out.getvalue()


def _data_url(samples: np.ndarray) -> str:
    return "data:audio/wav;base64," + base64.b64encode(_wav(samples)).decode()


def _cut(samples: np.ndarray, start: float, end: float) -> np.ndarray:
    return samples[int(start * SAMPLE_RATE):int(end * SAMPLE_RATE)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server({"DATA_DIR": str(tmp_path_factory.mktemp("diarize-data"))}) as base:
        yield base


@pytest.fixture(scope="module")
def mono_call(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stereo call mixed down to mono (two speakers, overlapping)."""
    path = tmp_path_factory.mktemp("mix") / "call_mono.wav"
    path.write_bytes(_wav(_samples(CALL)))
    return path


@pytest.fixture(scope="module")
def korean_mix(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[float, float, str]]]:
    """lmy, then kih (from 3.5 s of his clip: its start is his reference), then pma: truth by construction."""
    pieces, truth, t = [], [], 0.0
    for name, samples in (("lmy", _samples(LMY)), ("kih", _cut(_samples(KIH), 3.5, 99)), ("pma", _samples(PMA))):
        pieces += [samples, GAP]
        truth.append((t, t + len(samples) / SAMPLE_RATE, name))
        t += (len(samples) + len(GAP)) / SAMPLE_RATE
    path = tmp_path_factory.mktemp("mix") / "ko_three.wav"
    path.write_bytes(_wav(np.concatenate(pieces)))
    return path, truth


def _post(server: str, path: Path, route: str = "/v1/audio/transcriptions", **fields) -> httpx.Response:
    return post_audio(server, route, path, **fields)


def _words_of(text: str) -> list[str]:
    return [w.strip(".,!?").lower() for w in text.split()]


# --- diarized_json ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def three(server: str) -> dict:
    r = _post(server, clip(THREE).path, language="en", response_format="diarized_json")
    assert r.status_code == 200, r.text
    return r.json()


def test_three_speakers_found_with_the_same_text(server: str, three: dict) -> None:
    plain = _post(server, clip(THREE).path, language="en", response_format="json").json()
    assert three["text"] == plain["text"]
    segments = three["segments"]
    assert all(s["type"] == "transcript.text.segment" and s["id"].startswith("seg_") for s in segments)
    speakers = list(dict.fromkeys(s["speaker"] for s in segments))
    assert speakers == ["A", "B", "C"], segments
    TranscriptionDiarized.model_validate(three)  # the /docs schema describes the wire  # three, lettered in order of first appearance
    # each true turn under its own label: the first word of each
    label = {w: s["speaker"] for s in segments for w in _words_of(s["text"])}
    assert len({label.get("begins"), label.get("crocodile"), label.get("gentlemen")}) == 3, segments


def test_stereo_call_mixed_to_mono_has_two_speakers(server: str, mono_call: Path) -> None:
    body = _post(server, mono_call, language="en", response_format="diarized_json").json()
    assert len({s["speaker"] for s in body["segments"]}) == 2, body
    # channels=split on the stereo file: the channels are the speakers (channels win over diarization)
    split = _post(server, clip(CALL).path, language="en", response_format="diarized_json", channels="split").json()
    assert {s.get("channel") for s in split["segments"]} <= {0, 1} and all("channel" in s for s in split["segments"])


def test_known_speakers_named_and_an_unknown_third_lettered(server: str, korean_mix: tuple) -> None:
    path, truth = korean_mix
    lmy_ref = _cut(_samples(LMY_OTHER), 20.0, 27.0)  # other sentences of lmy
    kih_ref = _cut(_samples(KIH), 0.0, 3.5)  # the part of kih's clip that is not in the mix
    fields = {"known_speaker_names[]": ["lmy", "kih"], "known_speaker_references[]": [_data_url(lmy_ref),
                                                                                       _data_url(kih_ref)]}
    r = _post(server, path, language="ko", response_format="diarized_json", **fields)
    assert r.status_code == 200, r.text
    segments = r.json()["segments"]
    plain = _post(server, path, language="ko", response_format="json").json()
    assert r.json()["text"] == plain["text"]

    def truth_at(s: dict) -> str:
        middle = (s["start"] + s["end"]) / 2
        return min(truth, key=lambda t: 0 if t[0] <= middle <= t[1] else min(abs(middle - t[0]), abs(middle - t[1])))[2]

    expected = {"lmy": "lmy", "kih": "kih", "pma": "A"}
    right = sum(s["end"] - s["start"] for s in segments if s["speaker"] == expected[truth_at(s)])
    total = sum(s["end"] - s["start"] for s in segments)
    assert right >= 0.9 * total, segments
    assert [s for s in dict.fromkeys(s["speaker"] for s in segments)] == ["lmy", "kih", "A"], segments


def test_bad_references_are_400s_naming_them(server: str) -> None:
    speech = _samples(LMY)
    cases = {
        "short": _data_url(speech[: SAMPLE_RATE]),  # 1 s
        "long": _data_url(np.concatenate([speech, speech])),  # 22 s
        "garbage": "data:audio/wav;base64," + base64.b64encode(b"not audio at all").decode(),
        "plain": "https://example.com/voice.wav",
    }
    for name, url in cases.items():
        r = _post(server, clip(THREE).path, response_format="diarized_json",
                  **{"known_speaker_names[]": [name], "known_speaker_references[]": [url]})
        assert r.status_code == 400, (name, r.text)
        assert name in r.json()["error"]["message"], r.text
    r = _post(server, clip(THREE).path, response_format="diarized_json", **{"known_speaker_names[]": ["solo"]})
    assert r.status_code == 400 and "pairs" in r.text


# --- text formats -------------------------------------------------------------------------------------------
def test_srt_vtt_and_text_show_the_speakers(server: str, three: dict) -> None:
    path = clip(THREE).path
    srt = _post(server, path, language="en", response_format="srt", diarize="true").text
    cues = [b.split("\n")[2] for b in srt.strip().split("\n\n")]
    assert {c.split("]")[0] for c in cues} == {"[A", "[B", "[C"}, srt
    vtt = _post(server, path, language="en", response_format="vtt", diarize="true").text
    assert vtt.startswith("WEBVTT") and all(f"<v {x}>" in vtt for x in "ABC"), vtt
    text = _post(server, path, language="en", response_format="text", diarize="true").text
    lines = text.strip().split("\n")
    assert [line.split(":")[0] for line in lines][:3] == ["A", "B", "C"], text
    assert " ".join(line.split(": ", 1)[1] for line in lines) == three["text"]


def test_original_route_gains_speakers(server: str) -> None:
    body = _post(server, clip(THREE).path, route="/transcribe", language="en", diarize="true").json()
    assert body["success"] and body["speakers"] == ["A", "B", "C"], body
    TranscribeResponse.model_validate(body)
    assert all(s["speaker"] in body["speakers"] for s in body["segments"])
    assert "words" not in body["segments"][0]  # word timings were for the split only


# --- streams ----------------------------------------------------------------------------------------------------
def test_stream_sends_segment_events_then_done(server: str, three: dict) -> None:
    r = _post(server, clip(THREE).path, language="en", response_format="diarized_json", stream="true")
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "transcript.text.done" and "error" not in kinds, events
    segments = [e for e in events if e["type"] == "transcript.text.segment"]
    assert [(s["speaker"], s["text"]) for s in segments] == [(s["speaker"], s["text"]) for s in three["segments"]]
    assert events[-1]["text"] == three["text"] and events[-1]["segments"] == segments

    from openai.types.audio import TranscriptionDiarized, TranscriptionTextSegmentEvent

    parsed = [TranscriptionTextSegmentEvent.model_validate(s) for s in segments]
    assert {p.speaker for p in parsed} == {"A", "B", "C"}
    assert TranscriptionDiarized.model_validate(three).segments[0].speaker == "A"


def test_openai_sdk_reads_diarized_json_and_segment_events(server: str, three: dict) -> None:
    from openai import OpenAI
    from openai.types.audio import TranscriptionDiarized, TranscriptionTextSegmentEvent

    sdk = OpenAI(base_url=server + "/v1", api_key="not-needed", max_retries=0)
    with clip(THREE).path.open("rb") as handle:
        result = sdk.audio.transcriptions.create(model="whisper-1", file=handle, response_format="diarized_json",
                                                 language="en")
    assert isinstance(result, TranscriptionDiarized) and result.text == three["text"]
    assert [s.speaker for s in result.segments] == [s["speaker"] for s in three["segments"]]
    with clip(THREE).path.open("rb") as handle:
        stream = sdk.audio.transcriptions.create(model="whisper-1", file=handle, response_format="diarized_json",
                                                 language="en", stream=True)
        events = list(stream)
    segments = [e for e in events if isinstance(e, TranscriptionTextSegmentEvent)]
    assert [s.speaker for s in segments] == [s["speaker"] for s in three["segments"]]


# --- speaker turns only, and jobs ---------------------------------------------------------------------------
def test_diarization_route_gives_turns_only(server: str) -> None:
    r = _post(server, clip(THREE).path, route="/v1/audio/diarization")
    assert r.status_code == 200, r.text
    body = r.json()
    DiarizationResponse.model_validate(body)
    assert body["speakers"] == ["A", "B", "C"] and "text" not in body
    turns = body["segments"]
    assert all(a["end"] <= b["start"] + 1e-6 for a, b in zip(turns, turns[1:]))
    assert turns[-1]["end"] <= body["duration"] + 0.01
    hinted = _post(server, clip(THREE).path, route="/v1/audio/diarization", max_speakers="2").json()
    assert len(hinted["speakers"]) <= 2


def test_job_with_diarization(server: str, three: dict) -> None:
    r = _post(server, clip(THREE).path, route="/v1/jobs", language="en", diarize="true")
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    deadline = time.monotonic() + 300
    while (job := httpx.get(f"{server}/v1/jobs/{job_id}").json())["status"] in ("queued", "processing"):
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    assert job["status"] == "completed", job
    body = httpx.get(f"{server}/v1/jobs/{job_id}/result", params={"response_format": "diarized_json"}).json()
    assert body["text"] == three["text"]
    assert [(s["speaker"], s["text"]) for s in body["segments"]] == [(s["speaker"], s["text"])
                                                                     for s in three["segments"]]
