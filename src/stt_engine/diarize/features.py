"""Kaldi-compatible 80-bin log-mel filterbank in numpy: the features CAM++ was trained on.

Matches Kaldi's `compute-fbank-feats` defaults as 3D-Speaker uses them (`torchaudio.compliance.kaldi.fbank`,
80 bins, no dither): 25 ms frames every 10 ms (edges snipped), DC offset removed, pre-emphasis 0.97, Povey window,
512-point FFT power spectrum, triangular mel filters on Kaldi's mel scale from 20 Hz to Nyquist, natural log floored
at float epsilon. Mean normalisation (per embedding window) is left to the caller, which slices windows out of one
feature matrix per speech region.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16000
FRAME_LENGTH = 400  # 25 ms
FRAME_SHIFT = 160  # 10 ms
N_FFT = 512
N_MELS = 80
_PREEMPH = 0.97
_LOW_HZ = 20.0
_EPS = float(np.finfo(np.float32).eps)


def _mel(hz: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


@lru_cache(maxsize=1)
def _tables() -> tuple[np.ndarray, np.ndarray]:
    """The Povey window and the [N_FFT/2 + 1, N_MELS] mel filter matrix (Kaldi's layout: no weight on Nyquist)."""
    n = np.arange(FRAME_LENGTH, dtype=np.float64)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * n / (FRAME_LENGTH - 1))) ** 0.85
    low, high = _mel(_LOW_HZ), _mel(SAMPLE_RATE / 2)
    delta = (high - low) / (N_MELS + 1)
    left = low + np.arange(N_MELS) * delta
    center, right = left + delta, left + 2 * delta
    bins = _mel(np.arange(N_FFT // 2) * SAMPLE_RATE / N_FFT)[:, None]
    up = (bins - left) / (center - left)
    down = (right - bins) / (right - center)
    weights = np.maximum(0.0, np.minimum(up, down))
    filters = np.zeros((N_FFT // 2 + 1, N_MELS), dtype=np.float32)
    filters[: N_FFT // 2] = weights
    return window.astype(np.float32), filters


def num_frames(num_samples: int) -> int:
    return 0 if num_samples < FRAME_LENGTH else 1 + (num_samples - FRAME_LENGTH) // FRAME_SHIFT


def fbank(samples: np.ndarray, chunk_frames: int = 2000) -> np.ndarray:
    """[frames, 80] float32 log-mel energies of 16 kHz mono `samples` (float, any scale), frame i at 10 ms x i.

    Works through the frames in chunks so a long region never holds more than `chunk_frames` spectra at once.
    """
    window, filters = _tables()
    total = num_frames(len(samples))
    out = np.empty((total, N_MELS), dtype=np.float32)
    wave = np.asarray(samples, dtype=np.float32)
    for first in range(0, total, chunk_frames):
        count = min(chunk_frames, total - first)
        start = first * FRAME_SHIFT
        frames = np.lib.stride_tricks.sliding_window_view(
            wave[start:start + (count - 1) * FRAME_SHIFT + FRAME_LENGTH], FRAME_LENGTH)[::FRAME_SHIFT]
        frames = frames - frames.mean(axis=1, keepdims=True)
        emphasised = np.empty_like(frames)
        emphasised[:, 1:] = frames[:, 1:] - _PREEMPH * frames[:, :-1]
        emphasised[:, 0] = frames[:, 0] * (1 - _PREEMPH)
        spectrum = np.fft.rfft(emphasised * window, n=N_FFT)
        power = (spectrum.real ** 2 + spectrum.imag ** 2).astype(np.float32)
        out[first:first + count] = np.log(np.maximum(power @ filters, _EPS))
    return out
