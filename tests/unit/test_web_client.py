"""The browser client in deployments/web: its markup, its use of the HTTP API and the WebRTC
signalling, and (where Node.js is installed) its behaviour against a fake DOM, fetch,
RTCPeerConnection, data channel, EventSource and Web Audio."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "deployments" / "web"
INDEX, APP, STYLE = WEB / "index.html", WEB / "app.js", WEB / "style.css"
PEER = ROOT / "deployments" / "media" / "peer.py"

# Server-Sent-Events types of the Gateway's /events stream (the fallback path).
SSE_EVENT_TYPES = (
    "transcript", "text_delta", "clause", "state", "audio", "interrupt", "turn_end", "error",
)
CONTROLS = ("start", "stop", "interrupt", "text-input", "send", "mic")
NODE = shutil.which("node")
HARNESS = Path(__file__).with_name("web_client_harness.js")
"""Runs app.js in a Node vm with fake browser APIs and prints what happened as JSON."""


def _channel_events() -> tuple[str, ...]:
    """CHANNEL_EVENTS of deployments/media/peer.py, read without importing aiortc."""
    for node in ast.parse(PEER.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
                getattr(t, "id", None) == "CHANNEL_EVENTS" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise AssertionError("deployments/media/peer.py has no CHANNEL_EVENTS")


class _Page(HTMLParser):
    """Collects what the tests look at: elements by id, labels, links, scripts, button text."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, tuple[str, dict[str, str]]] = {}
        self.label_for: set[str] = set()
        self.stylesheets: list[str] = []
        self.scripts: list[str] = []
        self.button_text: dict[str, str] = {}
        self._button: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.by_id[a["id"]] = (tag, a)
        if tag == "label" and a.get("for"):
            self.label_for.add(a["for"])
        if tag == "link" and a.get("rel") == "stylesheet":
            self.stylesheets.append(a["href"])
        if tag == "script" and "src" in a:
            self.scripts.append(a["src"])
        if tag == "button":
            self._button = a.get("id", "")
            self.button_text[self._button] = ""

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self.button_text[self._button] += data.strip()

    def handle_endtag(self, tag: str) -> None:
        if tag == "button":
            self._button = None


@pytest.fixture(scope="module")
def page() -> _Page:
    p = _Page()
    p.feed(INDEX.read_text(encoding="utf-8"))
    return p


@pytest.fixture(scope="module")
def js() -> str:
    return APP.read_text(encoding="utf-8")


# --- markup --------------------------------------------------------------------------------


def test_page_loads_its_script_and_style_from_static(page: _Page) -> None:
    # index.html is served at "/", the folder at "/static/": resolve as the browser would.
    def path(ref: str) -> str:
        return urlparse(urljoin("http://gateway.local/", ref)).path

    assert [path(h) for h in page.stylesheets] == ["/static/style.css"]
    assert [path(s) for s in page.scripts] == ["/static/app.js"]


def test_page_has_every_control_with_a_label(page: _Page) -> None:
    for control in CONTROLS:
        assert control in page.by_id, f"missing control #{control}"
    assert page.by_id["text-input"][0] == "input"
    assert "text-input" in page.label_for, "the text box needs a <label for=...>"
    for button in ("start", "stop", "interrupt", "send", "mic"):
        assert page.by_id[button][0] == "button"
        assert page.button_text[button], f"button #{button} needs visible text"
    # Enter sends: the text box and Send live in one form whose Send is a submit button.
    assert page.by_id["text-form"][0] == "form"
    assert page.by_id["send"][1].get("type") == "submit"
    for region in ("video", "audio", "avatar", "caption", "transcript", "chat", "state",
                   "error", "status", "hud-rtt"):
        assert region in page.by_id, f"missing #{region}"
    assert page.by_id["avatar"][1].get("alt"), "the fallback image needs alt text"


