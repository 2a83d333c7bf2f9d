"""`stt-engine` command: serve, transcribe, and the model/deployment/post-processing tools."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from stt_engine import __version__
from stt_engine.config import get_settings
from stt_engine.errors import STTError


def _register_optional(subparsers: argparse._SubParsersAction) -> None:
    """Subcommands that live beside their code (models, post-processing, benchmark)."""
    registrars: list[Callable[[argparse._SubParsersAction], None]] = []
    for module_name in (
        "stt_engine.models.cli", "stt_engine.bundle", "stt_engine.postprocess.cli", "stt_engine.benchmark.cli",
        "stt_engine.realtime.client",
    ):
        try:
            module = __import__(module_name, fromlist=["register"])
        except ImportError:
            continue
        registrars.append(module.register)
    for register in registrars:
        register(subparsers)


_DRAIN_MARGIN_S = 5.0


def _draining_server(config: Any, services: Any) -> Any:
    """uvicorn's server, plus: on SIGTERM the scheduler starts draining at once, so a request still waiting when
    SHUTDOWN_GRACE_S ends gets a 503 in its route's error shape, not uvicorn's plain 500 when it cuts connections.
    Until then the drain also waits for, and admits, the POST requests already in flight (an upload still arriving),
    since uvicorn takes no new connections. `services` is the app's `api.services.Services`."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            services.start_draining()

    return DrainingServer(config)


