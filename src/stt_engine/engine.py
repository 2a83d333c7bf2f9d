"""The faster-whisper engine: one loaded `WhisperModel`, and the steps the scheduler drives for each request.

1. `prepare()` turns decoded audio into a `Job`: Silero VAD finds speech, and speech is packed into chunks of at
   most 30 s. Silence and music give no chunks, so no invented text.
2. `run_batch()` decodes chunks, possibly from *different* requests and languages, in one CTranslate2 call:
   the language token is set per item, so a Korean and an English request share a batch. A chunk whose result
   looks broken (repetition loop, very low confidence) is decoded again alone with temperature fallback, as
   Whisper's own sequential decoder would.

`finish()` joins a job's segments into its transcript; `scheduler.Scheduler` drives all three for every request.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Literal

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import (
    Segment as FWSegment,
    TranscriptionOptions,
    Word,
    get_compression_ratio,
    get_suppressed_tokens,
    restore_speech_timestamps,
)
from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

from stt_engine.audio import SAMPLE_RATE, DecodedAudio
from stt_engine.config import Settings
from stt_engine.models import ResolvedModel

log = logging.getLogger(__name__)

CHUNK_SECONDS = 30
DEFAULT_TEMPERATURES: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
# Whisper's own thresholds for "this decode failed, try a higher temperature" and "this is silence".
COMPRESSION_RATIO_THRESHOLD = 2.4
LOG_PROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
# Whisper sometimes ends a window early (EOT before the speech ends). The sequential decoder then seeks to the
# last timestamp and decodes the rest; we do the same with a follow-up chunk when this much speech is left over.
TAIL_RETRY_SECONDS = 1.0
MAX_TAIL_RETRIES = 2
CJK_LANGUAGES = frozenset({"ko", "zh", "ja", "yue"})

Task = Literal["transcribe", "translate"]


@dataclass(frozen=True)
class TranscribeOptions:
    """What a caller may choose per request. Frozen and hashable: part of it is the batch key."""

    language: str | None = None
    task: Task = "transcribe"
    beam_size: int = 5
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    initial_prompt: str | None = None
    hotwords: str | None = None
    word_timestamps: bool = False
    vad_filter: bool = True
    condition_on_previous_text: bool = False


@dataclass
class Transcript:
    """The result for one request: faster-whisper segments on the original audio's timeline."""

    text: str
    language: str
    language_probability: float
    duration: float
    duration_after_vad: float
    segments: list[FWSegment]
    task: Task = "transcribe"
    queue_wait_seconds: float | None = None  # admission to first decode, when a scheduler ran it


@dataclass
class Chunk:
    """One ≤30 s piece of speech of one job, decoded in some batch."""

    job: Job
    index: int
    audio: np.ndarray  # the chunk's speech samples; log-Mel features are computed when its batch runs
    offset: float  # seconds on the VAD-collapsed timeline
    duration: float
    segments: list[dict] = field(default_factory=list)
    depth: int = 0  # 0 for VAD chunks, n for the n-th re-decoded tail


@dataclass
class Job:
    """One request's audio, split into chunks; filled in by batches, finished when every chunk is done."""

    options: TranscribeOptions
    duration: float
    speech_chunks: list[dict]  # VAD output, samples on the original timeline
    chunks: list[Chunk] = field(default_factory=list)
    language: str | None = None
    language_probability: float = 1.0
    done_count: int = 0
    cancelled: bool = False
    created: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> bool:
        return self.done_count >= len(self.chunks)

    @property
    def duration_after_vad(self) -> float:
        return sum(c["end"] - c["start"] for c in self.speech_chunks) / SAMPLE_RATE


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
    """On a GPU, batching chunks is where the speed comes from. On CPU `stt-engine bench` measured no throughput
    gain from batches with single-thread workers, only later results and more memory: one chunk per call there."""
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


