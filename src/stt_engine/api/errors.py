"""Error responses in the shape each API's clients expect.

- Original contract (`/transcribe`, `/health`...): `{"success": false, "error": {"code": ..., "message": ...}}`.
- OpenAI routes (`/v1/...`): `{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`, which the
  OpenAI SDKs parse into their exception classes.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Scope, Send

from stt_engine.errors import InvalidRequest, STTError, descriptors_exhausted, out_of_descriptors
from stt_engine.logging_setup import escape_control

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 1000  # a safety net for messages built elsewhere


def _safe_message(message: str) -> str:
    """Messages are escaped, and cut when something upstream quoted a client's value whole."""
    message = escape_control(message)
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + f"… (message cut at {MAX_MESSAGE_CHARS} characters)"
    return message


def is_openai_route(path: str) -> bool:
    return path.startswith("/v1/")


def error_body(path: str, error: STTError, request_id: str | None = None) -> dict:
    """The error in the shape the route at `path` promises (middleware has a path, not a `Request`)."""
    if is_openai_route(path):
        body: dict = {
            "error": {
                "message": _safe_message(error.message), "type": error.error_type, "param": error.param,
                "code": error.code,
            }
        }
    else:
        body = {"success": False, "error": {"code": error.code, "message": _safe_message(error.message)}}
    if request_id:
        body["error"]["request_id"] = request_id
    return body


def error_response(request: Request, error: STTError) -> JSONResponse:
    body = error_body(request.url.path, error, getattr(request.state, "request_id", None))
    return JSONResponse(body, status_code=error.status, headers=error.headers or None)


async def send_error(scope: Scope, send: Send, error: STTError, extra_headers: dict[str, str] | None = None) -> None:
    """Answer from ASGI middleware (auth, upload limit) in the route's error shape, without reading the body."""
    request_id = (scope.get("state") or {}).get("request_id")
    response = JSONResponse(
        error_body(scope.get("path", ""), error, request_id),
        status_code=error.status,
        headers={**error.headers, **(extra_headers or {})} or None,
    )
    await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One readable sentence from pydantic's error list, naming the field."""
    parts, param = [], None
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "form")]
        name = ".".join(loc) or "request"
        param = param or name
        if err.get("type") == "missing":
            parts.append(f"'{name}' is required" + (" (send the audio as multipart form field 'file')" if name == "file" else ""))
        else:
            parts.append(f"'{name}': {err.get('msg', 'invalid value')}")
    return "; ".join(parts) or "Invalid request.", param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(STTError)
    async def _stt_error(request: Request, exc: STTError) -> JSONResponse:
        if exc.status >= 500:
            log.warning("request failed: %s (%s)", exc.message, exc.code)
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(request, InvalidRequest(message, param=param, code="invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and descriptors_exhausted(exc.__cause__):  # the form's spool file: busy, not bad
            return error_response(request, out_of_descriptors())
        codes = {404: "not_found", 405: "method_not_allowed", 413: "file_too_large"}
        error = STTError(str(exc.detail), status=exc.status_code, code=codes.get(exc.status_code, "http_error"))
        error.error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(request, error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(request, STTError("Internal server error; the request was not processed."))
