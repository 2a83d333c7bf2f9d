"""Decode and validate uploaded audio: any container/codec PyAV's bundled FFmpeg reads, to 16 kHz mono float32.

We decode ourselves (rather than through faster-whisper's `decode_audio`) to tell users *what* is wrong with a
file: not media at all, media without an audio track, a file cut short, or too short/long to transcribe; and to
bound what decoding costs whatever the upload claims to be:

- `open_audio()` reads only the container header (and, where it states no length, the timestamps of the last
  packets), so the caller can refuse an over-long file, or ask the queue for room (`Scheduler.admit`), before the
  bulk of the work.
- `AudioSource.decode()` streams packets straight into one preallocated float32 buffer and stops as soon as the
  audio passes `max_seconds`, so a file whose length cannot be read beforehand costs at most the limit.
  Memory: 64 kB per second of audio (230 MB per hour), nothing else of that order.
- Only the first audio stream is decoded. Codecs are opened with `max_pixels` so that FFmpeg's stream probing
  cannot decode a huge picture (cover art, a video track) into gigabytes of pixels.
- Any channel count is mixed down: FFmpeg's resampler for layouts it knows, a plain average in numpy otherwise.
"""

from __future__ import annotations

import contextlib
import gc
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

try:
    from av.stream import Discard
except ImportError:  # older PyAV: other streams are read by the demuxer, but still never decoded
    Discard = None  # type: ignore[assignment,misc]

from stt_engine.errors import AudioTooLong, InvalidAudio, STTError
from stt_engine.memory import release_memory  # noqa: F401  (decoder children trim after long files)

SAMPLE_RATE = 16_000
MIN_AUDIO_SECONDS = 0.1  # OpenAI's API refuses shorter files too; Whisper invents text for them.
# Audio missing at the end beyond this (seconds, or this share of the declared length) means the file was cut short;
# codec priming and padding (MP3, AAC, Opus) account for well under it.
_TRUNCATION_SLACK_S = 0.25
_TRUNCATION_SLACK_RATIO = 0.03
# FFmpeg options for the container and every stream's decoder: a picture over this many pixels is refused instead
# of decoded (stream probing decodes a first frame of every stream, video included).
_OPEN_OPTIONS = {"max_pixels": "1"}
# Formats whose header (or, for Ogg, last page) states the true length; for others FFmpeg may only estimate it
# from the bitrate, which says nothing about a missing end.
_EXACT_DURATION_FORMATS = {"wav", "w64", "flac", "ogg", "matroska,webm", "aiff", "caf", "mov,mp4,m4a,3gp,3g2,mj2"}
# Formats whose decode after a seek to 0 gives exactly the samples of a fresh open (Matroska's Opus does not: it
# drops the first packet's pre-roll), so that a second pass over the packets need not open the file again.
_EXACT_SEEK_FORMATS = {"wav", "w64", "flac", "mp3", "ogg", "aiff", "mov,mp4,m4a,3gp,3g2,mj2"}
_GROWTH = 1.5  # buffer growth factor when the container declares no duration
_TRIM_AFTER_SAMPLES = 30 * SAMPLE_RATE  # hand freed memory back to the OS after decoding more than this


@dataclass(frozen=True)
class DecodedAudio:
    """16 kHz mono samples and what we learned about the source."""

    samples: np.ndarray
    source_format: str
    source_sample_rate: int
    source_channels: int

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE


class AudioSource:
    """An opened upload whose header has been read: `declared_seconds` is known before any decoding."""

    def __init__(
        self, source: str | os.PathLike[str] | BinaryIO, *, max_seconds: float | None = None,
        count_packets: bool = False,
    ) -> None:
        self.max_seconds = max_seconds
        self._source = source
        if isinstance(source, (str, os.PathLike)) and Path(source).stat().st_size == 0:
            raise InvalidAudio("The uploaded file is empty.", code="empty_file")
        self._open()
        self.declared_seconds = _declared_seconds(self._container, self._stream)
        # A container's own length covers its longest stream: the audio's only when it is the sole stream
        self._declared_is_audio = self._stream.duration is not None or len(self._container.streams) == 1
        # Without a declared length (piped FLAC, live WebM), the last packet's timestamp still tells it; this is
        # only an estimate for admission (what is there, not what should be), and decoding stops at the limit anyway.
        self.length_seconds = self.declared_seconds
        if self.length_seconds is None:
            self.length_seconds = self._probe_end()
            self.close()
            self._open()
        if max_seconds is not None and self.length_seconds is not None and self.length_seconds > max_seconds:
            self.close()
            raise AudioTooLong(_too_long_message(self.length_seconds, max_seconds))
        if count_packets:
            # The header may lie (a 4 h file claiming 10 s): the packets' own timestamps, read without decoding any
            # audio, decide. The demux pass stops as soon as they pass the limit.
            # First the last packets' timestamps (a seek to the end): a long file is refused in milliseconds.
            end = self._probe_end() if self.declared_seconds is not None and max_seconds is not None else None
            if end is not None and max_seconds is not None and end > max_seconds:
                self.close()
                raise AudioTooLong(_too_long_message(end, max_seconds))
            self._rewind()
            counted = self._count_packets(max_seconds)
            if counted is not None:
                self.length_seconds = counted
            if max_seconds is not None and counted is not None and counted > max_seconds:
                self.close()
                raise AudioTooLong(_too_long_message(counted, max_seconds, at_least=True))
            self._rewind()

    def _open(self) -> None:
        source = self._source
        if not isinstance(source, (str, os.PathLike)):
            source.seek(0)
        try:
            self._container = av.open(source, mode="r", metadata_errors="ignore", options=_OPEN_OPTIONS)
        except av.error.FFmpegError as exc:
            if _mp4_cut_short(source):
                raise _truncated("its index (the MP4 'moov' box) is missing") from exc
            raise InvalidAudio(
                "The file could not be read as audio: it is not a supported audio or video format "
                f"({_ffmpeg_reason(exc)}). Supported: wav, flac, mp3, m4a/aac, ogg/opus, webm, mp4 and anything "
                "FFmpeg decodes.",
                code="unsupported_format",
            ) from exc
        try:
            if not self._container.streams.audio:
                raise InvalidAudio("The file has no audio track.", code="no_audio_track")
            self._stream = self._container.streams.audio[0]
            for other in self._container.streams if Discard is not None else ():
                if other.index != self._stream.index:
                    other.discard = Discard.all  # demuxers may then skip their packets altogether
            self.format = self._container.format.name
            context = self._stream.codec_context
            self.sample_rate, self.channels = context.sample_rate or 0, context.channels or 0
        except BaseException:
            self.close()
            raise

    def _rewind(self) -> None:
        """Back to the first packet, for another pass: a seek (opening again probes the streams anew, which costs
        more than reading a short file's packets), or, where the seek fails, the file opened again."""
        if self.format in _EXACT_SEEK_FORMATS:
            try:
                self._container.seek(0, backward=True)
                return
            except (av.error.FFmpegError, OverflowError, ValueError):
                pass
        self.close()
        self._open()

    def _probe_end(self) -> float | None:
        """Seconds up to the end of the last packet, found by seeking to the end (None where that fails)."""
        stream = self._stream
        if stream.time_base is None:
            return None
        try:
            self._container.seek(int(1e9 / stream.time_base), stream=stream, backward=True)
            end = None
            for count, packet in enumerate(self._container.demux(stream)):
                if packet.pts is not None:
                    end = max(end or 0.0, float((packet.pts + (packet.duration or 0)) * stream.time_base))
                if count >= 64:
                    break
            return end
        except (av.error.FFmpegError, OverflowError, ValueError):
            return None

    def _count_packets(self, max_seconds: float | None) -> float | None:
        """Seconds the audio stream's packets span, from their timestamps and durations (no decoding); None when
        they carry neither. Stops once past `max_seconds`: that is enough to refuse the file."""
        stream = self._stream
        if stream.time_base is None:
            return None
        base = float(stream.time_base)
        start: int | None = None
        end = 0
        total = 0  # sum of packet durations, for streams without timestamps
        limit = max_seconds / base if max_seconds is not None else None
        try:
            for packet in self._container.demux(stream):
                duration = packet.duration or 0
                total += duration
                if packet.pts is not None:
                    if start is None or packet.pts < start:
                        start = packet.pts
                    end = max(end, packet.pts + duration)
                if limit is not None and max(total, end - (start or 0)) > limit:
                    break
        except (av.error.FFmpegError, OverflowError, ValueError):
            pass  # the damage is found (and named) by the decode
        spanned = max(total, end - (start or 0))
        return spanned * base if spanned > 0 else None

    def __enter__(self) -> AudioSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def decode(self, stop: threading.Event | None = None) -> DecodedAudio:
        """Decode to 16 kHz mono float32; `stop` being set (the client left) ends it with a 499.

        Raises `InvalidAudio` (400) for undecodable, truncated or too-short audio and `AudioTooLong` (422) as soon as
        the decoded audio passes `max_seconds`.
        """
        return self._decode(stop, split=False)[0]

    def decode_split(self, stop: threading.Event | None = None) -> tuple[DecodedAudio, list[np.ndarray]]:
        """Every channel on its own (16 kHz float32), and their average as the mono audio; a mono source gives
        no channels (its one channel is the mono audio). Same checks and errors as `decode`."""
        return self._decode(stop, split=self.channels > 1)

    def _decode(self, stop: threading.Event | None, split: bool) -> tuple[DecodedAudio, list[np.ndarray]]:
        try:
            tracks, errors = self._decode_stream(stop, split)
        finally:
            gc.collect()  # PyAV's resampler graphs are freed only by the cycle collector
        if split:
            samples = np.mean(tracks, axis=0, dtype=np.float32) if tracks else np.zeros(0, np.float32)
        else:
            samples, tracks = tracks[0], []
        duration = len(samples) / SAMPLE_RATE
        if duration == 0:
            raise InvalidAudio(
                "No audio could be decoded from the file (it is empty, damaged, or not audio).",
                code="undecodable_audio",
            )
        self._check_complete(duration, errors)
        if duration < MIN_AUDIO_SECONDS:
            raise InvalidAudio(
                f"The audio is too short ({duration:.3f} s); at least {MIN_AUDIO_SECONDS} s is needed.",
                code="audio_too_short",
            )
        return DecodedAudio(samples, self.format, self.sample_rate, self.channels), tracks

    def _check_complete(self, duration: float, errors: int) -> None:
        declared = self.declared_seconds
        if declared:
            missing = declared - duration
            exact = self._declared_is_audio and (
                self.format in _EXACT_DURATION_FORMATS or (self.format == "mp3" and _mp3_has_length(self._source))
            )
            if (exact or errors) and missing > max(_TRUNCATION_SLACK_S, _TRUNCATION_SLACK_RATIO * declared):
                raise _truncated(f"it declares {declared:.2f} s but only {duration:.2f} s could be decoded")
        if self.format == "wav" and (short := _wav_cut_short(self._source)) is not None:
            raise _truncated(f"its header declares {short[0]:.2f} s but the file holds {short[1]:.2f} s")
        if self.format == "ogg" and _ogg_cut_short(self._source):
            raise _truncated(f"its last Ogg page is incomplete or not marked as the end ({duration:.2f} s decoded)")
        if self.format.startswith("mov,mp4") and _mp4_cut_short(self._source):
            raise _truncated(f"its last MP4 box runs past the end of the file ({duration:.2f} s decoded)")

    def _decode_stream(self, stop: threading.Event | None, split: bool) -> tuple[list[np.ndarray], int]:
        """Decode the audio stream into growing float32 buffers (one, or one per channel with `split`); returns
        them, cut to one length, and how many packets failed."""
        limit = int(self.max_seconds * SAMPLE_RATE) if self.max_seconds is not None else None
        # reserved, not touched: pages of a buffer a lying header made too large never become resident
        expected = int(min(self.length_seconds or 60.0, 3600.0) * SAMPLE_RATE * 1.02) + SAMPLE_RATE
        most = limit + SAMPLE_RATE if limit is not None else None
        count = self.channels if split else 1
        buffers = [_Buffer(min(expected, most) if most is not None else expected, most) for _ in range(count)]
        mixer: _MonoMixer | _ChannelSplitter = _ChannelSplitter(count) if split else _MonoMixer()

        def extend(pieces: list[np.ndarray] | list[list[np.ndarray]]) -> None:
            if split:
                for buffer, channel in zip(buffers, pieces):
                    buffer.extend(channel)  # type: ignore[arg-type]
            else:
                buffers[0].extend(pieces)  # type: ignore[arg-type]

        errors = 0
        try:
            for count, packet in enumerate(self._container.demux(self._stream)):
                if stop is not None and count % 256 == 0 and stop.is_set():
                    raise STTError("Client disconnected.", status=499, code="client_closed_request")
                try:
                    frames = packet.decode()
                except av.error.FFmpegError:
                    errors += 1
                    continue
                for frame in frames:
                    extend(mixer.mix(frame))
                if limit is not None and buffers[0].size > limit:
                    raise AudioTooLong(
                        _too_long_message(buffers[0].size / SAMPLE_RATE, self.max_seconds or 0, at_least=True)
                    )
            extend(mixer.flush())
        except av.error.FFmpegError as exc:  # the demuxer gave up: keep what came before, count it as damage
            errors += 1
            if buffers[0].size == 0:
                raise InvalidAudio(
                    f"The audio could not be decoded ({_ffmpeg_reason(exc)}).", code="undecodable_audio"
                ) from exc
        except BaseException:
            for buffer in buffers:
                buffer.release()
            raise
        finally:
            del mixer
        size = min(buffer.size for buffer in buffers)
        for buffer in buffers:
            buffer.size = size
        return [buffer.finish() for buffer in buffers], errors


