"""`stt-engine listen FILE|-`: stream audio to a server's `/v1/realtime` at real-time pace, print text as it comes.

A file is decoded like an upload (any format FFmpeg reads) and sent as 16 kHz PCM; `-` reads raw 16-bit mono
PCM from stdin (e.g. `arecord -f S16_LE -r 16000 -c 1 -t raw | stt-engine listen -`). Partial text goes to
stderr (rewritten in place on a terminal), each finished turn to stdout as one line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from stt_engine.config import get_settings

CHUNK_SECONDS = 0.1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "listen", help="stream a file or stdin PCM to a server's /v1/realtime and print partial and final text"
    )
    p.add_argument("source", metavar="FILE|-", help="audio file, or - for raw 16-bit mono PCM on stdin")
    p.add_argument("--url", default=None, help="server URL (default http://127.0.0.1:SERVER_PORT)")
    p.add_argument("--api-key", default=os.environ.get("STT_API_KEY"), help="API key (default $STT_API_KEY)")
    p.add_argument("--language", "-l", default=None, help="ISO-639-1 code (detected per turn when omitted)")
    p.add_argument("--prompt", default=None, help="vocabulary or style hint")
    p.add_argument("--rate", type=int, choices=[16000, 24000], default=16000, help="sample rate of stdin PCM")
    p.add_argument("--silence-ms", type=int, default=500, help="pause that ends a turn (server VAD)")
    p.add_argument("--no-vad", action="store_true", help="no server VAD: the whole input is one committed turn")
    p.add_argument("--speed", type=float, default=1.0, help="pace: 1 = real time, 2 = twice as fast")
    p.set_defaults(func=cmd_listen)


def cmd_listen(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_listen(args))
    except KeyboardInterrupt:
        return 130
    except (OSError, RuntimeError) as exc:
        print(f"stt-engine listen: {exc}", file=sys.stderr)
        return 1


def _ws_url(url: str | None) -> str:
    base = (url or f"http://127.0.0.1:{get_settings().server_port}").rstrip("/")
    base = "ws" + base[4:] if base.startswith("http") else base
    base = base[: -len("/v1")] if base.endswith("/v1") else base
    return base + "/v1/realtime?intent=transcription"


async def _chunks(args: argparse.Namespace) -> AsyncIterator[bytes]:
    if args.source == "-":
        size = int(args.rate * CHUNK_SECONDS) * 2
        while block := await asyncio.to_thread(sys.stdin.buffer.read, size):
            yield block
        return
    import numpy as np

    from stt_engine.audio import decode

    audio = await asyncio.to_thread(decode, args.source)
    pcm = (np.clip(audio.samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    size = int(16000 * CHUNK_SECONDS) * 2
    for i in range(0, len(pcm), size):
        yield pcm[i: i + size]


async def _listen(args: argparse.Namespace) -> int:
    import websockets

    rate = args.rate if args.source == "-" else 16000
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    turn_detection = None if args.no_vad else {"type": "server_vad", "silence_duration_ms": args.silence_ms}
    session = {"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": rate},
        "transcription": {"model": "whisper-1", "language": args.language, "prompt": args.prompt},
        "turn_detection": turn_detection,
    }}}
    printer = _Printer()
    async with websockets.connect(_ws_url(args.url), additional_headers=headers, max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": session}))
        receiver = asyncio.create_task(printer.run(ws))
        started = time.monotonic()
        sent = 0.0
        async for block in _chunks(args):
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(block).decode()}))
            sent += len(block) / 2 / rate
            delay = started + sent / args.speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        if args.no_vad:
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        else:  # trailing silence lets the server's VAD end the last turn
            silence = bytes(int(rate * (args.silence_ms / 1000 + 0.3)) * 2)
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(silence).decode()}))
        await printer.wait_idle(timeout=60.0)
        receiver.cancel()
    return 1 if printer.failed else 0


class _Printer:
    """Prints the server's events: partial text on stderr, finished turns on stdout."""

    def __init__(self) -> None:
        self.open: set[str] = set()
        self.text: dict[str, str] = {}
        self.failed = False
        self.seen_audio = False
        self._tty = sys.stderr.isatty()
        self._changed = asyncio.Event()

    async def run(self, ws: Any) -> None:
        async for raw in ws:
            self.handle(json.loads(raw))
            self._changed.set()

    def handle(self, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        item = ev.get("item_id", "")
        if kind in ("input_audio_buffer.speech_started", "input_audio_buffer.committed"):
            self.open.add(item)
            self.seen_audio = True
        elif kind == "conversation.item.input_audio_transcription.delta":
            self.text[item] = self.text.get(item, "") + (ev.get("delta") or "")
            line = self.text[item]
            if self._tty:
                sys.stderr.write("\r\033[K\033[2m" + line[-(os.get_terminal_size(2).columns - 1):] + "\033[0m")
            else:
                sys.stderr.write(f"  ~ {line}\n")
            sys.stderr.flush()
        elif kind == "conversation.item.input_audio_transcription.completed":
            self.open.discard(item)
            if self._tty:
                sys.stderr.write("\r\033[K")
            print(ev.get("transcript", ""), flush=True)
        elif kind == "conversation.item.input_audio_transcription.failed":
            self.open.discard(item)
            self.failed = True
            print(f"error: {ev.get('error', {}).get('message')}", file=sys.stderr)
        elif kind == "error":
            self.failed = True
            print(f"error: {ev.get('error', {}).get('message')}", file=sys.stderr)

    async def wait_idle(self, timeout: float) -> None:
        """Until every started turn has its final text (bounded)."""
        deadline = time.monotonic() + timeout
        await asyncio.sleep(0.5)
        while self.open and time.monotonic() < deadline:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), deadline - time.monotonic())
            except asyncio.TimeoutError:
                break
