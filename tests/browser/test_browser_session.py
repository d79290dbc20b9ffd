"""The web client in real headless Chromium against the real Gateway (in-process renderer):
WebRTC video at frame rate, a spoken question from the fake microphone answered with voice and a
moving mouth, typed chat over the data channel, and barge-in that silences the avatar."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[2] / "out" / "test-artifacts"
TURN_TIMEOUT_S = 60.0
ENERGY_STEP = 1e-4
"""Growth of the inbound totalAudioEnergy that counts as audible sound."""

# The mouth region (lower middle) of the <video>, as grey levels; null before the first frame.
GRAB_MOUTH_JS = """() => {
  const v = document.getElementById('video');
  if (!v || !v.videoWidth) return null;
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  const g = c.getContext('2d');
  g.drawImage(v, 0, 0);
  const x = Math.floor(c.width * 0.3), y = Math.floor(c.height * 0.6);
  const d = g.getImageData(x, y, Math.floor(c.width * 0.4), Math.floor(c.height * 0.3)).data;
  const grey = [];
  for (let i = 0; i < d.length; i += 4) grey.push((d[i] + d[i + 1] + d[i + 2]) / 3);
  return grey;
}"""


class Client:
    """One page of the web client, read through ``window.avatarDebug``."""

    def __init__(self, page: Any, base_url: str) -> None:
        self.page = page
        self.base_url = base_url

    def open(self, raw_mic: bool = False) -> None:
        """Load the page; ``raw_mic`` asks for the microphone without audio processing (the
        fake microphone's level would drop tenfold with it)."""
        self.page.goto(f"{self.base_url}/{'?mic=raw' if raw_mic else ''}")

    def stats(self) -> dict[str, Any]:
        return self.page.evaluate("() => window.avatarDebug.stats()")

    def events(self) -> list[dict[str, Any]]:
        return self.page.evaluate("() => window.avatarDebug.events.slice()")

    def wait_event(self, kind: str, after: int = 0, where: Callable[[dict], bool] = bool,
                   timeout_s: float = TURN_TIMEOUT_S) -> tuple[int, dict[str, Any]]:
        """The first event of ``kind`` at index >= ``after`` that ``where`` accepts.

        Indexes are positions in the page's event log (it keeps the last 200)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for i, event in enumerate(self.events()[after:], start=after):
                if event["type"] == kind and where(event):
                    return i, event
            self.page.wait_for_timeout(100)
        seen = [e["type"] for e in self.events()[after:]]
        raise AssertionError(f"no {kind!r} event within {timeout_s} s; saw {seen[-40:]}")

    def wait_until(self, what: str, check: Callable[[dict[str, Any]], bool],
                   timeout_s: float = 20.0) -> dict[str, Any]:
        """Polls the media stats until ``check`` accepts them."""
        deadline = time.monotonic() + timeout_s
        while True:
            stats = self.stats()
            if check(stats):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout_s} s; stats {stats}")
            self.page.wait_for_timeout(100)

    def connect(self) -> None:
        self.page.click("#start")
        self.wait_until("the peer connects and video decodes",
                        lambda s: s["connection"] == "connected" and s["framesDecoded"] > 0)
        assert self.page.evaluate("() => window.avatarDebug.mode") == "webrtc"

    def type(self, text: str) -> None:
        self.page.fill("#text-input", text)
        self.page.press("#text-input", "Enter")


@pytest.fixture
def client(browser: Any, gateway_url: str) -> Iterator[Client]:
    """A fresh page for the web client; the session is stopped and the page closed after."""
    page = browser.new_page()
    page.set_default_timeout(TURN_TIMEOUT_S * 1000)
    try:
        yield Client(page, gateway_url)
    finally:
        try:
            if page.is_enabled("#stop"):
                page.click("#stop")
                page.wait_for_timeout(200)  # let the DELETE go out
        finally:
            page.close()


def _mouth_change(a: list[float], b: list[float]) -> float:
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)


def test_spoken_question_gets_a_spoken_answer_with_a_moving_mouth(client: Client) -> None:
    page = client.page
    client.open(raw_mic=True)
    page.click("#mic")
    assert page.get_attribute("#mic", "aria-pressed") == "true"
    client.connect()

    # Video plays at frame rate.
    first = client.stats()
    page.wait_for_timeout(2000)
    second = client.stats()
    fps = (second["framesDecoded"] - first["framesDecoded"]) / 2.0
    assert fps >= 15, f"video decoded at {fps:.1f} fps"

    # The fake microphone asks the question; the transcript and a grounded answer arrive.
    client.wait_event(
        "transcript", where=lambda e: e["is_final"] and "park" in e["text"].lower())
    at, _ = client.wait_event("clause")
    energy = client.stats()["audioEnergy"]
    mouths = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len(mouths) < 12:
        grab = page.evaluate(GRAB_MOUTH_JS)
        if grab:
            mouths.append(grab)
        page.wait_for_timeout(120)
    _, end = client.wait_event("turn_end", after=at)
    assert "park" in end["reply"].lower(), end["reply"]
    assert not end["refused"] and not end["interrupted"]
    client.wait_until("the answer is heard", lambda s: s["audioEnergy"] > energy + ENERGY_STEP)
    assert len(mouths) >= 2, "no video frames could be grabbed while the avatar spoke"
    change = max(_mouth_change(a, b) for a in mouths for b in mouths)
    assert change > 1.0, f"the mouth region barely changed ({change:.2f} grey levels)"

    # The page shows the conversation.
    assert "park" in page.inner_text("#chat").lower()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "browser-session.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_typed_chat_goes_over_the_data_channel(client: Client) -> None:
    page = client.page
    client.open()
    # Before Start, the page has measured its gateway over the /v1/probe WebSocket.
    page.wait_for_function("() => window.avatarDebug.network !== null", timeout=10_000)
    network = page.evaluate("() => window.avatarDebug.network")
    assert network["region"] == "local" and 0 < network["rtt_ms"] < 500
    assert network["jitter_ms"] >= 0 and network["loss"] == 0
    client.connect()
    assert page.get_attribute("#mic", "aria-pressed") == "false"
    seen = len(client.events())
    client.type("What are your opening hours?")
    client.wait_event("accepted", after=seen, timeout_s=10)
    _, end = client.wait_event("turn_end", after=seen)
    assert "monday" in end["reply"].lower() and not end["refused"], end["reply"]
    page.wait_for_function("() => /^\\d+$/.test(document.getElementById('hud-client')"
                           ".textContent)", timeout=20_000)  # Send -> first audio heard
    users = page.locator("#chat li.user .text").all_inner_texts()
    assert users == ["What are your opening hours?"]  # the echoed transcript is not doubled
    assert "monday" in page.locator("#chat li.avatar .text").last.inner_text().lower()


def test_interrupt_button_silences_the_avatar_within_a_second(client: Client) -> None:
    page = client.page
    client.open()
    client.connect()
    seen = len(client.events())
    client.type("What should I bring to my first visit, and how early should I arrive?")
    _, accepted = client.wait_event("accepted", after=seen, timeout_s=10)
    client.wait_event("clause", after=seen)
    start = client.stats()["audioEnergy"]
    client.wait_until("the answer is heard",
                      lambda s: s["audioEnergy"] > start + ENERGY_STEP, timeout_s=15)
    page.click("#interrupt")
    _, barge_in = client.wait_event("interrupt", after=seen, timeout_s=5)
    assert barge_in["turn_id"] == accepted["turn_id"]
    page.wait_for_timeout(1000)
    settled = client.stats()["audioEnergy"]
    page.wait_for_timeout(1000)
    after = client.stats()["audioEnergy"]
    assert after - settled < ENERGY_STEP, f"audio went on after the interrupt ({after - settled})"
    # The reply's chat entry is marked as cut short (its turn may have finished generating
    # before the barge-in: turn_end then says interrupted=false, the audio is cut regardless).
    assert "interrupted" in (page.get_attribute("#chat li.avatar:last-child", "class") or "")
    assert page.inner_text("#caption") == ""


def test_turning_the_mic_on_reoffers_a_new_peer_for_the_same_session(client: Client) -> None:
    page = client.page
    client.open(raw_mic=True)
    client.connect()
    session_id = page.evaluate("() => window.avatarDebug.session_id")
    assert page.evaluate("() => window.avatarDebug.peers") == 1
    page.click("#mic")  # a new offer with the microphone track; the server replaces the peer
    assert page.evaluate("() => window.avatarDebug.peers") == 2
    client.wait_until("the new peer connects and decodes video", lambda s: (
        s["connection"] == "connected" and s["framesDecoded"] > 0), timeout_s=20)
    assert page.evaluate("() => window.avatarDebug.session_id") == session_id
    seen = len(client.events())
    client.type("What are your opening hours?")  # the new peer's data channel carries it
    client.wait_event("accepted", after=seen, timeout_s=10)
    assert page.locator("#error").is_hidden()


def test_without_webrtc_the_page_falls_back_to_events_and_frames(client: Client) -> None:
    page = client.page
    page.add_init_script("delete window.RTCPeerConnection;")
    client.open()
    page.click("#start")
    page.wait_for_function("() => window.avatarDebug.mode === 'http'")
    page.wait_for_function("() => document.getElementById('avatar').naturalWidth > 0",
                           timeout=20_000)  # frame.jpg polled into the image
    assert page.locator("#video").is_hidden()
    seen = len(client.events())
    client.type("What are your opening hours?")
    _, end = client.wait_event("turn_end", after=seen)  # over Server-Sent Events
    assert "monday" in end["reply"].lower(), end["reply"]
    assert any(e["type"] == "audio" for e in client.events()[seen:]), "no audio over SSE"
