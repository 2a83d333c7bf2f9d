"""Running the app under uvicorn with connections that cannot be held open.

uvicorn bounds idle keep-alive connections (`timeout_keep_alive`) and, with `limit_concurrency`, answers 503
past a number of connections plus tasks. It has no bound on the time a client takes to send its headers (h11
waits for them forever), so `guarded_protocol` adds one: a connection that has not finished a request's headers
within `SERVER_HEADER_TIMEOUT_S` of connecting (or of its first byte after a keep-alive pause) gets a 408 and is
closed. Body reads are bounded per piece by `BodyGuardMiddleware` (`SERVER_BODY_TIMEOUT_S`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from stt_engine.config import Settings

log = logging.getLogger(__name__)

_TIMEOUT_BODY = b"Request headers not received in time.\n"
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


class HeaderTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on receiving each request's headers."""

    header_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()  # a connection that never sends a byte is held no longer than a slow one

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
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._awaiting_headers():
            return
        if self.conn.trailing_data[0] or self.timeout_keep_alive_task is None:
            # Part of a request head arrived (or nothing since connecting): refuse it with a status.
            # A connection idle after a finished response is the keep-alive timer's to close, silently.
            client = "%s:%d" % self.client if self.client else "unknown"
            log.warning("closed a connection from %s: request headers not received within %g s",
                        client, self.header_timeout_s)
            self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()


def guarded_protocol(header_timeout_s: float) -> type[HeaderTimeoutH11Protocol]:
    """The protocol class for uvicorn's `http=` argument, with this header deadline."""
    return type("GuardedH11Protocol", (HeaderTimeoutH11Protocol,), {"header_timeout_s": header_timeout_s})


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The connection bounds (and TLS files, when set) passed to `uvicorn.run` / `uvicorn.Config`."""
    options: dict[str, Any] = {
        "http": guarded_protocol(settings.server_header_timeout_s),
        "timeout_keep_alive": settings.server_keepalive_s,
        "limit_concurrency": settings.server_max_connections,
    }
    if settings.server_ssl_certfile is not None:
        options["ssl_certfile"] = str(settings.server_ssl_certfile)
        if settings.server_ssl_keyfile is not None:
            options["ssl_keyfile"] = str(settings.server_ssl_keyfile)
    return options


def raise_open_file_limit(connections: int) -> None:
    """Lift the soft open-file limit towards the hard one so SERVER_MAX_CONNECTIONS can be reached before the
    process runs out of descriptors (which makes accept() fail in a loop)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = connections + 256  # model files, logs, uploads, the LLM pool
        if soft != resource.RLIM_INFINITY and soft < wanted:
            new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            if new < wanted:
                log.warning("open-file limit %d is below SERVER_MAX_CONNECTIONS + 256; raise it (ulimit -n)", new)
    except (ValueError, OSError) as exc:
        log.warning("could not raise the open-file limit: %s", exc)


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
