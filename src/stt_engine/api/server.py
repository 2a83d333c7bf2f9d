"""Running the app under uvicorn with connections that cannot be held open.

uvicorn bounds idle keep-alive connections (`timeout_keep_alive`); the connection cap is ours (below), checked at
accept rather than by uvicorn's `limit_concurrency` once a request's headers are in. uvicorn has no bound on the
time a client takes to send its headers (h11 waits for them forever), so `guarded_protocol` adds one: a
connection that has not finished a request's headers within `SERVER_HEADER_TIMEOUT_S` of connecting (or of its
first byte after a keep-alive pause) gets a 408 and is closed. Body reads are bounded per piece by
`BodyGuardMiddleware` (`SERVER_BODY_TIMEOUT_S`).

Descriptors: every connection costs a file descriptor, and an upload two more (Starlette's spooled form file, the
route's own copy). `descriptor_budget` keeps a reserve of the process's open-file limit (RLIMIT_NOFILE) for logs,
the model, the decoder processes and outbound clients, and caps open connections at what the rest can carry.
The protocol checks that cap when it accepts a connection: at the cap, the connection that has waited longest for
its request headers (a second or more) is closed with 408 to make room, so slow-header clients cannot keep new
ones out; with none to close, the new one is answered 503 with `Retry-After` as soon as its request line arrives
(or after a short wait), so a flood of idle connections takes no descriptor an upload needs. A temporary file
that still fails for want of descriptors is a 503 too (request middleware).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h11
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from stt_engine import decoder
from stt_engine.api.errors import send_error
from stt_engine.config import Settings
from stt_engine.errors import ServerBusy

log = logging.getLogger(__name__)

_TIMEOUT_BODY = b"Request headers not received in time.\n"
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


# --- descriptor budget ------------------------------------------------------------------------------------
BASE_RESERVE_FDS = 64  # stdio, log files, the event loop's own, the listening socket, model files, the jobs database
FDS_PER_DECODER = 8  # a decoder child process: its pipes, the file it reads, a spare
OUTBOUND_FDS = 32  # the LLM and webhook clients' connection pools
FDS_PER_CONNECTION = 3  # the socket, and for an upload Starlette's spooled form file plus the route's stored copy
REFUSED_WAIT_S = 2.0  # how long a connection past the cap is held waiting for its request line
RETRY_AFTER_S = 2  # what a refusal tells the client
EVICT_AFTER_S = 1.0  # at the cap, a connection without its request headers this long gives its place to a new one


@dataclass(frozen=True)
class DescriptorBudget:
    """How the open-file limit is shared: `reserve` for the process's own files, the rest for connections."""

    limit: int  # the soft RLIMIT_NOFILE (after trying to raise it)
    reserve: int
    max_connections: int  # open connections served at once: SERVER_MAX_CONNECTIONS, or fewer if the limit is low


def reserved_descriptors(settings: Settings) -> int:
    """Descriptors kept out of the connections' share: the base set, the decoder processes (jobs decode through them
    too, and each running job holds its upload open), and the outbound clients."""
    decoders = decoder.all_processes(settings) + settings.jobs_concurrency
    return BASE_RESERVE_FDS + FDS_PER_DECODER * decoders + OUTBOUND_FDS


