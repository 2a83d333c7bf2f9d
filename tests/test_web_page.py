"""The web page at `/` in a real browser (Debian's chromium, driven by Playwright) against a real server, the real
model and real clips: upload in Korean and English, a job with progress, API keys, a non-audio file, live
recording from a fake microphone, and not one request to any host but the server.

Screenshots of the upload, live and job views go to logs/tests/screenshots/ (test artifacts).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support import REPO, SHARED_AUDIO, clip, error_rate, running_server

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO / "logs" / "tests" / "screenshots"
KEY = "sk-web-page-0123456789"
KO = "ko/picovoice_test_ko.wav"   # 3.9 s, in tests/data too
EN = "en/jfk.flac"                # 11 s
JOB = "en/picovoice_test_en.wav"  # 5.9 s, sent as a job by choice
LIVE = "en/jfk.flac"
BOUND = 0.3  # per short clip (test_accuracy bounds the corpus mean at 0.15; picovoice_test_ko gives CER 0.21 on base)
HAVE_REALTIME = importlib.util.find_spec("stt_engine.realtime") is not None



def _args(extra: list[str] | None = None) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-default-apps", "--disable-sync", "--no-first-run",
            "--disable-domain-reliability", "--disable-client-side-phishing-detection", *(extra or [])]


@pytest.fixture(scope="module")
def live_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The live clip as the fake microphone plays it: 48 kHz mono PCM16 WAV, with 3 s of silence after the
    speech so the server's VAD closes the turn (chromium loops the file)."""
    out = tmp_path_factory.mktemp("mic") / "mic.wav"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(SHARED_AUDIO / LIVE), "-af", "apad=pad_dur=3",
                    "-ac", "1", "-ar", "48000", "-c:a", "pcm_s16le", str(out)], check=True, timeout=60)
    return out


@pytest.fixture(scope="module")
def browser(live_wav: Path) -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip("needs the chromium package (scripts/system-deps.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=_args([
            "--host-resolver-rules=MAP stt.test 127.0.0.1",  # a name that is not localhost: not a secure context
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={live_wav}", "--autoplay-policy=no-user-gesture-required",
        ]))
        try:
            yield chromium
        finally:
            chromium.close()


class Visit:
    """A page opened on `base`, with every request (HTTP and WebSocket) it makes recorded."""

    def __init__(self, browser: object, base: str, locale: str = "en-US") -> None:
        self.base = base
        self.urls: list[str] = []
        self.context = browser.new_context(locale=locale, accept_downloads=True,  # type: ignore[attr-defined]
                                           viewport={"width": 1100, "height": 800})
        if urlsplit(base).hostname == "127.0.0.1":  # a secure context: the only kind that may be granted these
            self.context.grant_permissions(["microphone", "clipboard-read", "clipboard-write"], origin=base)
        self.page = self.context.new_page()
        self.page.on("request", lambda r: self.urls.append(r.url))
        self.page.on("websocket", lambda ws: self.urls.append(ws.url))
        self.page.goto(base + "/", wait_until="networkidle")

    def close(self) -> None:
        self.context.close()
        host = urlsplit(self.base).netloc
        outside = [u for u in self.urls if urlsplit(u).netloc != host and not u.startswith(("blob:", "data:"))]
        assert not outside, f"requests to other hosts: {outside}"


@pytest.fixture()
def visit(browser: object, server: str) -> Iterator[Visit]:
    v = Visit(browser, server)
    yield v
    v.close()


def _upload(page: object, path: Path, language: str = "", job: bool = False) -> None:
    page.set_input_files("#file", str(path))  # type: ignore[attr-defined]
    page.select_option("#language", language)  # type: ignore[attr-defined]
    page.set_checked("#use-job", job)  # type: ignore[attr-defined]
    page.click("#start")  # type: ignore[attr-defined]


def _result_text(page: object) -> str:
    page.wait_for_selector("#segments li", timeout=120_000)  # type: ignore[attr-defined]
    return " ".join(page.locator("#segments .seg-text").all_inner_texts())  # type: ignore[attr-defined]


_SRT_CUE = re.compile(r"^(\d+)\n(\d\d:\d\d:\d\d,\d{3}) --> (\d\d:\d\d:\d\d,\d{3})\n(.+)$", re.S)


