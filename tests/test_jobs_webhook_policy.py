"""Where webhooks may go, as pure policy (no network, no model): URL syntax, link-local and metadata addresses,
private ranges, WEBHOOK_ALLOWED_HOSTS, and the pinned request a delivery makes after checking the address."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from typing import Any

import pytest

from stt_engine.config import Settings
from stt_engine.errors import InvalidRequest
from stt_engine.jobs.models import Job, JobStatus
from stt_engine.jobs.webhooks import (
    WebhookPolicy,
    WebhookRefused,
    WebhookSender,
    allowed_addresses,
    check_webhook_syntax,
    pinned_request,
    validate_webhook_url,
)

ip = ipaddress.ip_address


def policy(**values: Any) -> WebhookPolicy:
    return WebhookPolicy.from_settings(Settings(_env_file=None, **values))


@pytest.mark.parametrize("url", [
    "http://example.com/hook\r\nX-Injected: 1", "http://exa\nmple.com/", "http://example.com/a b",
    "http://example.com/\x00", "http://example.com/\tx", "http://example.com/\x7f",
])
def test_control_characters_and_spaces_are_refused(url: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_webhook_syntax(url)
    assert info.value.param == "webhook_url" and "control characters" in info.value.message


@pytest.mark.parametrize("address", ["169.254.169.254", "fe80::1", "fd00:ec2::254", "100.100.100.200", "0.0.0.0",
                                     "::ffff:169.254.169.254", "224.0.0.1"])
def test_link_local_and_metadata_are_refused_even_with_private_allowed(address: str) -> None:
    for p in (policy(), policy(webhook_allow_private=True), policy(webhook_allowed_hosts=["metadata", "10.0.0.0/8"])):
        assert p.refusal("metadata", ip(address)) is not None
    if not address.startswith("::ffff"):  # only a network that lists it explicitly lets it through
        assert policy(webhook_allowed_hosts=[f"{address}/{ip(address).max_prefixlen}"]).refusal(
            "metadata", ip(address)) is None


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "10.1.2.3", "192.168.0.10", "172.16.5.5", "fd12::1",
                                     "100.64.0.1", "::ffff:127.0.0.1"])
def test_private_and_loopback_only_when_configured(address: str) -> None:
    assert "WEBHOOK_ALLOW_PRIVATE" in (policy().refusal("h", ip(address)) or "")
    assert policy(webhook_allow_private=True).refusal("h", ip(address)) is None


def test_allowed_hosts_is_an_allow_list_of_names_and_networks() -> None:
    p = policy(webhook_allowed_hosts="hooks.example.com, 10.0.0.0/8,127.0.0.1")
    assert p.refusal("hooks.example.com", ip("192.168.1.1")) is None  # a listed name may be private
    assert p.refusal("HOOKS.example.com.", ip("8.8.8.8")) is None
    assert p.refusal("other.example.com", ip("10.9.8.7")) is None  # its address is in a listed network
    assert p.refusal("127.0.0.1", ip("127.0.0.1")) is None
    assert "WEBHOOK_ALLOWED_HOSTS" in (p.refusal("other.example.com", ip("8.8.8.8")) or "")
    assert "WEBHOOK_ALLOWED_HOSTS" in (p.refusal("127.0.0.2", ip("127.0.0.2")) or "")
    assert policy().refusal("example.com", ip("93.184.216.34")) is None  # no list: any public address


async def test_creation_checks_literals_and_names_and_accepts_unresolvable_names() -> None:
    for url in ("http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/", "http://127.0.0.1:8003/x",
                "http://localhost:8003/x"):
        with pytest.raises(InvalidRequest) as info:
            await validate_webhook_url(url, policy())
        assert info.value.code == "webhook_host_not_allowed" and info.value.param == "webhook_url", url
    assert await validate_webhook_url("http://127.0.0.1:9/x", policy(webhook_allow_private=True))
    assert await validate_webhook_url("http://no-such-host.invalid/x", policy()) == "http://no-such-host.invalid/x"
    with pytest.raises(InvalidRequest):  # a name outside the list is refused without a DNS lookup
        await validate_webhook_url("https://elsewhere.example/x", policy(webhook_allowed_hosts=["hooks.example.com"]))
    with pytest.raises(InvalidRequest):  # only its address could admit it, and it has none
        await validate_webhook_url("https://no-such-host.invalid/x", policy(webhook_allowed_hosts=["10.0.0.0/8"]))
    listed = policy(webhook_allowed_hosts=["no-such-host.invalid"])
    assert await validate_webhook_url("https://no-such-host.invalid/x", listed)  # listed by name: may come up later
    assert await validate_webhook_url(None, policy()) is None


async def test_delivery_time_check_resolves_again() -> None:
    assert await allowed_addresses("http://localhost:1/x", policy(webhook_allowed_hosts=["127.0.0.1"])) == [
        ip("127.0.0.1")]  # ::1 is not listed: only the listed address is used
    with pytest.raises(WebhookRefused):
        await allowed_addresses("http://localhost:1/x", policy())


def test_pinned_request_keeps_host_and_tls_name() -> None:
    url, host, ext = pinned_request("https://user:pw@hooks.example.com:8443/a?b=1", ip("93.184.216.34"))
    assert url == "https://user:pw@93.184.216.34:8443/a?b=1"
    assert host == {"Host": "hooks.example.com:8443"} and ext == {"sni_hostname": "hooks.example.com"}
    url, host, ext = pinned_request("http://[::1]/h", ip("::1"))
    assert url == "http://[::1]/h" and host == {"Host": "[::1]"} and ext == {}


class _Store:
    """Records webhook states (the only store call the sender makes)."""

    def __init__(self) -> None:
        self.states: list[tuple[str, int]] = []

    async def webhook_state(self, job_id: str, status: str, attempts: int) -> None:
        self.states.append((status, attempts))


async def test_a_delivery_that_cannot_be_sent_ends_failed_not_pending() -> None:
    """The CRLF bug's other half: whatever goes wrong in a delivery, the task records an outcome and never dies
    with the webhook left `pending` (here: a stored URL the policy no longer allows, and a URL httpx rejects)."""
    store = _Store()
    sender = WebhookSender(store, include_result=False, max_attempts=3, timeout_s=1,  # type: ignore[arg-type]
                           policy=policy())
    job = Job(id="job_x", status=JobStatus.failed.value, webhook_url="http://169.254.169.254/x", finished_at=time.time())
    await sender._deliver(job)
    assert store.states == [("failed", 1)]  # one attempt, refused: not retried
    store.states.clear()
    sender.policy = policy(webhook_allow_private=True)
    job.webhook_url = "http://127.0.0.1:1/\r\nx"  # stored before the check existed
    await sender._deliver(job)
    assert store.states and store.states[-1][0] == "failed", store.states
    await sender.aclose()
    assert json.dumps(store.states)
    assert asyncio.get_running_loop()
