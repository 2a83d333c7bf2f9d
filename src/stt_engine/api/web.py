"""The web page at `/`: plain HTML, CSS and JavaScript shipped in the package (`stt_engine/web/`).

No build step and no CDN: every file is served from here, so the page works on an air-gapped network. A
Content-Security-Policy that allows only this origin makes the "no request to another host" promise one the
browser enforces, not one the page merely keeps.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
WEB_PREFIX = "/web"
# 'self' covers this host's ws:/wss: in CSP 3; blob: is the player's source for the user's own file or recording.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
    "connect-src 'self'; worker-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'self'; "
    "form-action 'self'"
)
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-cache"}


def web_page() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)


class _WebFiles(StaticFiles):
    """The page's assets, with the page's headers (no-cache: an upgraded server's page is never stale)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: dict) -> None:  # type: ignore[type-arg]
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      *((k.lower().encode(), v.encode()) for k, v in HEADERS.items())]
            await send(message)

        await super().__call__(scope, receive, send_with_headers)  # type: ignore[arg-type]


def install_web(app: FastAPI) -> None:
    app.mount(WEB_PREFIX, _WebFiles(directory=str(WEB_DIR)), name="web")