class Engine:
    """A loaded Whisper model plus the batch decoding logic. Thread-safe: CTranslate2 runs `workers` calls at once."""

    def __init__(self, model: ResolvedModel, settings: Settings) -> None:
        self.resolved = model
        self.device = resolve_device(settings.whisper_device)
        self.compute_type = resolve_compute_type(settings.whisper_compute_type, self.device)
        self.workers, self.threads = resolve_workers(settings, self.device)
        self.batch_size = resolve_batch_size(settings.whisper_batch_size, self.device)
        self.default_language = settings.whisper_default_language
        started = time.perf_counter()
        self.model = WhisperModel(
            str(model.path),
            device=self.device,
            device_index=settings.whisper_device_index,
            compute_type=self.compute_type,
            cpu_threads=self.threads,
            num_workers=self.workers,
            local_files_only=True,
        )
        self.load_seconds = time.perf_counter() - started
        self.multilingual = self.model.model.is_multilingual
        self._tokenizers: dict[tuple[str, str | None], Tokenizer] = {}
        self._tokenizer_lock = threading.Lock()
        log.info(
            "model loaded: %s (%s) device=%s compute_type=%s workers=%d threads=%d batch=%d in %.1fs",
            model.name, model.path, self.device, self.compute_type, self.workers, self.threads, self.batch_size,
            self.load_seconds,
        )

    # --- step 1: audio -> job ------------------------------------------------------------------
    def prepare(self, audio: DecodedAudio, options: TranscribeOptions) -> Job:
        """VAD and chunking: CPU work that runs off the event loop, outside the model workers."""
        samples = audio.samples
        if not self.multilingual:
            options = replace(options, language="en")
        if options.vad_filter:
            vad = VadOptions(max_speech_duration_s=CHUNK_SECONDS, min_silence_duration_ms=160)
            speech = get_speech_timestamps(samples, vad)
        else:
            speech = [
                {"start": start, "end": min(start + CHUNK_SECONDS * SAMPLE_RATE, len(samples))}
                for start in range(0, len(samples), CHUNK_SECONDS * SAMPLE_RATE)
            ]
        job = Job(options=options, duration=audio.duration, speech_chunks=speech, language=options.language)
        if not speech:
            return job
        pieces, metadata = collect_chunks(samples, speech, max_duration=CHUNK_SECONDS)
        for index, (piece, meta) in enumerate(zip(pieces, metadata)):
            job.chunks.append(Chunk(job, index, piece, float(meta["offset"]), float(meta["duration"])))
        return job

    def _features(self, samples: np.ndarray) -> np.ndarray:
        return pad_or_trim(self.model.feature_extractor(samples)[..., :-1])

    def _tail_chunk(self, chunk: Chunk) -> Chunk | None:
        """A follow-up chunk for speech after the last decoded segment, when the model stopped early."""
        if not chunk.segments or chunk.depth >= MAX_TAIL_RETRIES:
            return None
        covered = chunk.segments[-1]["end"] - chunk.offset
        if chunk.duration - covered < TAIL_RETRY_SECONDS:
            return None
        rest = chunk.audio[int(covered * SAMPLE_RATE):]
        tail = Chunk(
            chunk.job, len(chunk.job.chunks), rest, chunk.offset + covered, len(rest) / SAMPLE_RATE,
            depth=chunk.depth + 1,
        )
        chunk.job.chunks.append(tail)
        return tail

    # --- step 2: chunks -> segments --------------------------------------------------------------
    def batch_key(self, chunk: Chunk) -> tuple:
        """Chunks with equal keys may share one `generate` call. Language differs freely per item
        (its token is set per prompt), except with word timestamps, whose word splitting is per language."""
        o = chunk.job.options
        language = chunk.job.language if o.word_timestamps else None
        return (o.task, o.beam_size, o.temperatures[0], o.initial_prompt, o.hotwords, o.word_timestamps, language)

    def tokenizer(self, language: str | None, task: str) -> Tokenizer:
        key = (task, language)
        with self._tokenizer_lock:
            if key not in self._tokenizers:
                self._tokenizers[key] = Tokenizer(
                    self.model.hf_tokenizer, self.multilingual, task=task, language=language or "en"
                )
            return self._tokenizers[key]

    def run_batch(self, chunks: list[Chunk]) -> list[Chunk]:
        """Decode `chunks` (equal batch keys) in one batch; results land in each `chunk.segments`.

        Returns follow-up chunks (already added to their jobs) for tails the model skipped; decode them next.

        Jobs whose language is unknown get it from this batch's encoder output (the first chunk of a job is
        always decoded before its others, so the whole request uses one language).
        """
        options = chunks[0].job.options
        features = np.stack([self._features(c.audio) for c in chunks])
        encoder_output = self.model.encode(features)
        unknown = [i for i, c in enumerate(chunks) if c.job.language is None]
        if unknown:
            detected = self.model.model.detect_language(encoder_output)
            for i in unknown:
                token, probability = detected[i][0]
                job = chunks[i].job
                if job.language is None:
                    job.language = token[2:-2]
                    job.language_probability = float(probability)

        tokenizers = [self.tokenizer(c.job.language, options.task) for c in chunks]
        fw_options = self._fw_options(tokenizers[0], options)
        prompts = [self._prompt(tok, options) for tok in tokenizers]
        results = self.model.model.generate(
            encoder_output,
            prompts,
            beam_size=options.beam_size,
            patience=1.0,
            length_penalty=1.0,
            max_length=self.model.max_length,
            suppress_blank=True,
            suppress_tokens=fw_options.suppress_tokens,
            return_scores=True,
            return_no_speech_prob=True,
            sampling_temperature=options.temperatures[0],
            max_initial_timestamp_index=int(round(1.0 / self.model.time_precision)),
        )
        for i, (chunk, tokenizer, prompt, result) in enumerate(zip(chunks, tokenizers, prompts, results)):
            tokens = result.sequences_ids[0]
            avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
            temperature = options.temperatures[0]
            text = tokenizer.decode(tokens).strip()
            if len(options.temperatures) > 1 and self._needs_fallback(text, avg_logprob, result.no_speech_prob):
                retry, avg_logprob, temperature, _ = self.model.generate_with_fallback(
                    self.model.encode(features[i]), prompt, tokenizer,
                    replace(fw_options, temperatures=list(options.temperatures[1:])),
                )
                tokens = retry.sequences_ids[0]
                result = retry
            chunk.segments = self._split(chunk, tokenizer, tokens, avg_logprob, result.no_speech_prob, temperature)

        if options.word_timestamps:
            self._add_words(chunks, features, tokenizers, encoder_output, fw_options)
        return [tail for chunk in chunks if (tail := self._tail_chunk(chunk)) is not None]

    @staticmethod
    def _needs_fallback(text: str, avg_logprob: float, no_speech_prob: float) -> bool:
        if no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOG_PROB_THRESHOLD:
            return False  # silence: nothing better to find
        return get_compression_ratio(text) > COMPRESSION_RATIO_THRESHOLD or avg_logprob < LOG_PROB_THRESHOLD

    def _add_words(
        self, chunks: list[Chunk], features: np.ndarray, tokenizers: list[Tokenizer],
        encoder_output: ctranslate2.StorageView, fw_options: TranscriptionOptions,
    ) -> None:
        """Word timings by cross-attention alignment: for the whole batch at once when every item has text in
        one language (word splitting differs for CJK), else item by item."""
        sizes = [int(np.ceil(c.duration) * self.model.frames_per_second) for c in chunks]
        punctuation = (fw_options.prepend_punctuations, fw_options.append_punctuations)
        if all(c.segments for c in chunks) and all(t is tokenizers[0] for t in tokenizers):
            self.model.add_word_timestamps(
                [c.segments for c in chunks], tokenizers[0], encoder_output, sizes, *punctuation, 0.0
            )
            return
        for i, (chunk, tokenizer, size) in enumerate(zip(chunks, tokenizers, sizes)):
            if chunk.segments:
                self.model.add_word_timestamps(
                    [chunk.segments], tokenizer, self.model.encode(features[i]), [size], *punctuation, 0.0
                )

    def _split(
        self, chunk: Chunk, tokenizer: Tokenizer, tokens: list[int], avg_logprob: float, no_speech_prob: float,
        temperature: float,
    ) -> list[dict]:
        """Tokens with timestamps -> segments on the VAD timeline. Unlike faster-whisper's batched splitter,
        text after the last timestamp pair is kept (it would otherwise be dropped at a chunk's end)."""
        if no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOG_PROB_THRESHOLD:
            return []
        begin = tokenizer.timestamp_begin
        precision = self.model.time_precision
        pieces: list[tuple[float | None, float | None, list[int]]] = []
        start: float | None = None
        current: list[int] = []
        for token in tokens:
            if token >= begin:
                stamp = (token - begin) * precision
                if current:
                    pieces.append((start, stamp, current))
                    current = []
                    start = None
                else:
                    start = stamp
            elif token < tokenizer.eot:
                current.append(token)
        if current:
            pieces.append((start, None, current))
        segments = []
        for piece_start, piece_end, piece_tokens in pieces:
            text = tokenizer.decode(piece_tokens)
            if not text.strip():
                continue
            seg_start = chunk.offset + (piece_start or 0.0)
            seg_end = chunk.offset + min(piece_end if piece_end is not None else chunk.duration, chunk.duration)
            segments.append(
                dict(
                    text=text, tokens=piece_tokens, start=seg_start, end=max(seg_end, seg_start),
                    avg_logprob=avg_logprob, no_speech_prob=no_speech_prob, temperature=temperature,
                    compression_ratio=get_compression_ratio(text), seek=int(chunk.offset * self.model.frames_per_second),
                )
            )
        return segments

    def _prompt(self, tokenizer: Tokenizer, options: TranscribeOptions) -> list[int]:
        previous = tokenizer.encode(" " + options.initial_prompt.strip()) if options.initial_prompt else []
        return self.model.get_prompt(tokenizer, previous, without_timestamps=False, hotwords=options.hotwords)

    def _fw_options(self, tokenizer: Tokenizer, options: TranscribeOptions) -> TranscriptionOptions:
        return TranscriptionOptions(
            beam_size=options.beam_size, best_of=5, patience=1.0, length_penalty=1.0, repetition_penalty=1.0,
            no_repeat_ngram_size=0, log_prob_threshold=LOG_PROB_THRESHOLD, no_speech_threshold=NO_SPEECH_THRESHOLD,
            compression_ratio_threshold=COMPRESSION_RATIO_THRESHOLD, condition_on_previous_text=False,
            prompt_reset_on_temperature=0.5, temperatures=list(options.temperatures),
            initial_prompt=options.initial_prompt, prefix=None, suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, [-1]), without_timestamps=False,
            max_initial_timestamp=1.0, word_timestamps=options.word_timestamps,
            prepend_punctuations="\"'“¿([{-", append_punctuations="\"'.。,，!！?？:：”)]}、",
            multilingual=False, max_new_tokens=None, clip_timestamps="0", hallucination_silence_threshold=None,
            hotwords=options.hotwords,
        )

    # --- step 3: job -> transcript ---------------------------------------------------------------
    def finish(self, job: Job) -> Transcript:
        """Join a finished job's segments, map them back to the original timeline, tidy the text."""
        language = job.language or job.options.language or self.default_language or "en"
        raw: list[FWSegment] = []
        for seg in sorted((seg for chunk in job.chunks for seg in chunk.segments), key=lambda seg: seg["start"]):
            words = [Word(**w) for w in seg["words"]] if job.options.word_timestamps and seg.get("words") else None
            raw.append(
                FWSegment(
                    id=len(raw) + 1, seek=seg["seek"], start=round(seg["start"], 3), end=round(seg["end"], 3),
                    text=seg["text"], tokens=seg["tokens"], avg_logprob=seg["avg_logprob"],
                    compression_ratio=seg["compression_ratio"], no_speech_prob=seg["no_speech_prob"],
                    words=words, temperature=seg["temperature"],
                )
            )
        segments = list(restore_speech_timestamps(raw, job.speech_chunks, SAMPLE_RATE)) if raw else []
        for seg in segments:
            seg.text = tidy_text(seg.text, language)
            seg.end = min(max(seg.end, seg.start), round(job.duration, 3))
        segments = [s for s in segments if s.text]
        return Transcript(
            text=join_segments(segments, language),
            language=language,
            language_probability=job.language_probability,
            duration=job.duration,
            duration_after_vad=job.duration_after_vad,
            segments=segments,
            task=job.options.task,
        )


def tidy_text(text: str, language: str) -> str:
    """Collapse whitespace; segments never start with a space (Whisper emits one before most tokens)."""
    return " ".join(text.split())


def join_segments(segments: list[FWSegment], language: str) -> str:
    """Segments joined with one space: right for Korean (spaced words) and harmless for the others,
    except Chinese and Japanese, which do not put spaces between sentences."""
    separator = "" if language in ("zh", "ja", "yue") else " "
    return separator.join(s.text for s in segments).strip()
