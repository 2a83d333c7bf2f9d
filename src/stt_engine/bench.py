"""`stt-engine bench`: the server against faster-whisper itself, like with like, speed and accuracy in one run.

Raw is what a user of the library gets: `WhisperModel(path, device=<the server's>, compute_type=<the server's>)` with
its default threads, `.transcribe(audio, language=<the clip's>, beam_size=5, vad_filter=True,
condition_on_previous_text=False)`, consumed fully. The device and compute type are read from the server's /health,
so on a GPU host the library runs on the GPU too.

- Short clips (2-12 s, English and Korean by default): raw in a loop, then the server at 1, 4 and 8 concurrent
  clients. Twice: "language given" (the clip's language to both sides) and "language detected" (none to either).
- Long clips (over 60 s), each alone, language given: raw sequential, the library's `BatchedInferencePipeline`
  (batch 8, same options) and the server; then a short clip sent while the longest one is in flight (fairness).
- Accuracy beside speed: WER (CER for ko/zh/ja) of every clip against the manifest's references, best of
  `reference` and `reference_alt`, for raw and for every server run, with `stt_engine.textnorm`.
- Peak RSS of the server process per run, and of this process while it runs the library.

Throughput is audio seconds per wall-clock second; ratios are against raw measured in the same run, so machine
speed cancels out. Writes `latest.json` and `latest.png` (throughput and p95 latency vs concurrency) to
`--output-dir` (default bench/results).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from stt_engine import textnorm

REPO = Path(__file__).resolve().parents[2]
SAMPLE_RATE = 16000
BEAM_SIZE = 5
BATCH_SIZE = 8
SHORT_RANGE = (2.0, 12.0)
LONG_MIN_SECONDS = 60.0
MODES = ("given", "detected")


def default_audio_dir() -> Path:
    """../shared/audio (beside the checkout, or the working directory) when present, else the repo's tests/data."""
    for candidate in (Path("../shared/audio"), REPO.parent / "shared" / "audio", Path("tests/data"),
                      REPO / "tests" / "data"):
        if (candidate / "manifest.tsv").is_file():
            return candidate
    return Path("../shared/audio")


@dataclass(frozen=True)
class Clip:
    """One manifest row. `duration` comes from the manifest, or from the decoded audio when the column is empty."""

    path: Path
    name: str
    language: str
    duration: float
    references: tuple[str, ...]


def read_manifest(audio_dir: Path) -> list[Clip]:
    """Rows of `manifest.tsv` (file, language, duration_seconds, reference, reference_alt) that have a reference."""
    with (audio_dir / "manifest.tsv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    clips = []
    for row in rows:
        refs = tuple(r for r in (row.get("reference") or "", row.get("reference_alt") or "") if r.strip())
        language = (row.get("language") or "").strip()
        if not refs or not language or language == "none" or not (audio_dir / row["file"]).is_file():
            continue
        duration = float(row["duration_seconds"]) if (row.get("duration_seconds") or "").strip() else 0.0
        clips.append(Clip(audio_dir / row["file"], row["file"], language, duration, refs))
    return clips


def pick_short(clips: list[Clip], languages: Sequence[str], quick: bool) -> list[Clip]:
    """2-12 s clips in `languages`; quick mode keeps the shortest clip of each of the first two languages."""
    low, high = SHORT_RANGE
    short = [c for c in clips if c.language in languages and low <= c.duration <= high]
    if not quick:
        return short
    picked: list[Clip] = []
    for language in languages:
        of_language = sorted((c for c in short if c.language == language), key=lambda c: c.duration)
        picked += of_language[:1]
    return (picked + [c for c in sorted(short, key=lambda c: c.duration) if c not in picked])[:2]


# --- measuring -----------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One pass of work: its timings, and the text each clip got (the last round's)."""

    mode: str
    name: str
    concurrency: int
    requests: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)
    peak_rss_mb: float | None = None

    @property
    def throughput(self) -> float:
        return self.audio_seconds / self.wall_seconds if self.wall_seconds else 0.0

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else 0.0


class RssSampler:
    """Peak resident memory of one process, sampled every 50 ms in a background thread."""

    def __init__(self, pid: int) -> None:
        import psutil

        self._process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self._process.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.05)

    def reset(self) -> None:
        self.peak = 0

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20

    def stop(self) -> None:
        self._stop.set()