def _parse_srt(text: str) -> list[tuple[float, float, str]]:
    def seconds(stamp: str) -> float:
        h, m, rest = stamp.split(":")
        s, ms = rest.split(",")
        return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000

    cues = []
    for n, block in enumerate(text.strip().split("\n\n"), start=1):
        match = _SRT_CUE.match(block.strip())
        assert match, block
        assert int(match.group(1)) == n
        start, end = seconds(match.group(2)), seconds(match.group(3))
        assert 0 <= start <= end
        cues.append((start, end, match.group(4).strip()))
    return cues


# --- serving ---------------------------------------------------------------------------------------------------
def test_root_serves_the_page_to_browsers_and_json_to_clients(fake_server: str) -> None:
    """The page and its assets, not a transcript: on the stand-in engine (no model)."""
    page = httpx.get(fake_server + "/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert re.findall(r'(?:src|href)="(https?:)?//', page.text) == []  # nothing from another host
    for asset in ("app.js", "app.css", "pcm-worklet.js"):
        response = httpx.get(f"{fake_server}/web/{asset}")
        assert response.status_code == 200
        assert re.findall(r"(?:https?|wss?):\/\/[A-Za-z0-9]", response.text) == [], asset  # no URL with a host in it
    plain = httpx.get(fake_server + "/")  # curl, probes, scripts: the signpost JSON as before
    assert plain.json()["service"] == "stt-engine" and plain.json()["docs"] == "/docs"
    assert httpx.get(fake_server + "/web/../pyproject.toml").status_code == 404


def test_tls_files_reach_uvicorn(tmp_path: Path) -> None:
    from stt_engine.api.server import uvicorn_options
    from stt_engine.config import Settings

    assert "ssl_certfile" not in uvicorn_options(Settings(server_ssl_certfile="", server_ssl_keyfile=""))
    options = uvicorn_options(Settings(server_ssl_certfile=tmp_path / "c.pem", server_ssl_keyfile=tmp_path / "k.pem"))
    assert options["ssl_certfile"] == str(tmp_path / "c.pem") and options["ssl_keyfile"] == str(tmp_path / "k.pem")


# --- upload ------------------------------------------------------------------------------------------------
def test_upload_korean_clip_in_a_korean_browser(browser: object, server: str) -> None:
    v = Visit(browser, server, locale="ko-KR")
    try:
        page = v.page
        assert page.locator("#tab-upload").inner_text() == "파일 업로드"  # follows the browser's language
        c = clip(KO)
        _upload(page, c.path, language="ko")
        text = _result_text(page)
        rate = error_rate(text, c)
        print(f"{KO}: CER {rate:.3f} {text!r}")
        assert rate <= BOUND, text
        with page.expect_download() as info:
            page.click("[data-download=srt]")
        cues = _parse_srt(Path(info.value.path()).read_text(encoding="utf-8"))
        assert error_rate(" ".join(c[2] for c in cues), c) <= BOUND
        page.select_option("#ui-lang", "en")  # the switch
        assert page.locator("#tab-upload").inner_text() == "Upload"
    finally:
        v.close()


def test_upload_english_clip_streams_then_plays_and_downloads(visit: Visit) -> None:
    page, c = visit.page, clip(EN)
    page.evaluate("""() => { window.__live = []; new MutationObserver(() =>
        window.__live.push(document.getElementById('upload-live').textContent)).observe(
        document.getElementById('upload-live'), {childList: true, characterData: true, subtree: true}); }""")
    _upload(page, c.path)
    text = _result_text(page)
    rate = error_rate(text, c)
    print(f"{EN}: WER {rate:.3f} {text!r}")
    assert rate <= BOUND, text
    assert page.evaluate("window.__live.filter(t => t).length") >= 1  # text appeared before the result view
    assert "en" in page.locator("#result-meta").inner_text()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.select_option("#ui-lang", "en")
    page.click("#tab-upload")
    page.screenshot(path=str(SHOTS / "upload.png"), full_page=True)
    page.click("#tab-result")
    page.screenshot(path=str(SHOTS / "result.png"), full_page=True)
    # clicking a segment plays that part of the file
    last = page.locator("#segments button").last
    start = float(last.get_attribute("data-start"))
    last.click()
    page.wait_for_function("() => !document.getElementById('player').paused", timeout=10_000)
    at = page.evaluate("document.getElementById('player').currentTime")
    assert start - 0.05 <= at <= start + 3, (start, at)
    for fmt in ("srt", "vtt", "txt", "json"):
        with page.expect_download() as info:
            page.click(f"[data-download={fmt}]")
        body = Path(info.value.path()).read_text(encoding="utf-8")
        assert info.value.suggested_filename == f"jfk.{fmt}"
        if fmt == "srt":
            cues = _parse_srt(body)
            assert cues and cues[-1][1] <= c.duration + 1
        elif fmt == "vtt":
            assert body.startswith("WEBVTT\n")
        assert "country" in body.lower()
    # keyboard: arrow keys move between views
    page.focus("#tab-result")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.id") == "tab-jobs"
    assert page.locator("#view-jobs").is_visible()


def test_a_job_shows_progress_then_the_result_and_lists_it(visit: Visit) -> None:
    page, c = visit.page, clip(JOB)
    page.evaluate("""() => { window.__states = []; new MutationObserver(() =>
        window.__states.push(document.getElementById('upload-state').textContent)).observe(
        document.getElementById('upload-state'), {childList: true, characterData: true, subtree: true}); }""")
    _upload(page, c.path, language="en", job=True)
    page.wait_for_selector("#job-progress", state="visible", timeout=30_000)
    page.wait_for_function("() => window.__states.some(s => /^Job job_/.test(s))", timeout=30_000)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "job.png"), full_page=True)
    text = _result_text(page)
    states = page.evaluate("window.__states")
    print("job states:", states)
    assert any(re.search(r"queued|transcribed", s) for s in states), states
    assert any("completed" in s for s in states), states
    assert error_rate(text, c) <= BOUND, text
    page.click("#tab-jobs")
    row = page.locator("#jobs-body tr", has_text=Path(JOB).name).first
    row.wait_for(timeout=10_000)
    assert "completed" in row.inner_text()
    page.screenshot(path=str(SHOTS / "jobs.png"), full_page=True)
    row.get_by_role("button", name="Open").click()
    assert error_rate(_result_text(page), c) <= BOUND
    # a long one, cancelled from the Jobs view while it runs
    page.click("#tab-upload")
    _upload(page, SHARED_AUDIO / "en" / "en_longform_librispeech_librivox_concat.wav", language="en", job=True)
    page.wait_for_function("() => /^Job job_/.test(document.getElementById('upload-state').textContent)")
    page.click("#tab-jobs")
    running = page.locator("#jobs-body tr", has_text="en_longform").first
    running.get_by_role("button", name="Cancel").click()
    page.wait_for_function("() => /cancelled/.test(document.getElementById('notice').textContent)", timeout=30_000)
    page.click("#jobs-refresh")
    page.wait_for_function("() => Array.from(document.querySelectorAll('#jobs-body tr')).some(r => "
                           "/en_longform/.test(r.textContent) && /cancelled/.test(r.textContent))", timeout=10_000)


