"""Webhook delivery: signed POSTs, retried with backoff, as background tasks that never hold up a job.

Signature (when the job has a `webhook_secret`): ``X-STT-Signature: sha256=<hex HMAC-SHA256(secret,
"<X-STT-Timestamp>.<raw body>")>``. Receivers recompute it over the raw body and reject old timestamps (replays).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from stt_engine.errors import InvalidRequest
from stt_engine.jobs.models import Job

if TYPE_CHECKING:
    from stt_engine.jobs.store import JobStore

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 300.0


def validate_webhook_url(url: str | None) -> str | None:
    """400 for anything but an absolute http(s) URL with a host."""
    if url is None or not url.strip():
        return None
    url = url.strip()
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        valid = False
    if not valid or len(url) > 2048:
        raise InvalidRequest(
            f"webhook_url must be an absolute http:// or https:// URL, got {url[:200]!r}.",
            param="webhook_url", code="invalid_webhook_url",
        )
    return url


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def payload(job: Job, include_result: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"id": job.id, "object": "transcription.job", "status": job.status}
    if job.error:
        body["error"] = job.error
    if include_result:
        body["result"] = job.public().get("result")
    return body


class WebhookSender:
    """Delivers each finished job's webhook at most `max_attempts` times, recording the outcome on the job."""

    def __init__(self, store: JobStore, *, include_result: bool, max_attempts: int, timeout_s: float) -> None:
        self.store = store
        self.include_result = include_result
        self.max_attempts = max_attempts
        self.client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def schedule(self, job: Job) -> None:
        if job.webhook_url and job.id not in self._tasks:
            task = asyncio.get_running_loop().create_task(self._deliver(job), name=f"webhook-{job.id}")
            self._tasks[job.id] = task
            task.add_done_callback(lambda _t, job_id=job.id: self._tasks.pop(job_id, None))

    async def _deliver(self, job: Job) -> None:
        assert job.webhook_url
        body = json.dumps(payload(job, self.include_result), ensure_ascii=False).encode()
        attempt = job.webhook_attempts
        while attempt < self.max_attempts:
            attempt += 1
            timestamp = str(int(time.time()))
            headers = {"Content-Type": "application/json", "User-Agent": "stt-engine-webhook",
                       "X-STT-Job-Id": job.id, "X-STT-Event": f"job.{job.status}", "X-STT-Timestamp": timestamp,
                       "X-STT-Delivery-Attempt": str(attempt)}
            if job.webhook_secret:
                headers["X-STT-Signature"] = sign(job.webhook_secret, timestamp, body)
            try:
                response = await self.client.post(job.webhook_url, content=body, headers=headers)
                ok, reason = response.is_success, f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                ok, reason = False, f"{type(exc).__name__}: {exc}"
            if ok:
                await self._record(job.id, "delivered", attempt)
                log.info("webhook for %s delivered (attempt %d)", job.id, attempt)
                return
            log.warning("webhook for %s failed (attempt %d/%d): %s", job.id, attempt, self.max_attempts, reason)
            await self._record(job.id, "pending" if attempt < self.max_attempts else "failed", attempt)
            if attempt < self.max_attempts:
                await asyncio.sleep(min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))

    async def _record(self, job_id: str, status: str, attempts: int) -> None:
        try:
            await self.store.webhook_state(job_id, status, attempts)
        except Exception as exc:  # the store being down must not stop the deliveries
            log.warning("could not record webhook state of %s: %s", job_id, exc)

    async def aclose(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await self.client.aclose()
