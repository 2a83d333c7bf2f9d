"""PII masking over realistic call-centre text, with look-alikes that must stay (dates, prices, order numbers)."""

from __future__ import annotations

import re

import pytest

from stt_engine.textproc.pii import luhn_ok, redact, redact_words, rrn_checksum_ok


def _rrn(first12: str, foreign: bool = False) -> str:
    total = sum(int(d) * w for d, w in zip(first12, (2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5)))
    return first12 + str(((13 if foreign else 11) - total % 11) % 10)


VALID_RRN = _rrn("850315123456")
VALID_FRN = _rrn("900101512345", foreign=True)


@pytest.mark.parametrize(
    ("text", "expected", "counts"),
    [
        (f"주민번호는 {VALID_RRN[:6]}-{VALID_RRN[6:]} 입니다.", "주민번호는 [RRN] 입니다.", {"RRN": 1}),
        (f"네 {VALID_RRN} 맞습니다", "네 [RRN] 맞습니다", {"RRN": 1}),  # bare, checksum valid
        (f"외국인등록번호 {VALID_FRN}요", "외국인등록번호 [RRN]요", {"RRN": 1}),
        ("주민등록번호 990101-3987654 확인했습니다", "주민등록번호 [RRN] 확인했습니다", {"RRN": 1}),  # post-2020 format
        ("연락처는 010-1234-5678이고요", "연락처는 [PHONE]이고요", {"PHONE": 1}),
        ("01098765432로 주세요", "[PHONE]로 주세요", {"PHONE": 1}),
        ("사무실 02-345-6789, 부산 051 234 5678", "사무실 [PHONE], 부산 [PHONE]", {"PHONE": 2}),
        ("번호가 공일공 일이삼사 오육칠팔 맞으세요?", "번호가 [PHONE] 맞으세요?", {"PHONE": 1}),
        ("+82 10-2222-3333 으로", "[PHONE] 으로", {"PHONE": 1}),
        ("카드번호 4111 1111 1111 1111 입니다", "카드번호 [CARD] 입니다", {"CARD": 1}),
        ("5500-0000-0000-0004 결제", "[CARD] 결제", {"CARD": 1}),
        ("국민은행 123456-01-234567 으로 입금", "국민은행 [ACCOUNT] 으로 입금", {"ACCOUNT": 1}),
        ("계좌번호는 110 234 567890 이에요", "계좌번호는 [ACCOUNT] 이에요", {"ACCOUNT": 1}),
        ("메일은 kim.cs@example.co.kr 로", "메일은 [EMAIL] 로", {"EMAIL": 1}),
    ],
)
def test_masks(text: str, expected: str, counts: dict[str, int]) -> None:
    masked, found = redact(text)
    assert masked == expected
    assert dict(found) == counts


@pytest.mark.parametrize(
    "text",
    [
        "2024-03-15에 방문하셨고 2024년 3월 15일 오후 3시에 다시 오세요.",
        "가격은 1,250,000원이고 할인하면 980,000원입니다.",
        "주문번호 2024031512345 로 조회됩니다.",  # 13 digits, a date-like start, no valid checksum, no hyphen
        "주문번호 1234-5678-9012-3456 배송 중입니다.",  # card-shaped, fails Luhn
        "송장번호 6012345678901 입니다",  # 13 digits, not near a bank word, fails the checks
        "이 사이 일이 삼삼오오 모여서",  # digit syllables in ordinary words
        "2시 30분에 10,000원 결제, 수량 3개",
        "상품코드 AB-1234-5678 입니다",
    ],
)
def test_look_alikes_stay(text: str) -> None:
    assert redact(text) == (text, {})


def test_checks() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert rrn_checksum_ok(VALID_RRN) and rrn_checksum_ok(VALID_FRN)
    assert not rrn_checksum_ok(VALID_RRN[:12] + str((int(VALID_RRN[12]) + 1) % 10))


def test_words_follow_the_text() -> None:
    words = [" 연락처는", " 010", "-1234", "-5678", " 입니다"]
    assert redact_words(words) == [" 연락처는", " [PHONE]", "", "", " 입니다"]
    assert redact_words([" 안녕하세요"]) == [" 안녕하세요"]


# --- the route: every format, the log and the LLM's input are masked (real model, real llama.cpp) -------------
PHONE_DIGITS = "01012345678"