def cmd_serve(args: argparse.Namespace) -> int:
    """Start the HTTP server. Refuses to start (exit 2) when no model can be found."""
    import uvicorn

    from stt_engine.api.app import create_app
    from stt_engine.api.server import raise_open_file_limit, uvicorn_options, warn_if_exposed
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
    services = app.state.services
    warn_if_exposed(settings)
    budget = raise_open_file_limit(settings)
    services.metrics.connection_limit.set(budget.max_connections)
    tempfile.gettempdir()  # found now: at its first use under a descriptor shortage it would fail with ENOENT
    # uvicorn turns SIGTERM into a graceful stop (no new connections, in-flight requests finish), then re-raises
    # the signal with the handler it found installed. A no-op handler makes that re-raise harmless, so a graceful
    # stop exits 0 instead of dying by the signal.
    signal.signal(signal.SIGTERM, _stopped_by_sigterm)
    config = uvicorn.Config(
        app, host=settings.server_host, port=settings.server_port, log_config=None,
        # our drain answers what is left with 503 at SHUTDOWN_GRACE_S; uvicorn's own cut comes after, as a backstop
        timeout_graceful_shutdown=settings.shutdown_grace_s + _DRAIN_MARGIN_S,  # type: ignore[arg-type]
        **uvicorn_options(settings, budget, on_refused=services.metrics.connections_refused.inc),
    )
    _draining_server(config, services).run()
    scheduler = services.scheduler
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

    from stt_engine.decoder import decode
    from stt_engine.formats import ResponseFormat, render
    from stt_engine.options import build_options
    from stt_engine.runtime import load_engine
    from stt_engine.scheduler import Scheduler
    from stt_engine.textproc import finish_transcript
    from stt_engine.textproc.vocabulary import load_vocabulary

    settings = get_settings()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        engine = load_engine(settings)
        options = build_options(
            settings, engine.supported_languages, language=args.language, task=args.task, prompt=args.prompt,
            word_timestamps=args.word_timestamps, beam_size=args.beam_size,
            vocabulary=load_vocabulary(settings.vocabulary_file),
        )
    except STTError as exc:
        print(f"stt-engine: {exc.message}", file=sys.stderr)
        return 2
    scheduler = Scheduler(engine, timeout_base_s=1e9, max_queue_seconds=float("inf"))  # one file at a time, no timeout
    fmt = ResponseFormat(args.format)
    status = 0
    for name in args.files:
        # A bad file is reported and skipped: the rest of the batch is still transcribed, and the exit status
        # (1) says that something was missing.
        if not Path(name).is_file():
            print(f"stt-engine: {name}: no such file", file=sys.stderr)
            status = 1
            continue
        try:
            started = time.perf_counter()
            audio = decode(name, max_seconds=settings.max_audio_seconds)
            transcript = asyncio.run(scheduler.transcribe(audio, options))
            transcript = finish_transcript(transcript, settings)  # the settings' text processing, as the server
            elapsed = time.perf_counter() - started
        except STTError as exc:
            print(f"stt-engine: {name}: {exc.message}", file=sys.stderr)
            status = 1
            continue
        except OSError as exc:  # unreadable, vanished, a folder ...
            print(f"stt-engine: {name}: {exc.strerror or exc}", file=sys.stderr)
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


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except the uninformative ones (unset, off)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def cmd_worker(args: argparse.Namespace) -> int:
    """Run jobs from Redis (JOBS_URL) on this node's model: add one per GPU node."""
    from stt_engine.jobs.worker import run_worker
    from stt_engine.logging_setup import configure_logging

    settings = get_settings()
    configure_logging(settings)
    return run_worker(settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stt-engine", description="Self-hosted speech-to-text server (Whisper).")
    parser.add_argument("--version", action="version", version=f"stt-engine {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    defaults = get_settings()
    serve = sub.add_parser(
        "serve", help="start the HTTP server (settings from the environment / .env)",
        formatter_class=_DefaultsFormatter,
        description="Start the HTTP server: the /transcribe contract, the OpenAI audio API (/v1/...), /health, "
        "/metrics and /docs. Every other setting comes from environment variables or ./.env (see .env.example); "
        "the defaults shown are the current settings.",
    )
    serve.add_argument("--host", default=defaults.server_host, help="listen address (SERVER_HOST)")
    serve.add_argument("--port", type=int, default=defaults.server_port, help="listen port (SERVER_PORT)")
    serve.set_defaults(func=cmd_serve)

    tr = sub.add_parser(
        "transcribe", help="transcribe files locally, without a server",
        formatter_class=_DefaultsFormatter,
        description="Transcribe audio or video files with the local model (the one `serve` would load), no server "
        "needed. Output goes to stdout, or to --output-dir. A file that is missing or cannot be decoded is "
        "reported and skipped; the others are still transcribed, and the exit status is then 1.",
    )
    tr.add_argument("files", nargs="+", metavar="FILE", help="audio or video files (wav, flac, mp3, m4a, ogg, webm, mp4 ...)")
    tr.add_argument(
        "--language", "-l", default=None,
        help="ISO-639-1 code such as en, ko, ja; detected per file when omitted (WHISPER_DEFAULT_LANGUAGE applies)",
    )
    tr.add_argument("--task", choices=["transcribe", "translate"], default="transcribe",
                    help="transcribe in the spoken language, or translate into English")
    tr.add_argument("--format", "-f", choices=["text", "json", "verbose_json", "srt", "vtt"], default="text",
                    help="output format (the OpenAI response formats)")
    tr.add_argument("--prompt", default=None, help="initial prompt: vocabulary, names, spelling and style to follow")
    tr.add_argument("--beam-size", type=int, default=None,
                    help=f"beam size, 1-20 (default: WHISPER_BEAM_SIZE, now {defaults.whisper_beam_size})")
    tr.add_argument("--word-timestamps", action="store_true", help="add word timings (json and verbose_json)")
    tr.add_argument("--output-dir", "-o", default=None,
                    help="write FILE.<ext> into this folder instead of printing to stdout")
    tr.set_defaults(func=cmd_transcribe)

    worker = sub.add_parser("worker", help="run jobs from Redis (JOBS_URL=redis://...) on this node's model")
    worker.set_defaults(func=cmd_worker)

    _register_optional(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    return int(args.func(args) or 0)

