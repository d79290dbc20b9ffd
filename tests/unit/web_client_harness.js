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
  const call = { url, method: opts.method || 'GET', body: opts.body, at: now,
    auth: (opts.headers || {}).Authorization ?? null };
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
const resumePosts = () => calls.filter((c) => c.url === '/v1/sessions' && JSON.parse(c.body).resume)
  .map((c) => ({ resume: JSON.parse(c.body).resume, auth: c.auth, at: c.at }));
const pongLast = (ch) => ch.message({ type: 'pong',
  t: ch.sent.filter((m) => m.type === 'ping').at(-1).t });
const ANSWER = { type: 'answer', sdp: 'v=0 answer' };
const LOST = 'the renderer of this session stopped (POST /v1/sessions with {"resume": <this id>} '
  + 'continues the conversation)';
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
        : reply(201, { session_id: 's1', token: 'tok-s1', persona: 'clinic', greeting: 'Hello, how can I help?',
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
      return reply(201, { session_id: 's2', token: 'tok-s2', persona: 'clinic', greeting: '', ice_servers: [] });
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
  respond = (c) => (c.url === '/v1/sessions' ? reply(201, { session_id: 's3', token: 'tok-s3', greeting: '' })
    : new Promise(() => {}));
  els.start.dispatch('click');
  await settle();
  out.no_rtc = { offers: offers().length - offersBefore, events_url: streams.at(-1).url };
  els.stop.dispatch('click');
  await settle();
  ctx.RTCPeerConnection = RTCPeerConnection;

  // 13. A peer that never connects: plain HTTP after the connect timeout.
  respond = (c) => (c.url === '/v1/sessions' ? reply(201, { session_id: 's5', token: 'tok-s5', greeting: '' })
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
  respond = (c) => (c.url === '/v1/sessions' ? reply(201, { session_id: 's4', token: 'tok-s4', greeting: '' })
    : c.url.endsWith('/offer') ? reply(404, { error: 'session s4 is unknown' })
      : reply(202, {}));
  els.start.dispatch('click');
  await settle();
  pcs.at(-1).gatherDone();
  await settle();
  out.gone = els.error.textContent;
  out.gone_start_enabled = !els.start.disabled;
  out.gone_resumes = resumePosts().length;

  // 15. The renderer died: the re-offer after a lost peer answers 410. A new session (resume,
  // with the old token) continues the conversation and the peer is offered to it.
  const rs = {};
  let renderer6Dead = false;
  const resumeIds = ['s7', 's8'];
  const infoStatus = {};
  respond = (c) => {
    if (c.url === '/v1/sessions') {
      const body = JSON.parse(c.body);
      if (!body.resume) return reply(201, { session_id: 's6', token: 'tok-s6', persona: 'clinic',
        greeting: 'Hello!', ice_servers: [] });
      const id = resumeIds.shift();
      return reply(201, { session_id: id, token: `tok-${id}`, persona: 'clinic', history_turns: 2,
        resumed_from: body.resume, ice_servers: [{ urls: ['stun:b.example.org:3478'] }] });
    }
    if (c.url === '/v1/sessions/s6/offer' && renderer6Dead) return reply(410, { error: LOST });
    if (c.url.endsWith('/offer')) return reply(200, ANSWER);
    const info = infoStatus[c.url];
    if (c.method === 'GET' && info) return reply(info, info === 200 ? { state: 'listening' }
      : { error: LOST });
    return reply(202, {});
  };
  els.start.dispatch('click');
  await settle();
  const p6 = pcs.at(-1);
  p6.gatherDone();
  await settle();
  p6.setState('connected');
  p6.channels[0].open();
  p6.channels[0].message({ type: 'text_delta', text: 'We open at', pts_ms: 1 });
  renderer6Dead = true;
  p6.setState('failed');
  await advance(3100);  // the watchdog re-offers: 410
  pcs.at(-1).gatherDone();
  await settle();
  rs.resume_posts = resumePosts();
  rs.resume_body = JSON.parse(calls.findLast((c) => c.url === '/v1/sessions').body);
  rs.status_resumed = els.status.textContent;
  const p7 = pcs.at(-1);
  rs.ice_servers = p7.config.iceServers;
  p7.gatherDone();
  await settle();
  rs.offers = offers().filter((c) => /\/s[67]\//.test(c.url)).map((c) => [c.url, c.auth]);
  p7.setState('connected');
  rs.status_connected = els.status.textContent;
  const note = els.chat.children.at(-1);
  rs.note = [note.className, note.children.map((c) => c.textContent).join(' ')];
  rs.cut_reply = [...els.chat.children.at(-2).classList.set];
  rs.debug = { session_id: ctx.window.avatarDebug.session_id,
    resumes: ctx.window.avatarDebug.resumes };
  rs.deletes = calls.filter((c) => c.method === 'DELETE' && c.url.includes('/s6')).length;
  rs.error = els.error.hidden ? null : els.error.textContent;
  await submit('Are you still there?');  // the new peer's channel is not open yet: HTTP
  rs.text_url = calls.filter((c) => c.url.endsWith('/text')).at(-1).url;
  out.resume_offer = rs;

  // 16. Liveness: pings every second; no pong for 3 s asks for the session's info. 200: the
  // renderer lives (nothing happens); 410: resume.
  const lv = {};
  const ch7 = p7.channels[0];
  ch7.open();
  for (let i = 0; i < 3; i++) {
    await advance(1000);
    pongLast(ch7);
  }
  lv.pings_in_3s = ch7.sent.filter((m) => m.type === 'ping').length;
  infoStatus['/v1/sessions/s7'] = 200;
  const quietFrom = now;
  await advance(2900);
  lv.info_gets_before_3s = calls.filter((c) => c.url === '/v1/sessions/s7' && c.method === 'GET'
    && c.at > quietFrom).length;
  await advance(2100);
  lv.info_gets_alive = calls.filter((c) => c.url === '/v1/sessions/s7' && c.method === 'GET'
    && c.at > quietFrom).map((c) => c.at - quietFrom);
  lv.resumes_alive = resumePosts().length - rs.resume_posts.length;
  lv.status_alive = els.status.textContent;
  pongLast(ch7);
  const lastPong = now;
  infoStatus['/v1/sessions/s7'] = 410;
  await advance(6000);
  const lost = resumePosts().slice(rs.resume_posts.length);
  lv.resumes_dead = lost.map((r) => ({ resume: r.resume, auth: r.auth }));
  lv.detected_after_ms = lost.length ? lost[0].at - lastPong : null;
  lv.session_id = ctx.window.avatarDebug.session_id;
  lv.old_pc_closed = p7.closed;
  out.liveness = lv;
  respond = () => reply(204, null);
  els.stop.dispatch('click');
  await settle();
  out.liveness.stop_delete = [calls.findLast((c) => c.method === 'DELETE').url,
    calls.findLast((c) => c.method === 'DELETE').auth];

  // 17. Plain HTTP: the event stream's last event is an error with status 410. The first resume
  // meets a full cluster (503): a countdown, then the same resume again; then a new stream.
  // Later the frames of the new session answer 410: resumed again.
  const hr = {};
  let resumeTries = 0;
  let frames11Gone = false;
  respond = (c) => {
    if (c.url === '/v1/sessions') {
      const from = JSON.parse(c.body).resume;
      if (!from) return reply(201, { session_id: 's10', token: 'tok-s10', persona: 'clinic',
        greeting: '' });
      if (++resumeTries === 1) return reply(503, { error: 'full' }, { 'Retry-After': '2' });
      const id = from === 's10' ? 's11' : 's12';
      return reply(201, { session_id: id, token: `tok-${id}`, persona: 'clinic',
        history_turns: 4, resumed_from: from });
    }
    if (c.url.endsWith('/offer')) return reply(500, { error: 'no media here' });
    if (c.url.startsWith('/v1/sessions/s11/frame.jpg') && frames11Gone) {
      return reply(410, { error: LOST });
    }
    return reply(200, {});
  };
  const resumedBefore = resumePosts().length;
  els.start.dispatch('click');
  await settle();
  pcs.at(-1).gatherDone();
  await settle();
  const es10 = streams.at(-1);
  await advance(300);
  es10.emit('error', { message: LOST, status: 410 });
  await settle();
  hr.status_busy = els.status.textContent;
  await advance(1000);
  hr.frames_while_resuming = calls.filter((c) => c.url.includes('/s10/frame.jpg')
    && c.at > now - 900).length;
  await advance(1100);
  hr.resume_posts = resumePosts().slice(resumedBefore).map((r) => ({ resume: r.resume,
    auth: r.auth }));
  hr.old_stream_closed = es10.readyState === 2;
  hr.events_url = streams.at(-1).url;
  await advance(300);
  hr.frames_new = calls.filter((c) => c.url.includes('/s11/frame.jpg')).length;
  hr.mode = ctx.window.avatarDebug.mode;
  hr.session_id = ctx.window.avatarDebug.session_id;
  hr.offers_new = offers().filter((c) => c.url.includes('/s11/')).length;
  hr.error = els.error.hidden ? null : els.error.textContent;
  es10.emit('text_delta', { text: 'from the old stream', pts_ms: 1 });
  hr.old_stream_ignored = !texts('avatar').includes('from the old stream');
  frames11Gone = true;
  await advance(200);
  hr.frame_resumes = resumePosts().slice(resumedBefore + 2).map((r) => ({ resume: r.resume,
    auth: r.auth }));
  hr.events_url_after_frames = streams.at(-1).url;
  out.resume_http = hr;
  respond = () => reply(204, null);
  els.stop.dispatch('click');
  await settle();

  // 18. A typed text and a barge-in both answer 410 (one loss: one resume); the resume is
  // refused (403): the page ends with the server's message.
  const rf = {};
  let refuse = null;
  respond = (c) => {
    if (c.url === '/v1/sessions') {
      if (!JSON.parse(c.body).resume) return reply(201, { session_id: 's14', token: 'tok-s14',
        persona: 'clinic', greeting: '' });
      return new Promise((ok) => {
        refuse = () => ok(reply(403, { error: 'this token does not belong to session s14' }));
      });
    }
    if (c.url.endsWith('/offer')) return reply(200, ANSWER);
    if (/\/(text|interrupt)$/.test(c.url)) return reply(410, { error: LOST });
    return reply(202, {});
  };
  els.start.dispatch('click');
  await settle();
  const p14 = pcs.at(-1);
  p14.gatherDone();
  await settle();
  p14.setState('connected');
  els['text-input'].value = 'Hello?';  // the channel never opened: text and barge-in over HTTP
  els['text-form'].dispatch('submit', { preventDefault() {} });
  els.interrupt.dispatch('click');  // both answer 410: one resume
  await settle();
  rf.gone_calls = calls.filter((c) => /s14\/(text|interrupt)$/.test(c.url)).length;
  rf.resume_posts = resumePosts().filter((r) => r.resume === 's14').length;
  rf.status_resuming = els.status.textContent;
  refuse();
  await settle();
  rf.error = els.error.textContent;
  rf.start_enabled = !els.start.disabled;
  rf.session_id = ctx.window.avatarDebug.session_id;
  rf.pc_closed = p14.closed;
  out.resume_refused = rf;

  // 19. Renderers that keep dying: MAX_RESUMES (3) resumes in a row, then the page gives up.
  let nextId = 20;
  respond = (c) => {
    if (c.url === '/v1/sessions') {
      const id = `s${nextId++}`;
      return reply(201, { session_id: id, token: `tok-${id}`, persona: 'clinic', greeting: '' });
    }
    if (c.url.endsWith('/offer')) return reply(410, { error: LOST });
    return reply(202, {});
  };
  const resumesBefore = resumePosts().length;
  els.start.dispatch('click');
  await settle();
  for (let i = 0; i < 6; i++) {
    pcs.at(-1).gatherDone();
    await settle();
  }
  out.resume_limit = { resumes: resumePosts().slice(resumesBefore).map((r) => r.resume),
    error: els.error.textContent, session_id: ctx.window.avatarDebug.session_id };
  // Every call on a session carries that session's token.
  out.session_calls = calls.filter((c) => c.url.startsWith('/v1/sessions/')).length;
  out.without_token = calls.filter((c) => c.url.startsWith('/v1/sessions/')
    && c.auth !== `Bearer tok-${c.url.split('/')[3]}`).map((c) => `${c.method} ${c.url}`);
  process.stdout.write(JSON.stringify(out));
  process.exit(0);
})().catch((err) => { console.error(err); process.exit(1); });
