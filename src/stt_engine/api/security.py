"""Optional API keys (Bearer tokens, as the OpenAI SDK sends them) and CORS.

Both are off by default: no `API_KEYS` means an open server (for a trusted network), no `CORS_ORIGINS` means
browsers on other origins are refused by their own same-origin policy.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from stt_engine.api.errors import send_error
from stt_engine.config import Settings
from stt_engine.errors import Unauthorized


def _digest(value: str) -> bytes:
    """Hash before comparing, so the comparison time reveals neither the key nor its length."""
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (as the OpenAI SDK sends its key); None otherwise."""
    scheme, _, token = (header or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def api_key_matches(token: str | None, keys: Iterable[str]) -> bool:
    """Whether `token` is one of `keys`, compared in constant time (for routes the HTTP middleware doesn't see,
    such as WebSockets)."""
    presented = _digest(token or "")
    ok = False
    for key in keys:
        if key:
            ok |= hmac.compare_digest(presented, _digest(key))
    return ok and bool(token)


class ApiKeyMiddleware:
    """401 in the route's error shape unless `Authorization: Bearer <key>` names one of `API_KEYS`.

    Paths in `AUTH_OPEN_PATHS` (health, metrics) stay open for probes and scrapers, and the API's own pages
    (`/` and its files under `/web/`, `/docs` and its assets, `/openapi.json`) stay open so a browser can load
    them and then enter a key (the page's key field, Swagger's Authorize button); they hold nothing a key protects. A request that does present a valid key is
    marked (`scope["state"]["authenticated"]`), so open routes such as `/health` can show more to it.
    Every configured key is compared, in constant time, whatever the outcome; keys and headers are never logged.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: Iterable[str],
        open_paths: Iterable[str],
        public_paths: Iterable[str] = (),
        public_prefixes: Iterable[str] = (),
    ) -> None:
        self.app = app
        self._digests = [_digest(k) for k in keys if k]
        self._open = {self._normalise(p) for p in (*open_paths, *public_paths)}
        self._open_prefixes = tuple(public_prefixes)

    @staticmethod
    def _normalise(path: str) -> str:
        return path.rstrip("/") or "/"

    def _authorised(self, header: str | None) -> bool:
        token = bearer_token(header)
        if token is None:
            return False
        presented = _digest(token)
        ok = False
        for digest in self._digests:  # no early exit: time does not depend on which key matched
            ok |= hmac.compare_digest(presented, digest)
        return ok

    def _is_open(self, path: str) -> bool:
        if self._normalise(path) in self._open:
            return True
        # a prefix opens only plain file names under it: never a dot-segment climbing out
        return path.startswith(self._open_prefixes) and "/." not in path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._digests:
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("authorization")
        if self._authorised(header):
            scope.setdefault("state", {})["authenticated"] = True
            await self.app(scope, receive, send)
            return
        if self._is_open(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        message = (
            "Invalid API key." if header else "Missing API key: send it as the header 'Authorization: Bearer <key>'."
        )
        await send_error(scope, send, Unauthorized(message), {"WWW-Authenticate": "Bearer"})


# The API's own pages: a browser must load them before it can be given a key.
PUBLIC_PATHS = ("/", "/docs", "/docs/oauth2-redirect", "/openapi.json")
PUBLIC_PREFIXES = ("/docs/static/", "/web/")


def is_authenticated(scope_state: object, settings: Settings) -> bool:
    """True when no keys are configured, or the request presented a valid one."""
    if not settings.api_keys:
        return True
    return bool(getattr(scope_state, "authenticated", False))


def install_security(app: FastAPI, settings: Settings) -> None:
    """API keys inside, CORS outside it: a browser's preflight (no credentials) must be answered, not refused."""
    if settings.api_keys:
        app.add_middleware(
            ApiKeyMiddleware, keys=settings.api_keys, open_paths=settings.auth_open_paths,
            public_paths=PUBLIC_PATHS, public_prefixes=PUBLIC_PREFIXES,
        )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
