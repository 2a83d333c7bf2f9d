"""The diarization pipeline: VAD regions → CAM++ frame activations → window embeddings → clustering → turns.

1. Speech regions from the Silero VAD that faster-whisper ships (no extra model).
2. Each region (cut into pieces of at most `CHUNK_S`) goes once through CAM++ (onnxruntime, bounded threads); the
   frame-level output is pooled into embeddings of `WINDOW_S` windows every `HOP_S` (running the network once per
   piece instead of once per overlapping window costs a third, and measured within 0.9 cosine of the exact window
   embedding). Windows shorter than `MIN_CLUSTER_S` (short regions) are labelled afterwards by nearest centroid.
3. Average-linkage clustering on cosine similarity, stopping at DIARIZE_THRESHOLD; `min_speakers`/`max_speakers`
   bound the count. Long files: consecutive windows are averaged into at most `MAX_UNITS` units first, then every
   window goes to its nearest centroid.
4. Known speakers: each reference is embedded the same way (mean of its windows); a cluster whose centroid matches a
   reference (cosine ≥ `KNOWN_THRESHOLD`) takes its name, one name per cluster; the others get letters in order of
   first appearance.
5. Each moment of a region takes the label of the window centred nearest to it; flips shorter than `MIN_TURN_S`
   between two stretches of one speaker are smoothed away; neighbouring turns of one speaker closer than
   `MERGE_GAP_S` are joined.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from stt_engine.config import Settings
from stt_engine.diarize import campplus, cluster
from stt_engine.diarize.features import FRAME_LENGTH, FRAME_SHIFT, fbank
from stt_engine.errors import InvalidRequest

SAMPLE_RATE = 16000
MIN_REFERENCE_S = 2.0
MAX_REFERENCE_S = 10.0
WINDOW_S = 1.5
HOP_S = 0.5
CHUNK_S = 6.0
MIN_WINDOW_S = 0.4  # shorter speech regions get no embedding of their own
MIN_CLUSTER_S = 1.0  # windows shorter than this join a cluster afterwards instead of forming one
MAX_UNITS = 800
KNOWN_THRESHOLD = 0.5
MIN_TURN_S = 1.0
MERGE_GAP_S = 1.0
VAD_BLOCK_S = 120.0
_OUT_FRAME_S = 2 * FRAME_SHIFT / SAMPLE_RATE  # CAM++ halves the frame rate: one output frame per 20 ms


@dataclass(frozen=True)
class SpeakerTurn:
    """One speaker turn: `start`/`end` in seconds, `speaker` a letter ("A", "B", ...) or a known speaker's name."""

    start: float
    end: float
    speaker: str


@dataclass
class _Windows:
    """Window embeddings of some audio: unit rows, their centre times and lengths (seconds), their region index."""

    embeddings: np.ndarray
    centres: np.ndarray
    lengths: np.ndarray
    regions: np.ndarray


def speech_regions(samples: np.ndarray) -> list[tuple[float, float]]:
    """Speech regions (seconds) from the Silero VAD that faster-whisper ships (no extra model, no torch).

    Runs in blocks of `VAD_BLOCK_S`: faster-whisper's VAD holds a few copies of its whole input, which for an hour
    of audio is most of a gigabyte. A region cut by a block boundary is joined again.
    """
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    opts = VadOptions(min_silence_duration_ms=250, speech_pad_ms=60, min_speech_duration_ms=150)
    block = int(VAD_BLOCK_S * SAMPLE_RATE)
    out: list[tuple[float, float]] = []
    for offset in range(0, len(samples), block):
        piece = np.ascontiguousarray(samples[offset:offset + block], dtype=np.float32)
        if len(piece) < FRAME_LENGTH:
            continue
        for stamp in get_speech_timestamps(piece, opts):
            start, end = (offset + stamp["start"]) / SAMPLE_RATE, (offset + stamp["end"]) / SAMPLE_RATE
            if out and start - out[-1][1] < 0.1:  # gaps between regions are >= 0.13 s, except at a block boundary
                out[-1] = (out[-1][0], end)
            else:
                out.append((start, end))
    return out


def available(settings: Settings) -> bool:
    """True when diarization can run (the speaker model is installed)."""
    return unavailable_reason(settings) is None


def unavailable_reason(settings: Settings) -> str | None:
    """None when diarization can run, else a message saying how to install the speaker model."""
    from stt_engine.diarize.model import INSTALL_HINT, model_dir, model_path

    if model_path(settings) is None:
        return f"speaker diarization needs the CAM++ speaker model in {model_dir(settings)}: {INSTALL_HINT}"
    return None


def _threads(settings: Settings) -> int:
    if settings.diarize_cpu_threads:
        return settings.diarize_cpu_threads
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // 2)


