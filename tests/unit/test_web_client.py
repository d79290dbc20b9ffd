"""The browser client in deployments/web: its markup, its use of the HTTP API, and (where
Node.js is installed) its behaviour against a fake DOM, fetch, EventSource and Web Audio."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest

pytestmark = pytest.mark.unit

WEB = Path(__file__).resolve().parents[2] / "deployments" / "web"
INDEX, APP, STYLE = WEB / "index.html", WEB / "app.js", WEB / "style.css"

# Every Server-Sent-Events type of the Gateway's /events stream (docs: the HTTP API).
SSE_EVENT_TYPES = (
    "transcript", "text_delta", "clause", "state", "audio", "interrupt", "turn_end", "error",
)
CONTROLS = ("start", "stop", "text-input", "send", "mic")
NODE = shutil.which("node")


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
    for button in ("start", "stop", "send", "mic"):
        assert page.by_id[button][0] == "button"
        assert page.button_text[button], f"button #{button} needs visible text"
    # Enter sends: the text box and Send live in one form whose Send is a submit button.
    assert page.by_id["text-form"][0] == "form"
    assert page.by_id["send"][1].get("type") == "submit"
    for region in ("avatar", "caption", "transcript", "chat", "state", "error", "status"):
        assert region in page.by_id, f"missing #{region}"
    assert page.by_id["avatar"][1].get("alt"), "the avatar image needs alt text"


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


# --- use of the API ------------------------------------------------------------------------


def test_script_calls_every_endpoint_it_needs(js: str) -> None:
    for endpoint in ("'/v1/sessions'", "/text`", "/audio?sample_rate_hz=", "/events`",
                     "/frame.jpg`"):
        assert endpoint in js, endpoint
    assert re.search(r"method:\s*'DELETE'", js)
    assert re.search(r"method:\s*'POST'", js)
    assert "Retry-After" in js


def test_script_handles_every_event_type(js: str) -> None:
    block = re.search(r"const handlers = \{(.*?)\n\};", js, re.S)
    assert block, "app.js keeps its SSE handlers in `const handlers = {...}`"
    for event in SSE_EVENT_TYPES:
        assert re.search(rf"^\s*{event}\s*[(:]", block.group(1), re.M), f"no handler for {event}"
    assert "es.addEventListener(type" in js


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


def test_busy_cluster_counts_down_from_retry_after_then_retries(run: dict) -> None:
    assert run["busy"] == ["All avatars are busy, retrying in 3 s",
                           "All avatars are busy, retrying in 2 s"]
    assert run["session_posts"] == 2
    assert run["start_body"] == {"persona": None, "video": True}
    assert run["events_url"] == "/v1/sessions/s1/events"
    assert run["greeting"] == "Avatar Hello, how can I help?"
    assert run["connected_controls"] == {"start": True, "stop": False, "send": False, "mic": False}


def test_frames_are_polled_one_at_a_time_and_old_urls_revoked(run: dict) -> None:
    assert run["frame_fetches_while_pending"] == 1
    assert run["frame_src"] == "blob:2"
    assert run["revoked"][:1] == ["blob:1"]


def test_typed_turn_shows_once_and_reply_grows(run: dict) -> None:
    assert run["text_post"] == {"url": "/v1/sessions/s1/text",
                                "body": {"text": "When do you open?"}}
    assert run["user_entries"] == ["When do you open?"]
    assert run["reply_while_streaming"] == "We open"
    assert run["reply"] == "We open at nine."
    assert run["badge"] == ["thinking", "thinking"]


def test_audio_is_scheduled_gaplessly_and_captioned_when_heard(run: dict) -> None:
    assert run["starts"] == pytest.approx([1.05, 1.15])
    assert run["first_sample"] == pytest.approx(1000 / 32768)
    assert run["caption_before"] == ""
    assert run["caption_after"] == "We open at nine."
    assert run["client_ms"] == "250"  # Send at t=0 ms, audio due at 200 + 50 ms


def test_hud_shows_server_marks_for_text_and_voice_turns(run: dict) -> None:
    assert run["hud_text"] == ["text to first audio", "420", "30", "250"]
    assert run["hud_voice"] == ["voice to first audio", "700", "–", "100"]


def test_interrupt_silences_the_turn_and_drops_its_late_audio(run: dict) -> None:
    assert run["stopped_on_interrupt"] == [True, True]
    assert run["sources_after_late_audio"] == 0
    assert run["next_turn_start"] == pytest.approx(2.05)  # not queued behind the dropped audio
    assert run["reply_classes"] == ["avatar", "interrupted"]


def test_errors_from_the_server_are_shown(run: dict) -> None:
    assert run["sse_error"] == "speech recognition failed"
    assert run["text_error"] == "Sending text failed: text is empty; type a question"


def test_microphone_sends_100ms_pcm16_chunks_in_order(run: dict) -> None:
    mic = run["mic"]
    assert mic["pressed"] == "true"
    assert mic["urls"] == ["/v1/sessions/s1/audio?sample_rate_hz=16000"] * 3
    assert mic["sizes"] == [3200, 3200, 3200]  # 1600 samples of 2 bytes
    assert mic["max_in_flight"] == 1
    assert mic["first_values"] == [16384, 16384]  # 0.5 at 48 kHz -> 0.5 at 16 kHz


def test_downsampler_keeps_the_rate_across_odd_chunk_sizes(run: dict) -> None:
    assert run["down_44k"] in (15999, 16000)
    assert run["down_48k"] == 16000


def test_stop_deletes_the_session_and_releases_everything(run: dict) -> None:
    stop = run["stop"]
    assert stop["delete"] == "/v1/sessions/s1"
    assert stop["events_closed"] is True
    assert stop["tracks_stopped"] is True
    assert stop["controls"] == {"start": False, "stop": True, "send": True, "mic": True}


def test_gone_session_reports_the_servers_message(run: dict) -> None:
    assert run["gone"] == "Session ended: session s2 is unknown"
    assert run["gone_start_enabled"] is True


_HARNESS_JS = r"""
// Runs app.js in a vm context with fake browser APIs, drives one conversation, prints JSON.
const fs = require('fs');
const vm = require('vm');
const [appPath, idsJson] = process.argv.slice(2);
const ids = JSON.parse(idsJson);

