"""Logging: human-readable lines on the console, JSON lines (rotated) under LOG_DIR for machines."""

from __future__ import annotations

import contextvars
import json
import logging
import logging.handlers
import re
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # errors imports this module, and every decoder child imports errors: pydantic stays out of them
    from stt_engine.config import Settings

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


# C0 and C1 controls (CR, LF, ESC, NEL ...), DEL, and the Unicode line/paragraph separators: anything a terminal
# or a line-oriented log reader could take as a new line or a command.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_control(text: str) -> str:
    """`text` with every control character written as a visible escape (`\\r`, `\\x1b`), so a value a client
    sent can never start a forged log line or drive the terminal."""
    return _CONTROL.sub(_escape_one, text)


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char)
    if named:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _escaped(value: Any) -> Any:
    return escape_control(value) if isinstance(value, str) else value


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class ConsoleFormatter(logging.Formatter):
    """The readable line, with control characters in the message and request id escaped: one record is one line
    (a traceback, which we write ourselves, keeps its own lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        saved = record.message, record.__dict__.get("request_id")
        record.message = escape_control(record.message)
        record.request_id = _escaped(saved[1])
        try:
            return super().formatMessage(record)
        finally:
            record.message, record.request_id = saved

    def formatException(self, ei: Any) -> str:  # noqa: N802
        """Traceback lines indented, controls escaped: none of them can pass for a log record of its own."""
        return "\n".join("  " + escape_control(line) for line in super().formatException(ei).split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id and any `extra=` fields.

    `json.dumps` escapes C0 controls itself; C1 controls and U+2028/2029 (which `ensure_ascii=False` would keep)
    are escaped beforehand, so no reader splits a line on them."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": escape_control(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_") and value is not None:
                entry[key] = _escaped(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class RepeatLimitFilter(logging.Filter):
    """Lets at most `burst` identical warnings/errors (same logger, level and message template) through per
    `window_s`; the rest are counted and reported in one line when the window ends. A flood of one error
    (`accept() out of resources` under a connection storm) then cannot rotate the log history away."""

    def __init__(self, burst: int = 10, window_s: float = 60.0, max_keys: int = 1024) -> None:
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self.max_keys = max_keys
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # key -> [window start, count]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        decided = record.__dict__.get("_repeat_ok")
        if decided is None:  # one decision per record, shared by every handler
            decided = record._repeat_ok = self._decide(record)  # type: ignore[attr-defined]
        return bool(decided)

    def _decide(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg)[:200])
        now = time.monotonic()
        with self._lock:
            entry = self._seen.get(key)
            if entry is None or now - entry[0] >= self.window_s:
                suppressed = int(entry[1]) - self.burst if entry is not None and entry[1] > self.burst else 0
                if len(self._seen) >= self.max_keys:
                    self._seen.clear()
                self._seen[key] = [now, 1]
                if suppressed:
                    record.msg = f"{record.msg} [{suppressed} identical messages suppressed in the last {self.window_s:g} s]"
                return True
            entry[1] += 1
            return entry[1] <= self.burst


def configure_logging(settings: Settings) -> None:
    """Console (readable) + `LOG_DIR/stt-engine.jsonl` (JSON, 10 MB x 5 files). Idempotent."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_stt_engine", False):
            root.removeHandler(handler)
    root.setLevel(settings.log_level.upper())
    console = logging.StreamHandler()
    console.setFormatter(ConsoleFormatter("%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s"))
    handlers: list[logging.Handler] = [console]
    repeat_limit = RepeatLimitFilter()
    try:
        settings.log_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(
            settings.log_dir / "stt-engine.jsonl", maxBytes=10 * 1024 * 1024, backupCount=5, encoding="utf-8"
        )
        file_handler.setFormatter(JsonFormatter())
        handlers.append(file_handler)
    except OSError as exc:  # a read-only log folder must not stop the server
        logging.getLogger(__name__).warning("file logging disabled: %s", exc)
    for handler in handlers:
        handler._stt_engine = True  # type: ignore[attr-defined]
        handler.addFilter(_RequestIdFilter())
        handler.addFilter(repeat_limit)
        root.addHandler(handler)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our access log line carries more (audio s, RTF)
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)
