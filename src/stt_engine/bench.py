"""`stt-engine bench`: raw faster-whisper in a loop vs this server at concurrency 1, 4 and 8, same weights, one run.

Prints a table, writes `bench/results/latest.json` and `bench/results/latest.png` (throughput and p95 latency vs
concurrency). Throughput is audio seconds transcribed per wall-clock second; ratios are against the raw
sequential baseline measured in the same run, so machine speed cancels out.
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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

DEFAULT_AUDIO = Path("../shared/audio")


@dataclass
class Run:
    name: str
    concurrency: int
    requests: int
    audio_seconds: float
    wall_seconds: float
    latencies: list[float] = field(default_factory=list)
    peak_rss_mb: float | None = None
    texts: dict[str, str] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.audio_seconds / self.wall_seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def short_clips(audio_dir: Path, low: float = 2.0, high: float = 12.0) -> list[tuple[Path, float, str]]:
    """English and Korean clips of `low`-`high` s from the manifest (2-12 s: the 'many short requests' workload)."""
    with (audio_dir / "manifest.tsv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [
        (audio_dir / r["file"], float(r["duration_seconds"]), r["language"])
        for r in rows
        if r["language"] in ("en", "ko") and low <= float(r["duration_seconds"]) <= high
    ]


def long_clip_latency(
    model_path: str, server: _ServerProcess, clips: list[tuple[Path, float, str]], beam_size: int
) -> list[dict[str, object]]:
    """One long file, alone: raw sequential, raw `BatchedInferencePipeline` (batch 8) and the server at c=1."""
    from faster_whisper import BatchedInferencePipeline, WhisperModel, decode_audio

    model = WhisperModel(model_path, device="cpu", compute_type="int8", local_files_only=True)
    batched = BatchedInferencePipeline(model)
    rows: list[dict[str, object]] = []
    for path, duration, _ in clips:
        audio = decode_audio(str(path))
        t0 = time.perf_counter()
        list(model.transcribe(audio, beam_size=beam_size, vad_filter=True)[0])
        sequential = time.perf_counter() - t0
        t0 = time.perf_counter()
        list(batched.transcribe(audio, beam_size=beam_size, batch_size=8)[0])
        pipeline = time.perf_counter() - t0
        t0 = time.perf_counter()
        response = httpx.post(
            server.base + "/v1/audio/transcriptions", files={"file": (path.name, path.read_bytes())}, timeout=600
        )
        response.raise_for_status()
        ours = time.perf_counter() - t0
        rows.append({
            "clip": path.name, "audio_seconds": duration, "raw_sequential_s": round(sequential, 2),
            "raw_batched_s": round(pipeline, 2), "server_c1_s": round(ours, 2),
        })
    return rows


def raw_baseline(model_path: str, clips: list[tuple[Path, float, str]], beam_size: int, rounds: int) -> Run:
    """faster-whisper's own `WhisperModel.transcribe` in a loop: what users of the library get."""
    from faster_whisper import WhisperModel, decode_audio

    model = WhisperModel(model_path, device="cpu", compute_type="int8", local_files_only=True)
    audio = {path: decode_audio(str(path)) for path, _, _ in clips}
    list(model.transcribe(audio[clips[0][0]], beam_size=beam_size)[0])  # warm-up
    run = Run("raw faster-whisper (sequential)", 1, 0, 0.0, 0.0)
    started = time.perf_counter()
    for _ in range(rounds):
        for path, duration, _ in clips:
            t0 = time.perf_counter()
            segments, _info = model.transcribe(audio[path], beam_size=beam_size, vad_filter=True)
            run.texts[path.name] = " ".join(s.text.strip() for s in segments)
            run.latencies.append(time.perf_counter() - t0)
            run.requests += 1
            run.audio_seconds += duration
    run.wall_seconds = time.perf_counter() - started
    return run


class _ServerProcess:
    """`stt-engine serve` on a free port, with its peak RSS sampled in the background."""

    def __init__(self, env: dict[str, str]) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        full_env = {**os.environ, **env, "SERVER_HOST": "127.0.0.1", "SERVER_PORT": str(self.port)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stt_engine", "serve"], env=full_env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        self.peak_rss = 0
        self._stop = threading.Event()
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited during start-up")
            try:
                if httpx.get(self.base + "/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server not ready in 180 s")
            time.sleep(0.2)
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        import psutil

        process = psutil.Process(self.proc.pid)
        while not self._stop.is_set():
            try:
                self.peak_rss = max(self.peak_rss, process.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.05)

    def reset_peak(self) -> None:
        self.peak_rss = 0

    def stop(self) -> None:
        self._stop.set()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def server_run(server: _ServerProcess, clips: list[tuple[Path, float, str]], concurrency: int, rounds: int) -> Run:
    """`rounds` passes over the clips, `concurrency` requests in flight at any time."""
    work = [c for _ in range(rounds) for c in clips]
    run = Run(f"server c={concurrency}", concurrency, len(work), sum(d for _, d, _ in work), 0.0)
    payloads = {path: path.read_bytes() for path, _, _ in clips}
    lock = threading.Lock()

    def one(item: tuple[Path, float, str]) -> None:
        path = item[0]
        t0 = time.perf_counter()
        response = httpx.post(
            server.base + "/v1/audio/transcriptions", files={"file": (path.name, payloads[path])},
            data={"response_format": "json"}, timeout=600,
        )
        response.raise_for_status()
        with lock:
            run.latencies.append(time.perf_counter() - t0)
            run.texts[path.name] = response.json()["text"]

    server.reset_peak()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, work))
    run.wall_seconds = time.perf_counter() - started
    run.peak_rss_mb = server.peak_rss / 2**20
    return run