let now = 0;                                  // virtual ms for timers and performance.now()
const timers = [];
let timerSeq = 0;
function setTimeout_(fn, ms) {
  const id = ++timerSeq;
  timers.push({ id, at: now + (ms || 0), fn });
  return id;
}
function clearTimeout_(id) {
  const i = timers.findIndex((t) => t.id === id);
  if (i >= 0) timers.splice(i, 1);
}
const settle = async () => {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
};
async function advance(ms) {
  const end = now + ms;
  for (;;) {
    timers.sort((a, b) => a.at - b.at);
    if (!timers.length || timers[0].at > end) break;
    const t = timers.shift();
    now = Math.max(now, t.at);
    t.fn();
    await settle();
  }
  now = end;
  await settle();
}

class El {
  constructor(tag, id) {
    Object.assign(this, { tag, id, textContent: '', value: '', disabled: false, hidden: false,
      className: '', src: '', children: [], dataset: {}, attrs: {}, listeners: {} });
    this.classList = { set: new Set(), add: (c) => this.classList.set.add(c) };
  }
  setAttribute(k, v) { this.attrs[k] = String(v); }
  getAttribute(k) { return this.attrs[k]; }
  addEventListener(type, fn) { (this.listeners[type] ||= []).push(fn); }
  dispatch(type, ev = {}) { for (const fn of this.listeners[type] || []) fn(ev); }
  append(...kids) { this.children.push(...kids); }
  querySelector(sel) { return this.children.find((c) => '.' + c.className === sel) || null; }
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

const sources = [];
class FakeContext {
  constructor() { Object.assign(this, { currentTime: 1.0, sampleRate: 48000, state: 'running',
    destination: {}, audioWorklet: { addModule: async () => {} } }); }
  resume() {}
  createBuffer(ch, len, rate) { const data = new Float32Array(len);
    return { duration: len / rate, getChannelData: () => data }; }
  createBufferSource() { const s = { connect() {}, start(at) { s.at = at; },
    stop() { s.stopped = true; } }; sources.push(s); return s; }
  createGain() { return { gain: {}, connect: (n) => n, disconnect() {} }; }
  createMediaStreamSource() { return { connect: (n) => n, disconnect() {} }; }
}
const worklets = [];
class AudioWorkletNode { constructor() { this.port = {}; worklets.push(this);
  this.connect = (n) => n; this.disconnect = () => {}; } }
const tracks = [{ stopped: false, stop() { this.stopped = true; } }];
const navigator = { mediaDevices: { getUserMedia: async () => ({ getTracks: () => tracks }) } };

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
const ctx = vm.createContext({ document, navigator, fetch, EventSource, AudioWorkletNode,
  AudioContext: FakeContext, URL: URL_, Blob, atob, console,
  setTimeout: setTimeout_, clearTimeout: clearTimeout_, performance: { now: () => now } });
ctx.window = ctx;
ctx.addEventListener = () => {};
vm.runInContext(fs.readFileSync(appPath, 'utf8'), ctx, { filename: appPath });

const pcm = (values) => Buffer.from(Int16Array.from(values).buffer).toString('base64');
const texts = (who) => els.chat.children.filter((c) => c.className === who)
  .map((c) => c.children[1].textContent);
const controls = () => Object.fromEntries(['start', 'stop', 'send', 'mic']
  .map((k) => [k, els[k].disabled]));
const hud = () => ['hud-first-audio-label', 'hud-first-audio', 'hud-retrieval', 'hud-llm']
  .map((k) => els[k].textContent);
const out = {};

(async () => {
  // 1. Start on a full cluster: 503 with Retry-After, a visible countdown, then 201.
  let posts = 0;
  let framePending = null;
  respond = (c) => {
    if (c.url === '/v1/sessions') {
      posts += 1;
      out.start_body = JSON.parse(c.body);
      return posts === 1 ? reply(503, { error: 'full' }, { 'Retry-After': '3' })
        : reply(201, { session_id: 's1', persona: 'clinic', greeting: 'Hello, how can I help?' });
    }
    if (c.url.endsWith('/frame.jpg')) {
      return new Promise((ok) => { framePending = () => ok(reply(200)); });
    }
    return reply(202, {});
  };
  els.start.dispatch('click');
  await settle();
  out.busy = [els.status.textContent];
  await advance(1000);
  out.busy.push(els.status.textContent);
  await advance(2000);
  out.session_posts = posts;
  out.events_url = streams[0].url;
  const greet = els.chat.children[0];
  out.greeting = greet ? greet.children.map((c) => c.textContent).join(' ') : null;
  out.connected_controls = controls();
  const es = streams[0];

  // 2. Frames: never a second request while one is pending; old object URLs revoked.
  await advance(500);
  out.frame_fetches_while_pending = calls.filter((c) => c.url.endsWith('/frame.jpg')).length;
  framePending(); await settle(); await advance(80); framePending(); await settle();
  out.frame_src = els.avatar.src;

  // 3. A typed turn at t=0 (virtual): one user entry, the reply grows with text_delta.
  now = 0;
  els['text-input'].value = 'When do you open?';
  els['text-form'].dispatch('submit', { preventDefault() {} });
  await settle();
  const tp = calls.find((c) => c.url.endsWith('/text'));
  out.text_post = { url: tp.url, body: JSON.parse(tp.body) };
  es.emit('transcript', { text: 'When do you open?', is_final: true, pts_ms: 5 });
  es.emit('state', { state: 'thinking', pts_ms: 6 });
  out.badge = [els.state.textContent, els.state.dataset.state];
  out.user_entries = texts('user');
  es.emit('clause', { text: 'We open at nine.', index: 0, pts_ms: 7 });
  es.emit('text_delta', { text: 'We open', pts_ms: 8 });
  out.reply_while_streaming = texts('avatar').at(-1);
  es.emit('text_delta', { text: ' at nine.', pts_ms: 9 });
  out.reply = texts('avatar').at(-1);

  // 4. Audio at t=200 ms: two chunks back to back, caption shown when the first is heard.
  now = 200;
  es.emit('audio', { pcm16_b64: pcm(Array(2400).fill(1000)), sample_rate_hz: 24000, pts_ms: 10,
    duration_ms: 100, turn_id: 1, clause_index: 0 });
  es.emit('audio', { pcm16_b64: pcm(Array(2400).fill(0)), sample_rate_hz: 24000, pts_ms: 110,
    duration_ms: 100, turn_id: 1, clause_index: 0 });
  out.starts = sources.map((s) => s.at);
  out.first_sample = sources[0].buffer.getChannelData(0)[0];
  out.client_ms = els['hud-client'].textContent;
  out.caption_before = els.caption.textContent;
  await advance(60);
  out.caption_after = els.caption.textContent;

  // 5. turn_end marks for a typed turn, then for a spoken one.
  es.emit('turn_end', { turn_id: 1, reply: 'We open at nine.', refused: false, interrupted: false,
    marks_ms: { asr_final: 100, retrieval_done: 130, llm_first_token: 350,
      tts_first_audio: 520 } });
  out.hud_text = hud();
  es.emit('turn_end', { turn_id: 2, reply: '', refused: false, interrupted: false,
    marks_ms: { speech_end: 1000, asr_final: 1100, llm_first_token: 1200,
      tts_first_audio: 1700 } });
  out.hud_voice = hud();

  // 6. Barge-in: turn 3 audio is stopped, its late chunk dropped, turn 4 plays at once.
  sources.length = 0;
  es.emit('text_delta', { text: 'Our address', pts_ms: 2000 });
  for (let i = 0; i < 2; i++) es.emit('audio', { pcm16_b64: pcm(Array(2400).fill(5)),
    sample_rate_hz: 24000, pts_ms: 2000, duration_ms: 100, turn_id: 3, clause_index: 0 });
  es.emit('interrupt', { turn_id: 3, pts_ms: 2050 });
  out.stopped_on_interrupt = sources.map((s) => !!s.stopped);
  sources.length = 0;
  es.emit('audio', { pcm16_b64: pcm([1, 2]), sample_rate_hz: 24000, pts_ms: 2100, duration_ms: 1,
    turn_id: 3, clause_index: 1 });
  out.sources_after_late_audio = sources.length;
  es.emit('turn_end', { turn_id: 3, reply: '', refused: false, interrupted: true, marks_ms: {} });
  const last = els.chat.children.at(-1);
  out.reply_classes = [last.className, ...last.classList.set];
  sources.length = 0;
  const audioCtx = vm.runInContext('player.ctx', ctx);
  audioCtx.currentTime = 2.0;
  es.emit('audio', { pcm16_b64: pcm([7, 7]), sample_rate_hz: 24000, pts_ms: 2200, duration_ms: 1,
    turn_id: 4, clause_index: 0 });
  out.next_turn_start = sources[0].at;

  // 7. Errors: a server `error` event and a 400 on /text.
  es.emit('error', { message: 'speech recognition failed', pts_ms: 2300 });
  out.sse_error = els.error.hidden ? null : els.error.textContent;
  respond = (c) => (c.url.endsWith('/text')
    ? reply(400, { error: 'text is empty; type a question' }) : new Promise(() => {}));
  els['text-input'].value = '?';
  els['text-form'].dispatch('submit', { preventDefault() {} });
  await settle();
  out.text_error = els.error.textContent;

  // 8. Microphone: 0.5 at 48 kHz in 1024-sample batches -> 100 ms PCM16 POSTs, one at a time.
  let inFlight = 0; let maxInFlight = 0; const pending = []; const mic = { urls: [], sizes: [] };
  respond = (c) => {
    if (!c.url.includes('/audio')) return new Promise(() => {});
    mic.urls.push(c.url); mic.sizes.push(c.body.byteLength);
    if (!mic.first_values) mic.first_values = Array.from(new Int16Array(c.body).slice(0, 2));
    inFlight += 1; maxInFlight = Math.max(maxInFlight, inFlight);
    return new Promise((ok) => pending.push(() => { inFlight -= 1; ok(reply(202, {})); }));
  };
  els.mic.dispatch('click');
  await settle();
  mic.pressed = els.mic.getAttribute('aria-pressed');
  for (let i = 0; i < 15; i++) {
    worklets[0].port.onmessage({ data: new Float32Array(1024).fill(0.5) });
  }
  await settle();
  while (pending.length) { pending.shift()(); await settle(); }
  mic.max_in_flight = maxInFlight;
  out.mic = mic;

  // 9. The downsampler alone: one second in odd-sized pieces.
  for (const [rate, key] of [[44100, 'down_44k'], [48000, 'down_48k']]) {
    const down = ctx.makeDownsampler(rate);
    let n = 0;
    for (let i = 0; i < rate; i += 333) n += down(new Float32Array(Math.min(333, rate - i))).length;
    out[key] = n;
  }

  // 10. Stop: DELETE, stream closed, microphone released, Start enabled again.
  respond = () => reply(204, null);
  els.stop.dispatch('click');
  await settle();
  out.stop = { delete: (calls.findLast((c) => c.method === 'DELETE') || {}).url,
    events_closed: es.readyState === EventSource.CLOSED, tracks_stopped: tracks[0].stopped,
    controls: controls() };

  // 11. A session the server no longer knows: its 404 message is shown and the page resets.
  respond = (c) => (c.url === '/v1/sessions' ? reply(201, { session_id: 's2', greeting: '' })
    : c.url.endsWith('/frame.jpg') ? reply(404, { error: 'session s2 is unknown' })
      : reply(202, {}));
  els.start.dispatch('click');
  await advance(10);
  out.gone = els.error.textContent;
  out.gone_start_enabled = !els.start.disabled;
  out.revoked = revoked;
  process.stdout.write(JSON.stringify(out));
  process.exit(0);
})().catch((err) => { console.error(err); process.exit(1); });
"""
