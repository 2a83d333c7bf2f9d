"""Speaker diarization of mono 16 kHz audio: who spoke when, offline and without torch.

Public interface (what the API, jobs and streams use):

- `SpeakerTurn(start, end, speaker)`: one turn, times in seconds of the input, `speaker` is "A", "B", ... in order
  of first appearance, or the name of a known speaker whose reference voice matched.
- `Diarizer(settings)`: loads the speaker-embedding model once (about a second; do it lazily, once, and share the
  instance); raises `ModelNotFound` (with the install command) when the model is not installed;
  `Diarizer.diarize(samples, min_speakers=, max_speakers=, known=)` is thread-safe and blocking (call it from a
  worker thread, never on the event loop). `samples` is float32 mono 16 kHz in [-1, 1]. `known` maps a name to the
  reference samples (16 kHz mono) of that speaker; check each one first with `Diarizer.check_reference`.
  Turns come back sorted, non-overlapping, with gaps where nobody speaks; adjacent turns of one speaker are merged.
  Boundaries are accurate to about 0.1-0.3 s: split a transcript segment at the word nearest a boundary.
- `Diarizer.check_reference(name, samples)`: raises `InvalidRequest` (400, code `invalid_speaker_reference`)
  naming the reference when it is under 2 s or over 10 s, or has no speech.
- `available(settings)`: True when the model is installed (or can be built from what is installed);
  `unavailable_reason(settings)` says how to install it otherwise (an error message for a 4xx/5xx).

How it works (see docs/diarization.md): speech regions from Silero VAD (the copy faster-whisper ships) → CAM++
speaker embeddings (3D-Speaker, Apache-2.0) on 1.5 s windows every 0.5 s → average-linkage clustering on cosine →
turns, smoothed. CAM++ runs through onnxruntime from a graph built once from the checkpoint, without torch.
Cost: about 1.5 CPU-seconds per audio minute, under 160 MB (docs/diarization.md).
"""

from __future__ import annotations

from stt_engine.diarize.pipeline import (
    MAX_REFERENCE_S,
    MIN_REFERENCE_S,
    SAMPLE_RATE,
    Diarizer,
    SpeakerTurn,
    available,
    unavailable_reason,
)

__all__ = [
    "MAX_REFERENCE_S",
    "MIN_REFERENCE_S",
    "SAMPLE_RATE",
    "Diarizer",
    "SpeakerTurn",
    "available",
    "unavailable_reason",
]