def test_a_non_audio_file_shows_the_servers_message_and_the_page_still_works(
    visit: Visit, server: str, tmp_path: Path
) -> None:
    bad = tmp_path / "notes.wav"
    bad.write_bytes(b"These are meeting notes, not audio.\n" * 50)
    expected = httpx.post(server + "/transcribe", files={"file": (bad.name, bad.read_bytes())}, timeout=60)
    assert expected.status_code == 400
    message = expected.json()["error"]["message"]
    page = visit.page
    _upload(page, bad)
    page.wait_for_selector("#notice:not([hidden])", timeout=30_000)
    assert message in page.locator("#notice").inner_text()
    assert page.locator("#start").is_enabled()
    # 429 as the scheduler words it: the page adds "retry in N s" from Retry-After. Only how the page shows it is
    # under test here, so the answer is a recorded one rather than a server driven into overload.
    busy = {"success": False, "error": {"code": "queue_full", "message": "The server is busy: 64 requests queued."}}
    page.route("**/transcribe", lambda route: route.fulfill(status=429, headers={"Retry-After": "7"}, json=busy))
    _upload(page, SHARED_AUDIO / KO)
    page.wait_for_function("() => /retry in 7 s/.test(document.getElementById('notice').textContent)", timeout=10_000)
    assert "The server is busy: 64 requests queued." in page.locator("#notice").inner_text()
    page.unroute("**/transcribe")
    c = clip(KO)
    _upload(page, c.path, language="ko")
    assert error_rate(_result_text(page), c) <= BOUND
    assert page.locator("#notice").is_hidden()


