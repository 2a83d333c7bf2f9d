"""`stt-engine` command: serve, transcribe, and the model/deployment/post-processing tools."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from stt_engine import __version__
from stt_engine.config import get_settings
from stt_engine.errors import STTError


def _register_optional(subparsers: argparse._SubParsersAction) -> None:
    """Subcommands that live beside their code (models, post-processing, benchmark)."""
    registrars: list[Callable[[argparse._SubParsersAction], None]] = []
    for module_name in (
        "stt_engine.models.cli", "stt_engine.postprocess.cli", "stt_engine.bench", "stt_engine.realtime.client"
    ):
        try:
            module = __import__(module_name, fromlist=["register"])
        except ImportError:
            continue
        registrars.append(module.register)
    for register in registrars:
        register(subparsers)


def cmd_serve(args: argparse.Namespace) -> int:
    """Start the HTTP server. Refuses to start (exit 2) when no model can be found."""
    import uvicorn

    from stt_engine.api.app import create_app
    from stt_engine.logging_setup import configure_logging
    from stt_engine.models import resolve_model

    overrides = {k: v for k, v in {"server_host": args.host, "server_port": args.port}.items() if v is not None}
    settings = get_settings().model_copy(update=overrides)
    configure_logging(settings)
    try:
        resolved = resolve_model(settings)
    except STTError as exc:
        print(f"stt-engine: cannot start: {exc.message}", file=sys.stderr)
        return 2
    logging.getLogger("stt_engine").info("model: %s (%s, from %s)", resolved.name, resolved.path, resolved.source)
    app = create_app(settings, model=resolved)
    # uvicorn turns SIGTERM into a graceful stop (no new connections, in-flight requests finish within
    # SHUTDOWN_GRACE_S), then re-raises the signal with the handler it found installed. A no-op handler makes
    # that re-raise harmless, so a graceful stop exits 0 instead of dying by the signal.
    signal.signal(signal.SIGTERM, _stopped_by_sigterm)
    uvicorn.run(
        app,
        host=settings.server_host,
        port=settings.server_port,
        log_config=None,
        timeout_graceful_shutdown=settings.shutdown_grace_s,  # type: ignore[arg-type]  # uvicorn waits any float
    )
    scheduler = app.state.scheduler
    if scheduler is not None and scheduler.stats.busy_workers:
        # SHUTDOWN_GRACE_S ran out mid-batch: the interpreter must not tear down under CTranslate2's threads
        # (that aborts the process), so leave at once, as a completed stop.
        logging.getLogger("stt_engine").warning("stopped with %d batches unfinished", scheduler.stats.busy_workers)
        logging.shutdown()
        sys.stdout.flush()
        os._exit(0)
    logging.getLogger("stt_engine").info("stopped")
    return 0


def _stopped_by_sigterm(signum: int, frame: object) -> None:
    """Runs only when uvicorn re-raises SIGTERM after its graceful shutdown has finished: nothing left to do."""


def cmd_transcribe(args: argparse.Namespace) -> int:
    """Transcribe files with the local model, no server needed (the server's scheduler spreads the work)."""
    import asyncio

    from stt_engine.api.transcription import build_options
    from stt_engine.audio import decode
    from stt_engine.engine import Engine
    from stt_engine.formats import ResponseFormat, render
    from stt_engine.models import resolve_model
    from stt_engine.scheduler import Scheduler

    settings = get_settings()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        engine = Engine(resolve_model(settings), settings)
        options = build_options(
            settings, language=args.language, task=args.task, prompt=args.prompt,
            word_timestamps=args.word_timestamps, beam_size=args.beam_size,
        )
    except STTError as exc:
        print(f"stt-engine: {exc.message}", file=sys.stderr)
        return 2
    scheduler = Scheduler(engine, timeout_base_s=1e9)  # no timeout at a terminal
    fmt = ResponseFormat(args.format)
    status = 0
    for name in args.files:
        try:
            started = time.perf_counter()
            audio = decode(name, max_seconds=settings.max_audio_seconds)
            transcript = asyncio.run(scheduler.transcribe(audio, options))
            elapsed = time.perf_counter() - started
        except STTError as exc:
            print(f"stt-engine: {name}: {exc.message}", file=sys.stderr)
            status = 1
            continue
        body = render(transcript, fmt, include_words=args.word_timestamps)
        text = json.dumps(body, ensure_ascii=False, indent=2) if isinstance(body, dict) else body
        if args.output_dir:
            out = Path(args.output_dir) / (Path(name).stem + "." + ("json" if isinstance(body, dict) else
                                                                    {"text": "txt"}.get(fmt.value, fmt.value)))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
            print(f"{name}: {transcript.duration:.1f} s of {transcript.language} in {elapsed:.2f} s -> {out}",
                  file=sys.stderr)
        else:
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
    scheduler.close(timeout=0)
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stt-engine", description="Self-hosted speech-to-text server (Whisper).")
    parser.add_argument("--version", action="version", version=f"stt-engine {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="start the HTTP server (settings from the environment / .env)")
    serve.add_argument("--host", default=None, help="override SERVER_HOST")
    serve.add_argument("--port", type=int, default=None, help="override SERVER_PORT")
    serve.set_defaults(func=cmd_serve)

    tr = sub.add_parser("transcribe", help="transcribe files locally, without a server")
    tr.add_argument("files", nargs="+", metavar="FILE")
    tr.add_argument("--language", "-l", default=None, help="ISO-639-1 code (detected when omitted)")
    tr.add_argument("--task", choices=["transcribe", "translate"], default="transcribe")
    tr.add_argument("--format", "-f", choices=["text", "json", "verbose_json", "srt", "vtt"], default="text")
    tr.add_argument("--prompt", default=None, help="initial prompt (vocabulary, style)")
    tr.add_argument("--beam-size", type=int, default=None)
    tr.add_argument("--word-timestamps", action="store_true")
    tr.add_argument("--output-dir", "-o", default=None, help="write FILE.<ext> here instead of printing")
    tr.set_defaults(func=cmd_transcribe)

    _register_optional(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    return int(args.func(args) or 0)