def descriptor_budget(limit: int, settings: Settings) -> DescriptorBudget:
    """The connection cap that `limit` descriptors allow (pure: the start-up log and the tests use it)."""
    reserve = reserved_descriptors(settings)
    affordable = max(1, (limit - reserve) // FDS_PER_CONNECTION)
    return DescriptorBudget(limit, reserve, min(settings.server_max_connections, affordable))


def wanted_descriptors(settings: Settings) -> int:
    """The open-file limit at which SERVER_MAX_CONNECTIONS is not cut."""
    return reserved_descriptors(settings) + FDS_PER_CONNECTION * settings.server_max_connections


async def _refuse_connection(scope: Scope, receive: Receive, send: Send) -> None:
    """The app a connection past the cap is served by: 503 in the route's error shape, then the connection closes."""
    error = ServerBusy(
        "The server is at its connection limit (SERVER_MAX_CONNECTIONS, or fewer when the open-file limit is low); "
        f"retry in {RETRY_AFTER_S} s.",
        code="too_many_connections",
        headers={"Retry-After": str(RETRY_AFTER_S), "Connection": "close"},
    )
    await send_error(scope, send, error)


# A connection refused before its request line is read: no route known, so a body both error shapes accept (the
# original contract's `success` + `error.code/message`, and OpenAI's `error.message/type/param/code`).
_BUSY_BODY = json.dumps({"success": False, "error": {
    "message": f"The server is at its connection limit; retry in {RETRY_AFTER_S} s.", "type": "server_error",
    "param": None, "code": "too_many_connections",
}}).encode()
_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"retry-after: %d\r\ncontent-length: %d\r\n\r\n%s" % (RETRY_AFTER_S, len(_BUSY_BODY), _BUSY_BODY)
)


class HeaderTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on receiving each request's headers and a cap on open connections."""

    header_timeout_s: float = 10.0
    max_connections: int | None = None
    on_refused: Callable[[], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._awaiting_since: float | None = None  # when the current wait for a request's headers began
        self.limit_concurrency = None  # the cap is checked at accept (below), where it can free the descriptor

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        cap = self.max_connections
        if cap is not None and (
            len(self.tasks) >= cap or (len(self.connections) > cap and not self._evict_a_slow_connection())
        ):
            self._refuse()
            if self.transport.is_closing():
                return
        self._arm_header_timer()  # a connection that never sends a byte is held no longer than a slow one

    def _refuse(self) -> None:
        """Past the cap: answer the request line (when it comes within REFUSED_WAIT_S) with 503 in the route's
        shape, never run the app. Past the cap plus a few held this way (a flood), answer 503 and close at once:
        a refused connection must not hold a descriptor for long."""
        self._refused = True
        self.app = _refuse_connection
        if self.on_refused is not None:
            self.on_refused()
        open_now, cap = len(self.connections), self.max_connections or 0
        log.warning("refused a connection: %d open, the limit is %d (SERVER_MAX_CONNECTIONS / open-file limit)",
                    open_now, cap)
        if open_now > cap + max(8, cap // 4):
            self.transport.write(_BUSY_RESPONSE)
            self.transport.close()

    def _evict_a_slow_connection(self) -> bool:
        """At the cap, the connection that has waited longest for a request's headers, EVICT_AFTER_S or more (a
        slow-header client), is closed to make room for this one: a flood of slow
        connections then cannot keep every new client out. False when there is none to close."""
        victim: HeaderTimeoutH11Protocol | None = None
        oldest = self.loop.time() - EVICT_AFTER_S
        for other in self.connections:
            if other is self or not isinstance(other, HeaderTimeoutH11Protocol) or other._refused:
                continue
            since = other._awaiting_since
            if since is not None and since <= oldest and not other.transport.is_closing() and other._awaiting_headers():
                victim, oldest = other, since
        if victim is None:
            return False
        victim._cancel_header_timer()
        victim._header_timeout(evicted=True)
        return True

    def _should_upgrade(self) -> bool:
        return not self._refused and super()._should_upgrade()  # a refused websocket gets the plain 503

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing():
            self._cancel_header_timer()
        elif self._awaiting_headers():
            self._arm_header_timer()  # keeps the deadline already running: it counts from the first byte
        else:
            self._cancel_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _awaiting_headers(self) -> bool:
        """Between requests (no response under way) with part of the next request's head buffered or expected."""
        return self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            wait = min(self.header_timeout_s, REFUSED_WAIT_S) if self._refused else self.header_timeout_s
            self._header_timer = self.loop.call_later(wait, self._header_timeout)
            self._awaiting_since = self.loop.time()

    def _cancel_header_timer(self) -> None:
        self._awaiting_since = None
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self, evicted: bool = False) -> None:
        self._header_timer = None
        self._awaiting_since = None
        if self.transport.is_closing() or not self._awaiting_headers():
            return
        if self.conn.trailing_data[0] or self.timeout_keep_alive_task is None:
            # Part of a request head arrived (or nothing since connecting): refuse it with a status.
            # A connection idle after a finished response is the keep-alive timer's to close, silently.
            client = "%s:%d" % self.client if self.client else "unknown"
            if self._refused:
                self.transport.write(_BUSY_RESPONSE)
            elif evicted:
                log.warning("closed a connection from %s to make room: no request headers in %g s, at the "
                            "connection limit", client, EVICT_AFTER_S)
                self.transport.write(_TIMEOUT_RESPONSE)
            else:
                log.warning("closed a connection from %s: request headers not received within %g s",
                            client, self.header_timeout_s)
                self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()


def guarded_protocol(
    header_timeout_s: float, max_connections: int | None = None, on_refused: Callable[[], None] | None = None
) -> type[HeaderTimeoutH11Protocol]:
    """The protocol class for uvicorn's `http=` argument, with this header deadline and connection cap."""
    return type("GuardedH11Protocol", (HeaderTimeoutH11Protocol,), {
        "header_timeout_s": header_timeout_s, "max_connections": max_connections,
        "on_refused": staticmethod(on_refused) if on_refused is not None else None,
    })


def uvicorn_options(
    settings: Settings, budget: DescriptorBudget | None = None, on_refused: Callable[[], None] | None = None
) -> dict[str, Any]:
    """The connection bounds (and TLS files, when set) passed to `uvicorn.run` / `uvicorn.Config`. The cap is the
    descriptor budget's when given, else SERVER_MAX_CONNECTIONS."""
    cap = budget.max_connections if budget is not None else settings.server_max_connections
    options: dict[str, Any] = {
        "http": guarded_protocol(settings.server_header_timeout_s, cap, on_refused),
        "timeout_keep_alive": settings.server_keepalive_s,
        "limit_concurrency": cap,  # our protocol checks it itself, at accept; kept for uvicorn's websockets
    }
    if settings.server_ssl_certfile is not None:
        options["ssl_certfile"] = str(settings.server_ssl_certfile)
        if settings.server_ssl_keyfile is not None:
            options["ssl_keyfile"] = str(settings.server_ssl_keyfile)
    return options


def raise_open_file_limit(settings: Settings) -> DescriptorBudget:
    """Lift the soft open-file limit towards the hard one so SERVER_MAX_CONNECTIONS fits in it, then share out
    what there is: the budget's connection cap is what uvicorn is given."""
    wanted = wanted_descriptors(settings)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if soft != resource.RLIM_INFINITY and soft < wanted:
            new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
    except (ValueError, OSError) as exc:
        log.warning("could not raise the open-file limit: %s", exc)
    budget = descriptor_budget(wanted if soft == resource.RLIM_INFINITY else soft, settings)
    if budget.max_connections < settings.server_max_connections:
        log.warning(
            "open-file limit %d: %d kept for uploads' files, logs, the model and decoders; at most %d connections "
            "(SERVER_MAX_CONNECTIONS=%d needs a limit of %d: raise it with ulimit -n / LimitNOFILE)",
            budget.limit, budget.reserve, budget.max_connections, settings.server_max_connections, wanted,
        )
    else:
        log.info("open-file limit %d: %d reserved, up to %d connections", budget.limit, budget.reserve,
                 budget.max_connections)
    return budget


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the server on this machine."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def warn_if_exposed(settings: Settings) -> None:
    """A server reachable from the network with no API keys: anyone there can use it."""
    if not settings.api_keys and not is_loopback(settings.server_host):
        log.warning(
            "listening on %s:%d with no API_KEYS: anyone who can reach this port can use the server. "
            "Set API_KEYS, or SERVER_HOST=127.0.0.1 behind a reverse proxy.",
            settings.server_host, settings.server_port,
        )
