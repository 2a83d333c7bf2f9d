"""Jobs take the sync routes' call-centre options (channels, known_speaker_names[], redact, normalize): checked before
the 202, stored on the job, applied by the runner (real model, real clips, a real server process)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stt_engine.jobs.models import Job, transcript_from_dict, transcript_to_dict
from stt_engine.jobs.store import SQLiteJobStore
from stt_engine.types import ProcessedTranscript, SpeakerSegment
from tests.jobs_support import Proc, RedisServer, start_server, submit, wait_status
from tests.support import clip, error_rate, post_audio, shared_server

LEFT = "ko/ett_pma00031.wav"  # speaker pma (F), from 0 s
RIGHT = "ko/ett_kih00108.wav"  # speaker kih (M), from 3 s
NAMES = ["상담원", "고객"]
CER_BOUND = 0.3  # as for the files alone (tests/test_channels.py)
FINISHED = {"completed", "failed", "cancelled"}
SPOKEN = "십오킬로그램"  # what RIGHT says (its spoken-form reference); Whisper base writes "15kg"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    data = tmp_path_factory.mktemp("jobs-options-data")
    vocabulary = data / "vocabulary.txt"  # turns the written "15kg" back into words, for normalize=numbers to write
    vocabulary.write_text(f"{SPOKEN} | 15kg\n", encoding="utf-8")
    proc = start_server({"DATA_DIR": str(data), "VOCABULARY_FILE": str(vocabulary)})
    try:
        yield proc
    finally:
        proc.stop()


def _result(server: Proc, job_id: str, fmt: str) -> httpx.Response:
    r = httpx.get(f"{server.base}/v1/jobs/{job_id}/result", params={"response_format": fmt}, timeout=30)
    assert r.status_code == 200, r.text
    return r


def _job_count(server: Proc) -> int:
    return len(httpx.get(server.base + "/v1/jobs", params={"limit": 100}, timeout=10).json()["data"])


@pytest.fixture(scope="module")
def call(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 13 s stereo call built as tests/test_channels.py builds it: LEFT from 0 s, RIGHT from 3 s."""
    out = tmp_path_factory.mktemp("calls") / "call.wav"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-i", str(clip(LEFT).path), "-i", str(clip(RIGHT).path),
         "-filter_complex",
         "[0:a]aresample=16000,aformat=channel_layouts=mono,apad=whole_dur=13[l];"
         "[1:a]aresample=16000,aformat=channel_layouts=mono,adelay=3000:all=1[r];"
         "[l][r]amerge=inputs=2,aformat=channel_layouts=stereo[a]", "-map", "[a]", "-ar", "16000", str(out)],
        check=True,
    )
    return out


def test_stereo_call_job_has_speakers_in_every_format(server: Proc, call: Path) -> None:
    left, right = clip(LEFT), clip(RIGHT)
    r = submit(server.base, call, language="ko", channels="split", **{"known_speaker_names[]": NAMES})
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert accepted["channels"] == "split" and accepted["known_speaker_names"] == NAMES
    assert accepted["redact"] == "none" and accepted["normalize"] == "none"  # the settings' defaults, resolved
    done = wait_status(server.base, accepted["id"], FINISHED)
    assert done["status"] == "completed", done
    assert {s["speaker"] for s in done["result"]["segments"]} == set(NAMES)  # the job's own JSON (verbose_json)

    diarized = _result(server, accepted["id"], "diarized_json").json()
    segments = diarized["segments"]
    assert diarized["language"] == "ko" and all(s["type"] == "transcript.text.segment" for s in segments)
    assert [s["start"] for s in segments] == sorted(s["start"] for s in segments)  # merged in time order
    text = {name: " ".join(s["text"] for s in segments if s["speaker"] == name) for name in NAMES}
    assert error_rate(text["상담원"], left) <= CER_BOUND, text
    assert error_rate(text["고객"], right) <= CER_BOUND, text
    assert all(s["start"] >= 2.5 and s["channel"] == 1 for s in segments if s["speaker"] == "고객")

    srt = _result(server, accepted["id"], "srt").text
    cues = [b.split("\n")[2] for b in srt.strip().split("\n\n")]
    assert any(c.startswith("[상담원] ") for c in cues) and any(c.startswith("[고객] ") for c in cues), srt
    vtt = _result(server, accepted["id"], "vtt").text
    assert "<v 상담원>" in vtt and "<v 고객>" in vtt, vtt


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_redact_pii_job_is_masked(server: Proc, tmp_path: Path) -> None:
    audio = tmp_path / "phone.wav"  # as tests/test_pii.py: a phone number said clearly
    subprocess.run(["espeak-ng", "-v", "en", "-s", "140", "-w", str(audio),
                    "My phone number is 0 1 0, 1 2 3 4, 5 6 7 8."], check=True)
    r = submit(server.base, audio, language="en", redact="pii")
    assert r.status_code == 202 and r.json()["redact"] == "pii", r.text
    done = wait_status(server.base, r.json()["id"], FINISHED)
    assert done["status"] == "completed", done
    result = done["result"]
    assert "[PHONE]" in result["text"] and "5678" not in result["text"], result
    assert result["redactions"]["PHONE"] == 1 and "dropped_segments" in result
    text = _result(server, r.json()["id"], "text")
    assert "[PHONE]" in text.text and text.headers["x-redactions"].startswith("RRN=0,PHONE=1"), text.headers


@pytest.mark.parametrize(("field", "value"), [("redact", "everything"), ("normalize", "words"),
                                               ("channels", "left")])
