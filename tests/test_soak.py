"""Soak: mixed requests, several at once, against one server (60 by default: `STT_SOAK_REQUESTS=300` for a long
soak before a release). Every good request is transcribed correctly,
every bad one gets its 4xx, resident memory stays flat, and no temporary file or descriptor is left behind.

The server gets a private TMPDIR so "no temporary files left" is checked exactly, whatever else runs on the
machine. Some requests are abandoned by the client mid-transcription to exercise clean-up on disconnect.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import SHARED_AUDIO, normalize, running_server

WARMUP = 30  # every kind of request, the heaviest bunched: memory after these is the warm high-water mark
TOTAL = max(WARMUP + 10, int(os.environ.get("STT_SOAK_REQUESTS", "60")))
CONCURRENCY = 4
NOT_PER_REQUEST = {".ses"}  # onnxruntime (Silero VAD) writes this once per process, at its first session
SHORT = SHARED_AUDIO / "en" / "speech_recognition_english_123.wav"  # 2.7 s
JFK = SHARED_AUDIO / "en" / "jfk.flac"  # 11 s


@dataclass(frozen=True)
class Kind:
    name: str
    weight: int
    send: Callable[[httpx.Client, str], httpx.Response | None]  # None: the client gave up on purpose
    check: Callable[[httpx.Response | None], bool]


def _post(client: httpx.Client, url: str, name: str, data: bytes, timeout: float = 300, **fields: str) -> httpx.Response:
    return client.post(url, files={"file": (name, data)}, data=fields, timeout=timeout)


def _abandon(client: httpx.Client, base: str) -> httpx.Response | None:
    """Upload, then hang up before the transcript is ready (the server must drop the work and clean up)."""
    try:
        return _post(client, base + "/v1/audio/transcriptions", JFK.name, JFK.read_bytes(), timeout=0.3)
    except httpx.TimeoutException:
        return None


def _text_has(phrase: str) -> Callable[[httpx.Response | None], bool]:
    return lambda r: r is not None and r.status_code == 200 and phrase in normalize(r.json()["text"], "en")


def _error(status: int, fragment: str) -> Callable[[httpx.Response | None], bool]:
    return lambda r: r is not None and r.status_code == status and fragment in r.text


KINDS = [
    Kind("good: short wav, original route", 30,
         lambda c, b: _post(c, b + "/transcribe", SHORT.name, SHORT.read_bytes()), _text_has("one two three")),
    Kind("good: short wav, openai route", 30,
         lambda c, b: _post(c, b + "/v1/audio/transcriptions", SHORT.name, SHORT.read_bytes(), language="en"),
         _text_has("one two three")),
    Kind("good: jfk flac", 10,
         lambda c, b: _post(c, b + "/v1/audio/transcriptions", JFK.name, JFK.read_bytes(), response_format="json"),
         _text_has("ask not what your country can do for you")),
    Kind("bad: text file", 6,
         lambda c, b: _post(c, b + "/transcribe", "a.wav", b"not audio " * 50), _error(400, "not a supported audio")),
    Kind("bad: empty file", 6,
         lambda c, b: _post(c, b + "/v1/audio/transcriptions", "a.wav", b""), _error(400, "empty")),
    Kind("bad: truncated flac", 6,
         lambda c, b: _post(c, b + "/transcribe", "cut.flac", JFK.read_bytes()[:60000]), _error(400, "truncated")),
    Kind("bad: language xx", 5,
         lambda c, b: _post(c, b + "/v1/audio/transcriptions", SHORT.name, SHORT.read_bytes(), language="xx"),
         _error(400, "Unsupported language")),
    Kind("bad: no file field", 4,
         lambda c, b: c.post(b + "/transcribe", data={"language": "en"}), _error(400, "'file' is required")),
    Kind("abandoned by the client", 3, _abandon, lambda r: True),
]


def make_plan() -> list[Kind]:
    """The first 30 requests hold every kind, with the heaviest ones (11 s clips, abandoned uploads) bunched so the
    model's largest batches occur during them: memory "after the first 30" is then the warm high-water mark, and
    growth after it would be a leak rather than the first big batch. The rest are drawn at random."""
    by_name = {k.name: k for k in KINDS}
    heavy = [by_name["good: jfk flac"]] * 4 + [by_name["abandoned by the client"]] * 2
    warmup = heavy + [k for k in KINDS for _ in range(2)]
    warmup += random.Random(5).choices(KINDS, weights=[k.weight for k in KINDS], k=WARMUP - len(warmup))
    rest = random.Random(6).choices(KINDS, weights=[k.weight for k in KINDS], k=TOTAL - WARMUP)
    return warmup + rest


def rss_and_fds(base: str) -> tuple[float, float]:
    text = httpx.get(base + "/metrics", timeout=30).text
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    return values["process_resident_memory_bytes"], values["process_open_fds"]


@pytest.fixture(scope="module")
def soak_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("soak-tmp")
    with running_server({"TMPDIR": str(tmp)}) as base:
        yield base, tmp


@pytest.mark.slow
def test_soak(soak_server: tuple[str, Path]) -> None:
    base, tmp = soak_server
    plan = make_plan()
    outcomes: Counter[tuple[str, bool]] = Counter()  # (good/bad/abandoned, as expected?)
    wrong: list[str] = []
    lock = threading.Lock()

    def one(kind: Kind) -> None:
        response = kind.send(client, base)
        ok = kind.check(response)
        with lock:
            outcomes[(kind.name.split(":")[0].split()[0], ok)] += 1
            if not ok:
                wrong.append(f"{kind.name}: {response.status_code if response else None} "
                             f"{response.text[:300] if response else ''}")

    seen: set[str] = set()  # upload files observed while requests run: proves the check below looks there
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.01):
            seen.update(p.name for p in tmp.iterdir() if p.name.startswith("stt-upload-"))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    with httpx.Client() as client, ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(one, plan[:WARMUP]))
        time.sleep(1)  # let abandoned work drain before measuring
        rss_30, fds_30 = rss_and_fds(base)
        list(pool.map(one, plan[WARMUP:]))
    elapsed = time.monotonic() - started
    done.set()
    watcher.join()
    time.sleep(2)
    rss_end, fds_end = rss_and_fds(base)
    left = sorted(p.name for p in tmp.iterdir() if p.name not in NOT_PER_REQUEST)
    kinds = Counter(k.name for k in plan)
    print(
        f"SOAK: {TOTAL} requests x{CONCURRENCY} in {elapsed:.0f} s; plan {dict(kinds)}; "
        f"outcomes {dict(outcomes)}; RSS after {WARMUP}: {rss_30 / 2**20:.0f} MiB, after {TOTAL}: "
        f"{rss_end / 2**20:.0f} MiB ({(rss_end / rss_30 - 1) * 100:+.1f} %); open fds {fds_30:.0f} -> {fds_end:.0f}; "
        f"upload temp files seen during the run: {len(seen)}, left: {left}"
    )
    assert not wrong, wrong[:10]
    assert sum(n for (_, ok), n in outcomes.items()) == TOTAL
    assert rss_end <= rss_30 * 1.15, (rss_30, rss_end)
    assert left == [], left
    assert seen, "no upload temp file was ever seen in TMPDIR: the clean-up check proves nothing"
    assert fds_end <= fds_30 + 5, (fds_30, fds_end)
    health = httpx.get(base + "/health").json()
    assert health["queue"]["requests"] == 0