def test_remote_media_elements_play_inline_without_a_second_click(page: _Page) -> None:
    tag, video = page.by_id["video"]
    assert tag == "video" and {"autoplay", "playsinline"} <= set(video)
    assert video.get("aria-label"), "the avatar video needs an accessible name"
    tag, audio = page.by_id["audio"]
    # Chromium reports inbound audio (and plays it) only through a media element.
    assert tag == "audio" and "autoplay" in audio and "muted" not in audio


def test_every_element_the_script_looks_up_exists(page: _Page, js: str) -> None:
    looked_up = set(re.findall(r"\$\('([\w-]+)'\)", js))
    assert looked_up >= set(CONTROLS)
    assert looked_up - set(page.by_id) == set()


def test_nothing_is_loaded_from_another_host() -> None:
    for f in (INDEX, APP, STYLE):
        text = f.read_text(encoding="utf-8")
        assert not re.search(r"https?://", text), f"{f.name} names an external URL"
        assert not re.search(r"""(src|href)\s*=\s*["']//""", text), f"{f.name}: protocol-relative"
        assert "@import" not in text
        assert not re.search(r"stun:|turn:", text), f"{f.name} hard-codes an ICE server"


# --- use of the API ------------------------------------------------------------------------


def test_script_calls_every_endpoint_it_needs(js: str) -> None:
    for endpoint in ("'/v1/sessions'", "/offer`", "/text`", "/interrupt`", "/events?token=",
                     "/frame.jpg`"):
        assert endpoint in js, endpoint
    assert re.search(r"method:\s*'DELETE'", js)
    assert re.search(r"method:\s*'POST'", js)
    assert "Retry-After" in js
    assert "info.ice_servers" in js, "the peer must use the session's ICE servers"


def test_offer_has_audio_video_and_the_clients_data_channel(js: str) -> None:
    assert "createDataChannel('events')" in js
    assert "addTransceiver('video', { direction: 'recvonly' })" in js
    assert "addTransceiver('audio', { direction: 'recvonly' })" in js
    assert "addTrack(" in js
    # aiortc has no trickle ICE: the offer goes out after gathering completes.
    assert "iceGatheringState === 'complete'" in js
    assert re.search(r"if \(!ev\.candidate\)", js)


def test_client_sends_only_message_types_the_server_accepts(js: str) -> None:
    sent = set(re.findall(r"send\(s, \{ type: '(\w+)'", js))
    assert sent == {"text", "interrupt", "ping"}
    accepted = set(re.findall(r'kind == "(\w+)"', PEER.read_text(encoding="utf-8")))
    assert sent <= accepted


def test_script_handles_every_event_type(js: str) -> None:
    block = re.search(r"const handlers = \{(.*?)\n\};", js, re.S)
    assert block, "app.js keeps its event handlers in `const handlers = {...}`"
    for event in {*SSE_EVENT_TYPES, *_channel_events(), "pong"}:
        assert re.search(rf"^\s*{event}\s*[(:]", block.group(1), re.M), f"no handler for {event}"