def open_audio(
    source: str | os.PathLike[str] | BinaryIO, *, max_seconds: float | None = None, count_packets: bool = False
) -> AudioSource:
    """Open `source` and read its header only. Raises `InvalidAudio` (400) or `AudioTooLong` (422) from the header.

    With `count_packets`, the length is the one the packets' timestamps span (a demux pass, no decoding), not the
    header's claim: what the decoder processes use, so a lying header cannot make them decode up to the limit."""
    return AudioSource(source, max_seconds=max_seconds, count_packets=count_packets)


def decode(source: str | os.PathLike[str] | BinaryIO, *, max_seconds: float | None = None) -> DecodedAudio:
    """Decode `source` (a path or a binary file object) to 16 kHz mono float32 in one call.

    Raises `InvalidAudio` (400) for empty, undecodable, audio-less, truncated or too-short input and
    `AudioTooLong` (422) beyond `max_seconds`.
    """
    with open_audio(source, max_seconds=max_seconds) as opened:
        decoded = opened.decode()
    if len(decoded.samples) > _TRIM_AFTER_SAMPLES:
        release_memory()
    return decoded


class _Buffer:
    """One float32 array grown in place (realloc: large blocks are remapped, not copied) and cut to size once."""

    def __init__(self, capacity: int, most: int | None) -> None:
        self.array = np.empty(max(capacity, SAMPLE_RATE), dtype=np.float32)
        self.size = 0
        self.most = most  # growth stops here (the limit plus a second): more is refused anyway

    def extend(self, pieces: list[np.ndarray]) -> None:
        for piece in pieces:
            end = self.size + len(piece)
            if end > len(self.array):
                grown = int(len(self.array) * _GROWTH)
                self.array.resize(max(end, min(grown, self.most) if self.most else grown), refcheck=False)
            self.array[self.size:end] = piece
            self.size = end

    def finish(self) -> np.ndarray:
        self.array.resize(self.size, refcheck=False)
        return self.array

    def release(self) -> None:
        self.array = np.empty(0, dtype=np.float32)
        self.size = 0