def test_invalid_option_is_refused_before_any_job(server: Proc, field: str, value: str) -> None:
    c = clip("en/picovoice_test_en.wav")
    before = _job_count(server)
    r = submit(server.base, c.path, **{field: value})
    with c.path.open("rb") as handle:  # the sync route's answer to the same value
        sync = httpx.post(server.base + "/v1/audio/transcriptions", files={"file": (c.path.name, handle)},
                          data={field: value}, timeout=60)
    assert r.status_code == sync.status_code == 400, r.text
    assert r.json()["error"]["param"] == field and r.json()["error"]["code"] == sync.json()["error"]["code"]
    assert _job_count(server) == before


def test_split_is_admitted_as_channels_times_length(call: Path) -> None:
    """The sync route's intake counts a split call's every channel: 2 × 13 s can never fit a 20 s queue (each channel
    is queued on its own, all at once), so it is refused up front, while the same call mixed (13 s) is served.
    Admission only: on the stand-in engine."""
    base = shared_server({"MAX_QUEUE_SECONDS": "20"}, engine="fake")
    split = post_audio(base, "/v1/audio/transcriptions", call, language="ko", channels="split")
    assert split.status_code == 422 and split.json()["error"]["code"] == "audio_too_long", split.text
    mixed = post_audio(base, "/v1/audio/transcriptions", call, language="ko", channels="mix")
    assert mixed.status_code == 200, mixed.text


def test_normalize_numbers_job(server: Proc) -> None:
    """The server's vocabulary writes RIGHT's "15kg" as words; a job with normalize=numbers writes them as digits
    again, one without keeps them: the job's own choice is what the runner applies."""
    pytest.importorskip("nemo_text_processing", reason="the [itn] extra is not installed")
    c = clip(RIGHT)
    texts = {}
    for choice in ("numbers", "none"):
        r = submit(server.base, c.path, language="ko", normalize=choice)
        assert r.status_code == 202 and r.json()["normalize"] == choice, r.text
        done = wait_status(server.base, r.json()["id"], FINISHED, timeout=900)  # NeMo compiles its grammars once
        assert done["status"] == "completed", done
        texts[choice] = done["result"]["text"]
        assert error_rate(texts[choice], c) <= CER_BOUND, texts
    assert SPOKEN in texts["none"] and SPOKEN not in texts["numbers"] and "15" in texts["numbers"], texts


# --- the record: stored by both stores, old records still load ---------------------------------------------------
def _job(**fields: object) -> Job:
    return Job(id="job_000000000001aaaa", filename="call.wav", audio_path="x/upload", duration=13.0, **fields)


def test_options_survive_both_stores(tmp_path: Path) -> None:
    async def roundtrip(store: object) -> Job | None:
        job = _job(redact="pii", normalize="none", channels="split", known_speaker_names=NAMES)
        await store.insert(job)  # type: ignore[attr-defined]
        try:
            return await store.get(job.id)  # type: ignore[attr-defined]
        finally:
            await store.delete(job.id)  # type: ignore[attr-defined]
            await store.close()  # type: ignore[attr-defined]

    stores = [lambda: SQLiteJobStore(tmp_path / "jobs.sqlite3")]
    redis = None
    if shutil.which("redis-server") is not None:
        from stt_engine.jobs.redis_store import RedisJobStore

        redis = RedisServer(tmp_path / "redis")
        redis.start()
        stores.append(lambda: RedisJobStore(redis.url))
    try:
        for make in stores:
            loaded = asyncio.run(roundtrip(make()))
            assert loaded is not None
            assert (loaded.redact, loaded.normalize, loaded.channels, loaded.known_speaker_names) == (
                "pii", "none", "split", NAMES)
            assert loaded.public()["channels"] == "split"
    finally:
        if redis is not None:
            redis.stop()


def test_a_record_from_before_loads_and_runs_as_it_did() -> None:
    old = _job().to_dict()
    for name in ("redact", "normalize", "channels", "known_speaker_names"):
        del old[name]
    job = Job.from_dict(old)
    assert job.redact is None and job.normalize is None  # the runner applies the settings' defaults
    assert job.channels is None and job.public()["channels"] == "mix"  # and mixes, as before


def test_stored_transcript_keeps_speakers_and_the_report() -> None:
    from stt_engine.types import DroppedSegment, Segment, Transcript

    fields = dict(id=0, seek=0, start=0.0, end=1.0, text=" 네", tokens=[1], avg_logprob=-0.1, compression_ratio=1.0,
                  no_speech_prob=0.0, temperature=0.0, words=None)
    transcript = ProcessedTranscript(
        text="네", language="ko", language_probability=1.0, duration=1.0, duration_after_vad=1.0,
        segments=[SpeakerSegment(**fields, speaker="상담원", channel=0)],
        dropped_segments=[DroppedSegment(1, 1.0, 2.0, "감사합니다", ("edge",))], redactions={"PHONE": 0},
    )
    back = transcript_from_dict(transcript_to_dict(transcript))
    assert isinstance(back, ProcessedTranscript) and back.redactions == {"PHONE": 0}
    assert back.dropped_segments == transcript.dropped_segments
    assert back.segments[0].speaker == "상담원" and back.segments[0].channel == 0  # type: ignore[attr-defined]
    plain = Transcript(text="a", language="en", language_probability=1.0, duration=1.0, duration_after_vad=1.0,
                       segments=[Segment(**fields)])
    assert type(transcript_from_dict(transcript_to_dict(plain))) is Transcript