class ServerProcess:
    """`stt-engine serve` on a free port with `env` added; its log goes to a temporary file shown if it fails."""

    def __init__(self, env: dict[str, str], ready_timeout: float = 300.0) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        self.log = tempfile.NamedTemporaryFile(prefix="stt-engine-bench-", suffix=".log", delete=False)
        full_env = {**os.environ, **env, "SERVER_HOST": "127.0.0.1", "SERVER_PORT": str(port)}
        self.proc = subprocess.Popen([sys.executable, "-m", "stt_engine", "serve"], env=full_env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited during start-up:\n{self.log_tail()}")
            try:
                if httpx.get(self.base + "/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server was not ready in {ready_timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.2)
        self.health: dict[str, Any] = httpx.get(self.base + "/health", timeout=10).json()
        self.rss = RssSampler(self.proc.pid)

    def log_tail(self) -> str:
        return Path(self.log.name).read_text(encoding="utf-8", errors="replace")[-3000:]

    def transcribe(self, clip: Clip, payload: bytes, language: str | None) -> str:
        data = {"response_format": "json", **({"language": language} if language else {})}
        response = httpx.post(self.base + "/v1/audio/transcriptions", files={"file": (clip.path.name, payload)},
                              data=data, timeout=1800)
        response.raise_for_status()
        return str(response.json()["text"])

    def stop(self) -> None:
        if hasattr(self, "rss"):
            self.rss.stop()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


def _language(clip: Clip, mode: str) -> str | None:
    return clip.language if mode == "given" else None


def _raw_text(transcribe: Callable[..., Any], audio: Any, language: str | None) -> str:
    """The library's call, as the issue defines raw; the segment generator is consumed fully."""
    segments, _info = transcribe(audio, language=language, beam_size=BEAM_SIZE, vad_filter=True,
                                 condition_on_previous_text=False)
    return " ".join(s.text.strip() for s in segments).strip()


def raw_run(model: Any, clips: list[Clip], audio: dict[str, Any], mode: str, rounds: int, rss: RssSampler) -> Run:
    """`WhisperModel.transcribe` in a loop over the clips, `rounds` times."""
    run = Run(mode, "raw faster-whisper (sequential)", 1)
    rss.reset()
    started = time.perf_counter()
    for _ in range(rounds):
        for clip in clips:
            t0 = time.perf_counter()
            run.texts[clip.name] = _raw_text(model.transcribe, audio[clip.name], _language(clip, mode))
            run.latencies.append(time.perf_counter() - t0)
            run.requests += 1
            run.audio_seconds += clip.duration
    run.wall_seconds = time.perf_counter() - started
    run.peak_rss_mb = rss.peak_mb
    return run


def server_run(server: ServerProcess, clips: list[Clip], payloads: dict[str, bytes], mode: str, concurrency: int,
               rounds: int) -> Run:
    """`rounds` passes over the clips with `concurrency` requests in flight at any time."""
    work = [clip for _ in range(rounds) for clip in clips]
    run = Run(mode, f"server c={concurrency}", concurrency, len(work), sum(c.duration for c in work))
    lock = threading.Lock()

    def one(clip: Clip) -> None:
        t0 = time.perf_counter()
        text = server.transcribe(clip, payloads[clip.name], _language(clip, mode))
        with lock:
            run.latencies.append(time.perf_counter() - t0)
            run.texts[clip.name] = text

    server.rss.reset()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, work))
    run.wall_seconds = time.perf_counter() - started
    run.peak_rss_mb = server.rss.peak_mb
    return run


def _timed(fn: Callable[[], str]) -> tuple[str, float]:
    t0 = time.perf_counter()
    text = fn()
    return text, time.perf_counter() - t0