class _MonoMixer:
    """Frames of any format, rate and channel count -> 16 kHz mono float32 pieces.

    FFmpeg's resampler mixes the layouts it knows (stereo, 5.1 ...) with the proper weights. Channels in no stated
    order (a WAV without a channel mask: "9 channels") are averaged here in numpy and then only resampled; FFmpeg
    would guess a speaker layout for some counts and refuse others.
    """

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None
        self._started = False  # the resampler has taken a frame: from then on its errors are real ones
        self._numpy_mix = False

    def mix(self, frame: av.AudioFrame) -> list[np.ndarray]:
        frame.pts = None
        if not self._numpy_mix and frame.layout.name.endswith(" channels"):
            self._numpy_mix = True  # channels in no stated order: FFmpeg would guess a speaker layout
        if self._numpy_mix:
            frame = _average_channels(frame)
        try:
            return self._resample(frame)
        except ValueError:  # the stream changed its format, rate or layout midway: a new resampler for the rest
            out = self.flush()
            self._resampler = None
            return out + self._resample(frame)
        except av.error.ArgumentError:  # a layout FFmpeg cannot mix
            if self._numpy_mix or self._started:
                raise
            self._numpy_mix, self._resampler = True, None
            return self._resample(_average_channels(frame))

    def flush(self) -> list[np.ndarray]:
        return self._resample(None) if self._resampler is not None else []

    def _resample(self, frame: av.AudioFrame | None) -> list[np.ndarray]:
        if self._resampler is None:
            # 16-bit, then scaled, exactly as faster-whisper's `decode_audio`: the model sees the library's samples
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        out = [
            piece.to_ndarray().reshape(-1).astype(np.float32) / 32768.0 for piece in self._resampler.resample(frame)
        ]
        self._started = True
        return out


