"""`stt-engine postprocess` and `stt-engine llm-check`: the original `python vllm_client.py`, grown up.

`postprocess` runs a task on a text file (or stdin) the same way the server does; `llm-check` tells an
operator whether the configured LLM server works, and if not, what to fix. Both read the usual
settings (environment / `.env`), with `--base-url`, `--model` and `--api-key` as overrides.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from stt_engine.errors import STTError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `postprocess` and `llm-check` subcommands to the main CLI."""
    run = subparsers.add_parser(
        "postprocess",
        help="correct, summarize or write minutes of a transcript with the LLM server",
        description="Post-process a transcript text file with the configured OpenAI-compatible LLM server.",
    )
    run.add_argument("file", help="transcript text file, or - for stdin")
    run.add_argument("--task", default="summarize", help="correct, summarize, minutes, custom, or a PROMPTS_DIR task")
    run.add_argument("--prompt", help="the instruction for --task custom (or extra instructions for others)")
    run.add_argument("--language", help="transcript language code, e.g. ko or en")
    run.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    run.add_argument("--api", choices=["chat", "completions"], default="chat",
                     help="use /v1/chat/completions (default) or /v1/completions")
    run.add_argument("--json", action="store_true", help="print the full result as JSON")
    _add_connection_options(run)
    run.set_defaults(func=_postprocess_command)

    check = subparsers.add_parser(
        "llm-check",
        help="check the connection to the LLM server (VLLM_BASE_URL)",
        description="Check that the LLM server answers: health, models, and one tiny generation.",
    )
    check.add_argument("--no-generate", action="store_true", help="skip the test generation")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_connection_options(check)
    check.set_defaults(func=_llm_check_command)


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", help="override VLLM_BASE_URL, e.g. http://localhost:8000/v1")
    parser.add_argument("--model", help="override VLLM_MODEL")
    parser.add_argument("--api-key", help="override VLLM_API_KEY")
    parser.add_argument("--timeout", type=float, help="override VLLM_TIMEOUT_S (seconds)")


def _settings(args: argparse.Namespace) -> Any:
    from stt_engine.config import Settings

    overrides = {
        "vllm_base_url": args.base_url,
        "vllm_model": args.model,
        "vllm_api_key": args.api_key,
        "vllm_timeout_s": args.timeout,
    }
    return Settings(**{key: value for key, value in overrides.items() if value is not None})


def _read_text(file: str) -> str:
    if file == "-":
        return sys.stdin.read()
    return Path(file).read_text(encoding="utf-8")


def _postprocess_command(args: argparse.Namespace) -> int:
    from stt_engine.postprocess.service import PostProcessor

    try:
        text = _read_text(args.file)
        processor = PostProcessor.from_settings(_settings(args))
        processor.validate(args.task, args.prompt)
    except (OSError, ValueError, STTError) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return EXIT_USAGE
    if not processor.enabled:
        print("error: VLLM_BASE_URL is not set (or pass --base-url)", file=sys.stderr)
        return EXIT_USAGE
    processor.api = args.api
    return asyncio.run(_postprocess(processor, text, args))


async def _postprocess(processor: Any, text: str, args: argparse.Namespace) -> int:
    try:
        if args.stream and not args.json:
            try:
                async for piece in processor.stream(text, args.task, args.prompt, args.language):
                    print(piece, end="", flush=True)
                print()
            except STTError as exc:
                print(f"\nerror: {exc.message}", file=sys.stderr)
                return EXIT_FAILED
            return EXIT_OK
        result = await processor.run(text, args.task, args.prompt, args.language)
    finally:
        await processor.aclose()
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    elif result["text"] is not None:
        print(result["text"])
    for warning in result.get("warnings") or []:
        print(f"warning: {warning}", file=sys.stderr)
    if result["error"]:
        print(f"error: {result['error']['message']}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _llm_check_command(args: argparse.Namespace) -> int:
    from stt_engine.postprocess.client import LLMClient

    try:
        settings = _settings(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not settings.vllm_base_url:
        print("LLM post-processing is not configured: set VLLM_BASE_URL (or pass --base-url)", file=sys.stderr)
        return EXIT_USAGE
    report = asyncio.run(_llm_check(LLMClient.from_settings(settings), generate=not args.no_generate))
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        _print_report(report)
    return EXIT_OK if report["ok"] else EXIT_FAILED


async def _llm_check(client: Any, *, generate: bool) -> dict[str, Any]:
    """Health, then models, then one short generation; stops at the first failure with its reason."""
    report: dict[str, Any] = {"base_url": client.base_url, "ok": False}
    try:
        report["health"] = await client.health()
        if not report["health"]["ok"]:
            return report
        models = await client.models()
        report["models"] = [{"id": m.id, "max_model_len": m.max_model_len} for m in models]
        report["model"] = await client.resolve_model()
        if generate:
            started = time.perf_counter()
            answer = await client.generate([{"role": "user", "content": "Reply with the single word: OK"}], max_tokens=8)
            report["generation"] = {
                "text": answer.text.strip(),
                "latency_ms": round((time.perf_counter() - started) * 1000, 1),
            }
        report["ok"] = True
    except STTError as exc:
        report["error"] = exc.message
    finally:
        await client.aclose()
    return report


def _print_report(report: dict[str, Any]) -> None:
    print(f"LLM server: {report['base_url']}")
    health = report.get("health") or {}
    if health:
        state = "ok" if health.get("ok") else ("answering, not usable" if health.get("reachable") else "unreachable")
        print(f"  health:     {state} ({health.get('latency_ms')} ms)")
        if health.get("error"):
            print(f"  problem:    {health['error']['message']}")
    for model in report.get("models") or []:
        context = f"context {model['max_model_len']}" if model["max_model_len"] else "context not reported"
        print(f"  model:      {model['id']} ({context})")
    if report.get("model"):
        print(f"  using:      {report['model']}")
    if report.get("generation"):
        generation = report["generation"]
        print(f"  generation: {generation['text']!r} ({generation['latency_ms']} ms)")
    if report.get("error"):
        print(f"  problem:    {report['error']}")
    print("OK" if report["ok"] else "FAILED")
