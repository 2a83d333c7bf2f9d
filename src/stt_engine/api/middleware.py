"""Pure ASGI middleware: request id + access log + request metrics, and the request body guard (size, read time).

Pure ASGI (not `BaseHTTPMiddleware`) so request bodies stream through untouched and `http.disconnect` still
reaches the transcription route, which listens for it to drop work a client abandoned.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import Match, Mount, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stt_engine.api.errors import send_error
from stt_engine.errors import InvalidRequest, PayloadTooLarge, STTError, descriptors_exhausted, out_of_descriptors
from stt_engine.logging_setup import request_id_var
from stt_engine.memory import MemoryReclaimer
from stt_engine.metrics import Metrics

access_log = logging.getLogger("stt_engine.access")
log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
# Short and printable (a subset of visible ASCII), so it is safe to echo in a header and to log; else replaced.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
_FORM_OVERHEAD_BYTES = 1 << 20  # multipart framing and the small form fields beside the file
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
UNMATCHED_ROUTE = "<unmatched>"  # one label for every unknown path, so scanners can't blow up label counts


def route_label(scope: Scope, router: Router | None) -> str:
    """The route template (`/v1/audio/transcriptions`), never the raw path: bounded metric labels."""
    route = scope.get("route")
    if route is None and router is not None:  # answered before routing (401, 413): find the route ourselves
        path = scope.get("path", "")
        for candidate in router.routes:
            if isinstance(candidate, Mount):  # the mount has rewritten root_path by now: match on the prefix
                if path.startswith(candidate.path + "/"):
                    route = candidate
                    break
                continue
            match, _ = candidate.matches(scope)
            if match is not Match.NONE:
                route = candidate
                break
    return getattr(route, "path", None) or UNMATCHED_ROUTE


def _incoming_request_id(scope: Scope) -> str | None:
    value = Headers(scope=scope).get(REQUEST_ID_HEADER)
    return value if value and len(value) <= 128 and _VALID_REQUEST_ID.match(value) else None


class WorkInFlight:
    """POST requests being served (uploads, transcriptions, post-processing, job intake): the work a draining
    server lets finish. Read from the drain thread; an int under the GIL needs no lock."""

    def __init__(self) -> None:
        self.count = 0


class RequestContextMiddleware:
    """Outermost layer: gives every request an id (kept from `X-Request-ID` or made), echoes it, counts and
    times the request, and writes one access line with the transcription figures the route left in
    `request.state` (`audio_seconds`, `processing_seconds`, `queue_wait_seconds`)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, router: Router | None = None,
                 work: WorkInFlight | None = None, memory: MemoryReclaimer | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.router = router
        self.work = work or WorkInFlight()
        self.memory = memory

    def _reclaim_memory(self) -> None:
        """After each request (and live session): when the resident size grew noticeably, `malloc_trim` on a
        worker thread hands what was freed back to the system (memory.py)."""
        if self.memory is not None:
            loop = asyncio.get_running_loop()
            self.memory.after_request(lambda trim: loop.run_in_executor(None, trim))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            try:
                await self.app(scope, receive, send)
            finally:
                if scope["type"] == "websocket":
                    self._reclaim_memory()
            return
        started = time.perf_counter()
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        # Each request runs in its own task with its own context copy, so this never leaks between requests;
        # it is left set so that errors logged by outer Starlette layers still carry the id.
        request_id_var.set(request_id)
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = int(message["status"])
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        work = 1 if scope.get("method") == "POST" else 0
        self.metrics.in_flight.inc()
        self.work.count += work
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if response_started:
                raise
            if descriptors_exhausted(exc):  # a temporary file the upload needed: the process is out of descriptors
                log.warning("out of file descriptors on %s: answered 503", scope.get("path"))
                await send_error(scope, send_with_id, out_of_descriptors())
            else:
                log.exception("unhandled error on %s", scope.get("path"))
                await send_error(scope, send_with_id, STTError("Internal server error; the request was not processed."))
        finally:
            self.work.count -= work
            self.metrics.in_flight.dec()
            self._finish(scope, state, status, time.perf_counter() - started)
            self._reclaim_memory()

    def _finish(self, scope: Scope, state: dict[str, Any], status: int, elapsed: float) -> None:
        method = scope.get("method", "")
        route = route_label(scope, self.router)
        self.metrics.observe_request(method, route, status, elapsed, served=route != UNMATCHED_ROUTE)
        audio = state.get("audio_seconds")
        processing = state.get("processing_seconds")
        wait = state.get("queue_wait_seconds")
        rtf = processing / audio if audio and processing is not None else None
        if status == 200 and audio and processing is not None:
            self.metrics.observe_transcription(route, audio, processing, wait)
        client = scope.get("client")
        method = method[:16]  # any token is a valid method; the log needs no more (the formatter escapes it)
        fields: dict[str, Any] = {
            "method": method,
            "path": scope.get("path", "")[:200],
            "route": route,
            "status": status,
            "duration_ms": round(elapsed * 1000, 1),
            "audio_seconds": round(audio, 3) if audio else None,
            "processing_seconds": round(processing, 3) if processing is not None else None,
            "rtf": round(rtf, 4) if rtf is not None else None,
            "queue_wait_seconds": round(wait, 3) if wait is not None else None,
            "client": client[0] if client else None,
        }
        details = "".join(
            f" {label}={value}{unit}"
            for label, value, unit in (
                ("audio", fields["audio_seconds"], "s"), ("rtf", fields["rtf"], ""),
                ("queue_wait", fields["queue_wait_seconds"], "s"),
            )
            if value is not None
        )
        access_log.info(
            "%s %s %d %.0fms%s", method, fields["path"], status, elapsed * 1000, details, extra={k: v for k, v in fields.items() if v is not None}
        )