def _word_diff(a: str, b: str) -> float:
    import difflib

    wa, wb = a.lower().split(), b.lower().split()
    if not wa and not wb:
        return 0.0
    return 1 - difflib.SequenceMatcher(None, wa, wb).ratio()


def chart(runs: list[Run], baseline: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    server_runs = [r for r in runs if r is not baseline]
    xs = [r.concurrency for r in server_runs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(xs, [r.throughput for r in server_runs], "o-", label="stt-engine")
    ax1.axhline(baseline.throughput, color="gray", linestyle="--", label="raw faster-whisper, sequential")
    ax1.set(xlabel="concurrent requests", ylabel="audio s / wall s", title="Throughput", ylim=(0, None))
    ax1.legend()
    ax2.plot(xs, [r.pct(0.95) for r in server_runs], "o-", color="tab:red")
    ax2.axhline(baseline.pct(0.95), color="gray", linestyle="--")
    ax2.set(xlabel="concurrent requests", ylabel="seconds", title="p95 latency", ylim=(0, None))
    fig.suptitle(f"stt-engine bench: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cmd_bench(args: argparse.Namespace) -> int:
    from stt_engine.config import get_settings
    from stt_engine.models import resolve_model

    audio_dir = Path(args.audio_dir)
    if not (audio_dir / "manifest.tsv").is_file():
        print(f"stt-engine bench: no manifest.tsv in {audio_dir} (use --audio-dir)", file=sys.stderr)
        return 2
    settings = get_settings()
    model = resolve_model(settings)
    clips = short_clips(audio_dir)
    print(f"model {model.name} ({model.path}); {len(clips)} clips, {sum(d for _, d, _ in clips):.1f} s of audio")

    baseline = raw_baseline(str(model.path), clips, settings.whisper_beam_size, args.rounds)
    import psutil

    baseline.peak_rss_mb = psutil.Process().memory_info().rss / 2**20
    runs = [baseline]
    server = _ServerProcess({"WHISPER_MODEL": str(model.path)})
    try:
        for concurrency in args.concurrency:
            runs.append(server_run(server, clips, concurrency, args.rounds))
        long_rows = long_clip_latency(
            str(model.path), server, short_clips(audio_dir, 60, 600), settings.whisper_beam_size
        )
    finally:
        server.stop()

    c1 = next((r for r in runs if r.concurrency == 1 and r is not baseline), None)
    print(f"\n{'run':34} {'thr (s/s)':>9} {'ratio':>6} {'p50':>6} {'p95':>6} {'RSS MB':>7} {'text diff':>9}")
    result_rows = []
    for run in runs:
        diff = statistics.fmean(_word_diff(run.texts[k], baseline.texts[k]) for k in run.texts) if run.texts else 0.0
        row = {
            "name": run.name, "concurrency": run.concurrency, "requests": run.requests,
            "audio_seconds": round(run.audio_seconds, 2), "wall_seconds": round(run.wall_seconds, 3),
            "throughput": round(run.throughput, 3), "ratio_vs_raw": round(run.throughput / baseline.throughput, 3),
            "p50": round(statistics.median(run.latencies), 3), "p95": round(run.pct(0.95), 3),
            "peak_rss_mb": round(run.peak_rss_mb or 0, 1), "word_diff_vs_raw": round(diff, 4),
        }
        if c1 is not None and run is not baseline:
            row["word_diff_vs_c1"] = round(
                statistics.fmean(_word_diff(run.texts[k], c1.texts[k]) for k in run.texts), 4
            )
        result_rows.append(row)
        print(f"{run.name:34} {row['throughput']:9.2f} {row['ratio_vs_raw']:6.2f} {row['p50']:6.2f} "
              f"{row['p95']:6.2f} {row['peak_rss_mb']:7.0f} {diff:9.3f}")
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "model": model.name, "clips": [str(p.relative_to(audio_dir)) for p, _, _ in clips], "rounds": args.rounds,
        "runs": result_rows,
        "long_clips_c1": long_rows,
        "runs_detail": [asdict(r) | {"texts": None} for r in runs],
    }
    print(f"\n{'long clip, alone':44} {'raw seq':>8} {'raw batched':>11} {'server':>7}")
    for row in long_rows:
        print(f"{row['clip']:44} {row['raw_sequential_s']:8.2f} {row['raw_batched_s']:11.2f} {row['server_c1_s']:7.2f}")
    (out_dir / "latest.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    chart(runs, baseline, out_dir / "latest.png")
    print(f"\nwrote {out_dir / 'latest.json'} and {out_dir / 'latest.png'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="benchmark raw faster-whisper vs the server at concurrency 1/4/8")
    bench.add_argument("--audio-dir", default=str(DEFAULT_AUDIO), help="folder with manifest.tsv (../shared/audio)")
    bench.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    bench.add_argument("--rounds", type=int, default=2, help="passes over the clips per run")
    bench.add_argument("--output-dir", default="bench/results")
    bench.set_defaults(func=cmd_bench)