def _planar_float(frame: av.AudioFrame) -> np.ndarray:
    """A frame's samples as float32 in [-1, 1], one row per channel, whatever its sample format."""
    channels = len(frame.layout.channels)
    data = frame.to_ndarray()
    if not frame.format.is_planar:
        data = data.reshape(-1, channels).T
    name = frame.format.name.rstrip("p")
    if name == "u8":
        return (data.astype(np.float32) - 128.0) / 128.0
    if name in ("s16", "s32", "s64"):
        return data.astype(np.float32) / float(2 ** (int(name[1:]) - 1))
    return data.astype(np.float32, copy=False)


def _mono_frame(samples: np.ndarray, sample_rate: int) -> av.AudioFrame:
    out = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, dtype=np.float32)[None, :], format="flt",
                                     layout="mono")
    out.sample_rate = sample_rate
    return out


def _average_channels(frame: av.AudioFrame) -> av.AudioFrame:
    """A mono float frame: the mean of every channel, for layouts FFmpeg cannot mix."""
    return _mono_frame(_planar_float(frame).mean(axis=0), frame.sample_rate)


class _ChannelSplitter:
    """Frames of any format, rate and channel count -> one list of 16 kHz float32 pieces per channel.

    Every channel is taken out as a mono frame and resampled on its own: FFmpeg's resampler is never asked to carry
    a layout of many channels (8 and more crashed it), so any count the limit allows costs only its share of work.
    """

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self._resamplers: list[av.AudioResampler | None] = [None] * channels

    def mix(self, frame: av.AudioFrame) -> list[list[np.ndarray]]:
        data = _planar_float(frame)
        if data.shape[0] != self.channels:
            raise InvalidAudio(
                f"The audio changes its channel count midway ({self.channels} to {data.shape[0]}), which "
                "channels=split cannot follow; send it with channels=mix.", code="channel_count_changed"
            )
        return [self._resample(c, _mono_frame(data[c], frame.sample_rate)) for c in range(self.channels)]

    def flush(self) -> list[list[np.ndarray]]:
        return [self._resample(c, None) if self._resamplers[c] is not None else [] for c in range(self.channels)]

    def _resample(self, channel: int, frame: av.AudioFrame | None) -> list[np.ndarray]:
        resampler = self._resamplers[channel]
        if resampler is None:
            resampler = self._resamplers[channel] = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        try:
            pieces = resampler.resample(frame)
        except ValueError:  # the rate changed midway: a new resampler for the rest
            out = self._resample(channel, None)
            self._resamplers[channel] = None
            return out + self._resample(channel, frame)
        return [piece.to_ndarray().reshape(-1).astype(np.float32, copy=False) for piece in pieces]


