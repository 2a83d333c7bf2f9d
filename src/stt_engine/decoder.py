"""Untrusted media is parsed only here: in a small pool of decoder processes, never in the server's own.

FFmpeg reads hostile bytes; a crash in it (a segfault, an allocation storm, a decode that never ends) must cost one
request, not every request in flight. So every path that opens user bytes (the routes, jobs, `channels=split`, the
CLI, speaker references) calls `probe()` and `decode()` here, which hand the file to a child process:

- Children are fresh interpreters (`python -m stt_engine.decoder`), never forks of a server that holds a model and
  threads. Each runs under an address-space limit (`RLIMIT_AS`, DECODER_MEMORY_MB) and, per file, a CPU-time limit
  (`RLIMIT_CPU`, DECODER_CPU_SECONDS); it serves one file at a time and is replaced after DECODER_MAX_FILES files or
  DECODER_MAX_MB of decoded samples, so whatever its allocator kept goes back to the system.
- The parent never unpickles what a child says (a child that FFmpeg's bugs took over could run code through a
  pickle): replies are JSON, errors are rebuilt from a closed list of `STTError` classes, and samples come back as
  raw float32 in a temporary file the parent reads (one copy, ~0.1 s per hour of audio).
- A child that dies (a crash, SIGKILL, the CPU limit) or runs out of memory fails its own request with a 400 naming
  the file as undecodable, and a fresh child takes its place; a pool that is closed or cannot start answers 503.
- `probe()` reads the header and counts the packets' timestamps (no decoding) so that the caller can refuse or
  queue the file on its true length; `decode()` then decodes it (mono, or one array per channel for split).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from stt_engine import errors as errors_mod
from stt_engine.audio import SAMPLE_RATE, DecodedAudio
from stt_engine.errors import InvalidAudio, InvalidRequest, STTError

if TYPE_CHECKING:  # a decoder child never reads settings: importing pydantic-settings cost each child 0.25 s
    from stt_engine.config import Settings

log = logging.getLogger(__name__)

Source = str | os.PathLike[str] | bytes | BinaryIO
_POLL_S = 0.2  # how often a waiting caller looks at its `stop` event
_START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Probe:
    """What the header and the packets say about a file, before any decoding."""

    format: str
    sample_rate: int
    channels: int
    length_seconds: float | None  # from the packets' timestamps where they have any, else the header's claim


def split_channel_limit(channels: int, settings: Settings) -> None:
    """channels=split takes at most MAX_SPLIT_CHANNELS channels (each is transcribed on its own); `mix` any count."""
    _check_split_channels(channels, settings.max_split_channels)


def _check_split_channels(channels: int, limit: int) -> None:
    """The one wording of the split limit, for the server's check and the decoder process's own."""
    if channels > limit:
        raise InvalidRequest(
            f"The audio has {channels} channels; channels=split takes at most {limit} "
            "(MAX_SPLIT_CHANNELS). Send it with channels=mix, or split it into files of fewer channels.",
            param="channels", code="too_many_channels",
        )


# --- the parent's side --------------------------------------------------------------------------------------------


class _Worker:
    """One child process and its socket."""

    def __init__(self, settings: Settings) -> None:
        parent, child = socket.socketpair()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "stt_engine.decoder", str(child.fileno()),
                 str(settings.decoder_memory_mb), str(settings.decoder_cpu_seconds)],
                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, env=env, close_fds=True,
            )
        finally:
            child.close()
        parent.setblocking(True)
        self.connection = Connection(parent.detach())
        self.files = 0
        self.samples_bytes = 0
        self.ready = False

    def wait_ready(self) -> None:
        if not self.ready:
            if not self.connection.poll(_START_TIMEOUT_S):
                raise OSError("the decoder process did not start")
            if json.loads(self.connection.recv_bytes()).get("ready") is not True:
                raise OSError("the decoder process did not start")
            self.ready = True

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.process.kill()
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


class DecoderPool:
    """At most `processes` decoder children, each serving one call at a time; callers block for a free one.

    Calls come from threads (the routes' thread pool, `asyncio.to_thread`), never from the event loop.
    """

    def __init__(self, settings: Settings, size: int | None = None) -> None:
        self.settings = settings
        self.size = size or decode_processes(settings)
        self._idle: list[_Worker] = []
        self._alive = 0
        self._closed = False
        self._condition = threading.Condition()

    # lifecycle

    def start(self) -> None:
        """Start the children in the background, so that the first requests do not wait for them."""
        for _ in range(self.size):
            self._replace()

    def close(self) -> None:
        with self._condition:
            self._closed = True
            idle, self._idle = self._idle, []
            self._condition.notify_all()
        for worker in idle:
            worker.kill()

    def pids(self) -> list[int]:
        """The children's process ids (tests find a child to kill with this, or as children of the server)."""
        with self._condition:
            return [w.process.pid for w in self._idle]

    def _replace(self) -> None:
        """A new child, in the background, to take a retired or dead one's place."""
        with self._condition:
            if self._closed or self._alive >= self.size:
                return
            self._alive += 1
        threading.Thread(target=self._spawn_idle, name="decoder-spawn", daemon=True).start()

    def _spawn_idle(self) -> None:
        try:
            worker = _Worker(self.settings)
            worker.wait_ready()
        except Exception:
            log.exception("a decoder process could not be started")
            with self._condition:
                self._alive -= 1
                self._condition.notify_all()
            return
        self._release(worker)

    def _acquire(self) -> _Worker:
        with self._condition:
            while True:
                if self._closed:
                    raise _unavailable()
                if self._idle:
                    return self._idle.pop()
                if self._alive < self.size:
                    self._alive += 1
                    break
                self._condition.wait()
        try:  # nobody is starting one for us: start it here
            worker = _Worker(self.settings)
            worker.wait_ready()
            return worker
        except Exception as exc:
            with self._condition:
                self._alive -= 1
                self._condition.notify_all()
            log.exception("a decoder process could not be started")
            raise _unavailable() from exc

    def _release(self, worker: _Worker) -> None:
        with self._condition:
            if not self._closed:
                self._idle.append(worker)
                self._condition.notify()
                return
        worker.kill()

    def _retire(self, worker: _Worker, *, kill: bool) -> None:
        if kill:
            worker.kill()
        else:
            with contextlib.suppress(OSError):
                worker.connection.send_bytes(b'{"op": "exit"}')
            worker.close()
        with self._condition:
            self._alive -= 1
            self._condition.notify_all()
        self._replace()

    # calls

    def call(self, request: dict[str, Any], stop: threading.Event | None = None) -> dict[str, Any]:
        """Send `request` to a free child and return its reply; raises the child's `STTError`, or one naming the
        file as undecodable when the child died on it."""
        worker = self._acquire()
        try:
            worker.connection.send_bytes(json.dumps(request).encode())
            while not worker.connection.poll(_POLL_S):
                if stop is not None and stop.is_set():
                    self._retire(worker, kill=True)
                    raise STTError("Client disconnected.", status=499, code="client_closed_request")
            reply = json.loads(worker.connection.recv_bytes())
        except (EOFError, OSError, ValueError):
            worker.kill()
            code = worker.process.returncode
            self._retire(worker, kill=True)
            raise _died(code) from None
        except BaseException:
            self._retire(worker, kill=True)
            raise
        worker.files += 1
        worker.samples_bytes += int(reply.get("bytes", 0))
        if (reply.get("recycle") or worker.files >= self.settings.decoder_max_files
                or worker.samples_bytes >= self.settings.decoder_max_mb * 1024 * 1024):
            self._retire(worker, kill=False)
        else:
            self._release(worker)
        if "error" in reply:
            raise _rebuilt(reply["error"])
        return reply


def _unavailable() -> STTError:
    return STTError("The audio decoder is not available (the server is stopping, or its decoder processes could "
                    "not start); retry shortly.", status=503, code="decoder_unavailable",
                    headers={"Retry-After": "5"})


def _died(returncode: int | None) -> InvalidAudio:
    """The error for a file whose decoder process died on it."""
    if returncode == -signal.SIGXCPU:
        why = "used up its CPU-time limit (DECODER_CPU_SECONDS)"
        code = "decoder_cpu_limit"
    elif returncode is not None and returncode < 0:
        why = f"was stopped by signal {signal.Signals(-returncode).name}"
        code = "decoder_crashed"
    else:
        why = f"ended (exit status {returncode})"
        code = "decoder_crashed"
    return InvalidAudio(f"The file could not be decoded: the decoder process {why} while reading it. The file is "
                        "damaged or hostile; the server is fine and other requests are served.", code=code)


_ERROR_CLASSES = {cls.__name__: cls for cls in vars(errors_mod).values()
                  if isinstance(cls, type) and issubclass(cls, STTError)}


def _rebuilt(error: dict[str, Any]) -> STTError:
    """The child's `STTError`, as it raised it (class, code, status, message, param)."""
    cls = _ERROR_CLASSES.get(str(error.get("type")), STTError)
    return cls(str(error.get("message", "")), code=str(error.get("code")), status=int(error.get("status", 400)),
               param=error.get("param"))


# --- the public functions -----------------------------------------------------------------------------------------

PROBE_PROCESSES = 2  # children that only read headers and count packets: a probe never waits behind a decode


def decode_processes(settings: Settings) -> int:
    """Children that decode: one per decode slot, and the slot only short files take (`scheduler.slots`)."""
    return settings.decoder_processes or settings.max_concurrent_decodes + 1


def all_processes(settings: Settings) -> int:
    """Every decoder child the server runs (each holds a socket, and a temporary file while it decodes)."""
    return decode_processes(settings) + PROBE_PROCESSES

_pool: DecoderPool | None = None
_probe_pool: DecoderPool | None = None
_pool_lock = threading.Lock()


def start(settings: Settings) -> DecoderPool:
    """The server's pools (its lifespan calls this at start-up), replacing any earlier ones: one for decodes, and
    a small one for probes, so that a burst of uploads is admitted or refused on their lengths while files decode."""
    global _pool, _probe_pool
    with _pool_lock:
        old = [_pool, _probe_pool]
        _pool, _probe_pool = DecoderPool(settings), DecoderPool(settings, PROBE_PROCESSES)
        _pool.start()
        _probe_pool.start()
    for pool_ in old:
        if pool_ is not None:
            pool_.close()
    return _pool


def stop() -> None:
    global _pool, _probe_pool
    with _pool_lock:
        old = [_pool, _probe_pool]
        _pool = _probe_pool = None
    for pool_ in old:
        if pool_ is not None:
            pool_.close()


def pool() -> DecoderPool:
    """The running decode pool; the CLI and other one-off users get one, from the environment's settings, on first
    use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            from stt_engine.config import get_settings

            _pool = DecoderPool(get_settings())
        return _pool


def probe_pool() -> DecoderPool:
    global _probe_pool
    with _pool_lock:
        if _probe_pool is None:
            from stt_engine.config import get_settings

            _probe_pool = DecoderPool(get_settings(), PROBE_PROCESSES)
        return _probe_pool


@contextlib.contextmanager
def _as_path(source: Source):  # type: ignore[no-untyped-def]
    """A path for `source`: itself, or a temporary copy of bytes or a file object."""
    if isinstance(source, (str, os.PathLike)):
        os.stat(source)  # a missing file is the caller's FileNotFoundError, as with an in-process open
        yield os.fspath(source)
        return
    fd, path = tempfile.mkstemp(prefix="stt-decode-", suffix=".audio")
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(source, (bytes, bytearray, memoryview)):
                out.write(source)
            else:
                source.seek(0)
                while block := source.read(1 << 20):
                    out.write(block)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def probe(source: Source, *, max_seconds: float | None = None, stop: threading.Event | None = None) -> Probe:
    """The file's format, channels and length (counted from its packets), read in a decoder process.

    Raises `InvalidAudio` (400) for what is not audio and `AudioTooLong` (422) past `max_seconds`."""
    with _as_path(source) as path:
        reply = probe_pool().call({"op": "probe", "path": path, "max_seconds": max_seconds}, stop)
    return Probe(reply["format"], reply["sample_rate"], reply["channels"], reply["length_seconds"])


def decode(source: Source, *, max_seconds: float | None = None, stop: threading.Event | None = None,
           check_only: bool = False) -> DecodedAudio:
    """`source` (a path, bytes or a binary file) as 16 kHz mono float32, decoded in a decoder process: the one
    decoding function for user bytes. Raises what `stt_engine.audio.decode` raises, and `InvalidAudio` when the
    decoder process dies on the file. With `check_only` the file is decoded and checked whole but no samples come
    back (the result's samples are empty; its `duration` is still right)."""
    decoded, _ = _decode(source, max_seconds, stop, split=False, check_only=check_only)
    return decoded


def decode_split(source: Source, *, max_seconds: float | None = None, stop: threading.Event | None = None,
                 max_channels: int | None = None) -> tuple[DecodedAudio, list[np.ndarray]]:
    """As `decode`, and each channel on its own (none for a mono file); more than `max_channels` is refused."""
    return _decode(source, max_seconds, stop, split=True, max_channels=max_channels)


def _decode(source: Source, max_seconds: float | None, stop: threading.Event | None, *, split: bool,
            check_only: bool = False, max_channels: int | None = None) -> tuple[DecodedAudio, list[np.ndarray]]:
    fd, out = tempfile.mkstemp(prefix="stt-pcm-", suffix=".f32")
    os.close(fd)
    try:
        with _as_path(source) as path:
            reply = pool().call({"op": "decode", "path": path, "max_seconds": max_seconds, "split": split,
                                 "out": out, "samples": not check_only, "max_channels": max_channels}, stop)
        rows, frames = reply["rows"], reply["frames"]
        if check_only:
            data = np.zeros((1, 0), dtype=np.float32)
        else:
            data = np.fromfile(out, dtype=np.float32, count=rows * frames).reshape(rows, frames)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(out)
    decoded = DecodedAudio(data[0], reply["format"], reply["sample_rate"], reply["channels"])
    if check_only:
        decoded = _Checked(decoded.samples, decoded.source_format, decoded.source_sample_rate,
                           decoded.source_channels, frames / SAMPLE_RATE)
    return decoded, list(data[1:])


@dataclass(frozen=True)
class _Checked(DecodedAudio):
    """A file decoded whole in a child, of which only the length came back."""

    checked_seconds: float = 0.0

    @property
    def duration(self) -> float:
        return self.checked_seconds


# --- the child's side ---------------------------------------------------------------------------------------------


def _limit_cpu(seconds: float) -> None:
    """At most `seconds` more CPU time for this process (SIGXCPU ends it past that): set before each file."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime) + 1
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = used + max(1, int(seconds))
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _serve_one(request: dict[str, Any]) -> dict[str, Any]:
    from stt_engine import audio

    path, max_seconds = request["path"], request.get("max_seconds")
    with audio.open_audio(path, max_seconds=max_seconds, count_packets=True) as source:
        info = {"format": source.format, "sample_rate": source.sample_rate, "channels": source.channels}
        if request["op"] == "probe":
            return {**info, "length_seconds": source.length_seconds}
        max_channels = request.get("max_channels")
        if request.get("split") and max_channels is not None:
            _check_split_channels(source.channels, max_channels)
        decoded, tracks = source.decode_split() if request.get("split") else (source.decode(), [])
    rows = [decoded.samples, *tracks]
    if request.get("samples", True):
        with open(request["out"], "wb") as out:
            for row in rows:
                row.tofile(out)
    return {**info, "rows": len(rows), "frames": len(decoded.samples), "bytes": sum(r.nbytes for r in rows)}


def _child_main(fd: int, memory_mb: int, cpu_seconds: float) -> None:
    """The decoder process: limits first, then one JSON request at a time until the parent goes away."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 1024 * 1024, memory_mb * 1024 * 1024))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash leaves no core file of user audio behind
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal reaches the server, which stops us
    connection = Connection(fd)
    import stt_engine.audio  # noqa: F401  (loaded before we say we are ready)

    connection.send_bytes(b'{"ready": true}')
    while True:
        try:
            request = json.loads(connection.recv_bytes())
        except (EOFError, OSError):
            return
        if request.get("op") == "exit":
            return
        _limit_cpu(cpu_seconds)
        try:
            reply = _serve_one(request)
        except STTError as exc:
            reply = {"error": {"type": type(exc).__name__, "code": exc.code, "status": exc.status,
                               "message": exc.message, "param": exc.param}}
        except MemoryError:
            reply = {"recycle": True, "error": {
                "type": "InvalidAudio", "code": "decoder_out_of_memory", "status": 400,
                "message": "The file could not be decoded within the decoder's memory limit (DECODER_MEMORY_MB); "
                           "it is too long or too many channels to decode here, or hostile."}}
        except Exception as exc:  # noqa: BLE001  (anything FFmpeg or PyAV raises on hostile input)
            reply = {"recycle": True, "error": {
                "type": "InvalidAudio", "code": "undecodable_audio", "status": 400,
                "message": f"The file could not be decoded ({type(exc).__name__}: {str(exc)[:200]})."}}
        try:
            connection.send_bytes(json.dumps(reply).encode())
        except OSError:
            return


if __name__ == "__main__":
    _child_main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