def test_status_view_shows_the_model_and_device(visit: Visit) -> None:
    page = visit.page
    page.click("#tab-status")
    page.wait_for_selector("#status-list dd", timeout=10_000)
    text = page.locator("#status-list").inner_text()
    health = httpx.get(visit.base + "/health").json()
    assert health["model"] in text and health["device"] in text
    assert "not configured" in text  # the LLM server (none here)
    assert page.locator("#pp-actions").is_hidden()


# --- API keys ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed(vllm_standin_server: object) -> Iterator[str]:
    """A server with API keys, a 1 MB upload limit and an LLM server (the vLLM stand-in, which echoes)."""
    llm_url = vllm_standin_server.base_url  # type: ignore[attr-defined]
    env = {"API_KEYS": KEY, "MAX_UPLOAD_MB": "1", "VLLM_BASE_URL": llm_url}
    with running_server(env) as base:
        yield base


def test_with_api_keys_the_page_asks_for_the_key_then_works(
    browser: object, keyed: str, vllm_standin_server: object
) -> None:
    vllm_standin_server.reset()  # type: ignore[attr-defined]
    v = Visit(browser, keyed)
    try:
        page = v.page
        page.wait_for_selector("#notice:not([hidden])", timeout=10_000)
        assert "needs an API key" in page.locator("#notice").inner_text()
        c = clip(KO)
        _upload(page, c.path, language="ko")  # refused without a key: the page says so again
        page.wait_for_function("() => /API key/.test(document.getElementById('notice').textContent)")
        page.fill("#api-key", KEY)
        page.click("#key-save")
        page.wait_for_selector("#notice", state="hidden", timeout=10_000)
        assert page.evaluate("sessionStorage.getItem('stt-api-key')") == KEY
        _upload(page, c.path, language="ko")
        assert error_rate(_result_text(page), c) <= BOUND
        # an LLM server is configured: post-processing sits beside the transcript
        page.wait_for_selector("#pp-actions", state="visible", timeout=10_000)
        page.click("[data-pp=summarize]")
        page.wait_for_function("() => /피하면서|옆으로/.test(document.getElementById('pp-out').textContent)",
                               timeout=30_000)  # the stand-in echoes the transcript
        assert vllm_standin_server.generation_requests()  # type: ignore[attr-defined]
        # 413: the server's words, and the page goes on
        page.click("#tab-upload")
        _upload(page, SHARED_AUDIO / "en" / "en_longform_librispeech_librivox_concat.wav")  # 2.5 MB > 1 MB
        page.wait_for_selector("#notice:not([hidden])", timeout=30_000)
        notice = page.locator("#notice").inner_text()
        assert "too large" in notice and "1 MB" in notice.replace(".0 MB", " MB"), notice
        page.click("#tab-status")
        page.wait_for_selector("#status-list dd:nth-of-type(2)", timeout=10_000)  # details shown to a key holder
        assert "reachable" in page.locator("#status-list").inner_text()
    finally:
        v.close()


# --- live ----------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not HAVE_REALTIME, reason="this server has no /v1/realtime")
def test_record_shows_partial_then_final_text(visit: Visit) -> None:
    """The fake microphone plays the JFK clip (then 3 s of silence, looped): grey partial text appears while a
    turn is open, black finals per turn, and the finals up to the clip's last words read as the clip."""
    page, c = visit.page, clip(LIVE)
    page.evaluate("""() => { window.__partials = 0; new MutationObserver(() => { window.__partials +=
        Array.from(document.querySelectorAll('#rec-live p.partial')).some(p => p.textContent.trim()) ? 1 : 0; })
        .observe(document.getElementById('rec-live'), {childList: true, characterData: true, subtree: true}); }""")
    page.click("#tab-record")
    page.select_option("#rec-language", "en")
    page.click("#rec-start")
    finals = "Array.from(document.querySelectorAll('#rec-live p.final')).map(p => p.textContent).join(' ')"
    page.wait_for_function(f"() => /for your country/i.test({finals})", timeout=120_000)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "live.png"), full_page=True)
    page.click("#rec-stop")
    page.wait_for_selector("#rec-after:not([hidden])", timeout=30_000)
    text = page.evaluate(finals)
    first_pass = text[: text.lower().index("for your country") + len("for your country")]
    rate = error_rate(first_pass, c)
    print(f"live finals: {first_pass!r}: WER {rate:.3f}; partial updates seen: {page.evaluate('window.__partials')}")
    assert page.evaluate("window.__partials") >= 1
    assert rate <= 0.35, first_pass
    assert page.locator("#rec-audio").get_attribute("src", timeout=1000).startswith("blob:")
    assert any("/v1/realtime" in u for u in visit.urls)


