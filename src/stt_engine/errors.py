"""Errors that carry their own HTTP status and machine-readable code.

Every layer (audio, engine, scheduler, postprocess, api) raises `STTError` subclasses; the API turns them
into the original contract's shape (`{"success": false, "error": {...}}`) or OpenAI's
(`{"error": {"message", "type", "param", "code"}}`) depending on the route.
"""

from __future__ import annotations

import errno
from typing import Any

from stt_engine.logging_setup import escape_control

QUOTE_CHARS = 40  # the most of a client's bad value an error message repeats


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """A client's value for an error message: quoted, control characters escaped, and cut to `limit` characters
    (with the full length said), so a 900 kB bad field is not echoed back whole."""
    text = escape_control(str(value))
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(str(value))} characters)"


class STTError(Exception):
    """Base error: `status` is the HTTP status, `code` a stable identifier clients can switch on."""

    status: int = 500
    code: str = "internal_error"
    error_type: str = "server_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.param = param
        self.headers = headers or {}


class InvalidRequest(STTError):
    """The request itself is wrong (missing field, bad option)."""

    status = 400
    code = "invalid_request"
    error_type = "invalid_request_error"


class InvalidAudio(STTError):
    """The upload is not audio we can decode, or is unusable (empty, too short, no audio track)."""

    status = 400
    code = "invalid_audio"
    error_type = "invalid_request_error"


class PayloadTooLarge(STTError):
    status = 413
    code = "file_too_large"
    error_type = "invalid_request_error"


class AudioTooLong(STTError):
    status = 422
    code = "audio_too_long"
    error_type = "invalid_request_error"


class Unauthorized(STTError):
    status = 401
    code = "invalid_api_key"
    error_type = "authentication_error"


class Overloaded(STTError):
    """The queue is full: the client should retry after `Retry-After` seconds."""

    status = 429
    code = "queue_full"
    error_type = "rate_limit_error"


class RequestTimeout(STTError):
    status = 504
    code = "timeout"
    error_type = "server_error"


class NotReady(STTError):
    status = 503
    code = "model_not_ready"
    error_type = "server_error"


class ModelNotFound(STTError):
    """No usable model: raised at start-up with instructions on how to get one."""

    status = 503
    code = "model_not_found"
    error_type = "server_error"


class NotFound(STTError):
    """What the request names does not exist here (an unknown model id): OpenAI answers 404 with this type."""

    status = 404
    code = "not_found"
    error_type = "invalid_request_error"


class ModelMemoryExceeded(STTError):
    """Loading the model a request names would pass MODEL_MEMORY_MB: refused rather than risk an OOM kill.
    `retryable`: it would fit once busy models go idle (a job waits for that); False when it never can."""

    status = 503
    code = "model_memory_exceeded"
    error_type = "server_error"

    def __init__(self, message: str, *, retryable: bool = True, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retryable = retryable


class ShuttingDown(STTError):
    """The server is stopping: the request was not finished within the shutdown grace period."""

    status = 503
    code = "shutting_down"
    error_type = "server_error"


class TranscriptionFailed(STTError):
    """Decoding failed inside the model. The message is generic on purpose: the cause is in the server's log,
    under the request id that the error body carries."""

    status = 500
    code = "transcription_failed"
    error_type = "server_error"


class ServerBusy(STTError):
    """The process is at its connection or descriptor budget (see api/server.py): nothing is wrong with the
    request; the client should retry after `Retry-After` seconds."""

    status = 503
    code = "server_busy"
    error_type = "server_error"


DESCRIPTOR_RETRY_AFTER_S = 2


def out_of_descriptors() -> ServerBusy:
    """The answer to a request that failed for want of file descriptors: busy, not broken; retry shortly."""
    return ServerBusy(
        "The server has no file descriptor free for this upload right now (open-file limit); retry in "
        f"{DESCRIPTOR_RETRY_AFTER_S} s.",
        headers={"Retry-After": str(DESCRIPTOR_RETRY_AFTER_S)},
    )


def descriptors_exhausted(exc: BaseException | None) -> bool:
    """Whether `exc`, or an error it was raised from, is the process running out of file descriptors (EMFILE,
    ENFILE; tempfile's "No usable temporary directory" when that happens at its first use)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and (
            exc.errno in (errno.EMFILE, errno.ENFILE) or "No usable temporary directory" in str(exc)
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
