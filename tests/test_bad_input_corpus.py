"""A corpus of bad (and odd but valid) input: each gets its status and a clear message, never a 5xx, and the
server still answers the next good request correctly.

Files are made once per module with ffmpeg from the real clips. Limits are checked on one extra server started
with `MAX_UPLOAD_MB=1` and `MAX_AUDIO_SECONDS=5`: a real `serve` process on the stand-in engine, since everything
sent to it is refused before decoding (no model loaded for it).
"""

from __future__ import annotations

import io
import json
import random
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.fake_engine import FAKE_TEXT
from tests.support import SHARED_AUDIO, normalize, running_server

JFK = SHARED_AUDIO / "en" / "jfk.flac"
SHORT = SHARED_AUDIO / "en" / "speech_recognition_english_123.wav"  # 2.7 s, "one two three"
ROUTES = ("/transcribe", "/v1/audio/transcriptions")


# --- helpers ---------------------------------------------------------------------------------------------
def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args], check=True, timeout=120)


def message_of(response: httpx.Response, route: str) -> str:
    """The error message, after checking the route's error shape."""
    body = response.json()
    if route.startswith("/v1/"):
        assert set(body["error"]) >= {"message", "type", "param", "code"}, body
        assert body["error"]["type"] in {"invalid_request_error", "authentication_error"}, body
    else:
        assert body["success"] is False and {"code", "message"} <= set(body["error"]), body
    return body["error"]["message"]


def assert_next_good_request_works(base: str, expected: str = "one two three") -> None:
    with SHORT.open("rb") as handle:
        response = httpx.post(base + "/transcribe", files={"file": (SHORT.name, handle)}, timeout=120)
    assert response.status_code == 200, response.text
    assert normalize(expected, "en") in normalize(response.json()["text"], "en")


def flip_bits(data: bytes, count: int, seed: int, skip: int = 64) -> bytes:
    """`count` random bit flips past the first `skip` bytes (the header stays recognisable)."""
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(count):
        pos = rng.randrange(skip, len(out))
        out[pos] ^= 1 << rng.randrange(8)
    return bytes(out)


@dataclass(frozen=True)
class Case:
    """One bad input: how to send it, and what must come back."""

    make: Callable[[Path], dict]  # -> kwargs for httpx.post (files/data/content/headers)
    statuses: tuple[int, ...]  # acceptable statuses (several only where the input may legitimately decode)
    phrase: str | None  # lower-case text the error message must contain (None: only a 2xx/4xx is asserted)
    expect_text: str | None = None  # for a 200: text the transcript must contain


def _file(name: str, data: bytes) -> dict:
    return {"files": {"file": (name, io.BytesIO(data))}}


def _made(name: str) -> Callable[[Path], dict]:
    return lambda d: _file(name if "." in name else name + ".wav", (d / name).read_bytes())


PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde\x00\x00"
    b"\x00\x0cIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82"
)
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n" + b"0" * 2000 + b"\n%%EOF\n"
WAV_HEADER_ONLY = (
    b"RIFF" + (36).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
    + (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + (16000).to_bytes(4, "little")
    + (32000).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
    + b"data" + (0).to_bytes(4, "little")
)
ASK_NOT = "ask not what your country can do for you"

FILE_CASES: dict[str, Case] = {
    "zero-byte file": Case(lambda d: _file("empty.wav", b""), (400,), "empty"),
    "text named .wav": Case(lambda d: _file("notes.wav", b"hello, this is not audio at all\n" * 40), (400,),
                            "not a supported audio"),
    "json named .wav": Case(lambda d: _file("data.wav", json.dumps({"a": list(range(300))}).encode()), (400,),
                            "not a supported audio"),
    "png named .wav": Case(lambda d: _file("image.wav", PNG), (400,), None),
    "pdf named .wav": Case(lambda d: _file("doc.wav", PDF), (400,), "not a supported audio"),
    "elf named .wav": Case(lambda d: _file("prog.wav", Path("/bin/true").read_bytes()), (400,), None),
    "wav header, no data": Case(lambda d: _file("header.wav", WAV_HEADER_ONLY), (400,), None),
    "truncated flac": Case(lambda d: _file("cut.flac", JFK.read_bytes()[: JFK.stat().st_size // 3]), (400,),
                           "truncated"),
    "bit-flipped flac": Case(lambda d: _file("flipped.flac", flip_bits(JFK.read_bytes(), 40, 1, skip=8192)),
                             (200, 400), None),
    "truncated mp3": Case(lambda d: _file("cut.mp3", (d / "jfk.mp3").read_bytes()[:30000]), (200, 400), None),
    "bit-flipped mp3": Case(lambda d: _file("flipped.mp3", flip_bits((d / "jfk.mp3").read_bytes(), 40, 2)),
                            (200, 400), None),
    "0.05 s of audio": Case(_made("short.wav"), (400,), "too short"),
    "6-channel 96 kHz wav": Case(_made("six.wav"), (200,), None, expect_text=ASK_NOT),
    "video without audio": Case(_made("video.mp4"), (400,), "no audio track"),
    "path traversal filename": Case(
        lambda d: _file("../../../../etc/passwd", SHORT.read_bytes()), (200,), None, expect_text="one two three"
    ),
}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Derived media files, made once."""
    d = tmp_path_factory.mktemp("corpus")
    ffmpeg("-i", str(JFK), "-ac", "1", "-b:a", "64k", str(d / "jfk.mp3"))
    ffmpeg("-i", str(SHORT), "-t", "0.05", str(d / "short.wav"))
    ffmpeg("-i", str(JFK), "-ac", "6", "-ar", "96000", str(d / "six.wav"))
    ffmpeg("-f", "lavfi", "-i", "testsrc=duration=1:size=64x64:rate=10", "-an", "-pix_fmt", "yuv420p",
           str(d / "video.mp4"))
    ffmpeg("-i", str(JFK), "-ac", "1", "-ar", "16000", str(d / "jfk11s.wav"))  # 11 s, 350 KB: over 5 s only
    return d


# --- bad files, on both routes ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(FILE_CASES))
def test_bad_file(server: str, media: Path, case: str) -> None:
    spec = FILE_CASES[case]
    for route in ROUTES:
        response = httpx.post(server + route, timeout=180, **spec.make(media))
        assert response.status_code in spec.statuses, (route, response.status_code, response.text)
        shown = response.json().get("text", "")[:60] if response.status_code == 200 else message_of(response, route)
        print(f"OUTCOME\t{case}\t{route}\t{response.status_code}\t{shown}")
        if response.status_code == 200:
            if spec.expect_text:
                assert spec.expect_text in normalize(response.json()["text"], "en"), response.text
        else:
            message = message_of(response, route)
            assert len(message) > 15, message
            if spec.phrase:
                assert spec.phrase in message.lower(), message
    assert_next_good_request_works(server)


# --- bad requests (fields, options) ----------------------------------------------------------------------
def _short(**data: str) -> dict:
    return {"files": {"file": (SHORT.name, SHORT.read_bytes())}, "data": data}


REQUEST_CASES: dict[str, tuple[str, Callable[[], dict], str, str]] = {
    # name: (route, request kwargs, expected message fragment, expected param / error code fragment)
    "empty body": ("/transcribe", lambda: {"content": b""}, "'file' is required", "file"),
    "empty body, openai": ("/v1/audio/transcriptions", lambda: {"content": b""}, "'file' is required", "file"),
    "json body": ("/v1/audio/transcriptions",
                  lambda: {"json": {"file": "x", "model": "whisper-1"}}, "'file' is required", "file"),
    "wrong field name": ("/transcribe", lambda: {"files": {"audio": (SHORT.name, SHORT.read_bytes())}},
                         "'file' is required", "file"),
    "wrong field name, openai": ("/v1/audio/transcriptions",
                                 lambda: {"files": {"upload": (SHORT.name, SHORT.read_bytes())}},
                                 "'file' is required", "file"),
    "unknown response_format": ("/v1/audio/transcriptions", lambda: _short(response_format="docx"),
                                "unsupported response_format", "response_format"),
    "language xx": ("/v1/audio/transcriptions", lambda: _short(language="xx"), "unsupported language 'xx'",
                    "language"),
    "language xx, original": ("/transcribe", lambda: _short(language="xx"), "unsupported language 'xx'",
                              "invalid_language"),
    "temperature -1": ("/v1/audio/transcriptions", lambda: _short(temperature="-1"), "temperature", "temperature"),
    "temperature 5": ("/v1/audio/transcriptions", lambda: _short(temperature="5"), "temperature", "temperature"),
    "temperature not a number": ("/v1/audio/transcriptions", lambda: _short(temperature="hot"), "temperature",
                                 "temperature"),
    "10,000-character prompt": ("/v1/audio/transcriptions", lambda: _short(prompt="word " * 2000),
                                "10000 characters", "prompt"),
    "10,000-character prompt, original": ("/transcribe", lambda: _short(prompt="x" * 10_000), "10000 characters",
                                          "prompt_too_long"),
    "unknown task": ("/transcribe", lambda: _short(task="dance"), "task", "invalid_request"),
    "bad timestamp_granularities": ("/v1/audio/transcriptions",
                                    lambda: _short(**{"timestamp_granularities[]": "paragraph"}),
                                    "timestamp_granularities", "timestamp_granularities"),
}


@pytest.mark.parametrize("case", list(REQUEST_CASES))
def test_bad_request(fake_server: str, case: str) -> None:
    """Refused before decoding: on the stand-in engine."""
    route, make, fragment, where = REQUEST_CASES[case]
    response = httpx.post(fake_server + route, timeout=120, **make())
    assert response.status_code == 400, response.text
    message = message_of(response, route)
    assert fragment.lower() in message.lower(), message
    error = response.json()["error"]
    assert any(where in (error.get(k) or "") for k in ("param", "code")), error
    print(f"OUTCOME\t{case}\t{route}\t{response.status_code}\t{message}")
    assert_next_good_request_works(fake_server, FAKE_TEXT)


def test_non_utf8_filename(server: str) -> None:
    """A raw multipart body whose filename is Latin-1 bytes (invalid UTF-8): the name is irrelevant, the audio
    is transcribed."""
    boundary = b"----sttboundary"
    body = (
        b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"file\"; filename=\"caf\xe9-\xff\xfe.wav\"\r\n"
        b"Content-Type: audio/wav\r\n\r\n" + SHORT.read_bytes() + b"\r\n--" + boundary + b"--\r\n"
    )
    for route in ROUTES:
        response = httpx.post(
            server + route, content=body, timeout=120,
            headers={"Content-Type": "multipart/form-data; boundary=" + boundary.decode()},
        )
        assert response.status_code == 200, response.text
        assert "one two three" in normalize(response.json()["text"], "en")


def test_unknown_route_and_method(fake_server: str) -> None:
    assert httpx.get(fake_server + "/v1/audio/nothing").status_code == 404
    response = httpx.get(fake_server + "/transcribe")
    assert response.status_code == 405 and response.json()["success"] is False
    assert_next_good_request_works(fake_server, FAKE_TEXT)


# --- limits: a server with MAX_UPLOAD_MB=1 and MAX_AUDIO_SECONDS=5 -------------------------------------
@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server({"MAX_UPLOAD_MB": "1", "MAX_AUDIO_SECONDS": "5"}, engine="fake") as base:
        yield base


def _raw_request(base: str, head: bytes, body_start: bytes, wait: float = 60.0) -> bytes:
    """Send headers and only the start of a body; return what the server answers meanwhile."""
    url = urlsplit(base)
    with socket.create_connection((url.hostname, url.port), timeout=wait) as sock:
        sock.sendall(head + body_start)
        deadline = time.monotonic() + wait
        data = b""
        while b"\r\n\r\n" not in data or not _complete(data):
            if time.monotonic() > deadline:
                break
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


@pytest.mark.parametrize("route", ROUTES)
def test_upload_over_limit_refused_from_content_length(limited: str, route: str) -> None:
    """A 200 MB declared body: 413 comes back after a few KB were sent, so the body was never read."""
    boundary = "----sttlimit"
    head = (
        f"POST {route} HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {200 * 1024 * 1024}\r\n\r\n"
    ).encode()
    start = f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.wav\"\r\n\r\n".encode()
    answer = _raw_request(limited, head, start + b"\0" * 4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]  # answered while the rest of the body was never sent
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    message = body["error"]["message"]
    assert "larger than this server's limit of 1 MB" in message and "MAX_UPLOAD_MB" in message
    assert body["error"]["code"] == "file_too_large"
    assert_next_good_request_works(limited, FAKE_TEXT)


def test_upload_over_limit_refused_while_streaming(limited: str) -> None:
    """No Content-Length (chunked): the guard counts the bytes as they arrive."""
    boundary = "----sttchunked"
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.wav\"\r\n\r\n".encode()
        for _ in range(8):  # 8 MB, well over 1 MB + form overhead
            sent += 1
            yield b"\0" * (1024 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = httpx.post(
        limited + "/v1/audio/transcriptions", content=body(), timeout=60,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413, response.text
    assert "MAX_UPLOAD_MB" in message_of(response, "/v1/audio/transcriptions")
    assert_next_good_request_works(limited, FAKE_TEXT)


def test_file_over_limit_just_above(limited: str) -> None:
    """1.5 MB file: under the body guard's form allowance, caught exactly while the file is copied."""
    response = httpx.post(limited + "/transcribe", files={"file": ("a.wav", b"\0" * (1536 * 1024))}, timeout=60)
    assert response.status_code == 413, response.text
    assert "limit of 1 MB" in message_of(response, "/transcribe")
    assert_next_good_request_works(limited, FAKE_TEXT)


@pytest.mark.parametrize("route", ROUTES)
def test_audio_over_duration_limit(limited: str, media: Path, route: str) -> None:
    with (media / "jfk11s.wav").open("rb") as handle:
        response = httpx.post(limited + route, files={"file": ("jfk11s.wav", handle)}, timeout=120)
    assert response.status_code == 422, response.text
    message = message_of(response, route)
    assert "11 s long" in message and "limit of 5 s" in message and "MAX_AUDIO_SECONDS" in message
    assert response.json()["error"]["code"] == "audio_too_long"
    assert_next_good_request_works(limited, FAKE_TEXT)


def test_duration_limit_without_declared_duration(limited: str, tmp_path: Path) -> None:
    """A stream that declares no duration (raw ADTS AAC) is stopped while decoding, still a 422."""
    out = tmp_path / "long.aac"
    ffmpeg("-i", str(JFK), "-c:a", "aac", "-f", "adts", str(out))
    response = httpx.post(limited + "/v1/audio/transcriptions", files={"file": ("long.aac", out.read_bytes())},
                          timeout=120)
    assert response.status_code == 422, response.text
    assert "MAX_AUDIO_SECONDS" in message_of(response, "/v1/audio/transcriptions")
