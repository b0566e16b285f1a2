"""The web page in a real browser: Debian's headless Chromium driven by Playwright.

Chromium comes from the system (`scripts/install_system.sh` installs it); Playwright only drives
it, nothing is downloaded. Its fake camera (`--use-fake-device-for-media-stream`) stands in for a
webcam, so "Use my webcam" sends real video over WebRTC to the server, which ingests it. Screenshots
go to artifacts/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from server_helpers import STREAM, frames_ingested, start_server, wait_for_frames

from streamer.adapters.embedded import EmbeddedAdapter
from streamer.server.app import ServerThread

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


@pytest.fixture(scope="module")
def server(embedded_adapter: EmbeddedAdapter, bikes_clip: Path) -> Iterator[ServerThread]:
    server = start_server(embedded_adapter, bikes_clip, max_new_tokens=16)
    wait_for_frames(server, 4)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run `bash scripts/install_system.sh` to install chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"the page raised: {errors}"


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def test_the_page_shows_the_stream_and_streams_an_answer(server: ServerThread, page: Page) -> None:
    page.goto(server.url + "/")
    stream = page.locator(f"#stream-list li[data-stream-id='{STREAM}']")
    stream.wait_for()
    assert "live" in stream.inner_text()
    page.wait_for_function("document.getElementById('preview').naturalWidth > 0")
    page.wait_for_function("document.getElementById('memory-summary').textContent.includes('clear')")

    # Record every state of the answer text, to see it arrive in pieces.
    page.evaluate(
        """() => {
            window.answerStates = [];
            new MutationObserver(() => {
                const text = document.querySelector('.answer .text');
                if (text) window.answerStates.push(text.textContent);
            }).observe(document.getElementById('answers'), {subtree: true, childList: true, characterData: true});
        }"""
    )
    page.fill("#question", "What vehicles are on the street?")
    page.click("#ask")
    meta = page.locator(".answer .meta")
    meta.filter(has_text="TTFT").wait_for(timeout=120_000)
    answer = page.locator(".answer .text").inner_text()
    states = [s for s in page.evaluate("window.answerStates") if s]
    assert answer and states[-1] == answer
    growing = [s for s in states if answer.startswith(s) and s != answer]
    assert len(growing) >= 2, f"the answer must be shown as it streams, saw {states}"

    evidence = page.locator(".answer .meta button.evidence")
    assert evidence.count() >= 1, meta.inner_text()
    evidence.first.click()
    shown_time = evidence.first.inner_text().split("–")[0]
    assert shown_time in page.locator("#frame-info").inner_text(), "clicking evidence shows those frames"

    # A standing question: every frame of the clip is described as grey, so its episode starts at the next check.
    page.fill("#watch", "tell me when something grey is on screen")
    page.click("#add-watch")
    started = page.locator("#events li.watch-event.start")
    started.wait_for(timeout=60_000)
    assert "something grey" in started.first.inner_text() and "grey on screen since" in started.first.inner_text()
    screenshot(page, "server_page.png")


def test_use_my_webcam_creates_a_stream_the_engine_ingests(server: ServerThread, page: Page) -> None:
    page.goto(server.url + "/")
    page.locator(f"#stream-list li[data-stream-id='{STREAM}']").wait_for()
    page.click("#webcam")
    status = page.locator("#webcam-status")
    status.filter(has_text="sending your camera as").wait_for(timeout=30_000)
    stream_id = status.inner_text().rsplit(" ", 1)[-1]
    assert stream_id.startswith("webcam-")

    wait_for_frames(server, 2, stream_id=stream_id, timeout=60)
    hub = server.state.hub
    assert hub is not None
    described = server.call(hub.report(stream_id)).as_json()
    assert described["state"] == "live" and described["frames_in_memory"] >= 2
    page.locator(f"#stream-list li.selected[data-stream-id='{stream_id}']").wait_for()
    deadline = time.monotonic() + 10
    while page.evaluate("document.getElementById('preview').naturalWidth") == 0:
        assert time.monotonic() < deadline, "the webcam's preview never showed"
        time.sleep(0.2)
    screenshot(page, "server_webcam.png")
    assert frames_ingested(server, STREAM) > 0, "the file stream keeps going alongside"


def test_a_token_in_the_page_url_becomes_a_cookie_and_leaves_every_url(
    embedded_adapter: EmbeddedAdapter, bikes_clip: Path, page: Page
) -> None:
    token = "browser-test-token-0123"
    server = start_server(embedded_adapter, bikes_clip, max_new_tokens=4, token=token)
    try:
        wait_for_frames(server, 2)
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        sockets: list[str] = []
        page.on("websocket", lambda socket: sockets.append(socket.url))
        page.goto(f"{server.url}/?token={token}")
        page.locator(f"#stream-list li[data-stream-id='{STREAM}']").wait_for()
        page.wait_for_function("document.getElementById('preview').naturalWidth > 0")
        page.wait_for_function("document.getElementById('health').textContent.length > 0")
        assert token not in page.url, "the address bar no longer shows the token"
        assert sockets and all(token not in url for url in [*requested[1:], *sockets]), requested
        cookies = page.context.cookies()
        assert [(c["name"], c["httpOnly"], c["sameSite"]) for c in cookies] == [("streamer_token", True, "Strict")]
        page.goto(server.url + "/")  # a later visit needs no token in the URL: the cookie carries it
        page.locator(f"#stream-list li[data-stream-id='{STREAM}']").wait_for()
    finally:
        server.stop()