class _RecordingProxy:
    """Forwards every request to the llama.cpp server and keeps the bodies it received."""

    def __init__(self, target: str) -> None:
        import http.server
        import threading

        import httpx

        received = self.received = []  # type: list[str]

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                received.append(body.decode("utf-8", "replace"))
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")}
                reply = httpx.request(self.command, target + self.path, content=body, headers=headers, timeout=120)
                self.send_response(reply.status_code)
                self.send_header("Content-Type", reply.headers.get("content-type", "application/json"))
                self.send_header("Content-Length", str(len(reply.content)))
                self.end_headers()
                self.wfile.write(reply.content)

            do_GET = do_POST = _forward

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_route_masks_every_format_the_log_and_the_llm_input(tmp_path) -> None:
    import shutil
    import subprocess

    import httpx

    from tests.llm_fixtures import start_llama_server
    from tests.support import post_audio, running_server

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    audio = tmp_path / "phone.wav"
    subprocess.run(["espeak-ng", "-v", "en", "-s", "140", "-w", str(audio),
                    "My phone number is 0 1 0, 1 2 3 4, 5 6 7 8."], check=True)
    with start_llama_server() as llama:
        proxy = _RecordingProxy(llama.base_url)
        try:
            env = {"VLLM_BASE_URL": proxy.url + "/v1", "VLLM_MAX_TOKENS": "16", "LOG_TRANSCRIPTS": "true",
                   "REDACT_KEEP_ORIGINAL": "true"}
            with running_server(env) as base:
                route = "/v1/audio/transcriptions"
                plain = post_audio(base, route, audio, language="en", response_format="json").json()
                heard = plain["text"].lower()
                assert PHONE_DIGITS in re.sub(r"[^0-9]", "", heard) or "zero one zero" in heard, plain  # said, heard
                secret = "5678" if PHONE_DIGITS in re.sub(r"[^0-9]", "", heard) else "six seven eight"  # as written
                assert "redactions" not in plain
                bodies = {}
                for fmt in ("json", "verbose_json", "text", "srt", "vtt"):
                    r = post_audio(base, route, audio, language="en", response_format=fmt, redact="pii",
                                   **({"timestamp_granularities[]": "word"} if fmt == "verbose_json" else {}))
                    assert r.status_code == 200, r.text
                    bodies[fmt] = r.text
                    assert "[PHONE]" in r.text and secret not in r.text.split("original_text")[0], (fmt, r.text)
                    if fmt in ("text", "srt", "vtt"):
                        assert r.headers["x-redactions"].startswith("RRN=0,PHONE=1"), r.headers
                verbose = httpx.Response(200, content=bodies["verbose_json"]).json()
                assert verbose["redactions"]["PHONE"] == 1
                assert secret in verbose["original_text"]  # REDACT_KEEP_ORIGINAL: the unmasked text, apart
                assert any(w["word"] == "[PHONE]" for w in verbose["words"]), verbose["words"]
                assert all(secret not in s["text"] for s in verbose["segments"])
                stream = post_audio(base, route, audio, language="en", redact="pii", stream="true")
                masked_part = stream.text.split('"original_text"')[0]  # REDACT_KEEP_ORIGINAL is on here
                assert stream.status_code == 200 and "[PHONE]" in stream.text and secret not in masked_part, stream.text
                original = post_audio(base, "/transcribe", audio, language="en", redact="pii",
                                      postprocess="correct").json()
                assert "[PHONE]" in original["text"] and original["redactions"]["PHONE"] == 1
                assert original["postprocess"]["error"] is None, original["postprocess"]
                log_text = base.log_path.read_text(encoding="utf-8")
            sent = [b for b in proxy.received if "messages" in b or "prompt" in b]
            assert sent and all(secret not in b for b in sent) and any("[PHONE]" in b for b in sent), sent
            transcript_lines = [line for line in log_text.splitlines() if "transcript:" in line]
            assert transcript_lines and any("[PHONE]" in line for line in transcript_lines)
            # only the unmasked request (no redact) may log the digits
            assert sum(secret in line for line in transcript_lines) == 1, transcript_lines
        finally:
            proxy.close()


def test_a_number_read_over_two_segments_is_masked_in_every_segment() -> None:
    """The text is masked whole; its segments (srt, vtt, diarized_json) and words must not show the pieces."""
    from stt_engine.config import Settings
    from stt_engine.textproc import finish_transcript, text_options
    from stt_engine.types import Segment, Transcript, Word

    def seg(i: int, text: str, words: list[str]) -> Segment:
        return Segment(id=i, seek=0, start=float(i), end=i + 1.0, text=text, tokens=[], avg_logprob=-0.2,
                       compression_ratio=1.0, no_speech_prob=0.01, temperature=0.0,
                       words=[Word(start=float(i), end=i + 1.0, word=w, probability=0.9) for w in words])

    segments = [seg(0, "제 번호는 010-1234", [" 제", " 번호는", " 010", "-1234"]),
                seg(1, "5678입니다.", [" 5678", "입니다."])]
    transcript = Transcript(text="제 번호는 010-1234 5678입니다.", language="ko", language_probability=1.0,
                            duration=2.0, duration_after_vad=2.0, segments=segments)
    settings = Settings(_env_file=None)
    out = finish_transcript(transcript, settings, text_options(settings, redact="pii"))
    assert out.text == "제 번호는 [PHONE]입니다." and out.redactions["PHONE"] == 1
    assert [s.text for s in out.segments] == ["제 번호는 [PHONE]", "입니다."]
    everything = " ".join([s.text for s in out.segments] + [w.word for s in out.segments for w in s.words])
    assert not re.search(r"\d", everything), everything
