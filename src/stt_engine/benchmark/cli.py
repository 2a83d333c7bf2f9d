"""`stt-engine bench`: the server against faster-whisper itself and against the machine's ceiling, like with like,
speed and accuracy in one run.

Raw is what a user of the library gets: `WhisperModel(path, device=<the server's>, compute_type=<the server's>)` with
its default threads, `.transcribe(audio, language=<the clip's>, beam_size=5, vad_filter=True,
condition_on_previous_text=False)`, consumed fully. The device and compute type are read from the server's /health,
so on a GPU host the library runs on the GPU too.

- Short clips (2-12 s, English and Korean by default): the library in a loop; the ceiling (N one-thread library
  processes sharing the same work, N = the server's workers: what running requests side by side can gain here); then
  the server at 1, 4 and 8 concurrent clients. Twice: "language given" (the clip's language to both sides) and
  "language detected" (none to either). On CUDA the library and the ceiling use `BatchedInferencePipeline`.
- Long clips (over 60 s), each alone, language given: raw sequential, the library's `BatchedInferencePipeline`
  (batch 8, same options) and the server; then a short clip sent while the longest one is in flight (fairness).
- Accuracy beside speed: WER (CER for ko/zh/ja) of every clip against the manifest's references, best of
  `reference` and `reference_alt`, for every run, with `stt_engine.textnorm`.
- Peak RSS of the server per run, of this process while it runs the library, of the ceiling's processes summed.

Throughput is audio seconds per wall-clock second; ratios are against the library and the ceiling measured in the
same run, so machine speed cancels out (not the load of other work, which moves them). The short-clip runs are
repeated (`--repeats`, default 2) in turn, library, ceiling, server, library, ceiling, server, and each kind's repeats
are pooled: a 25 s run on a shared VM moves by 10-15 % from one minute to the next, and a ratio of two runs taken a
minute apart moves with it; interleaved repeats put the drift on both sides. Writes `latest.json` and
`latest.png` to `--output-dir` (default bench/results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stt_engine.benchmark import clips as clipset
from stt_engine.benchmark import library, report, server_runs
from stt_engine.benchmark.measure import MODES, Run
from stt_engine.benchmark.server import RssSampler, serving

SHORT_RANGE = (2.0, 12.0)
LONG_MIN_SECONDS = 60.0
# A loaded machine should slow a run down, not abort it with the server's 504 (60 s + 2 x audio by default);
# --server-env REQUEST_TIMEOUT_BASE_S=... overrides it.
SERVER_DEFAULTS = {"REQUEST_TIMEOUT_BASE_S": "3600"}


def _parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--server-env takes KEY=VALUE, got {pair!r}")
        env[key.strip()] = value
    return env


def _fail(message: str) -> int:
    print(f"stt-engine bench: {message}", file=sys.stderr)
    return 2


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark; exit 2 on bad input (no manifest, no clips, bad --server-env)."""
    from stt_engine.config import Settings
    from stt_engine.models import resolve_model

    audio_dir = Path(args.audio_dir) if args.audio_dir else clipset.default_audio_dir()
    if not (audio_dir / "manifest.tsv").is_file():
        return _fail(f"no manifest.tsv in {audio_dir} (use --audio-dir)")
    try:
        server_env = _parse_env(args.server_env)
    except ValueError as exc:
        return _fail(str(exc))
    quick = args.quick
    rounds = args.rounds or (1 if quick else 2)
    repeats_wanted = args.repeats or (1 if quick else 2)
    concurrency = args.concurrency or ([1, 2] if quick else [1, 4, 8])
    modes = args.modes or list(MODES)
    limit = args.clips or (2 if quick else None)
    overrides = {k.lower(): v for k, v in server_env.items() if k.lower() in Settings.model_fields}
    settings = Settings(**overrides)
    model = resolve_model(settings)

    clips = [clipset.with_duration(c) for c in clipset.read_manifest(audio_dir) if c.scored]
    short = clipset.pick_short(clips, args.languages, *SHORT_RANGE, limit)
    long_clips = [] if quick or args.no_long else [c for c in clips if c.duration > LONG_MIN_SECONDS]
    if not short:
        return _fail(f"no {SHORT_RANGE[0]:g}-{SHORT_RANGE[1]:g} s clips in {', '.join(args.languages)} "
                     f"with a reference in {audio_dir}/manifest.tsv")
    load_start = [round(x, 2) for x in os.getloadavg()]  # other work on the machine moves every ratio
    audio = library.decode(short + long_clips)
    payloads = {c.name: c.path.read_bytes() for c in short + long_clips}
    print(f"model {model.name} ({model.path}); {len(short)} short clips, {sum(c.duration for c in short):.1f} s "
          f"of audio, {rounds} round(s); {len(long_clips)} long clips; server env {server_env or '(defaults)'}",
          flush=True)

    with serving({**SERVER_DEFAULTS, **server_env, "WHISPER_MODEL": str(model.path)}) as server:
        health = server.health
        print(f"server: {health['device']}, {health['compute_type']}, {health.get('workers')} workers x "
              f"{health.get('threads_per_worker')} threads, batch {health.get('batch_size')}", flush=True)
        spec = library.LibrarySpec(str(model.path), health["device"], health["compute_type"],
                                   settings.whisper_device_index)
        processes = args.ceiling_processes or int(health.get("workers") or 1)
        raw_model = spec.load()
        transcribe = library.transcriber(raw_model, spec)
        library_name = ("raw faster-whisper (BatchedInferencePipeline)" if spec.batched
                        else "raw faster-whisper (sequential)")
        library.raw_text(transcribe, audio[short[0].name], short[0].language)  # warm-up, both sides
        server.transcribe(short[0].path, payloads[short[0].name], short[0].language)
        own_rss = RssSampler(os.getpid())
        runs: list[Run] = []
        rows: list[dict[str, Any]] = []
        for mode in modes:
            repeats: list[list[Run]] = []  # per repeat: library, ceiling, then the server at each concurrency
            for repeat in range(1, repeats_wanted + 1):
                raw = library.sequential_run(transcribe, short, audio, mode, rounds, own_rss, library_name)
                print(f"{mode} #{repeat}: library {raw.wall_seconds:.1f} s", flush=True)
                ceiling = library.ceiling_run(spec, processes, short, mode, rounds)
                print(f"{mode} #{repeat}: ceiling {ceiling.wall_seconds:.1f} s", flush=True)
                done = [raw, ceiling]
                for clients in concurrency:
                    done.append(server_runs.server_run(server, short, payloads, mode, clients, rounds))
                    print(f"{mode} #{repeat}: server c={clients} {done[-1].wall_seconds:.1f} s "
                          f"({done[-1].throughput / ceiling.throughput:.2f} of the ceiling)", flush=True)
                repeats.append(done)
            mode_runs = [Run.pooled(list(same)) for same in zip(*repeats)]
            raw, ceiling = mode_runs[0], mode_runs[1]
            runs += mode_runs
            rows += [report.run_row(run, raw, ceiling, short,
                                    [r[i].throughput / r[1].throughput for r in repeats])
                     for i, run in enumerate(mode_runs)]
        long_rows = server_runs.long_clip_rows(raw_model, library.batched(raw_model), server, long_clips, audio,
                                               payloads)
        fairness = None
        if long_clips:
            longest = max(long_clips, key=lambda c: c.duration)
            shortest = min(short, key=lambda c: abs(c.duration - 5.0))
            fairness = server_runs.fairness_row(server, longest, shortest, payloads)
        own_rss.stop()

    goals = report.targets(rows)
    report.print_tables(rows, goals, long_rows, fairness)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "python": platform.python_version(), "load_average_start": load_start,
               "load_average_end": [round(x, 2) for x in os.getloadavg()]}
    result = {
        "machine": machine, "model": model.name, "audio_dir": str(audio_dir), "quick": quick, "rounds": rounds,
        "repeats": repeats_wanted,
        "raw": {"device": health["device"], "compute_type": health["compute_type"], "beam_size": library.BEAM_SIZE,
                "vad_filter": True, "condition_on_previous_text": False, "threads": "library default",
                "short_clips_pipeline": "BatchedInferencePipeline" if spec.batched else "WhisperModel.transcribe",
                "batched_pipeline_batch_size": library.BATCH_SIZE},
        "ceiling": {"processes": processes, "threads_per_process": 1,
                    "pipeline": "BatchedInferencePipeline" if spec.batched else "WhisperModel.transcribe"},
        "server": {"env": {**SERVER_DEFAULTS, **server_env}, **{k: health.get(k) for k in ("device", "compute_type", "workers",
                                                                    "threads_per_worker", "batch_size")},
                   "beam_size": settings.whisper_beam_size, "vad_filter": settings.whisper_vad_filter},
        "clips": [c.name for c in short],
        "runs": rows,
        "targets": goals,
        "per_clip_error": report.per_clip(runs, short),
        "long_clips": long_rows,
        "fairness": fairness,
    }
    (out_dir / "latest.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    title = (f"stt-engine bench: {machine['cpu']}, {machine['cores']} cores, {model.name}, {health['device']} "
             f"{health['compute_type']}; {len(short)} clips x {rounds} rounds x {repeats_wanted} repeats; load average {load_start[0]:g} at start, "
             f"{machine['load_average_end'][0]:g} at end")
    report.chart(rows, out_dir / "latest.png", title)
    print(f"\nwrote {out_dir / 'latest.json'} and {out_dir / 'latest.png'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser(
        "bench", help="benchmark the server against faster-whisper itself and the machine's ceiling",
        description="Raw faster-whisper, the ceiling (N one-thread library processes sharing the work) and the "
        "server on the same weights, device and options, language given and detected, at several concurrencies; "
        "long clips against BatchedInferencePipeline; WER/CER beside speed.")
    bench.add_argument("--audio-dir", default=None,
                       help="folder with manifest.tsv (default ../shared/audio if present, else tests/data)")
    bench.add_argument("--rounds", type=int, default=None, help="passes over the short clips per run (default 2)")
    bench.add_argument("--repeats", type=int, default=None,
                       help="times the library, the ceiling and the server runs are repeated, interleaved, and "
                            "pooled; each repeat's server / ceiling ratio is listed too (default 2, --quick 1)")
    bench.add_argument("--clips", type=int, default=None,
                       help="use only this many short clips, the shortest of each language in turn (default all)")
    bench.add_argument("--concurrency", type=int, nargs="+", default=None, help="server clients (default 1 4 8)")
    bench.add_argument("--ceiling-processes", type=int, default=None,
                       help="one-thread library processes of the ceiling (default: the server's workers)")
    bench.add_argument("--modes", nargs="+", choices=MODES, default=None,
                       help="language given to both sides, detected by both, or both (default)")
    bench.add_argument("--languages", nargs="+", default=["en", "ko"], help="languages of the short clips")
    bench.add_argument("--no-long", action="store_true", help="skip the long clips (over 60 s)")
    bench.add_argument("--quick", action="store_true",
                       help="smoke test: 2 short clips, 1 round, concurrency 1 and 2, no long clips")
    bench.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                       help="server setting for this run, repeatable (e.g. WHISPER_NUM_WORKERS=1)")
    bench.add_argument("--output-dir", default="bench/results", help="where latest.json and latest.png go")
    bench.set_defaults(func=cmd_bench)
