"""The engine on real audio with the real model: the temperature fallback, word timings, long prompts, sections."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest

from stt_engine.audio import SAMPLE_RATE, DecodedAudio, decode
from stt_engine.config import Settings
from stt_engine.engine import Engine
from stt_engine.engine import decode as decode_step
from stt_engine.engine.decode import Attempt, choose
from stt_engine.engine.prepare import plan_sections, quietest_point
from stt_engine.models import resolve_model
from stt_engine.options import TranscribeOptions
from stt_engine.types import Transcript
from tests.support import SHARED_AUDIO, clip, error_rate

LONG_EN = "en/en_longform_librispeech_librivox_concat.wav"


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    settings = Settings(_env_file=None, whisper_device="cpu", whisper_num_workers=1, whisper_cpu_threads=2)
    yield Engine(resolve_model(settings), settings)


def run(engine: Engine, file: str | DecodedAudio, options: TranscribeOptions) -> Transcript:
    """Decode every section of one file (or of audio already decoded) in turn, as the scheduler would with one
    worker."""
    if isinstance(file, DecodedAudio):
        audio = file
    else:
        audio = decode(clip(file).path if (SHARED_AUDIO / file).is_file() else file)
    job = engine.prepare(audio, options)
    while not job.finished:
        for stream in job.streams:
            if not stream.done:
                engine.decode([stream])
    return engine.transcript(job)


def test_fallback_chooses_among_all_temperatures_including_the_first(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a log-probability bar no decode can pass, every temperature is tried, and the kept result is the
    library's choice over all of them: the most probable one, which on clear speech is the T=0 beam search."""
    tried: list[list[Attempt]] = []
    original = decode_step.choose
    monkeypatch.setattr(decode_step, "LOG_PROB_THRESHOLD", 0.0)
    monkeypatch.setattr(decode_step, "choose", lambda attempts: tried.append(list(attempts)) or original(attempts))
    result = run(engine, "en/jfk.flac", TranscribeOptions(language="en"))
    attempts = tried[0]
    assert [a.temperature for a in attempts] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    best = max(attempts, key=lambda a: a.avg_logprob)  # the T=0 beam search takes part like every other attempt
    assert original(attempts).result is best.result, "the kept result is the most probable of all attempts"
    assert best.avg_logprob >= attempts[0].avg_logprob
    assert error_rate(result.text, clip("en/jfk.flac")) <= 0.05, result.text
    assert result.segments[0].temperature == 1.0, "reported with the last temperature tried, as the library does"


def test_choose_is_the_librarys_rule() -> None:
    class Result:
        no_speech_prob = 0.0

    def attempt(logprob: float, ratio: float, temperature: float) -> Attempt:
        return Attempt(Result(), logprob, temperature, ratio)  # type: ignore[arg-type]

    good = attempt(-0.5, 1.5, 0.2)
    assert choose([attempt(-1.5, 1.5, 0.0), good]) is good
    repetitive_but_likely, plain = attempt(-0.2, 3.0, 0.0), attempt(-1.2, 1.5, 0.2)
    chosen = choose([repetitive_but_likely, plain, attempt(-1.4, 1.6, 0.4)])
    assert chosen.result is plain.result and chosen.temperature == 0.4


def test_word_timestamps_never_change_the_text(engine: Engine) -> None:
    if not (SHARED_AUDIO / LONG_EN).is_file():
        pytest.skip(f"{LONG_EN} is only in ../shared/audio")
    # the first 45 s: two 30 s windows, so the seek from one window to the next (which word timings move in the
    # library) is crossed; the whole 78 s clip checks nothing more and costs twice the decoding
    whole = decode(clip(LONG_EN).path)
    audio = replace(whole, samples=whole.samples[:45 * SAMPLE_RATE])
    plain = run(engine, audio, TranscribeOptions(language="en"))
    words = run(engine, audio, TranscribeOptions(language="en", word_timestamps=True))
    assert len(plain.segments) > 5, plain.segments
    assert words.text == plain.text
    timed = [w for s in words.segments for w in s.words or []]
    assert timed and all(s.start <= w.start <= w.end <= s.end + 0.01 for s in words.segments for w in s.words)


def test_long_prompt_and_hotwords_are_cut_like_whispers(engine: Engine) -> None:
    cjk = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(2000))
    options = TranscribeOptions(language="en", initial_prompt=cjk, hotwords=cjk)
    result = run(engine, "en/jfk.flac", options)
    assert "country" in result.text.lower()


def test_temperature_above_zero_samples_once(engine: Engine) -> None:
    result = run(engine, "en/jfk.flac", TranscribeOptions(language="en", temperatures=(0.5,)))
    assert {s.temperature for s in result.segments} == {0.5}


def test_sections_are_cut_in_pauses() -> None:
    rate = SAMPLE_RATE
    speech = np.random.default_rng(0).standard_normal(rate * 100).astype(np.float32)
    speech[int(47.5 * rate): int(48.0 * rate)] = 0.0  # the only pause near the middle
    bounds = plan_sections(len(speech), [], 2, lambda a, b: quietest_point(speech[max(0, a): b], max(0, a)))
    assert len(bounds) == 3 and 47.5 * rate <= bounds[1] <= 48.0 * rate
    assert plan_sections(20 * rate, [], 2, lambda a, b: a) == [0, 20 * rate], "short speech stays whole"
    joined = plan_sections(200 * rate, [int(95 * rate)], 1, lambda a, b: a)
    assert int(95 * rate) in joined, "a removed silence near the split is the cut"


def test_condition_on_previous_text_decodes_one_section_in_order(engine: Engine) -> None:
    if not (SHARED_AUDIO / LONG_EN).is_file():
        pytest.skip(f"{LONG_EN} is only in ../shared/audio")
    options = TranscribeOptions(language="en", condition_on_previous_text=True)
    job = engine.prepare(decode(clip(LONG_EN).path), options)
    assert len(job.streams) == 1
    result = run(engine, LONG_EN, options)
    assert error_rate(result.text, clip(LONG_EN)) < 0.1
    assert replace(options, language=None) == engine.batch_key(job)
