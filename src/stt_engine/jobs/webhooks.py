"""Webhook delivery: signed POSTs, retried with backoff, as background tasks that never hold up a job.

Signature (when the job has a `webhook_secret`): ``X-STT-Signature: sha256=<hex HMAC-SHA256(secret,
"<X-STT-Timestamp>.<raw body>")>``. Receivers recompute it over the raw body and reject old timestamps (replays).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

import httpx
from tenacity import AsyncRetrying, retry_if_result, stop_after_attempt, wait_exponential

from stt_engine.errors import InvalidRequest
from stt_engine.jobs.models import Job

if TYPE_CHECKING:
    from stt_engine.config import Settings
    from stt_engine.jobs.store import JobStore

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 300.0
RESOLVE_TIMEOUT_S = 3.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Cloud metadata services outside 169.254.0.0/16 (link-local is refused as a whole): AWS's IPv6 endpoint,
# Alibaba's, and the ones that sit in the IPv4 "this host"/reserved blocks.
METADATA_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n) for n in ("fd00:ec2::254/128", "100.100.100.200/32", "192.0.0.192/32")
)


class WebhookRefused(Exception):
    """The webhook's host is not one this server may send to (the policy, not the network, says no)."""


@dataclass(frozen=True)
class WebhookPolicy:
    """Where webhooks may go. Link-local and cloud metadata addresses never (unless a CIDR lists them); loopback
    and private ranges only with `WEBHOOK_ALLOW_PRIVATE` or when listed; with `WEBHOOK_ALLOWED_HOSTS` set, only
    the hosts (names) and networks (CIDRs) it lists."""

    names: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()
    allow_private: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookPolicy:
        names, networks = set(), []
        for entry in settings.webhook_allowed_hosts:
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                names.add(entry.lower().rstrip("."))
        return cls(frozenset(names), tuple(networks), settings.webhook_allow_private)

    @property
    def restricted(self) -> bool:
        return bool(self.names or self.networks)

    def name_listed(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.names

    def refusal(self, host: str, address: IPAddress) -> str | None:
        """Why `host`, resolved to `address`, may not receive a webhook; None when it may."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        in_listed_network = any(address.version == n.version and address in n for n in self.networks)
        if (address.is_link_local or address.is_multicast or address.is_unspecified
                or (address.is_reserved and not address.is_loopback)  # ::1 sits in IPv6's reserved ::/8
                or any(address.version == n.version and address in n for n in METADATA_NETWORKS)):
            return None if in_listed_network else f"{address} is a link-local, reserved or cloud metadata address"
        if self.restricted:
            if in_listed_network or self.name_listed(host):
                return None
            return f"{host} ({address}) is not in WEBHOOK_ALLOWED_HOSTS"
        if not address.is_global and not self.allow_private:
            return (f"{address} is a loopback or private address (set WEBHOOK_ALLOW_PRIVATE=true or list it in "
                    "WEBHOOK_ALLOWED_HOSTS to allow it)")
        return None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def _resolve(host: str, port: int) -> list[IPAddress]:
    infos = await asyncio.wait_for(
        asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S
    )
    out: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in out:
            out.append(address)
    return out


def _port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


async def allowed_addresses(url: str, policy: WebhookPolicy) -> list[IPAddress]:
    """The addresses of `url`'s host that the policy allows, in resolver order. Raises `WebhookRefused` when it
    allows none, `OSError`/`TimeoutError` when the name does not resolve."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    literal = _literal(host)
    addresses = [literal] if literal is not None else await _resolve(host, _port(parts))
    allowed = [a for a in addresses if policy.refusal(host, a) is None]
    if not allowed:
        raise WebhookRefused(policy.refusal(host, addresses[0]) if addresses else f"{host} has no address")
    return allowed


def check_webhook_syntax(url: str | None) -> str | None:
    """400 for anything but an absolute http(s) URL with a host and no control characters or spaces."""
    if url is None or not url.strip():
        return None
    url = url.strip()
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        valid = False
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise InvalidRequest(
            f"webhook_url must not contain spaces or control characters (CR, LF, tab...), got {url[:200]!r}.",
            param="webhook_url", code="invalid_webhook_url",
        )
    if not valid or len(url) > 2048:
        raise InvalidRequest(
            f"webhook_url must be an absolute http:// or https:// URL, got {url[:200]!r}.",
            param="webhook_url", code="invalid_webhook_url",
        )
    return url


async def validate_webhook_url(url: str | None, policy: WebhookPolicy) -> str | None:
    """The URL to store, or a 400 naming why it cannot receive webhooks. A name that does not resolve now is
    accepted (the receiver may come up later) unless only a listed network could admit it; every delivery checks
    the address again (DNS can change)."""
    url = check_webhook_syntax(url)
    if url is None:
        return None
    host = urlsplit(url).hostname or ""
    if policy.restricted and _literal(host) is None and not policy.name_listed(host) and not policy.networks:
        raise InvalidRequest(f"webhook_url host {host!r} is not in WEBHOOK_ALLOWED_HOSTS.",
                             param="webhook_url", code="webhook_host_not_allowed")
    try:
        await allowed_addresses(url, policy)
    except WebhookRefused as exc:
        raise InvalidRequest(f"webhook_url is not allowed: {exc}.", param="webhook_url",
                             code="webhook_host_not_allowed") from exc
    except (OSError, asyncio.TimeoutError) as exc:
        if policy.restricted and not policy.name_listed(host):  # only its address could have let it in
            raise InvalidRequest(f"webhook_url host {host!r} is not in WEBHOOK_ALLOWED_HOSTS and does not resolve "
                                 "to an address listed there.", param="webhook_url",
                                 code="webhook_host_not_allowed") from exc
    return url


def pinned_request(url: str, address: IPAddress) -> tuple[str, dict[str, str], dict[str, Any]]:
    """`url` aimed at the checked `address` (so a second DNS answer cannot send it elsewhere): the URL, the
    Host header, and the TLS name (SNI and certificate check) for https."""
    parts = urlsplit(url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    host = f"[{address}]" if address.version == 6 else str(address)
    netloc = (f"{userinfo}@" if userinfo else "") + host + (f":{parts.port}" if parts.port else "")
    extensions: dict[str, Any] = {}
    if parts.scheme == "https" and _literal(parts.hostname or "") is None:
        extensions["sni_hostname"] = parts.hostname
    return urlunsplit(parts._replace(netloc=netloc)), {"Host": hostport}, extensions


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

    def __init__(self, store: JobStore, *, include_result: bool, max_attempts: int, timeout_s: float,
                 policy: WebhookPolicy | None = None) -> None:
        self.store = store
        self.include_result = include_result
        self.max_attempts = max_attempts
        self.policy = policy or WebhookPolicy()
        self.client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def schedule(self, job: Job) -> None:
        if job.webhook_url and job.id not in self._tasks:
            task = asyncio.get_running_loop().create_task(self._deliver(job), name=f"webhook-{job.id}")
            self._tasks[job.id] = task
            task.add_done_callback(lambda t, job_id=job.id: self._done(job_id, t))

    def _done(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(job_id, None)
        if not task.cancelled() and task.exception() is not None:  # never "Task exception was never retrieved"
            log.error("webhook task for %s crashed", job_id, exc_info=task.exception())

    async def _deliver(self, job: Job) -> None:
        """Every way out records a state: delivered, pending (will retry) or failed. A bug here, or a URL that
        no longer passes the policy, ends as `failed` rather than a task that died with the webhook `pending`."""
        attempt = job.webhook_attempts
        if attempt >= self.max_attempts:
            return
        try:
            body = json.dumps(payload(job, self.include_result), ensure_ascii=False).encode()
            retrying = AsyncRetrying(
                stop=stop_after_attempt(max(0, self.max_attempts - attempt)),
                wait=wait_exponential(multiplier=BACKOFF_BASE_S, max=BACKOFF_CAP_S),
                retry=retry_if_result(lambda ok: not ok), retry_error_callback=lambda _state: False,
            )
            async for tried in retrying:
                with tried:
                    attempt += 1
                    ok = await self._attempt(job, body, attempt)
                if not tried.retry_state.outcome.failed:  # type: ignore[union-attr]
                    tried.retry_state.set_result(ok)
        except WebhookRefused as exc:
            log.warning("webhook for %s refused: %s", job.id, exc)
            await self._record(job.id, "failed", attempt)
        except Exception:
            log.exception("webhook for %s: delivery failed unexpectedly", job.id)
            await self._record(job.id, "failed", attempt)

    async def _attempt(self, job: Job, body: bytes, attempt: int) -> bool:
        """One POST to an address checked now; records the outcome; True when delivered."""
        assert job.webhook_url
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "User-Agent": "stt-engine-webhook",
                   "X-STT-Job-Id": job.id, "X-STT-Event": f"job.{job.status}", "X-STT-Timestamp": timestamp,
                   "X-STT-Delivery-Attempt": str(attempt)}
        if job.webhook_secret:
            headers["X-STT-Signature"] = sign(job.webhook_secret, timestamp, body)
        try:
            address = (await allowed_addresses(job.webhook_url, self.policy))[0]
            url, host, extensions = pinned_request(job.webhook_url, address)
            response = await self.client.post(url, content=body, headers=headers | host, extensions=extensions)
            ok, reason = response.is_success, f"HTTP {response.status_code}"
        except (httpx.HTTPError, OSError, asyncio.TimeoutError) as exc:
            ok, reason = False, f"{type(exc).__name__}: {exc}"
        if ok:
            await self._record(job.id, "delivered", attempt)
            log.info("webhook for %s delivered (attempt %d)", job.id, attempt)
            return True
        log.warning("webhook for %s failed (attempt %d/%d): %s", job.id, attempt, self.max_attempts, reason)
        await self._record(job.id, "pending" if attempt < self.max_attempts else "failed", attempt)
        return False

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
