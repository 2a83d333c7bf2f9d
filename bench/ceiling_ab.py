"""Server configurations against the ceiling, in turn, in one run: which setting or change moves the throughput.

    PYTHONPATH=src python bench/ceiling_ab.py [--clients 8] [--repeats 2] [--output bench/results/ceiling_ab.json]
        [NAME:KEY=VALUE,KEY=VALUE ...]

Every variant is a server of its own (the defaults as "default", then one per NAME:settings argument), all started
up front. Each repeat runs the ceiling (two one-thread library processes, as `stt-engine bench` runs it), then every
server in turn on the same short clips (`--clients` at a time, 2 rounds). A 20 s run on this kind of shared CPU moves
by 10-20 % from one minute to the next, so only variants measured side by side in one repeat compare; `stt-engine
bench` keeps the figures for the record. Besides wall time, each server's CPU seconds for the work (its process and
its decoder children): a change that saves CPU shows there even when the wall clock drifts.

Example: `PYTHONPATH=src python bench/ceiling_ab.py "nice0:WHISPER_WORKER_NICE=0"`.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from pathlib import Path

import psutil

from stt_engine.benchmark import clips as clipset
from stt_engine.benchmark import library, server_runs
from stt_engine.benchmark.cli import SERVER_DEFAULTS, SHORT_RANGE
from stt_engine.benchmark.server import serving
from stt_engine.config import Settings
from stt_engine.models import resolve_model

ROUNDS = 2


def _variant(arg: str) -> tuple[str, dict[str, str]]:
    name, _, pairs = arg.partition(":")
    return name, dict(pair.split("=", 1) for pair in pairs.split(",") if pair)


def _tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its live children."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="*", help="NAME:KEY=VALUE,KEY=VALUE (server settings of a variant)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default="bench/results/ceiling_ab.json")
    args = parser.parse_args()

    variants = dict([("default", {}), *(_variant(v) for v in args.variants)])
    model = resolve_model(Settings())
    clips = [clipset.with_duration(c) for c in clipset.read_manifest(clipset.default_audio_dir()) if c.scored]
    short = clipset.pick_short(clips, ["en", "ko"], *SHORT_RANGE, None)
    payloads = {c.name: c.path.read_bytes() for c in short}
    spec = library.LibrarySpec(str(model.path), "cpu", "int8", 0)
    results: list[dict[str, object]] = []
    with ExitStack() as stack:
        servers = {name: stack.enter_context(serving({**SERVER_DEFAULTS, "WHISPER_MODEL": str(model.path), **env}))
                   for name, env in variants.items()}
        for server in servers.values():  # warm-up
            server.transcribe(short[0].path, payloads[short[0].name], short[0].language)
        for repeat in range(1, args.repeats + 1):
            ceiling = library.ceiling_run(spec, 2, short, "given", ROUNDS)
            print(f"#{repeat} ceiling {ceiling.wall_seconds:5.1f} s, {ceiling.throughput:.2f} audio s/s", flush=True)
            for name, server in servers.items():
                before = _tree_cpu(server.proc.pid)
                run = server_runs.server_run(server, short, payloads, "given", args.clients, ROUNDS)
                cpu = _tree_cpu(server.proc.pid) - before
                ratio = run.throughput / ceiling.throughput
                print(f"#{repeat} {name:12} {run.wall_seconds:5.1f} s, {ratio:.2f} of the ceiling, CPU {cpu:.1f} s",
                      flush=True)
                results.append({"repeat": repeat, "variant": name, "settings": variants[name],
                                "wall_seconds": round(run.wall_seconds, 2), "vs_ceiling": round(ratio, 3),
                                "cpu_seconds": round(cpu, 1), "ceiling_wall_seconds": round(ceiling.wall_seconds, 2)})
    Path(args.output).write_text(json.dumps({"clients": args.clients, "clips": len(short), "rounds": ROUNDS,
                                             "runs": results}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