def test_microphone_asks_for_echo_cancellation(js: str) -> None:
    for name in ("echoCancellation", "noiseSuppression", "autoGainControl"):
        assert f"{name}: dsp" in js, name


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_script_parses() -> None:
    done = subprocess.run([NODE, "--check", str(APP)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


# --- behaviour, against fakes in Node.js ---------------------------------------------------

@pytest.fixture(scope="module")
def run(page: _Page) -> dict:
    """Runs app.js in a Node vm with fake browser APIs through one scripted conversation."""
    if NODE is None:
        pytest.skip("node is not installed")
    ids = json.dumps({i: tag for i, (tag, _) in page.by_id.items()})
    done = subprocess.run([NODE, str(HARNESS), str(APP), ids], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_mic_toggle_works_before_start_without_opening_the_microphone(run: dict) -> None:
    assert run["mic_before_start"] == ["true", "false"]
    assert run["gum_before_start"] == 0


def test_busy_cluster_counts_down_from_retry_after_then_retries(run: dict) -> None:
    assert run["busy"] == ["All avatars are busy, retrying in 3 s",
                           "All avatars are busy, retrying in 2 s"]
    assert run["session_posts"] == 2
    assert run["start_body"] == {"persona": None, "video": True}
    assert run["greeting"] == "Avatar Hello, how can I help?"


def test_offer_waits_for_ice_gathering_and_uses_the_sessions_ice_servers(run: dict) -> None:
    rtc = run["rtc"]
    assert rtc["ice_servers"] == [{"urls": ["stun:stun.example.org:3478"]}]
    assert rtc["transceivers"] == [["audio", "recvonly"], ["video", "recvonly"]]
    assert rtc["tracks"] == []
    assert rtc["channels"] == ["events"]
    assert rtc["offers_while_gathering"] == 0
    assert rtc["offer"] == {"url": "/v1/sessions/s1/offer",
                            "body": {"sdp": "v=0 offer a=candidate", "type": "offer"}}
    assert rtc["remote"] == {"type": "answer", "sdp": "v=0 answer"}
    assert rtc["status_before"] == "Connecting media…"
    assert rtc["status_connected"] == "Connected to clinic."
    assert rtc["controls"] == {"start": True, "stop": False, "interrupt": False, "send": False,
                               "mic": False}


def test_remote_tracks_go_to_the_video_and_audio_elements(run: dict) -> None:
    assert run["media"] == {"video": ["v1"], "audio": ["a1"], "played": True}


def test_data_channel_pings_and_the_hud_shows_the_round_trip(run: dict) -> None:
    assert run["ping"]["type"] == "ping" and isinstance(run["ping"]["t"], (int, float))
    assert run["rtt"] == "40"


def test_typed_turn_goes_over_the_data_channel_and_reply_grows(run: dict) -> None:
    turn = run["turn"]
    assert turn["sent"] == {"type": "text", "text": "When do you open?"}
    assert turn["text_posts"] == 0
    assert turn["user_entries"] == ["When do you open?"]
    assert turn["reply_while_streaming"] == "We open"
    assert turn["reply"] == "We open at nine. Bring your card."
    assert turn["badge"] == ["thinking", "thinking"]
    assert turn["non_json_ignored"] is True


def test_captions_follow_clauses_at_speaking_pace(run: dict) -> None:
    turn = run["turn"]
    assert turn["captions"] == ["We open at nine.", "We open at nine.", "Bring your card."]
    assert turn["caption_after_end"] == ""


def test_hud_send_to_first_audio_comes_from_inbound_audio_energy(run: dict) -> None:
    # Sound starts 300 ms after Send; the energy is polled every 100 ms.
    assert 300 <= int(run["turn"]["client_ms"]) <= 420


def test_hud_shows_server_marks_for_text_and_voice_turns(run: dict) -> None:
    assert run["hud_text"] == ["text to first audio", "420", "30", "250"]
    assert run["hud_voice"] == ["voice to first audio", "700", "–", "100"]


def test_interrupt_button_sends_barge_in_and_silences_captions(run: dict) -> None:
    barge = run["barge"]
    assert barge["sent"] == {"type": "interrupt"}
    assert barge["interrupt_posts"] == 0
    assert barge["reply_classes"] == ["avatar", "interrupted"]
    assert barge["playing_reply_classes"] == ["avatar", "interrupted"]
    assert barge["caption"] == ""


def test_debug_hook_reports_state_events_and_media_stats(run: dict) -> None:
    debug = run["debug"]
    assert debug["session_id"] == "s1"
    assert debug["state"] == "speaking"
    assert debug["events"] == 200
    assert debug["peers"] == 1
    assert debug["last"] == {"type": "state", "state": "speaking", "pts_ms": 209}
    assert debug["stats"] == {"audioEnergy": 0.75, "audioLevel": 0.2, "framesDecoded": 120,
                              "fps": 25, "connection": "connected"}


def test_server_errors_are_shown(run: dict) -> None:
    assert run["channel_error"] == "speech recognition failed"


def test_a_lost_peer_is_replaced_for_the_same_session_after_3_s(run: dict) -> None:
    re_ = run["reconnect"]
    assert re_["status_lost"] == "Connection lost, reconnecting…"
    assert re_["pcs_after_short_blip"] == 1  # back within 3 s: the same peer
    assert re_["pcs_before_3s"] == 1
    assert re_["pcs_after_3s"] == 2
    assert re_["old_closed"] is True
    assert re_["offer_urls"] == ["/v1/sessions/s1/offer", "/v1/sessions/s1/offer"]
    assert re_["new_sessions"] == 0 and re_["deletes"] == 0
    assert re_["old_channel_ignored"] is True
    assert re_["status_after"] == "Connected to clinic."
    assert re_["peers"] == 2


def test_microphone_on_reoffers_with_the_mic_track(run: dict) -> None:
    mic = run["mic"]
    assert mic["constraints"] == {"audio": {"channelCount": 1, "echoCancellation": True,
                                            "noiseSuppression": True, "autoGainControl": True}}
    assert mic["raw"]["audio"]["echoCancellation"] is False
    assert mic["raw"]["audio"]["autoGainControl"] is False
    assert mic["tracks"] == ["audio"]
    assert mic["transceivers"] == [["video", "recvonly"]]
    assert mic["offers"] == 3
    assert mic["pressed"] == "true"


def test_text_falls_back_to_http_while_the_channel_is_not_open(run: dict) -> None:
    assert run["text_http"] == {"url": "/v1/sessions/s1/text", "body": {"text": "Hello?"}}


def test_stop_closes_the_peer_and_deletes_the_session(run: dict) -> None:
    stop = run["stop"]
    assert stop["delete"] == "/v1/sessions/s1"
    assert stop["pc_closed"] is True
    assert stop["tracks_stopped"] is True
    assert stop["controls"] == {"start": False, "stop": True, "interrupt": True, "send": True,
                                "mic": False}
    assert stop["debug_session"] is None


def test_failed_offer_falls_back_to_events_frames_and_web_audio(run: dict) -> None:
    fb = run["fallback"]
    assert fb["events_url"] == "/v1/sessions/s2/events?token=tok-s2"
    assert fb["status"].startswith("Connected to clinic. (without WebRTC: no media here")
    assert fb["video_hidden"] is True and fb["img_hidden"] is False
    assert fb["frame_fetches_while_pending"] == 1
    assert fb["frame_src"] == "blob:2"
    assert fb["revoked"][:1] == ["blob:1"]
    assert fb["text_post"] == {"url": "/v1/sessions/s2/text", "body": {"text": "Open?"}}
    assert fb["mic_error"].startswith("The microphone needs WebRTC")


def test_fallback_audio_is_gapless_captioned_and_dropped_on_interrupt(run: dict) -> None:
    fb = run["fallback"]
    assert fb["starts"] == pytest.approx([1.05, 1.15])
    assert fb["first_sample"] == pytest.approx(1000 / 32768)
    assert fb["caption_before"] == ""
    assert fb["caption_after"] == "We open at nine."
    assert fb["stopped_on_interrupt"] == [True, True]
    assert fb["sources_after_late_audio"] == 0
    assert fb["interrupt_post"] == "/v1/sessions/s2/interrupt"


def test_without_rtcpeerconnection_the_page_uses_plain_http(run: dict) -> None:
    assert run["no_rtc"] == {"offers": 0, "events_url": "/v1/sessions/s3/events?token=tok-s3"}


def test_a_peer_that_never_connects_falls_back_to_plain_http(run: dict) -> None:
    assert run["never_connected"] == {"streams_before_timeout": 0, "pc_closed": True,
                                      "events_url": "/v1/sessions/s5/events?token=tok-s5",
                                      "mode": "http"}


def test_gone_session_reports_the_servers_message(run: dict) -> None:
    # 404: gone for good; only a 410 (its renderer died) is resumed.
    assert run["gone"] == "Session ended: session s4 is unknown"
    assert run["gone_start_enabled"] is True
    assert run["gone_resumes"] == 0


def test_a_dead_renderer_is_resumed_with_the_old_token_then_offered_again(run: dict) -> None:
    rs = run["resume_offer"]
    assert [(r["resume"], r["auth"]) for r in rs["resume_posts"]] == [("s6", "Bearer tok-s6")]
    assert rs["resume_body"] == {"persona": None, "video": True, "resume": "s6"}
    assert rs["offers"] == [["/v1/sessions/s6/offer", "Bearer tok-s6"],
                            ["/v1/sessions/s6/offer", "Bearer tok-s6"],  # the 410
                            ["/v1/sessions/s7/offer", "Bearer tok-s7"]]
    assert rs["ice_servers"] == [{"urls": ["stun:b.example.org:3478"]}]
    assert rs["status_resumed"] == "Reconnected; the conversation goes on."
    assert rs["status_connected"] == "Reconnected to clinic; the conversation goes on."
    assert rs["note"] == ["system", "Reconnected; the conversation goes on."]
    assert rs["cut_reply"] == ["interrupted"]  # what the dead renderer was saying
    assert rs["debug"] == {"session_id": "s7", "resumes": 1}
    assert rs["deletes"] == 0 and rs["error"] is None
    assert rs["text_url"] == "/v1/sessions/s7/text"


def test_silent_renderer_is_probed_after_3_s_and_resumed_only_when_gone(run: dict) -> None:
    lv = run["liveness"]
    assert lv["pings_in_3s"] == 4  # one at open, then every second
    assert lv["info_gets_before_3s"] == 0
    assert lv["info_gets_alive"] == [3000]  # one probe; 200 means alive
    assert lv["resumes_alive"] == 0
    assert lv["status_alive"] == "Reconnected to clinic; the conversation goes on."
    assert lv["resumes_dead"] == [{"resume": "s7", "auth": "Bearer tok-s7"}]
    assert 3000 <= lv["detected_after_ms"] <= 4000
    assert lv["session_id"] == "s8" and lv["old_pc_closed"] is True
    assert lv["stop_delete"] == ["/v1/sessions/s8", "Bearer tok-s8"]


def test_fallback_resumes_on_a_410_stream_error_after_a_busy_countdown(run: dict) -> None:
    hr = run["resume_http"]
    assert hr["status_busy"] == "All avatars are busy, retrying in 2 s"
    assert hr["resume_posts"] == [{"resume": "s10", "auth": "Bearer tok-s10"}] * 2
    assert hr["frames_while_resuming"] == 0
    assert hr["old_stream_closed"] is True and hr["old_stream_ignored"] is True
    assert hr["events_url"] == "/v1/sessions/s11/events?token=tok-s11"
    assert hr["frames_new"] > 0
    assert (hr["mode"], hr["session_id"], hr["offers_new"]) == ("http", "s11", 0)
    assert hr["error"] is None
    # A frame answering 410 resumes too (once, with that session's token).
    assert hr["frame_resumes"] == [{"resume": "s11", "auth": "Bearer tok-s11"}]
    assert hr["events_url_after_frames"] == "/v1/sessions/s12/events?token=tok-s12"


def test_refused_resume_ends_the_page_with_the_servers_message(run: dict) -> None:
    rf = run["resume_refused"]
    assert rf["gone_calls"] == 2 and rf["resume_posts"] == 1  # two 410s, one loss
    assert rf["status_resuming"] == "The avatar's server stopped; resuming the conversation…"
    assert rf["error"] == "Session ended: this token does not belong to session s14"
    assert rf["start_enabled"] is True and rf["session_id"] is None and rf["pc_closed"] is True


def test_renderers_that_keep_dying_are_resumed_three_times_then_the_page_stops(run: dict) -> None:
    limit = run["resume_limit"]
    assert limit["resumes"] == ["s20", "s21", "s22"]
    assert limit["error"] == "The avatar's server kept failing; press Start for a new session."
    assert limit["session_id"] is None


def test_every_call_on_a_session_carries_its_token(run: dict) -> None:
    assert run["session_calls"] > 10
    assert run["without_token"] == []
