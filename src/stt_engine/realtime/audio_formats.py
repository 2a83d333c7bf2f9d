"""Appended audio bytes to 16 kHz mono float32, one append at a time.

PyAV (the FFmpeg the server already decodes files with) does both jobs: its `pcm_mulaw`/`pcm_alaw` decoders for
G.711, and a streaming libswresample resampler that keeps its filter state between appends, so 100 ms pieces
resample without clicks at their joins.
"""

from __future__ import annotations

import av
import numpy as np

from stt_engine.audio import SAMPLE_RATE
from stt_engine.realtime.protocol import AudioFormat


class StreamDecoder:
    """Bytes in the session's input format -> 16 kHz float32 samples. Not thread-safe: one caller at a time."""

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self._carry = b""  # an odd trailing byte of PCM16, completed by the next append
        self._codec: av.CodecContext | None = None
        if fmt.codec != "pcm16":
            self._codec = av.CodecContext.create("pcm_mulaw" if fmt.codec == "pcmu" else "pcm_alaw", "r")
            self._codec.sample_rate = fmt.rate
            self._codec.layout = "mono"
        self._resampler = (
            av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE) if fmt.rate != SAMPLE_RATE else None
        )

    def decode(self, data: bytes) -> np.ndarray:
        pcm = self._to_pcm16(data)
        if pcm.size and self._resampler is not None:
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = self.format.rate
            pieces = [out.to_ndarray().reshape(-1) for out in self._resampler.resample(frame)]
            pcm = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)
        return pcm.astype(np.float32) / 32768.0

    def _to_pcm16(self, data: bytes) -> np.ndarray:
        if self._codec is None:
            data = self._carry + data
            usable = len(data) - len(data) % 2
            self._carry = data[usable:]
            return np.frombuffer(data[:usable], dtype="<i2").astype(np.int16)
        if not data:
            return np.zeros(0, dtype=np.int16)
        frames = self._codec.decode(av.Packet(data))
        pieces = [f.to_ndarray().reshape(-1) for f in frames]
        return np.concatenate(pieces).astype(np.int16) if pieces else np.zeros(0, dtype=np.int16)