def _pieces(start: int, end: int, most: int) -> list[tuple[int, int]]:
    """[start, end) cut into equal pieces of at most `most` samples."""
    count = max(1, -(-(end - start) // most))
    bounds = np.linspace(start, end, count + 1).astype(int)
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))


def _window_spans(out_frames: int, window: int, hop: int) -> list[tuple[int, int]]:
    """Windows of `window` output frames every `hop`, the last one flush with the end; one window if shorter."""
    if out_frames <= window:
        return [(0, out_frames)]
    spans = [(s, s + window) for s in range(0, out_frames - window + 1, hop)]
    if spans[-1][1] < out_frames:
        spans.append((out_frames - window, out_frames))
    return spans


class Diarizer:
    """Loads the speaker model once; `diarize` is thread-safe (called from worker threads, off the event loop).

    Raises `ModelNotFound` (with the install command) when the CAM++ model is not installed.
    """

    def __init__(self, settings: Settings) -> None:
        import onnxruntime

        from stt_engine.diarize.model import require_model

        self.settings = settings
        self.threshold = settings.diarize_threshold
        path = require_model(settings)
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = _threads(settings)
        opts.inter_op_num_threads = 1
        opts.enable_cpu_mem_arena = False  # inputs vary in length: an arena would keep the largest ever seen
        opts.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if settings.whisper_device != "cpu" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")  # onnxruntime-gpu installed: embed on the GPU
        self._session = onnxruntime.InferenceSession(str(path), opts, providers=providers)
        with np.load(path.parent / campplus.DENSE_NAME) as dense:
            self._dense = {k: dense[k] for k in dense.files}

    # --- embeddings -------------------------------------------------------------------------------------------

    def _embed_regions(self, samples: np.ndarray, regions: list[tuple[float, float]]) -> _Windows:
        window = round(WINDOW_S / _OUT_FRAME_S)
        hop = round(HOP_S / _OUT_FRAME_S)
        rows, centres, lengths, owners = [], [], [], []
        for index, (start_s, end_s) in enumerate(regions):
            start, end = int(start_s * SAMPLE_RATE), min(len(samples), int(end_s * SAMPLE_RATE))
            if end - start < MIN_WINDOW_S * SAMPLE_RATE:
                continue
            for lo, hi in _pieces(start, end, int(CHUNK_S * SAMPLE_RATE)):
                feats = fbank(samples[lo:hi])
                if len(feats) < 2:
                    continue
                feats -= feats.mean(axis=0)
                (frames,) = self._session.run(["frames"], {"feats": feats[None]})
                spans = _window_spans(frames.shape[2], window, hop)
                rows.append(campplus.pool_embeddings(frames[0], spans, self._dense))
                for a, b in spans:
                    centres.append(lo / SAMPLE_RATE + (a + b) / 2 * _OUT_FRAME_S)
                    lengths.append((b - a) * _OUT_FRAME_S)
                    owners.append(index)
        if not rows:
            return _Windows(np.zeros((0, campplus.EMBEDDING_DIM), np.float32), np.zeros(0), np.zeros(0),
                            np.zeros(0, np.int64))
        return _Windows(cluster.normalize(np.concatenate(rows)), np.array(centres), np.array(lengths),
                        np.array(owners, dtype=np.int64))

    def embed_reference(self, samples: np.ndarray) -> np.ndarray | None:
        """Unit embedding of one speaker's reference audio (mean over its speech windows), None without speech."""
        regions = speech_regions(samples)
        windows = self._embed_regions(samples, regions)
        if len(windows.embeddings) == 0:
            return None
        weights = windows.lengths[:, None]
        return cluster.normalize((windows.embeddings * weights).sum(axis=0))

    # --- references -------------------------------------------------------------------------------------------

    def check_reference(self, name: str, samples: np.ndarray) -> None:
        """Raise `InvalidRequest` naming the reference when it is not 2-10 s of audio with speech in it."""
        seconds = len(samples) / SAMPLE_RATE
        if seconds < MIN_REFERENCE_S or seconds > MAX_REFERENCE_S:
            raise InvalidRequest(
                f"known speaker reference for {name!r} is {seconds:.1f} s of audio; it must be "
                f"{MIN_REFERENCE_S:g}-{MAX_REFERENCE_S:g} s",
                code="invalid_speaker_reference", param="known_speaker_references",
            )
        regions = speech_regions(samples)
        if sum(e - s for s, e in regions) < MIN_WINDOW_S:
            raise InvalidRequest(
                f"known speaker reference for {name!r} has no speech in it",
                code="invalid_speaker_reference", param="known_speaker_references",
            )

    # --- the pipeline -----------------------------------------------------------------------------------------

    def diarize(
        self,
        samples: np.ndarray,
        *,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
        known: Mapping[str, np.ndarray] | None = None,
    ) -> list[SpeakerTurn]:
        """Speaker turns of `samples` (float32 mono 16 kHz), sorted and non-overlapping (see the module docstring).

        `min_speakers`/`max_speakers` bound the number of speakers found; `known` maps names to reference audio.
        """
        samples = np.asarray(samples, dtype=np.float32)
        regions = speech_regions(samples)
        if not regions:
            return []
        windows = self._embed_regions(samples, regions)
        labels = self._cluster(windows, min_speakers, max_speakers)
        count = int(labels.max()) + 1 if len(labels) else 0
        names = self._names(windows, labels, count, known or {})
        return self._turns(regions, windows, labels, names)

    def _cluster(self, windows: _Windows, min_speakers: int | None, max_speakers: int | None) -> np.ndarray:
        n = len(windows.embeddings)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        full = np.flatnonzero(windows.lengths >= MIN_CLUSTER_S - 1e-6)
        if len(full) < 2:
            full = np.arange(n)
        # long files: average runs of consecutive windows (same region) into at most MAX_UNITS units
        group = max(1, -(-len(full) // MAX_UNITS))
        unit_of = np.zeros(len(full), dtype=np.int64)
        unit, run = 0, 0
        for i in range(1, len(full)):
            run += 1
            if run >= group or windows.regions[full[i]] != windows.regions[full[i - 1]]:
                unit, run = unit + 1, 0
            unit_of[i] = unit
        units = np.zeros((unit + 1, windows.embeddings.shape[1]), dtype=np.float32)
        np.add.at(units, unit_of, windows.embeddings[full])
        units = cluster.normalize(units)
        unit_labels = cluster.average_linkage(units, self.threshold, min_clusters=min_speakers or 1,
                                              max_clusters=max_speakers)
        count = int(unit_labels.max()) + 1
        labels = np.full(n, -1, dtype=np.int64)
        labels[full] = unit_labels[unit_of]
        centres = cluster.centroids(windows.embeddings[full], labels[full], count)
        if group > 1:
            labels[full] = np.argmax(windows.embeddings[full] @ centres.T, axis=1)
        rest = labels < 0
        if rest.any():
            labels[rest] = np.argmax(windows.embeddings[rest] @ centres.T, axis=1)
        # renumber in order of first appearance (reassignment can empty or reorder clusters)
        order: dict[int, int] = {}
        for lab in labels[np.argsort(windows.centres, kind="stable")]:
            order.setdefault(int(lab), len(order))
        return np.array([order[int(lab)] for lab in labels], dtype=np.int64)

    def _names(self, windows: _Windows, labels: np.ndarray, count: int, known: Mapping[str, np.ndarray]) -> list[str]:
        named: dict[int, str] = {}
        if known and count:
            refs = {}
            for name, ref in known.items():
                emb = self.embed_reference(np.asarray(ref, dtype=np.float32))
                if emb is not None:
                    refs[name] = emb
            centres = cluster.centroids(windows.embeddings, labels, count)
            named = cluster.name_clusters(centres, refs, KNOWN_THRESHOLD)
        out, letters = [], 0
        for index in range(count):  # labels are already in order of first appearance
            if index in named:
                out.append(named[index])
            else:
                out.append(cluster.letter(letters))
                letters += 1
        return out

    def _turns(self, regions: list[tuple[float, float]], windows: _Windows, labels: np.ndarray,
               names: list[str]) -> list[SpeakerTurn]:
        turns: list[tuple[float, float, str]] = []
        step = _OUT_FRAME_S * 5  # label resolution: 0.1 s
        min_run = max(1, round(MIN_TURN_S / step))
        for index, (start, end) in enumerate(regions):
            mine = np.flatnonzero(windows.regions == index)
            if len(mine) == 0:
                continue
            grid = np.arange(start, end, step) + step / 2
            nearest = np.abs(grid[:, None] - windows.centres[mine][None, :]).argmin(axis=1)
            cells = cluster.smooth(labels[mine][nearest].tolist(), min_run)
            edge = start
            for i in range(1, len(cells) + 1):
                if i == len(cells) or cells[i] != cells[i - 1]:
                    stop = end if i == len(cells) else start + i * step
                    turns.append((edge, stop, names[cells[i - 1]]))
                    edge = stop
        # regions too short for an embedding: the speaker of the nearest turn
        covered = {i for i in windows.regions.tolist()}
        for index, (start, end) in enumerate(regions):
            if index in covered or not turns:
                continue
            mid = (start + end) / 2
            nearest_turn = min(turns, key=lambda t: 0.0 if t[0] <= mid <= t[1] else min(abs(t[0] - mid), abs(t[1] - mid)))
            turns.append((start, end, nearest_turn[2]))
        merged = cluster.merge_turns(turns, MERGE_GAP_S)
        return [SpeakerTurn(round(s, 3), round(e, 3), who) for s, e, who in merged]
