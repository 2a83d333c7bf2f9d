"""`stream=true`: Server-Sent Events in OpenAI's shape, read with the official SDK, on real speech."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import OpenAI

from stt_engine.config import Settings
from stt_engine.textproc import finish_transcript, text_options
from stt_engine.textproc.streaming import TextStream
from stt_engine.types import Segment, Transcript, join_segments
from tests.support import SHARED_AUDIO, clip, error_rate, running_server

LONG_EN = "en/en_longform_librispeech_librivox_concat.wav"


def _sdk(base: str) -> OpenAI:
    return OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=600)


def test_sdk_stream_gives_early_deltas_that_add_up(server: str) -> None:
    if not (SHARED_AUDIO / LONG_EN).is_file():
        pytest.skip(f"{LONG_EN} is only in ../shared/audio")
    c = clip(LONG_EN)
    started = time.perf_counter()
    first_delta: float | None = None
    done_at: float | None = None
    deltas: list[str] = []
    done = None
    with c.path.open("rb") as handle:
        stream = _sdk(server).audio.transcriptions.create(
            model="whisper-1", file=handle, language="en", stream=True
        )
        for event in stream:
            if event.type == "transcript.text.delta":
                first_delta = first_delta or time.perf_counter() - started
                deltas.append(event.delta)
            elif event.type == "transcript.text.done":
                done, done_at = event.text, time.perf_counter() - started
    assert done is not None and len(deltas) >= 3, deltas
    # that the streamed text is the file's, word for word, test_accuracy.py checks on every long clip
    assert "".join(deltas) == done
    assert error_rate(done, c) < 0.1
    # how early is a benchmark's question (timings fail under load); here only that text came before the end
    print(f"first delta after {first_delta:.2f} s; done after {done_at:.2f} s")
    assert first_delta is not None and done_at is not None and first_delta < done_at


def test_stream_on_the_original_route_ends_with_the_original_body(server: str) -> None:
    c = clip("ko/picovoice_test_ko.wav")
    with c.path.open("rb") as handle:
        response = httpx.post(
            server + "/transcribe", files={"file": (c.path.name, handle)}, data={"language": "ko", "stream": "true"},
            timeout=120,
        )
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    done = events[-1]
    assert done["type"] == "transcript.text.done" and done["success"] is True and done["language"] == "ko"
    assert "".join(e["delta"] for e in events[:-1]) == done["text"] and done["segments"]
    assert error_rate(done["text"], c) < 0.3


def test_bad_input_is_refused_before_the_stream_starts(fake_server: str) -> None:
    response = httpx.post(
        fake_server + "/v1/audio/transcriptions", files={"file": ("x.wav", b"not audio at all")},
        data={"stream": "true"}, timeout=30,
    )
    assert response.status_code == 400 and response.json()["error"]["code"]


@pytest.fixture(scope="module")
def impatient_server() -> Iterator[str]:
    """Requests time out after about 0.2 s and each decode step takes 2 s: the stand-in engine, as what is said
    does not matter here."""
    env = {"REQUEST_TIMEOUT_BASE_S": "0.2", "REQUEST_TIMEOUT_RTF": "0.001", "FAKE_ENGINE_DECODE_S": "2"}
    with running_server(env, engine="fake") as base:
        yield base


def test_an_error_mid_stream_ends_with_an_error_event(impatient_server: str) -> None:
    c = clip("en/jfk.flac")
    with c.path.open("rb") as handle, pytest.raises(openai.APIError, match="did not finish"):
        for _ in _sdk(impatient_server).audio.transcriptions.create(model="whisper-1", file=handle, stream=True):
            pass


# --- what a stream sends: the final text's own pieces (policy, fake segments) ---------------------------------
def _seg(i: int, start: float, end: float, text: str, logprob: float = -0.3, no_speech: float = 0.01) -> Segment:
    return Segment(
        id=i, seek=0, start=start, end=end, text=text, tokens=[], avg_logprob=logprob, compression_ratio=1.0,
        no_speech_prob=no_speech, words=None, temperature=0.0,
    )


def _streamed(segments: list[Segment], batches: list[int], duration: float) -> tuple[list[str], Transcript]:
    """Deltas for `segments` arriving in `batches` of that many, and the final processed transcript."""
    settings = Settings(_env_file=None)
    options = text_options(settings, redact="pii")
    whole = Transcript(text=join_segments(segments, "ko"), language="ko", language_probability=1.0,
                       duration=duration, duration_after_vad=duration, segments=segments)
    final = finish_transcript(whole, settings, options)
    stream, deltas, upto = TextStream(settings, options), [], 0
    for size in batches:
        upto += size
        deltas.append(stream.update(segments[:upto], "ko")[0])
    deltas.append(stream.finish(final)[0])
    return deltas, final


@pytest.mark.parametrize("batches", [[1] * 7, [2, 3, 2], [7]])
def test_deltas_are_filtered_masked_and_add_up(batches: list[int]) -> None:
    segments = [
        _seg(0, 0.0, 4.0, "우리 고향에서는 여우비라고 했어요."),
        _seg(1, 4.0, 6.0, "제 번호는 010-1234-5678입니다."),
        _seg(2, 6.0, 7.0, "그래서"), _seg(3, 7.0, 8.0, "그래서"), _seg(4, 8.0, 9.0, "그래서"),  # a short run: kept
        _seg(5, 9.0, 11.0, "좋아요."),
        _seg(6, 30.0, 32.0, "시청해주셔서 감사합니다.", logprob=-1.2, no_speech=0.4),  # invented at the end
    ]
    deltas, final = _streamed(segments, batches, 40.0)
    assert [d.text for d in final.dropped_segments] == ["시청해주셔서 감사합니다."]
    assert "".join(deltas) == final.text and "시청" not in final.text
    assert "[PHONE]" in final.text and not any("010" in d for d in deltas)


def test_a_number_over_two_segments_is_never_sent_unmasked() -> None:
    segments = [_seg(0, 0.0, 2.0, "안녕하세요."), _seg(1, 2.0, 4.0, "제 번호는 010-1234"),
                _seg(2, 4.0, 6.0, "5678입니다."), _seg(3, 6.0, 7.0, "네.")]
    deltas, final = _streamed(segments, [1, 1, 1, 1], 8.0)
    assert "".join(deltas) == final.text and "[PHONE]" in final.text
    assert not any("1234" in d or "5678" in d for d in deltas), deltas


def test_a_loop_is_held_back_until_it_ends() -> None:
    """Four identical doubtful segments are a decoder loop, dropped; the first ones must not go out early."""
    loop = [_seg(i, 5.0 + i, 6.0 + i, "이 노래는", logprob=-1.1) for i in range(1, 5)]
    segments = [_seg(0, 0.0, 5.0, "우리 고향에서는 여우비라고 했어요."), *loop, _seg(5, 12.0, 14.0, "네.")]
    deltas, final = _streamed(segments, [1, 1, 1, 1, 1, 1], 14.0)
    assert "".join(deltas) == final.text and "노래" not in final.text, (deltas, final.text)


def test_confident_speech_goes_out_at_once_doubtful_waits() -> None:
    """A confident segment is kept wherever it stands, so it is sent with its own batch; a doubtful one waits for
    the next segment, which decides whether it stands at a speech edge."""
    clear = [_seg(0, 0.0, 3.0, "우리 고향에서는 여우비라고 했어요.")]
    assert _streamed(clear, [1], 3.0)[0] == ["우리 고향에서는 여우비라고 했어요.", ""]
    doubtful = [*clear, _seg(1, 3.0, 4.0, "감사합니다.", logprob=-0.7, no_speech=0.3), _seg(2, 4.0, 6.0, "네 그럼요.")]
    deltas, final = _streamed(doubtful, [1, 1, 1], 6.0)
    assert deltas[1] == "" and "".join(deltas) == final.text and "감사합니다" in final.text, deltas