def long_clip_rows(model: Any, server: ServerProcess, clips: list[Clip], audio: dict[str, Any],
                   payloads: dict[str, bytes]) -> list[dict[str, Any]]:
    """Each long clip alone, language given: raw sequential, raw `BatchedInferencePipeline`, the server."""
    from faster_whisper import BatchedInferencePipeline

    batched = BatchedInferencePipeline(model)

    def batched_transcribe(audio_: Any, **kwargs: Any) -> Any:
        return batched.transcribe(audio_, batch_size=BATCH_SIZE, **kwargs)

    rows = []
    for clip in clips:
        samples = audio[clip.name]
        sequential, t_seq = _timed(lambda: _raw_text(model.transcribe, samples, clip.language))
        pipeline, t_batch = _timed(lambda: _raw_text(batched_transcribe, samples, clip.language))
        server.rss.reset()
        ours, t_server = _timed(lambda: server.transcribe(clip, payloads[clip.name], clip.language))
        rows.append({
            "clip": clip.name, "language": clip.language, "audio_seconds": round(clip.duration, 2),
            "metric": textnorm.metric(clip.language),
            "raw_sequential_s": round(t_seq, 2), "raw_batched_s": round(t_batch, 2), "server_s": round(t_server, 2),
            "raw_sequential_error": round(textnorm.error_rate(sequential, clip.references, clip.language), 4),
            "raw_batched_error": round(textnorm.error_rate(pipeline, clip.references, clip.language), 4),
            "server_error": round(textnorm.error_rate(ours, clip.references, clip.language), 4),
            "server_peak_rss_mb": round(server.rss.peak_mb, 1),
        })
    return rows


def fairness_row(server: ServerProcess, long_clip: Clip, short_clip: Clip,
                 payloads: dict[str, bytes]) -> dict[str, Any]:
    """A short clip's latency alone, and while the long clip is being transcribed (sent 1 s after it)."""
    _, alone = _timed(lambda: server.transcribe(short_clip, payloads[short_clip.name], short_clip.language))
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(server.transcribe, long_clip, payloads[long_clip.name], long_clip.language)
        time.sleep(1.0)
        _, during = _timed(lambda: server.transcribe(short_clip, payloads[short_clip.name], short_clip.language))
        overlapped = not pending.done()  # the long clip was still in flight when the short one came back
        pending.result()
    return {"short_clip": short_clip.name, "long_clip": long_clip.name, "alone_s": round(alone, 2),
            "during_long_s": round(during, 2), "ratio": round(during / alone, 2), "overlapped": overlapped}


# --- reporting -----------------------------------------------------------------------------------------------


def accuracy(run: Run, clips: list[Clip]) -> dict[str, float]:
    """Mean error rate per metric ("wer", "cer") over the clips this run transcribed."""
    by_metric: dict[str, list[float]] = {}
    for clip in clips:
        if clip.name in run.texts:
            rate = textnorm.error_rate(run.texts[clip.name], clip.references, clip.language)
            by_metric.setdefault(textnorm.metric(clip.language), []).append(rate)
    return {name: round(statistics.fmean(rates), 4) for name, rates in sorted(by_metric.items())}


def run_row(run: Run, raw: Run, clips: list[Clip]) -> dict[str, Any]:
    return {
        "mode": run.mode, "name": run.name, "concurrency": run.concurrency, "requests": run.requests,
        "audio_seconds": round(run.audio_seconds, 2), "wall_seconds": round(run.wall_seconds, 3),
        "throughput": round(run.throughput, 3), "ratio_vs_raw": round(run.throughput / raw.throughput, 3),
        "p50": round(statistics.median(run.latencies), 3), "p95": round(run.pct(0.95), 3),
        "p50_vs_raw": round(statistics.median(run.latencies) / statistics.median(raw.latencies), 3),
        "peak_rss_mb": round(run.peak_rss_mb or 0.0, 1), "error": accuracy(run, clips),
    }


def per_clip(runs: list[Run], clips: list[Clip]) -> list[dict[str, Any]]:
    """Every clip's error rate in every run: server vs raw side by side."""
    rows = []
    for clip in clips:
        row: dict[str, Any] = {"clip": clip.name, "language": clip.language, "metric": textnorm.metric(clip.language)}
        for run in runs:
            if clip.name in run.texts:
                key = f"{run.mode}:{'raw' if run.name.startswith('raw') else f'c{run.concurrency}'}"
                row[key] = round(textnorm.error_rate(run.texts[clip.name], clip.references, clip.language), 4)
        rows.append(row)
    return rows