def _declared_seconds(container: av.container.InputContainer, stream: av.audio.stream.AudioStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def _truncated(why: str) -> InvalidAudio:
    return InvalidAudio(
        f"The audio file is truncated or damaged: {why}. Upload the complete file.", code="truncated_audio"
    )


def _read_head_tail(source: str | os.PathLike[str] | BinaryIO, head: int, tail: int) -> tuple[bytes, bytes, int]:
    """The first `head` and last `tail` bytes of a path or seekable file object, and its size."""
    with contextlib.ExitStack() as stack:
        handle: BinaryIO = (
            stack.enter_context(open(source, "rb")) if isinstance(source, (str, os.PathLike)) else source
        )
        if not handle.seekable():
            return b"", b"", 0
        position = handle.tell()
        try:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(0)
            first = handle.read(head)
            handle.seek(max(0, size - tail))
            last = handle.read(tail)
        finally:
            handle.seek(position)
        return first, last, size


def _wav_cut_short(source: str | os.PathLike[str] | BinaryIO) -> tuple[float, float] | None:
    """(declared, present) seconds when a WAV's `data` chunk declares more bytes than the file holds.

    FFmpeg quietly takes the file's size instead. Streamed WAVs (size 0 or 0xFFFFFFFF, RF64) declare nothing.
    """
    with contextlib.suppress(OSError, struct.error):
        head, _, size = _read_head_tail(source, 1 << 16, 0)
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        offset, byte_rate = 12, 0
        while offset + 8 <= len(head):
            kind, length = head[offset:offset + 4], struct.unpack("<I", head[offset + 4:offset + 8])[0]
            if kind == b"fmt " and offset + 16 <= len(head):
                byte_rate = struct.unpack("<I", head[offset + 16:offset + 20])[0]
            elif kind == b"data":
                present = size - (offset + 8)
                if length in (0, 0xFFFFFFFF) or not byte_rate or length <= present + 64:
                    return None
                return length / byte_rate, present / byte_rate
            offset += 8 + length + (length & 1)
    return None


def _ogg_cut_short(source: str | os.PathLike[str] | BinaryIO) -> bool:
    """An Ogg stream ends with a complete page flagged end-of-stream; a cut file does not."""
    with contextlib.suppress(OSError):
        _, tail, _ = _read_head_tail(source, 0, 1 << 16)
        start = tail.rfind(b"OggS")
        while start >= 0:
            header = tail[start:start + 27]
            if len(header) == 27 and header[4] == 0:  # version 0: a real page header, not payload bytes
                segments = tail[start + 27:start + 27 + header[26]]
                complete = len(segments) == header[26] and start + 27 + header[26] + sum(segments) <= len(tail)
                return not complete or not header[5] & 0x04
            start = tail.rfind(b"OggS", 0, start)
    return False


def _mp4_cut_short(source: str | os.PathLike[str] | BinaryIO) -> bool:
    """An MP4/M4A file is a sequence of boxes; in a cut file the last one runs past the end (or `moov` is missing)."""
    try:
        path_or_handle = source
        with contextlib.ExitStack() as stack:
            handle: BinaryIO = (
                stack.enter_context(open(path_or_handle, "rb"))
                if isinstance(path_or_handle, (str, os.PathLike)) else path_or_handle
            )
            if not handle.seekable():
                return False
            position = handle.tell()
            try:
                size = handle.seek(0, os.SEEK_END)
                offset, seen = 0, set()
                while offset + 8 <= size:
                    handle.seek(offset)
                    header = handle.read(16)
                    box_size, kind = struct.unpack(">I4s", header[:8])
                    if offset == 0 and kind != b"ftyp":
                        return False  # not an ISO media file: nothing to say
                    if box_size == 1 and len(header) == 16:
                        box_size = struct.unpack(">Q", header[8:16])[0]
                    elif box_size == 0:
                        box_size = size - offset  # runs to the end of the file by definition
                    if box_size < 8:
                        return False
                    seen.add(kind)
                    if offset + box_size > size:
                        return True
                    offset += box_size
                return bool(seen) and b"moov" not in seen
            finally:
                handle.seek(position)
    except (OSError, struct.error):
        return False


def _mp3_has_length(source: str | os.PathLike[str] | BinaryIO) -> bool:
    """Whether an MP3 states its length (a Xing/Info or VBRI header); otherwise FFmpeg estimates it from the size."""
    with contextlib.suppress(OSError):
        head, _, _ = _read_head_tail(source, 1 << 16, 0)
        offset = 0
        if head[:3] == b"ID3" and len(head) >= 10:
            offset = 10 + ((head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | (head[9] & 0x7F))
            if offset + 4096 > len(head):
                head, _, _ = _read_head_tail(source, offset + 4096, 0)
        first_frame = head[offset:offset + 4096]
        return any(tag in first_frame for tag in (b"Xing", b"Info", b"VBRI"))
    return False


def _too_long_message(seconds: float, limit: float, at_least: bool = False) -> str:
    prefix = "at least " if at_least else ""
    return (
        f"The audio is {prefix}{seconds:.0f} s long, over this server's limit of {limit:.0f} s "
        "(MAX_AUDIO_SECONDS). Split it into shorter files."
    )


def _ffmpeg_reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
