"""Pure pieces of the realtime path: LocalAgreement-2, the turn tracker on synthetic VAD scores, G.711 and PCM
decoding, session configuration parsing. No model, no server."""

from __future__ import annotations

import numpy as np
import pytest
from openai.types.realtime import RealtimeErrorEvent, SessionCreatedEvent
from openai.types.realtime.realtime_transcription_session_audio_input_turn_detection import SemanticVad

from stt_engine.realtime import agreement, protocol
from stt_engine.realtime.audio_formats import StreamDecoder
from stt_engine.realtime.protocol import AudioFormat, ProtocolError, SessionConfig, apply_beta, apply_ga
from stt_engine.realtime.vad import WINDOW, SpeechStarted, SpeechStopped, TurnTracker


def toks(text: str, language: str = "en") -> list[str]:
    return agreement.tokens(text, language)


def test_agreement_sends_only_what_two_hypotheses_share() -> None:
    sent: list[str] = []
    assert agreement.partial_delta(sent, None, toks("And so my")) == []
    new = agreement.partial_delta(sent, toks("And so my"), toks("And so my fellow Americans,"))
    assert "".join(new) == "And so my"
    sent += new
    new = agreement.partial_delta(sent, toks("And so my fellow Americans,"), toks("And so my fellow Americans, ask"))
    assert "".join(new) == " fellow Americans,"
    sent += new
    # a later hypothesis that rewrites sent words never repeats them
    assert agreement.partial_delta(sent, toks("And so, my fellow"), toks("And so, my fellow")) == []


def test_final_delta_makes_the_concatenation_the_completed_text() -> None:
    sent = toks("And so my fellow")
    assert "".join(agreement.final_delta(sent, toks("And so my fellow Americans."))) == " Americans."
    # sent text that the final decode disagrees with stays; the rest of the final follows it, aligned
    sent = toks("And so mine fellow")
    assert "".join(agreement.final_delta(sent, toks("And so my fellow Americans, ask not."))) == " Americans, ask not."
    assert agreement.final_delta(toks("a b c"), toks("a b")) == []


def test_character_languages_agree_per_character() -> None:
    assert toks("广州市房地产", "zh") == list("广州市房地产")
    assert toks("우리 고향에서는", "ko") == ["우리", " 고향에서는"]


def _tracker() -> TurnTracker:
    return TurnTracker(vad=True, threshold=0.5, prefix_padding_ms=300, silence_duration_ms=500, max_turn_s=30)


def _feed(tracker: TurnTracker, probs: list[float]) -> list[SpeechStarted | SpeechStopped]:
    return tracker.feed(np.zeros(len(probs) * WINDOW, dtype=np.float32), np.array(probs, dtype=np.float32))


def test_turn_tracker_cuts_at_silence_with_prefix_padding() -> None:
    tracker = _tracker()
    assert _feed(tracker, [0.0] * 20) == []
    events = _feed(tracker, [0.9] * 30 + [0.0] * 10)
    assert isinstance(events[0], SpeechStarted) and events[0].start == 20 * WINDOW - 4800
    assert len(events) == 1 and tracker.turn_audio() is not None
    events = _feed(tracker, [0.0] * 10)
    stopped = events[0]
    assert isinstance(stopped, SpeechStopped) and not stopped.cut
    assert stopped.speech_end == 50 * WINDOW
    assert len(stopped.audio) == stopped.end - stopped.start
    assert tracker.turn_audio() is None


def test_turn_tracker_splits_an_endless_turn_at_its_last_pause() -> None:
    tracker = _tracker()
    second = 16000 // WINDOW
    events = _feed(tracker, [0.9] * (20 * second) + [0.0] * 10 + [0.9] * (15 * second))
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["SpeechStarted", "SpeechStopped", "SpeechStarted"]
    cut = events[1]
    assert isinstance(cut, SpeechStopped) and cut.cut
    assert 19.5 < (cut.end - cut.start) / 16000 < 21  # at the pause, not at 30 s