def chart(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, color in zip(MODES, ("tab:blue", "tab:orange")):
        server = [r for r in rows if r["mode"] == mode and r["name"].startswith("server")]
        raw = next((r for r in rows if r["mode"] == mode and r["name"].startswith("raw")), None)
        if not server or raw is None:
            continue
        xs = [r["concurrency"] for r in server]
        ax1.plot(xs, [r["throughput"] for r in server], "o-", color=color, label=f"stt-engine, language {mode}")
        ax1.axhline(raw["throughput"], color=color, linestyle="--", label=f"raw sequential, language {mode}")
        ax2.plot(xs, [r["p95"] for r in server], "o-", color=color, label=f"stt-engine, language {mode}")
        ax2.axhline(raw["p95"], color=color, linestyle="--", label=f"raw, language {mode}")
    ticks = sorted({r["concurrency"] for r in rows})
    ax1.set_xticks(ticks)
    ax2.set_xticks(ticks)
    ax1.set(xlabel="concurrent requests", ylabel="audio s / wall s", title="Throughput", ylim=(0, None))
    ax2.set(xlabel="concurrent requests", ylabel="seconds", title="p95 latency", ylim=(0, None))
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_tables(rows: list[dict[str, Any]], long_rows: list[dict[str, Any]], fairness: dict[str, Any] | None) -> None:
    print(f"\n{'language':9} {'run':32} {'thr s/s':>8} {'vs raw':>7} {'p50':>6} {'p50/raw':>7} {'p95':>6} "
          f"{'RSS MB':>7}  error")
    for r in rows:
        errors = " ".join(f"{k.upper()} {v:.3f}" for k, v in r["error"].items())
        print(f"{r['mode']:9} {r['name']:32} {r['throughput']:8.2f} {r['ratio_vs_raw']:6.2f}x {r['p50']:6.2f} "
              f"{r['p50_vs_raw']:6.2f}x {r['p95']:6.2f} {r['peak_rss_mb']:7.0f}  {errors}")
    if long_rows:
        print(f"\n{'long clip, alone, language given':46} {'raw seq':>14} {'raw batched':>14} {'server':>14}")
        for r in long_rows:
            m = r["metric"].upper()
            print(f"{r['clip']:46} {r['raw_sequential_s']:6.2f}s {m} {r['raw_sequential_error']:.3f} "
                  f"{r['raw_batched_s']:6.2f}s {m} {r['raw_batched_error']:.3f} "
                  f"{r['server_s']:6.2f}s {m} {r['server_error']:.3f}")
    if fairness:
        print(f"\nfairness: {fairness['short_clip']} alone {fairness['alone_s']:.2f} s, while {fairness['long_clip']} "
              f"is transcribed {fairness['during_long_s']:.2f} s ({fairness['ratio']:.2f}x)")


# --- the command ---------------------------------------------------------------------------------------------


def _with_duration(clip: Clip) -> Clip:
    """The clip with its duration measured from the audio when the manifest left it empty."""
    if clip.duration:
        return clip
    from faster_whisper import decode_audio

    seconds = len(decode_audio(str(clip.path), sampling_rate=SAMPLE_RATE)) / SAMPLE_RATE
    return Clip(clip.path, clip.name, clip.language, seconds, clip.references)


def _parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--server-env takes KEY=VALUE, got {pair!r}")
        env[key.strip()] = value
    return env


@contextmanager
def _server(env: dict[str, str]) -> Iterator[ServerProcess]:
    server = ServerProcess(env)
    try:
        yield server
    finally:
        server.stop()


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark; exit 2 on bad input (no manifest, no clips, bad --server-env)."""
    from faster_whisper import WhisperModel, decode_audio

    from stt_engine.config import Settings
    from stt_engine.models import resolve_model

    audio_dir = Path(args.audio_dir) if args.audio_dir else default_audio_dir()
    if not (audio_dir / "manifest.tsv").is_file():
        print(f"stt-engine bench: no manifest.tsv in {audio_dir} (use --audio-dir)", file=sys.stderr)
        return 2
    try:
        server_env = _parse_env(args.server_env)
    except ValueError as exc:
        print(f"stt-engine bench: {exc}", file=sys.stderr)
        return 2
    quick = args.quick
    rounds = args.rounds or (1 if quick else 2)
    concurrency = args.concurrency or ([1, 2] if quick else [1, 4, 8])
    modes = args.modes or list(MODES)
    overrides = {k.lower(): v for k, v in server_env.items() if k.lower() in Settings.model_fields}
    settings = Settings(**overrides)
    model = resolve_model(settings)

    clips = [_with_duration(c) for c in read_manifest(audio_dir)]
    short = pick_short(clips, args.languages, quick)
    long_clips = [] if quick or args.no_long else [c for c in clips if c.duration > LONG_MIN_SECONDS]
    if not short:
        print(f"stt-engine bench: no {SHORT_RANGE[0]:g}-{SHORT_RANGE[1]:g} s clips in {', '.join(args.languages)} "
              f"with a reference in {audio_dir}/manifest.tsv", file=sys.stderr)
        return 2
    audio = {c.name: decode_audio(str(c.path), sampling_rate=SAMPLE_RATE) for c in short + long_clips}
    payloads = {c.name: c.path.read_bytes() for c in short + long_clips}
    print(f"model {model.name} ({model.path}); {len(short)} short clips, {sum(c.duration for c in short):.1f} s "
          f"of audio, {rounds} round(s); {len(long_clips)} long clips; server env {server_env or '(defaults)'}")

    with _server({**server_env, "WHISPER_MODEL": str(model.path)}) as server:
        device, compute_type = server.health["device"], server.health["compute_type"]
        print(f"server: {device}, {compute_type}, {server.health.get('workers')} workers x "
              f"{server.health.get('threads_per_worker')} threads, batch {server.health.get('batch_size')}")
        raw_model = WhisperModel(str(model.path), device=device, compute_type=compute_type,
                                 device_index=settings.whisper_device_index, local_files_only=True)
        _raw_text(raw_model.transcribe, audio[short[0].name], short[0].language)  # warm-up, both sides
        server.transcribe(short[0], payloads[short[0].name], short[0].language)
        own_rss = RssSampler(os.getpid())
        runs: list[Run] = []
        rows: list[dict[str, Any]] = []
        for mode in modes:
            raw = raw_run(raw_model, short, audio, mode, rounds, own_rss)
            mode_runs = [raw] + [server_run(server, short, payloads, mode, c, rounds) for c in concurrency]
            runs += mode_runs
            rows += [run_row(run, raw, short) for run in mode_runs]
        long_rows = long_clip_rows(raw_model, server, long_clips, audio, payloads)
        fairness = None
        if long_clips:
            longest = max(long_clips, key=lambda c: c.duration)
            shortest = min(short, key=lambda c: abs(c.duration - 5.0))
            fairness = fairness_row(server, longest, shortest, payloads)
        health = server.health
        own_rss.stop()

    print_tables(rows, long_rows, fairness)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "python": platform.python_version()}
    result = {
        "machine": machine, "model": model.name, "audio_dir": str(audio_dir), "quick": quick, "rounds": rounds,
        "raw": {"device": health["device"], "compute_type": health["compute_type"], "beam_size": BEAM_SIZE,
                "vad_filter": True, "condition_on_previous_text": False, "threads": "library default",
                "batched_pipeline_batch_size": BATCH_SIZE},
        "server": {"env": server_env, **{k: health.get(k) for k in ("device", "compute_type", "workers",
                                                                    "threads_per_worker", "batch_size")},
                   "beam_size": settings.whisper_beam_size, "vad_filter": settings.whisper_vad_filter},
        "clips": [c.name for c in short],
        "runs": rows,
        "per_clip_error": per_clip(runs, short),
        "long_clips": long_rows,
        "fairness": fairness,
    }
    (out_dir / "latest.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    title = (f"stt-engine bench: {machine['cpu']}, {machine['cores']} cores, {model.name}, {health['device']} "
             f"{health['compute_type']}; {len(short)} clips x {rounds} rounds")
    chart(rows, out_dir / "latest.png", title)
    print(f"\nwrote {out_dir / 'latest.json'} and {out_dir / 'latest.png'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser(
        "bench", help="benchmark the server against faster-whisper itself (speed and accuracy)",
        description="Raw faster-whisper vs the server on the same weights, device and options, language given and "
        "detected, at several concurrencies; long clips against BatchedInferencePipeline; WER/CER beside speed.")
    bench.add_argument("--audio-dir", default=None,
                       help="folder with manifest.tsv (default ../shared/audio if present, else tests/data)")
    bench.add_argument("--rounds", type=int, default=None, help="passes over the short clips per run (default 2)")
    bench.add_argument("--concurrency", type=int, nargs="+", default=None, help="server clients (default 1 4 8)")
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
