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
    for endpoint in ("'/v1/sessions'", "/offer`", "/text`", "/interrupt`", "/events`",
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
def run(page: _Page, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Runs app.js in a Node vm with fake browser APIs through one scripted conversation."""
    if NODE is None:
        pytest.skip("node is not installed")
    harness = tmp_path_factory.mktemp("web") / "harness.js"
    harness.write_text(_HARNESS_JS, encoding="utf-8")
    ids = json.dumps({i: tag for i, (tag, _) in page.by_id.items()})
    done = subprocess.run([NODE, str(harness), str(APP), ids], capture_output=True, text=True,
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
    assert fb["events_url"] == "/v1/sessions/s2/events"
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
    assert run["no_rtc"] == {"offers": 0, "events_url": "/v1/sessions/s3/events"}


def test_a_peer_that_never_connects_falls_back_to_plain_http(run: dict) -> None:
    assert run["never_connected"] == {"streams_before_timeout": 0, "pc_closed": True,
                                      "events_url": "/v1/sessions/s5/events", "mode": "http"}


def test_gone_session_reports_the_servers_message(run: dict) -> None:
    assert run["gone"] == "Session ended: session s4 is unknown"
    assert run["gone_start_enabled"] is True


_HARNESS_JS = r"""
// Runs app.js in a vm context with fake browser APIs, drives conversations, prints JSON.
const fs = require('fs');
const vm = require('vm');
const [appPath, idsJson] = process.argv.slice(2);
const ids = JSON.parse(idsJson);

let now = 0;                                  // virtual ms for timers and performance.now()
const timers = [];
let timerSeq = 0;
function addTimer(fn, ms, every) {
  const id = ++timerSeq;
  timers.push({ id, at: now + (ms || 0), fn, every });
  return id;
}
function clearTimer(id) {
  const i = timers.findIndex((t) => t.id === id);
  if (i >= 0) timers.splice(i, 1);
}
const settle = async () => {
  for (let i = 0; i < 30; i++) await new Promise((r) => setImmediate(r));
};
async function advance(ms) {
  const end = now + ms;
  for (;;) {
    timers.sort((a, b) => a.at - b.at || a.id - b.id);
    if (!timers.length || timers[0].at > end) break;
    const t = timers[0];
    now = Math.max(now, t.at);
    if (t.every) t.at += t.every; else timers.shift();
    t.fn();
    await settle();
  }
  now = end;
  await settle();
}

class El {
  constructor(tag, id) {
    Object.assign(this, { tag, id, textContent: '', value: '', disabled: false, hidden: false,
      className: '', src: '', srcObject: null, children: [], dataset: {}, attrs: {},
      listeners: {} });
    this.classList = { set: new Set(), add: (c) => this.classList.set.add(c) };
  }
  setAttribute(k, v) { this.attrs[k] = String(v); }
  getAttribute(k) { return this.attrs[k]; }
  addEventListener(type, fn) { (this.listeners[type] ||= []).push(fn); }
  dispatch(type, ev = {}) { for (const fn of this.listeners[type] || []) fn(ev); }
  append(...kids) { this.children.push(...kids); }
  querySelector(sel) { return this.children.find((c) => '.' + c.className === sel) || null; }
  play() { this.played = true; return Promise.resolve(); }
}
const els = {};
for (const [id, tag] of Object.entries(ids)) els[id] = new El(tag, id);
const document = { hidden: false, getElementById: (id) => els[id] || null,
  createElement: (tag) => new El(tag) };

// fetch: every call is recorded; `respond` decides, a handler may return a pending promise.
const calls = [];
let respond = () => reply(500, {});
function reply(status, body, headers = {}) {
  return { ok: status >= 200 && status < 300, status, statusText: '',
    headers: { get: (k) => headers[k] ?? null },
    json: async () => body, blob: async () => ({ size: 1 }) };
}
async function fetch(url, opts = {}) {
  const call = { url, method: opts.method || 'GET', body: opts.body };
  calls.push(call);
  return respond(call);
}

// WebRTC fakes: the test plays ICE gathering, connection states and the server's messages.
class FakeChannel {
  constructor(label) { Object.assign(this, { label, readyState: 'connecting', sent: [],
    listeners: {} }); }
  addEventListener(type, fn) { (this.listeners[type] ||= []).push(fn); }
  emit(type, ev = {}) { for (const fn of this.listeners[type] || []) fn(ev); }
  send(text) { this.sent.push(JSON.parse(text)); }
  open() { this.readyState = 'open'; this.emit('open'); }
  message(obj) {
    this.emit('message', { data: typeof obj === 'string' ? obj : JSON.stringify(obj) });
  }
}
const pcs = [];
class RTCPeerConnection {
  constructor(config) {
    Object.assign(this, { config, listeners: {}, transceivers: [], tracks: [], channels: [],
      connectionState: 'new', iceGatheringState: 'new', localDescription: null, remote: null,
      closed: false, report: { energy: 0, level: 0, frames: 0, fps: 0 } });
    pcs.push(this);
  }
  addEventListener(type, fn) { (this.listeners[type] ||= []).push(fn); }
  removeEventListener(type, fn) {
    this.listeners[type] = (this.listeners[type] || []).filter((f) => f !== fn);
  }
  emit(type, ev = {}) { for (const fn of [...(this.listeners[type] || [])]) fn(ev); }
  addTrack(track) { this.tracks.push(track.kind); }
  addTransceiver(kind, init) { this.transceivers.push([kind, init && init.direction]); }
  createDataChannel(label) { const ch = new FakeChannel(label); this.channels.push(ch); return ch; }
  async createOffer() { return { type: 'offer', sdp: 'v=0 offer' }; }
  async setLocalDescription(d) {
    this.localDescription = { ...d };
    this.iceGatheringState = 'gathering';
  }
  gatherDone() {
    this.localDescription.sdp += ' a=candidate';
    this.iceGatheringState = 'complete';
    this.emit('icecandidate', { candidate: { candidate: 'a=candidate' } });
    this.emit('icegatheringstatechange');
    this.emit('icecandidate', { candidate: null });
  }
  async setRemoteDescription(d) { this.remote = d; }
  setState(state) { this.connectionState = state; this.emit('connectionstatechange'); }
  close() { this.closed = true; this.connectionState = 'closed'; }
  async getStats() {
    const r = this.report;
    return new Map([
      ['a', { type: 'inbound-rtp', kind: 'audio', totalAudioEnergy: r.energy,
        audioLevel: r.level }],
      ['v', { type: 'inbound-rtp', kind: 'video', framesDecoded: r.frames,
        framesPerSecond: r.fps }],
      ['o', { type: 'outbound-rtp', kind: 'audio', totalAudioEnergy: 9 }],
    ]);
  }
}
class MediaStream { constructor(tracks) { this.tracks = tracks; } }
const micTrack = { kind: 'audio', readyState: 'live',
  stop() { this.stopped = true; this.readyState = 'ended'; } };
const gum = [];
const navigator = { mediaDevices: { getUserMedia: async (c) => {
  gum.push(c);
  return { getAudioTracks: () => [micTrack], getTracks: () => [micTrack] };
} } };

const sources = [];
class FakeContext {
  constructor() { Object.assign(this, { currentTime: 1.0, sampleRate: 48000, state: 'running',
    destination: {} }); }
  resume() {}
  createBuffer(ch, len, rate) { const data = new Float32Array(len);
    return { duration: len / rate, getChannelData: () => data }; }
  createBufferSource() { const s = { connect() {}, start(at) { s.at = at; },
    stop() { s.stopped = true; } }; sources.push(s); return s; }
}

const streams = [];
class EventSource {
  constructor(url) {
    Object.assign(this, { url, readyState: 1, listeners: {} });
    streams.push(this);
  }
  addEventListener(type, fn) { (this.listeners[type] ||= []).push(fn); }
  close() { this.readyState = EventSource.CLOSED; }
  emit(type, data) { const ev = data === undefined ? {} : { data: JSON.stringify(data) };
    for (const fn of this.listeners[type] || []) fn(ev); }
}
EventSource.CLOSED = 2;

let blobs = 0;
const revoked = [];
const URL_ = { createObjectURL: () => `blob:${++blobs}`, revokeObjectURL: (u) => revoked.push(u) };
const ctx = vm.createContext({ document, navigator, fetch, EventSource, RTCPeerConnection,
  MediaStream, AudioContext: FakeContext, URL: URL_, URLSearchParams, atob, console,
  location: { search: '' }, setTimeout: (fn, ms) => addTimer(fn, ms), clearTimeout: clearTimer,
  setInterval: (fn, ms) => addTimer(fn, ms, ms), clearInterval: clearTimer,
  performance: { now: () => now } });
ctx.window = ctx;
ctx.addEventListener = () => {};
vm.runInContext(fs.readFileSync(appPath, 'utf8'), ctx, { filename: appPath });

const pcm = (values) => Buffer.from(Int16Array.from(values).buffer).toString('base64');
const texts = (who) => els.chat.children.filter((c) => c.className === who)
  .map((c) => c.children[1].textContent);
const controls = () => Object.fromEntries(['start', 'stop', 'interrupt', 'send', 'mic']
  .map((k) => [k, els[k].disabled]));
const hud = () => ['hud-first-audio-label', 'hud-first-audio', 'hud-retrieval', 'hud-llm']
  .map((k) => els[k].textContent);
const offers = () => calls.filter((c) => c.url.endsWith('/offer'));
const submit = async (text) => {
  els['text-input'].value = text;
  els['text-form'].dispatch('submit', { preventDefault() {} });
  await settle();
};
const out = {};

(async () => {
  // 0. The Mic toggle before Start only records the wish.
  out.mic_before_start = [];
  for (let i = 0; i < 2; i++) {
    els.mic.dispatch('click');
    await settle();
    out.mic_before_start.push(els.mic.getAttribute('aria-pressed'));
  }
  out.gum_before_start = gum.length;

  // 1. Start on a full cluster: 503 with Retry-After, a visible countdown, then 201.
  let posts = 0;
  respond = (c) => {
    if (c.url === '/v1/sessions') {
      posts += 1;
      out.start_body = JSON.parse(c.body);
      return posts === 1 ? reply(503, { error: 'full' }, { 'Retry-After': '3' })
        : reply(201, { session_id: 's1', persona: 'clinic', greeting: 'Hello, how can I help?',
          ice_servers: [{ urls: ['stun:stun.example.org:3478'] }] });
    }
    if (c.url.endsWith('/offer')) return reply(200, { type: 'answer', sdp: 'v=0 answer' });
    return reply(202, {});
  };
  els.start.dispatch('click');
  await settle();
  out.busy = [els.status.textContent];
  await advance(1000);
  out.busy.push(els.status.textContent);
  await advance(2000);
  out.session_posts = posts;
  const greet = els.chat.children[0];
  out.greeting = greet ? greet.children.map((c) => c.textContent).join(' ') : null;

  // 2. The offer: recvonly audio + video, the client's data channel, sent after gathering.
  const pc = pcs[0];
  const rtc = { ice_servers: pc.config.iceServers, transceivers: pc.transceivers,
    tracks: pc.tracks, channels: pc.channels.map((c) => c.label),
    offers_while_gathering: offers().length, status_before: els.status.textContent };
  pc.gatherDone();
  await settle();
  const o = offers()[0];
  rtc.offer = o && { url: o.url, body: JSON.parse(o.body) };
  rtc.remote = pc.remote;
  pc.setState('connected');
  rtc.status_connected = els.status.textContent;
  rtc.controls = controls();
  out.rtc = rtc;

  // 3. Remote tracks, the data channel's ping and pong.
  pc.emit('track', { track: { kind: 'video', id: 'v1' } });
  pc.emit('track', { track: { kind: 'audio', id: 'a1' } });
  await settle();
  out.media = { video: els.video.srcObject.tracks.map((t) => t.id),
    audio: els.audio.srcObject.tracks.map((t) => t.id), played: !!els.audio.played };
  const ch = pc.channels[0];
  ch.open();
  out.ping = ch.sent[0];
  await advance(40);
  ch.message({ type: 'pong', t: out.ping.t, pts_ms: 5 });
  out.rtt = els['hud-rtt'].textContent;

  // 4. A typed turn over the data channel; captions paced by length; HUD from audio energy.
  const turn = {};
  const sent = () => ch.sent.filter((m) => m.type !== 'ping');
  const t0 = now;
  await submit('When do you open?');
  turn.sent = sent().at(-1);
  turn.text_posts = calls.filter((c) => c.url.endsWith('/text')).length;
  ch.message({ type: 'accepted', turn_id: 1 });
  ch.message({ type: 'transcript', text: 'When do you open?', is_final: true, pts_ms: 5 });
  ch.message({ type: 'state', state: 'thinking', pts_ms: 6 });
  turn.badge = [els.state.textContent, els.state.dataset.state];
  turn.user_entries = texts('user');
  pc.report.energy = 0.5;
  ch.message({ type: 'clause', text: 'We open at nine.', index: 0, pts_ms: 7 });
  ch.message({ type: 'text_delta', text: 'We open', pts_ms: 8 });
  turn.reply_while_streaming = texts('avatar').at(-1);
  ch.message({ type: 'text_delta', text: ' at nine.', pts_ms: 9 });
  ch.message({ type: 'clause', text: 'Bring your card.', index: 1, pts_ms: 10 });
  ch.message({ type: 'text_delta', text: ' Bring your card.', pts_ms: 11 });
  turn.reply = texts('avatar').at(-1);
  try {
    ch.message('not json');
    turn.non_json_ignored = true;
  } catch { turn.non_json_ignored = false; }
  await advance(0);
  turn.captions = [els.caption.textContent];
  await advance(300);
  pc.report.energy = 0.6;  // the reply becomes audible 300 ms after Send
  await advance(100);
  turn.client_ms = els['hud-client'].textContent;
  turn.captions.push(els.caption.textContent);
  await advance(t0 + 1100 - now);
  turn.captions.push(els.caption.textContent);
  ch.message({ type: 'turn_end', turn_id: 1, reply: 'We open at nine. Bring your card.',
    refused: false, interrupted: false, marks_ms: { asr_final: 100, retrieval_done: 130,
      llm_first_token: 350, tts_first_audio: 520 } });
  out.hud_text = hud();
  await advance(1200);
  turn.caption_after_end = els.caption.textContent;
  out.turn = turn;
  ch.message({ type: 'turn_end', turn_id: 2, reply: '', refused: false, interrupted: false,
    marks_ms: { speech_end: 1000, asr_final: 1100, llm_first_token: 1200,
      tts_first_audio: 1700 } });
  out.hud_voice = hud();

  // 5. Barge-in with the Interrupt button: a data-channel message; captions stop.
  const barge = {};
  ch.message({ type: 'text_delta', text: 'Our address', pts_ms: 2000 });
  ch.message({ type: 'clause', text: 'Our address is on Main Street,', index: 0, pts_ms: 2001 });
  ch.message({ type: 'clause', text: 'next to the pharmacy.', index: 1, pts_ms: 2002 });
  await advance(10);
  els.interrupt.dispatch('click');
  barge.sent = sent().at(-1);
  barge.interrupt_posts = calls.filter((c) => c.url.endsWith('/interrupt')).length;
  ch.message({ type: 'interrupt', turn_id: 3, pts_ms: 2050 });
  ch.message({ type: 'turn_end', turn_id: 3, reply: '', refused: false, interrupted: true,
    marks_ms: {} });
  await advance(3000);
  barge.caption = els.caption.textContent;
  const last = els.chat.children.at(-1);
  barge.reply_classes = [last.className, ...last.classList.set];
  // Barge-in after the reply was fully generated, while it still plays out.
  ch.message({ type: 'text_delta', text: 'We open at nine.', pts_ms: 2100 });
  ch.message({ type: 'turn_end', turn_id: 4, reply: 'We open at nine.', refused: false,
    interrupted: false, marks_ms: {} });
  ch.message({ type: 'interrupt', turn_id: 4, pts_ms: 2200 });
  const playing = els.chat.children.at(-1);
  barge.playing_reply_classes = [playing.className, ...playing.classList.set];
  out.barge = barge;

  // 6. Errors from the server; the debug hook.
  ch.message({ type: 'error', message: 'speech recognition failed', pts_ms: 2300 });
  out.channel_error = els.error.hidden ? null : els.error.textContent;
  for (let i = 0; i < 210; i++) {
    ch.message({ type: 'state', state: i === 209 ? 'speaking' : 'listening', pts_ms: i });
  }
  Object.assign(pc.report, { energy: 0.75, level: 0.2, frames: 120, fps: 25 });
  const dbg = ctx.window.avatarDebug;
  out.debug = { session_id: dbg.session_id, state: dbg.state, events: dbg.events.length,
    peers: dbg.peers,
    last: dbg.events.at(-1), stats: await dbg.stats() };

  // 7. Reconnect: a blip under 3 s keeps the peer; a longer loss re-offers for the same session.
  const re = {};
  pc.setState('disconnected');
  re.status_lost = els.status.textContent;
  await advance(2000);
  pc.setState('connected');
  await advance(2000);
  re.pcs_after_short_blip = pcs.length;
  pc.setState('failed');
  await advance(2900);
  re.pcs_before_3s = pcs.length;
  await advance(200);
  re.pcs_after_3s = pcs.length;
  re.old_closed = pc.closed;
  pcs[1].gatherDone();
  await settle();
  re.offer_urls = offers().map((c) => c.url);
  re.new_sessions = calls.filter((c) => c.url === '/v1/sessions').length - 2;
  re.deletes = calls.filter((c) => c.method === 'DELETE').length;
  ch.message({ type: 'error', message: 'from the old peer' });
  re.old_channel_ignored = els.error.textContent === 'speech recognition failed';
  pcs[1].setState('connected');
  re.status_after = els.status.textContent;
  re.peers = ctx.window.avatarDebug.peers;
  out.reconnect = re;

  // 8. Mic on during the session: getUserMedia with audio processing, a new offer with it.
  els.mic.dispatch('click');
  await settle();
  const pc3 = pcs[2];
  const mic = { constraints: gum[0], raw: vm.runInContext('micConstraints(true)', ctx),
    tracks: pc3.tracks, transceivers: pc3.transceivers };
  pc3.gatherDone();
  await settle();
  mic.offers = offers().length;
  mic.pressed = els.mic.getAttribute('aria-pressed');
  out.mic = mic;

  // 9. The new peer's channel is not open yet: typed text goes over HTTP.
  await submit('Hello?');
  const tp = calls.filter((c) => c.url.endsWith('/text')).at(-1);
  out.text_http = tp && { url: tp.url, body: JSON.parse(tp.body) };

  // 10. Stop: DELETE, the peer closed, the microphone released.
  respond = () => reply(204, null);
  els.stop.dispatch('click');
  await settle();
  out.stop = { delete: (calls.findLast((c) => c.method === 'DELETE') || {}).url,
    pc_closed: pc3.closed, tracks_stopped: !!micTrack.stopped, controls: controls(),
    debug_session: ctx.window.avatarDebug.session_id };
  els.mic.dispatch('click');  // mic off again for the next sessions
  await settle();

  // 11. The offer fails: plain HTTP (SSE, frame.jpg, Web Audio).
  const fb = {};
  let framePending = null;
  respond = (c) => {
    if (c.url === '/v1/sessions') {
      return reply(201, { session_id: 's2', persona: 'clinic', greeting: '', ice_servers: [] });
    }
    if (c.url.endsWith('/offer')) return reply(500, { error: 'no media here' });
    if (c.url.endsWith('/frame.jpg')) {
      return new Promise((ok) => { framePending = () => ok(reply(200)); });
    }
    return reply(202, {});
  };
  els.start.dispatch('click');
  await settle();
  pcs.at(-1).gatherDone();
  await settle();
  const es = streams[0];
  fb.events_url = es && es.url;
  fb.status = els.status.textContent;
  fb.video_hidden = els.video.hidden;
  fb.img_hidden = els.avatar.hidden;
  await advance(500);
  fb.frame_fetches_while_pending = calls.filter((c) => c.url.endsWith('/frame.jpg')).length;
  framePending(); await settle(); await advance(80); framePending(); await settle();
  fb.frame_src = els.avatar.src;
  await submit('Open?');
  const fp = calls.filter((c) => c.url.endsWith('/text')).at(-1);
  fb.text_post = { url: fp.url, body: JSON.parse(fp.body) };
  sources.length = 0;
  const audioCtx = vm.runInContext('player.ctx', ctx);
  es.emit('clause', { text: 'We open at nine.', index: 0, pts_ms: 7 });
  es.emit('audio', { pcm16_b64: pcm(Array(2400).fill(1000)), sample_rate_hz: 24000, pts_ms: 10,
    duration_ms: 100, turn_id: 1, clause_index: 0 });
  es.emit('audio', { pcm16_b64: pcm(Array(2400).fill(0)), sample_rate_hz: 24000, pts_ms: 110,
    duration_ms: 100, turn_id: 1, clause_index: 0 });
  fb.starts = sources.map((s) => s.at);
  fb.first_sample = sources[0].buffer.getChannelData(0)[0];
  fb.caption_before = els.caption.textContent;
  await advance(60);
  fb.caption_after = els.caption.textContent;
  sources.length = 0;
  audioCtx.currentTime = 2.0;
  for (let i = 0; i < 2; i++) es.emit('audio', { pcm16_b64: pcm(Array(2400).fill(5)),
    sample_rate_hz: 24000, pts_ms: 2000, duration_ms: 100, turn_id: 3, clause_index: 0 });
  els.interrupt.dispatch('click');
  await settle();
  fb.interrupt_post = (calls.filter((c) => c.url.endsWith('/interrupt')).at(-1) || {}).url;
  es.emit('interrupt', { turn_id: 3, pts_ms: 2050 });
  fb.stopped_on_interrupt = sources.map((s) => !!s.stopped);
  sources.length = 0;
  es.emit('audio', { pcm16_b64: pcm([1, 2]), sample_rate_hz: 24000, pts_ms: 2100,
    duration_ms: 1, turn_id: 3, clause_index: 1 });
  fb.sources_after_late_audio = sources.length;
  els.mic.dispatch('click');
  await settle();
  fb.mic_error = els.error.textContent;
  fb.revoked = revoked;
  out.fallback = fb;
  respond = () => reply(204, null);
  els.stop.dispatch('click');
  await settle();

  // 12. No RTCPeerConnection at all: straight to plain HTTP.
  const offersBefore = offers().length;
  ctx.RTCPeerConnection = undefined;
  respond = (c) => (c.url === '/v1/sessions' ? reply(201, { session_id: 's3', greeting: '' })
    : new Promise(() => {}));
  els.start.dispatch('click');
  await settle();
  out.no_rtc = { offers: offers().length - offersBefore, events_url: streams.at(-1).url };
  els.stop.dispatch('click');
  await settle();
  ctx.RTCPeerConnection = RTCPeerConnection;

  // 13. A peer that never connects: plain HTTP after the connect timeout.
  respond = (c) => (c.url === '/v1/sessions' ? reply(201, { session_id: 's5', greeting: '' })
    : c.url.endsWith('/offer') ? reply(200, { type: 'answer', sdp: 'v=0 answer' })
      : new Promise(() => {}));
  els.start.dispatch('click');
  await settle();
  const stuck = pcs.at(-1);
  stuck.gatherDone();
  await settle();
  stuck.setState('connecting');
  const streamsBefore = streams.length;
  await advance(9900);
  out.never_connected = { streams_before_timeout: streams.length - streamsBefore };
  await advance(200);
  Object.assign(out.never_connected, { pc_closed: stuck.closed,
    events_url: streams.at(-1).url, mode: ctx.window.avatarDebug.mode });
  els.stop.dispatch('click');
  await settle();

  // 14. A session the server no longer knows: its 404 message is shown and the page resets.
  respond = (c) => (c.url === '/v1/sessions' ? reply(201, { session_id: 's4', greeting: '' })
    : c.url.endsWith('/offer') ? reply(404, { error: 'session s4 is unknown' })
      : reply(202, {}));
  els.start.dispatch('click');
  await settle();
  pcs.at(-1).gatherDone();
  await settle();
  out.gone = els.error.textContent;
  out.gone_start_enabled = !els.start.disabled;
  process.stdout.write(JSON.stringify(out));
  process.exit(0);
})().catch((err) => { console.error(err); process.exit(1); });
"""