def test_manual_commit_without_vad() -> None:
    tracker = TurnTracker(vad=False)
    tracker.feed(np.ones(8000, dtype=np.float32), None)
    stopped = tracker.commit()
    assert stopped is not None and len(stopped.audio) == 8000
    assert tracker.commit() is None


def test_g711_and_pcm_decoding_to_16k() -> None:
    tone = (np.sin(np.arange(8000) / 8000 * 2 * np.pi * 440) * 8000).astype("<i2")
    out = StreamDecoder(AudioFormat("pcm16", 16000)).decode(tone.tobytes())
    assert np.allclose(out, tone / 32768.0)
    decoder = StreamDecoder(AudioFormat("pcm16", 24000))
    pieces = [decoder.decode(tone.tobytes()[i: i + 4801]) for i in range(0, 16000, 4801)]  # odd splits
    assert abs(sum(len(p) for p in pieces) - 8000 * 2 // 3) < 64
    ulaw = StreamDecoder(AudioFormat("pcmu", 8000)).decode(bytes([0xFF, 0x7F, 0x00, 0x80]) * 400)
    assert 3150 < len(ulaw) <= 3200 and np.abs(ulaw).max() > 0.9  # 0x00/0x80 are full scale
    alaw = StreamDecoder(AudioFormat("pcma", 8000)).decode(bytes([0xD5]) * 800)
    assert np.abs(alaw).max() < 0.001  # 0xD5 is A-law's zero


def test_session_update_dialects() -> None:
    config = apply_ga(SessionConfig(), {"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcmu"}, "transcription": {"language": "ko"}, "turn_detection": None}}})
    assert config.format == AudioFormat("pcmu", 8000) and config.language == "ko" and config.turn_detection is None
    config = apply_beta(SessionConfig(), {"input_audio_format": "g711_alaw",
                                          "turn_detection": {"type": "server_vad", "silence_duration_ms": 900}})
    assert config.format.codec == "pcma" and config.turn_detection.silence_duration_ms == 900
    with pytest.raises(ProtocolError):
        apply_ga(SessionConfig(), {"type": "realtime"})
    with pytest.raises(ProtocolError):
        apply_ga(SessionConfig(), {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm",
                                                                                              "rate": 44100}}}})


def test_ga_session_and_error_events_read_back_as_the_sdk_types() -> None:
    config = apply_ga(SessionConfig(), {"type": "transcription", "include": ["item.input_audio_transcription.logprobs"],
                                        "audio": {"input": {"turn_detection": {"type": "semantic_vad"},
                                                            "noise_reduction": {"type": "far_field"},
                                                            "transcription": {"language": "ko", "keywords": ["신한"]}}}})
    created = SessionCreatedEvent.model_validate(
        protocol.event("session.created", session=protocol.render_ga(config, "sess_1", 123)))
    audio_input = created.session.audio.input  # type: ignore[union-attr]
    assert isinstance(audio_input.turn_detection, SemanticVad) and audio_input.turn_detection.eagerness == "auto"
    assert audio_input.transcription.language == "ko" and audio_input.transcription.keywords == ["신한"]
    assert audio_input.format.rate == 24000 and audio_input.noise_reduction.type == "far_field"
    assert created.session.include == ["item.input_audio_transcription.logprobs"]
    # 16 kHz PCM is our extension: rendered as served, outside the SDK's Literal[24000]
    wide = apply_ga(SessionConfig(), {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}})
    assert protocol.render_ga(wide, "sess_2", None)["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 16000}
    error = RealtimeErrorEvent.model_validate(protocol.error_event("no", code="invalid_value", param="session.x", event_id="e1"))
    assert (error.error.code, error.error.param, error.error.event_id) == ("invalid_value", "session.x", "e1")
    with pytest.raises(ProtocolError, match="session.include"):
        apply_beta(SessionConfig(), {"include": ["item.unknown"]})