class BodyGuardMiddleware:
    """Bounds a request body in size and in read time, answering in the route's error shape.

    Size: refuses bodies over MAX_UPLOAD_MB (plus form overhead) with 413. A declared `Content-Length` over the
    limit is refused before a byte of the body is read; a body without one (chunked) is counted as it streams in
    and refused the moment it crosses the limit. The route still checks the file against the exact limit.

    Time: each piece of the body must arrive within `body_timeout_s` of the previous one (SERVER_BODY_TIMEOUT_S),
    else 408 and the connection is closed: an upload trickling a byte a second cannot hold a connection. Only
    the body is timed; once it is complete, waits (the route listening for a disconnect) pass through untouched.
    """

    def __init__(
        self, app: ASGIApp, *, max_upload_mb: float, body_timeout_s: float | None = None, metrics: Metrics | None = None
    ) -> None:
        self.app = app
        self.max_upload_mb = max_upload_mb
        self.limit = int(max_upload_mb * 1024 * 1024) + _FORM_OVERHEAD_BYTES
        self.body_timeout_s = body_timeout_s
        self.metrics = metrics

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"The upload is larger than this server's limit of {self.max_upload_mb:g} MB (MAX_UPLOAD_MB).",
            param="file",
        )

    def _too_slow(self) -> STTError:
        error = InvalidRequest(
            f"The request body stalled: no data for {self.body_timeout_s:g} s (SERVER_BODY_TIMEOUT_S).",
            code="body_timeout", status=408,
        )
        error.headers = {"Connection": "close"}
        return error

    def _count_rejection(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.upload_rejected.labels(reason).inc()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            self._count_rejection("too_large")
            await send_error(scope, send, self._too_large())
            return

        received = 0
        body_done = False
        tripped: tuple[str, STTError] | None = None
        response_started = False

        async def guarded_receive() -> Message:
            nonlocal received, body_done, tripped
            if body_done or self.body_timeout_s is None:
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), self.body_timeout_s)
                except TimeoutError:
                    tripped = ("body_timeout", self._too_slow())
                    raise tripped[1] from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.limit:
                    tripped = ("too_large", self._too_large())
                    raise tripped[1]
            elif message["type"] == "http.disconnect":
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if tripped is not None and not response_started:
                return  # whatever the app makes of the aborted body, the answer is ours
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if tripped is None or response_started:
                raise
        if tripped is not None and not response_started:
            reason, error = tripped
            self._count_rejection(reason)
            if reason == "body_timeout":
                log.info("request body stalled for %g s; answered 408 and closed", self.body_timeout_s)
            await send_error(scope, send, error)


UploadLimitMiddleware = BodyGuardMiddleware  # the earlier name