def test_over_plain_http_off_localhost_the_page_says_the_microphone_needs_https(browser: object, server: str) -> None:
    v = Visit(browser, server.replace("127.0.0.1", "stt.test"))
    try:
        page = v.page
        page.click("#tab-record")
        assert page.locator("#mic-unavailable").is_visible()
        assert "HTTPS" in page.locator("#mic-unavailable").inner_text()
        assert page.locator("#rec-start").is_disabled()
        page.click("#tab-upload")  # the rest of the page works
        c = clip(KO)
        _upload(page, c.path, language="ko")
        assert error_rate(_result_text(page), c) <= BOUND
    finally:
        v.close()


@pytest.mark.skipif(not HAVE_REALTIME, reason="this server has no /v1/realtime")
def test_live_with_api_keys_sends_the_key_as_a_subprotocol(browser: object, keyed: str) -> None:
    """A wrong key: the live session cannot start and the page says so; the right key: it opens and listens."""
    v = Visit(browser, keyed)
    try:
        page = v.page
        page.fill("#api-key", "sk-wrong-key")
        page.click("#key-save")
        page.click("#tab-record")
        page.click("#rec-start")
        page.wait_for_function("() => /realtime/.test(document.getElementById('notice').textContent)",
                               timeout=20_000)
        assert page.locator("#rec-start").is_enabled()
        page.fill("#api-key", KEY)
        page.click("#key-save")
        page.wait_for_selector("#notice", state="hidden", timeout=10_000)
        page.click("#rec-start")
        page.wait_for_function("() => !document.getElementById('rec-stop').disabled", timeout=20_000)
        page.wait_for_timeout(1500)  # some audio, so there is a recording to keep
        assert page.locator("#notice").is_hidden()
        page.click("#rec-stop")
        page.wait_for_selector("#rec-after:not([hidden])", timeout=30_000)
        assert page.locator("#notice").is_hidden()
    finally:
        v.close()


def test_speakers_show_in_colour_and_renamed_names_flow_into_the_downloads(visit: Visit) -> None:
    """The "Speakers" option: three voices get three colours and names; a name typed in goes into every download."""
    page, c = visit.page, clip("en/picovoice_diarization_test_3spk.wav")
    page.set_checked("#speakers", True)
    _upload(page, c.path, language="en")
    _result_text(page)
    chips = page.locator("#segments .speaker")
    labels = list(dict.fromkeys(chips.all_inner_texts()))
    assert labels == ["A", "B", "C"], labels
    colours = {page.evaluate("(el) => getComputedStyle(el).backgroundColor", chips.nth(i).element_handle())
               for i in range(chips.count())}
    assert len(colours) == 3, colours
    page.fill("#speaker-list input[data-speaker=A]", "Host")
    assert "Host" in chips.all_inner_texts() and "A" not in chips.all_inner_texts()
    bodies = {}
    for fmt in ("srt", "vtt", "txt", "json"):
        with page.expect_download() as info:
            page.click(f"[data-download={fmt}]")
        bodies[fmt] = Path(info.value.path()).read_text(encoding="utf-8")
    assert "[Host] " in bodies["srt"] and "[B] " in bodies["srt"], bodies["srt"]
    assert "<v Host>" in bodies["vtt"] and "<v C>" in bodies["vtt"], bodies["vtt"]
    assert bodies["txt"].startswith("Host: "), bodies["txt"]
    assert __import__("json").loads(bodies["json"])["speakers"] == ["Host", "B", "C"]
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "speakers.png"), full_page=True)
