"""The faster-whisper engine: one loaded `WhisperModel`, and the three steps the scheduler drives for each request.

1. `prepare` (engine.prepare): VAD with faster-whisper's defaults, speech cut into sections at pauses.
2. `decode` (engine.decode): one 30 s window of each of several sections in one batch, exactly as faster-whisper's
   sequential decoder decodes a window: temperature fallback, no-speech rule, seek, word timings.
3. `transcript` (engine.assemble): segments in order on the original timeline, tidied and joined.

`scheduler.Scheduler` decides which windows go together and when.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TypeVar

import ctranslate2
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from threadpoolctl import threadpool_limits

from stt_engine.audio import DecodedAudio
from stt_engine.config import Settings
from stt_engine.engine.assemble import final_segments, transcript
from stt_engine.engine.decode import WindowDecoder
from stt_engine.engine.job import Job, Stream
from stt_engine.engine.prepare import prepare
from stt_engine.models import ResolvedModel
from stt_engine.options import DEFAULT_TEMPERATURES, TranscribeOptions
from stt_engine.types import Segment, Transcript, join_segments, segment_separator, tidy_text

__all__ = [
    "DEFAULT_TEMPERATURES", "Engine", "Job", "Segment", "Stream", "TranscribeOptions", "Transcript",
    "join_segments", "resolve_compute_type", "resolve_device", "segment_separator", "tidy_text",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


def resolve_device(setting: str) -> str:
    """`auto` means CUDA when CTranslate2 sees a usable GPU, else CPU."""
    if setting != "auto":
        return setting
    try:
        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    except Exception:  # a broken CUDA install must not stop a CPU server
        return "cpu"


def resolve_compute_type(setting: str, device: str) -> str:
    if setting != "auto":
        return setting
    return "float16" if device == "cuda" else "int8"


def resolve_batch_size(setting: int, device: str) -> int:
    """On a GPU, batching windows is where the speed comes from. On CPU `stt-engine bench` measured no throughput
    gain from batches with single-thread workers, only later results and more memory: one window per call."""
    if setting:
        return setting
    return 8 if device == "cuda" else 1


def resolve_workers(settings: Settings, device: str) -> tuple[int, int]:
    """(model workers, threads per worker). On CPU, one single-thread worker per core beats one wide worker."""
    cores = os.cpu_count() or 1
    if device == "cuda":
        return settings.whisper_num_workers or 1, settings.whisper_cpu_threads or 4
    workers = settings.whisper_num_workers or cores
    threads = settings.whisper_cpu_threads or max(1, cores // workers)
    return workers, threads


def has_solo_instance(settings: Settings, device: str, workers: int) -> bool:
    """Whether an `Engine` also holds the all-cores instance: on CPU with several single-thread workers."""
    return device == "cpu" and workers > 1 and settings.whisper_solo_instance


def on_lowered_thread(nice: int, build: Callable[[], T]) -> T:
    """`build()` on a thread whose CPU priority is lowered by `nice`. On Linux nice is per thread and a thread
    inherits it from the one that starts it, so the worker threads CTranslate2 starts while a model is built keep
    it. The workers' model built this way yields the cores to the all-cores instance, which runs a short request's
    window beside long ones (the express lane): the short request is then not slowed by the windows already
    running, while the workers alone (nothing else to run) lose nothing. Raising it back needs privileges, so it
    is never done on a thread that does anything else."""
    if nice <= 0:
        return build()

    def lowered() -> T:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)
        except OSError:  # not Linux, or not permitted: the same model, at the usual priority
            log.warning("could not lower the model workers' CPU priority", exc_info=True)
        return build()

    with ThreadPoolExecutor(1, thread_name_prefix="stt-model-load") as pool:  # a thread of its own, then gone
        return pool.submit(lowered).result()


def one_blas_thread() -> None:
    """numpy's BLAS (OpenBLAS) on the calling thread only, for this whole process. The server already runs one
    decode per core side by side; the one BLAS call per window (the mel filter bank) gains nothing from more
    threads, while OpenBLAS's own threads spin after each call on the cores the model's threads need, at normal
    priority where the workers' threads are lowered (`on_lowered_thread`). `stt-engine bench`, 8 clients, same run:
    ~12 % less CPU for the same requests and 0.83-0.98 of the ceiling against 0.74-0.78."""
    threadpool_limits(limits=1, user_api="blas")


class Engine:
    """A loaded Whisper model and the steps of decoding. Thread-safe: CTranslate2 runs `workers` calls at once."""

    def __init__(self, model: ResolvedModel, settings: Settings) -> None:
        one_blas_thread()
        self.resolved = model
        self.device = resolve_device(settings.whisper_device)
        self.compute_type = resolve_compute_type(settings.whisper_compute_type, self.device)
        self.workers, self.threads = resolve_workers(settings, self.device)
        self.batch_size = resolve_batch_size(settings.whisper_batch_size, self.device)
        started = time.perf_counter()
        # One request alone would leave all but one single-thread worker idle: a second instance with every core's
        # thread decodes it instead, as fast as the library. Only on CPU, where the workers are threads of cores.
        solo = has_solo_instance(settings, self.device, self.workers)
        self.model = on_lowered_thread(settings.whisper_worker_nice if solo else 0, lambda: WhisperModel(
            str(model.path),
            device=self.device,
            device_index=settings.whisper_device_index,
            compute_type=self.compute_type,
            cpu_threads=self.threads,
            num_workers=self.workers,
            local_files_only=True,
        ))
        self.solo_threads = self.workers * self.threads
        self.solo_model = None
        if solo:
            self.solo_model = WhisperModel(
                str(model.path), device="cpu", compute_type=self.compute_type, cpu_threads=self.solo_threads,
                num_workers=1, local_files_only=True,
            )
        self.load_seconds = time.perf_counter() - started
        self.multilingual = self.model.model.is_multilingual
        self.supported_languages = frozenset(self.model.supported_languages)
        self._tokenizers: dict[tuple[str, str | None], Tokenizer] = {}
        self._tokenizer_lock = threading.Lock()
        self._decoder = WindowDecoder(self.model, self.tokenizer)
        self._solo_decoder = WindowDecoder(self.solo_model, self.tokenizer) if self.solo_model else None
        log.info(
            "model loaded: %s (%s) device=%s compute_type=%s workers=%d threads=%d batch=%d solo=%s in %.1fs",
            model.name, model.path, self.device, self.compute_type, self.workers, self.threads, self.batch_size,
            f"{self.solo_threads} threads" if self.solo_model else "off", self.load_seconds,
        )

    @property
    def parallelism(self) -> int:
        """How many windows can be decoded at once: what one long request should be cut into to use them all."""
        return self.workers * self.batch_size

    def prepare(self, audio: DecodedAudio, options: TranscribeOptions) -> Job:
        """VAD and sections: CPU work that runs off the event loop, outside the model workers. Streamed or not, a
        request gets the same plan, so a stream's text is the file's text."""
        if not self.multilingual:
            options = replace(options, language="en")
        return prepare(audio.samples, audio.duration, options, self.parallelism)

    def batch_key(self, job: Job) -> Hashable:
        """Windows with equal keys may share one `generate` call: every option but the language (whose token is
        set per window) changes how a window is decoded. The VAD values only choose which audio is decoded."""
        return replace(job.options, language=None, vad=None)

    @property
    def has_solo(self) -> bool:
        return self._solo_decoder is not None

    def decode(self, streams: Sequence[Stream], *, solo: bool = False) -> None:
        """Decode the next window of each stream (equal batch keys) in one batch; each stream advances.
        `solo`: nothing else is decoding, so use the all-cores instance when there is one."""
        decoder = self._solo_decoder if solo and self._solo_decoder is not None else self._decoder
        decoder.decode(streams)

    def tokenizer(self, language: str | None, task: str) -> Tokenizer:
        key = (task, language)
        with self._tokenizer_lock:
            if key not in self._tokenizers:
                self._tokenizers[key] = Tokenizer(
                    self.model.hf_tokenizer, self.multilingual, task=task, language=language or "en"
                )
            return self._tokenizers[key]

    @staticmethod
    def final_segments(job: Job) -> list[Segment]:
        return final_segments(job)

    @staticmethod
    def transcript(job: Job) -> Transcript:
        return transcript(job)
