"""faster-whisper itself, the baseline every server figure is read against, in two forms.

- The library as a user runs it: one `WhisperModel` with its default threads, one clip after another (on a GPU, its
  `BatchedInferencePipeline`, which is what the library offers for throughput there).
- The ceiling: N one-thread library processes (N = the server's workers) sharing the same work, each taking the next
  clip when it is free. On a CPU this is as much as running requests side by side can gain with these options, so it
  is what the server's concurrency is held to. Each process is `python -m stt_engine.benchmark.library`, speaking
  JSON lines on stdin/stdout (no multiprocessing: the CLI's __main__ must not run again in a child).

Both call `.transcribe(audio, language=..., beam_size=5, vad_filter=True, condition_on_previous_text=False)` and
consume the segments fully.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from stt_engine.benchmark.clips import SAMPLE_RATE, Clip
from stt_engine.benchmark.measure import Run, language_for
from stt_engine.benchmark.server import RssSampler

BEAM_SIZE = 5
BATCH_SIZE = 8


@dataclass(frozen=True)
class LibrarySpec:
    """How the library is loaded: the server's model folder, device and compute type."""

    model_path: str
    device: str
    compute_type: str
    device_index: int = 0

    @property
    def batched(self) -> bool:
        """On CUDA the short-clip baseline is the library's BatchedInferencePipeline."""
        return self.device == "cuda"

    def load(self, cpu_threads: int = 0) -> Any:
        from faster_whisper import WhisperModel

        return WhisperModel(self.model_path, device=self.device, compute_type=self.compute_type,
                            device_index=self.device_index, cpu_threads=cpu_threads, local_files_only=True)


def raw_text(transcribe: Callable[..., Any], audio: Any, language: str | None) -> str:
    """The library's call, as the benchmark defines raw; the segment generator is consumed fully."""
    segments, _info = transcribe(audio, language=language, beam_size=BEAM_SIZE, vad_filter=True,
                                 condition_on_previous_text=False)
    return " ".join(s.text.strip() for s in segments).strip()


def batched(model: Any, batch_size: int = BATCH_SIZE) -> Callable[..., Any]:
    """`BatchedInferencePipeline(model).transcribe` with `batch_size`, called like `WhisperModel.transcribe`."""
    from faster_whisper import BatchedInferencePipeline

    pipeline = BatchedInferencePipeline(model)

    def transcribe(audio: Any, **kwargs: Any) -> Any:
        return pipeline.transcribe(audio, batch_size=batch_size, **kwargs)

    return transcribe


def transcriber(model: Any, spec: LibrarySpec) -> Callable[..., Any]:
    return batched(model) if spec.batched else model.transcribe


def decode(clips: Sequence[Clip]) -> dict[str, Any]:
    from faster_whisper import decode_audio

    return {c.name: decode_audio(str(c.path), sampling_rate=SAMPLE_RATE) for c in clips}


def sequential_run(transcribe: Callable[..., Any], clips: list[Clip], audio: dict[str, Any], mode: str,
                   rounds: int, rss: RssSampler, name: str) -> Run:
    """The library in a loop over the clips, `rounds` times."""
    run = Run(mode, name, 1, kind="library")
    rss.reset()
    started = time.perf_counter()
    for _ in range(rounds):
        for clip in clips:
            t0 = time.perf_counter()
            run.texts[clip.name] = raw_text(transcribe, audio[clip.name], language_for(clip, mode))
            run.latencies.append(time.perf_counter() - t0)
            run.requests += 1
            run.audio_seconds += clip.duration
    run.wall_seconds = time.perf_counter() - started
    run.peak_rss_mb = rss.peak_mb
    return run


# --- the ceiling: N one-thread processes ----------------------------------------------------------------------


class _Worker:
    """One library process: loads the model on one thread, decodes every clip up front, warms up, says ready."""

    def __init__(self, spec: LibrarySpec, clips: Sequence[Clip]) -> None:
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "stt_engine.benchmark.library"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True, bufsize=1)
        self.send({"model_path": spec.model_path, "device": spec.device, "compute_type": spec.compute_type,
                   "device_index": spec.device_index, "batched": spec.batched,
                   "clips": {c.name: str(c.path) for c in clips}, "warm_up": [clips[0].name, clips[0].language]})

    def send(self, message: dict[str, Any] | None) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.stderr.seek(0)
            tail = self.stderr.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"a ceiling process exited ({self.proc.poll()}):\n{tail}")
        return dict(json.loads(line))

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(None)
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def ceiling_run(spec: LibrarySpec, processes: int, clips: list[Clip], mode: str, rounds: int) -> Run:
    """`processes` one-thread library processes taking the same work (`rounds` passes over the clips) from one
    queue; the clock runs from the moment all are loaded and warm to the last result."""
    work: queue.Queue[Clip] = queue.Queue()
    for _ in range(rounds):
        for clip in clips:
            work.put(clip)
    run = Run(mode, f"ceiling: {processes} x 1-thread library", processes, kind="ceiling")
    lock = threading.Lock()
    workers = [_Worker(spec, clips) for _ in range(processes)]
    failures: list[BaseException] = []
    try:
        for worker in workers:
            worker.receive()  # {"ready": pid}
        samplers = [RssSampler(w.proc.pid) for w in workers]

        def drain(worker: _Worker) -> None:
            try:
                while True:
                    try:
                        clip = work.get_nowait()
                    except queue.Empty:
                        return
                    worker.send({"clip": clip.name, "language": language_for(clip, mode)})
                    result = worker.receive()
                    with lock:
                        run.texts[clip.name] = result["text"]
                        run.latencies.append(result["seconds"])
                        run.requests += 1
                        run.audio_seconds += clip.duration
            except BaseException as exc:  # reported after the others finish
                failures.append(exc)

        started = time.perf_counter()
        threads = [threading.Thread(target=drain, args=(w,)) for w in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        run.wall_seconds = time.perf_counter() - started
        run.peak_rss_mb = sum(s.peak_mb for s in samplers)
        for sampler in samplers:
            sampler.stop()
    finally:
        for worker in workers:
            worker.close()
    if failures:
        raise failures[0]
    return run


def _serve_stdin() -> None:
    """The ceiling process: one JSON request per stdin line, one JSON answer per stdout line."""
    import os

    from faster_whisper import decode_audio

    setup = json.loads(sys.stdin.readline())
    spec = LibrarySpec(setup["model_path"], setup["device"], setup["compute_type"], setup["device_index"])
    model = spec.load(cpu_threads=1)
    transcribe = batched(model) if setup["batched"] else model.transcribe
    audio = {name: decode_audio(path, sampling_rate=SAMPLE_RATE) for name, path in setup["clips"].items()}
    warm_name, warm_language = setup["warm_up"]
    raw_text(transcribe, audio[warm_name], warm_language)
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request is None:
            return
        t0 = time.perf_counter()
        text = raw_text(transcribe, audio[request["clip"]], request["language"])
        print(json.dumps({"text": text, "seconds": time.perf_counter() - t0}), flush=True)


if __name__ == "__main__":
    _serve_stdin()
