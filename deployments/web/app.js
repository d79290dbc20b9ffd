// Web client for one avatar session. Start creates the session over HTTP, then offers a WebRTC
// peer connection to the session's renderer: the avatar's face and voice arrive as video and
// audio tracks (kept in sync by RTP/RTCP on the session's media clock), the microphone goes up
// as an audio track, and typed text, barge-in and the session's events travel on a data channel.
// Without RTCPeerConnection, or when the offer fails, the page falls back to plain HTTP: the
// Server-Sent-Events stream, a polled frame.jpg and Web Audio playback (typed text only).
// No framework, no build step, no network but the Gateway.

const API = '/v1/sessions';
const GATHER_TIMEOUT_MS = 5000;    // offer what was gathered by then (aiortc has no trickle ICE)
const RECONNECT_AFTER_MS = 3000;   // a peer disconnected or failed this long is replaced
const CONNECT_TIMEOUT_MS = 10000;  // a new peer not connected by then is replaced too
const MAX_RECONNECTS = 5;          // in a row; then the page gives up and says so
const MAX_RESUMES = 3;             // new sessions after renderer losses, in a row without media
const PING_EVERY_MS = 1000;        // data-channel round trip (HUD) and the renderer's liveness
const PONG_TIMEOUT_MS = 3000;      // no pong this long: ask the Gateway whether the session lives
const ENERGY_POLL_MS = 100;        // Send -> first audio: how often inbound audio is checked
const ENERGY_STEP = 1e-4;          // growth of totalAudioEnergy that counts as sound
const CAPTION_CHARS_PER_S = 15;    // clauses arrive ahead of their audio: pace them by length
const FRAME_INTERVAL_MS = 75;      // fallback: ~13 fps frame polling
const PLAYOUT_LEAD_S = 0.05;       // fallback: scheduling margin for the first chunk after a gap
const DEFAULT_RETRY_S = 5;         // when a 503 has no usable Retry-After
const DEBUG_EVENTS = 200;          // events kept in window.avatarDebug
const JSON_HEADERS = { 'Content-Type': 'application/json' };
// `?mic=raw` asks for the microphone without echo cancellation, noise suppression and gain
// control (for test rigs whose fake microphone those would attenuate).
const RAW_MIC = new URLSearchParams(window.location?.search || '').get('mic') === 'raw';

const $ = (id) => document.getElementById(id);
const ui = {
  start: $('start'), stop: $('stop'), interrupt: $('interrupt'), persona: $('persona'),
  status: $('status'), error: $('error'), video: $('video'), audio: $('audio'),
  avatar: $('avatar'), caption: $('caption'), transcript: $('transcript'), chat: $('chat'),
  state: $('state'), form: $('text-form'), text: $('text-input'), send: $('send'), mic: $('mic'),
  hudFirst: $('hud-first-audio'), hudFirstLabel: $('hud-first-audio-label'),
  hudRetrieval: $('hud-retrieval'), hudLlm: $('hud-llm'), hudClient: $('hud-client'),
  hudRtt: $('hud-rtt'),
};

// The live session: {id, base, token, auth, persona, label, iceServers, mode: 'webrtc'|'http',
// pc, channel, mic, watch, retries, peers, connected, ping, lastPong, probedAt, probing, events,
// frames, resuming}. Callbacks holding an older session or peer end by themselves. A resume
// (the renderer died) updates the object in place: id, base, token and auth change.
let session = null;
let resumes = 0;         // sessions resumed after a renderer loss, on this page
let resumesInRow = 0;    // ... since media last connected; MAX_RESUMES then the page gives up
let attempt = 0;         // bumped by Stop so that a Start still in flight is abandoned
let retryTimer = null;   // the 503 countdown
let micWanted = false;   // the Mic toggle; applies at Start or re-offers a live peer
let typedEcho = null;    // typed text the server will echo back as a final transcript
let replyItem = null;    // the chat entry of the avatar reply growing with text_delta
let lastReply = null;    // {item, turnId} of the last finished reply (it may still be playing)
let sendAt = null;       // {ms, after, watching}: the last Send, for the HUD
let captionFreeAt = 0;   // when the caption queue is free again (performance.now() ms)
const recent = [];       // the last DEBUG_EVENTS events, for window.avatarDebug
const clauses = new Map();  // fallback: clause index -> text, captioned when its audio starts
const player = {
  ctx: null, playhead: 0, sources: new Set(), timers: new Set(), dropUpTo: 0, lastTurn: 0,
};

// ------------------------------------------------------------------------------ UI helpers
const setStatus = (text) => { ui.status.textContent = text; };
const squash = (s) => String(s ?? '').replace(/\s+/g, ' ').trim();
const showError = (text) => Object.assign(ui.error, { textContent: text, hidden: !text });
const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

function setConnected(on) {
  ui.start.disabled = on;
  ui.stop.disabled = !on;
  ui.persona.disabled = on;
  for (const el of [ui.text, ui.send, ui.interrupt]) el.disabled = !on;
}

function setMicButton(on) {
  ui.mic.setAttribute('aria-pressed', String(on));
  ui.mic.textContent = on ? 'Mic on' : 'Mic off';
}

function setState(state) {
  ui.state.textContent = ui.state.dataset.state = state;
}

// Appends a chat entry ("user" or "avatar"); returns it so a reply can keep growing.
function addChat(who, text) {
  const el = (tag, cls, content) => Object.assign(document.createElement(tag), {
    className: cls, textContent: content });
  const li = el('li', who, '');
  li.append(el('span', 'who', who === 'user' ? 'You' : 'Avatar'), el('span', 'text', text));
  ui.chat.append(li);
  li.scrollIntoView?.({ block: 'end' });
  return li;
}

// The `{"error": msg}` of a failed response, else its HTTP status.
async function errorText(res) {
  try {
    const body = await res.json();
    if (body && body.error) return String(body.error);
  } catch { /* not JSON */ }
  return `HTTP ${res.status} ${res.statusText || ''}`.trim();
}

// 404: the session is gone for good, the page resets. 410: its renderer died, the conversation
// goes on in a new session (resume). Returns whether the status was one of those. `id` is the
// session the failed call went to: a late answer about a session already replaced or stopped
// is ignored, and so is any during a resume (one resume per loss).
function ended(status, msg, id = session?.id) {
  if (status !== 404 && status !== 410) return false;
  const s = session;
  if (!s || s.resuming || id !== s.id) return true;
  if (status === 410) {
    resume(s);
    return true;
  }
  stop({ remote: false });
  showError(`Session ended: ${msg}`);
  return true;
}

async function failed(res, what, id) {
  const msg = await errorText(res);
  if (!ended(res.status, msg, id)) showError(`${what}: ${msg}`);
}

// ------------------------------------------------------------------------------ network probe
// While the page waits for Start: round trip and interarrival jitter (RFC 3550) to this
// gateway over its /v1/probe WebSocket. They go along with the session request (placement
// across regions uses them) and show in the HUD until the data channel's own pings do.
const PROBES = 20;
const PROBE_EVERY_MS = 20;
const PROBE_FRESH_S = 60;
let network = null;  // {region, rtt_ms, jitter_ms, loss, measured_at_s}

const clockMs = () => (performance.timeOrigin || 0) + performance.now();

function probeGateway(region) {
  if (typeof WebSocket === 'undefined' || !window.location?.host) return Promise.resolve(null);
  const scheme = window.location.protocol === 'https:' ? 'wss' : 'ws';
  return new Promise((resolve) => {
    const rtts = [];
    let sent = 0;
    let jitter = 0;
    let transit = null;
    let timer = null;
    let ws;
    const finish = () => {
      clearInterval(timer);
      try { ws.close(); } catch { /* already closed */ }
      if (!rtts.length) return resolve(null);
      const sorted = [...rtts].sort((a, b) => a - b);
      resolve({ region, rtt_ms: sorted[Math.floor(sorted.length / 2)], jitter_ms: jitter,
        loss: Math.max(0, 1 - rtts.length / sent), measured_at_s: Date.now() / 1000 });
    };
    try {
      ws = new WebSocket(`${scheme}://${window.location.host}/v1/probe`);
    } catch {
      return resolve(null);
    }
    const deadline = setTimeout(finish, 3000);
    ws.onopen = () => {
      timer = setInterval(() => {
        if (sent >= PROBES) {
          clearInterval(timer);
          setTimeout(() => { clearTimeout(deadline); finish(); }, 300);
          return;
        }
        ws.send(JSON.stringify({ seq: sent++, t: clockMs() }));
      }, PROBE_EVERY_MS);
    };
    ws.onmessage = (message) => {
      const now = clockMs();
      let echo;
      try { echo = JSON.parse(message.data); } catch { return; }
      if (!Number.isFinite(echo.t) || !Number.isFinite(echo.ts)) return;
      rtts.push(now - echo.t);
      const t = now - echo.ts;  // downlink transit (plus a constant clock offset)
      if (transit !== null) jitter += (Math.abs(t - transit) - jitter) / 16;
      transit = t;
    };
    ws.onerror = () => { clearTimeout(deadline); finish(); };
  });
}

async function measureNetwork() {
  try {
    const res = await fetch('/readyz');
    const region = res.ok ? (await res.json()).region : null;
    if (!region) return;
    network = await probeGateway(region);
    if (network && !session) ui.hudRtt.textContent = String(Math.round(network.rtt_ms));
  } catch { /* no probe: sessions are placed without it */ }
}

const measurements = () => (network && Date.now() / 1000 - network.measured_at_s < PROBE_FRESH_S
  ? { [network.region]: { rtt_ms: network.rtt_ms, jitter_ms: network.jitter_ms,
    loss: network.loss, measured_at_s: network.measured_at_s } }
  : undefined);

// ------------------------------------------------------------------------------ session
// Start: POST /v1/sessions, then a peer connection (or the HTTP fallback).
async function start() {
  clearRetry();
  showError('');
  setStatus('Connecting…');
  ui.start.disabled = true;
  ui.stop.disabled = false;
  const mine = ++attempt;
  resumesInRow = 0;
  const persona = ui.persona.value.trim() || null;
  let res;
  try {
    res = await fetch(API, {
      method: 'POST', headers: JSON_HEADERS,
      body: JSON.stringify({ persona, video: true, measurements: measurements() }),
    });
  } catch (err) {
    if (mine === attempt) retryLater(DEFAULT_RETRY_S, `Cannot reach the server (${err.message})`);
    return;
  }
  if (mine !== attempt) return giveBack(res);  // Stop was pressed meanwhile
  if (res.status === 503) {
    const secs = parseInt(res.headers.get('Retry-After') || '', 10);
    return retryLater(secs > 0 ? secs : DEFAULT_RETRY_S, 'All avatars are busy');
  }
  if (!res.ok) {
    setConnected(false);
    setStatus('Not connected.');
    return showError(await errorText(res));
  }
  const info = await res.json();
  const s = {
    id: info.session_id, base: `${API}/${encodeURIComponent(info.session_id)}`,
    token: info.token, auth: bearer(info.token), persona,
    label: `Connected to ${info.persona || 'the avatar'}.`, iceServers: info.ice_servers || [],
    mode: 'webrtc', pc: null, channel: null, mic: null, watch: null, retries: 0, peers: 0,
    connected: false,
  };
  session = s;
  Object.assign(player, { dropUpTo: 0, playhead: 0, lastTurn: 0 });
  clauses.clear();
  typedEcho = replyItem = lastReply = sendAt = null;
  setConnected(true);
  setStatus('Connecting media…');
  if (info.greeting) addChat('avatar', info.greeting);
  if (!window.RTCPeerConnection) return startFallback(s, 'this browser has no WebRTC');
  try {
    await connectPeer(s);
  } catch (err) {
    if (session === s && !ended(err.status, err.message, err.id)) startFallback(s, err.message);
  }
}

// 503 (or no server): count down visibly, then try again (`again`: Start, or a resume); Stop
// cancels.
function retryLater(secs, why, again = start) {
  let left = secs;
  const tick = () => {
    if (left <= 0) return again();
    setStatus(`${why}, retrying in ${left} s`);
    left -= 1;
    retryTimer = setTimeout(tick, 1000);
  };
  tick();
}

const clearRetry = () => { clearTimeout(retryTimer); retryTimer = null; };

// A session created after Stop was pressed is deleted at once.
function giveBack(res) {
  if (!res.ok) return;
  res.json()
    .then((i) => deleteSession(`${API}/${encodeURIComponent(i.session_id)}`, bearer(i.token)))
    .catch(() => {});
}

const deleteSession = (base, auth) =>
  fetch(base, { method: 'DELETE', keepalive: true, headers: auth }).catch(() => {});

// Every call on a session carries the token its creation returned.
const bearer = (token) => (token ? { Authorization: `Bearer ${token}` } : {});

// Stop: close the peer (or stream), release the microphone, DELETE the session.
function stop({ remote = true } = {}) {
  clearRetry();
  attempt++;
  const s = session;
  session = null;
  stopPlayback();
  setConnected(false);
  setState('idle');
  setStatus('Stopped. Press Start to talk again.');
  if (!s) return;
  closePeer(s);
  releaseMic(s);
  clearInterval(s.ping);
  s.events?.close();
  if (remote) deleteSession(s.base, s.auth);
}

// ------------------------------------------------------------------------------ resume
// The session's renderer died (410): a new session on a live renderer continues the
// conversation (its committed history), authorized by the old session's token. Media then
// reconnect the way they ran. One resume per loss; `retry` is the same loss after a 503.
async function resume(s, retry = false) {
  if (session !== s || (s.resuming && !retry)) return;
  if (!retry && resumesInRow >= MAX_RESUMES) {
    stop({ remote: false });
    return showError('The avatar\'s server kept failing; press Start for a new session.');
  }
  if (!retry) resumesInRow += 1;
  s.resuming = true;
  clearInterval(s.ping);
  closePeer(s);
  s.events?.close();
  s.events = null;
  lostTurn();
  setState('idle');
  setStatus('The avatar\'s server stopped; resuming the conversation…');
  const again = () => resume(s, true);
  let res;
  try {
    res = await fetch(API, {
      method: 'POST', headers: { ...JSON_HEADERS, ...s.auth },
      body: JSON.stringify({ persona: s.persona ?? null, video: true, resume: s.id,
        measurements: measurements() }),
    });
  } catch (err) {
    if (session === s) {
      retryLater(DEFAULT_RETRY_S, `Cannot reach the server (${err.message})`, again);
    }
    return;
  }
  if (session !== s) return giveBack(res);  // Stop was pressed meanwhile
  if (res.status === 503) {
    const secs = parseInt(res.headers.get('Retry-After') || '', 10);
    return retryLater(secs > 0 ? secs : DEFAULT_RETRY_S, 'All avatars are busy', again);
  }
  if (!res.ok) {
    const msg = await errorText(res);
    if (session !== s) return;
    stop({ remote: false });
    return showError(`Session ended: ${msg}`);
  }
  const info = await res.json();
  if (session !== s) return;
  Object.assign(s, {
    id: info.session_id, base: `${API}/${encodeURIComponent(info.session_id)}`,
    token: info.token, auth: bearer(info.token), iceServers: info.ice_servers || s.iceServers,
    label: `Reconnected to ${info.persona || 'the avatar'}; the conversation goes on.`,
    resuming: false, connected: false, retries: 0,
  });
  resumes += 1;
  setStatus('Reconnected; the conversation goes on.');
  addNote('Reconnected; the conversation goes on.');
  if (s.mode === 'http') return openStream(s);
  try {
    await connectPeer(s);
  } catch (err) {
    if (session === s && !ended(err.status, err.message, err.id)) startFallback(s, err.message);
  }
}

// What the dead renderer was saying is cut off; the new session numbers its turns afresh.
function lostTurn() {
  stopPlayback();
  replyItem?.classList.add('interrupted');
  Object.assign(player, { dropUpTo: 0, playhead: 0, lastTurn: 0 });
  clauses.clear();
  typedEcho = replyItem = lastReply = sendAt = null;
}

// A line in the chat from the page itself (not said by either side).
function addNote(text) {
  const li = Object.assign(document.createElement('li'), { className: 'system' });
  li.append(Object.assign(document.createElement('span'),
    { className: 'text', textContent: text }));
  ui.chat.append(li);
  li.scrollIntoView?.({ block: 'end' });
}

// No pong for PONG_TIMEOUT_MS: the session's info says whether its renderer lives (410: resume;
// 200 or no answer: the peer watchdog handles what is wrong with the media).
async function checkAlive(s) {
  if (s.probing || s.resuming) return;
  s.probing = true;
  s.probedAt = performance.now();
  const id = s.id;
  try {
    const res = await fetch(s.base, { cache: 'no-store', headers: s.auth });
    if (!res.ok && session === s) ended(res.status, await errorText(res), id);
  } catch { /* no answer: nothing to conclude */ } finally {
    s.probing = false;
  }
}

// ------------------------------------------------------------------------------ WebRTC
// A new peer for session `s` (first connect, reconnect, microphone toggled): the server
// replaces the session's old peer when it answers this one's offer.
async function connectPeer(s) {
  closePeer(s);
  const pc = new RTCPeerConnection({ iceServers: s.iceServers });
  s.pc = pc;
  s.peers += 1;
  const live = () => session === s && s.pc === pc;
  pc.addEventListener('track', (ev) => { if (live()) showTrack(ev.track); });
  pc.addEventListener('connectionstatechange', () => { if (live()) peerState(s, pc); });
  const mic = micWanted ? await openMic(s) : null;
  if (!live()) {
    if (session !== s) releaseMic(s);  // stopped while the browser asked for the microphone
    return;
  }
  if (mic) for (const track of mic.getAudioTracks()) pc.addTrack(track, mic);
  else pc.addTransceiver('audio', { direction: 'recvonly' });
  pc.addTransceiver('video', { direction: 'recvonly' });
  openChannel(s, pc, pc.createDataChannel('events'));
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc, GATHER_TIMEOUT_MS);
  if (!live()) return;
  const id = s.id;
  const res = await fetch(`${s.base}/offer`, {
    method: 'POST', headers: { ...JSON_HEADERS, ...s.auth },
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
  });
  if (!res.ok) throw Object.assign(new Error(await errorText(res)), { status: res.status, id });
  const answer = await res.json();
  if (!live()) return;
  await pc.setRemoteDescription(answer);
  watch(s, pc, CONNECT_TIMEOUT_MS);
}

// Resolves when ICE gathering is complete (or after `ms`): the offer must carry every candidate.
function gathered(pc, ms) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((ok) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', onState);
      pc.removeEventListener('icecandidate', onCandidate);
      ok();
    };
    const onState = () => { if (pc.iceGatheringState === 'complete') done(); };
    const onCandidate = (ev) => { if (!ev.candidate) done(); };
    const timer = setTimeout(done, ms);
    pc.addEventListener('icegatheringstatechange', onState);
    pc.addEventListener('icecandidate', onCandidate);
  });
}

function closePeer(s) {
  clearTimeout(s.watch);
  s.watch = null;
  const pc = s.pc;
  s.pc = s.channel = null;
  if (pc) try { pc.close(); } catch { /* already closed */ }
}

function showTrack(track) {
  const el = track.kind === 'video' ? ui.video : ui.audio;
  el.srcObject = new MediaStream([track]);
  el.play?.()?.catch?.(() => {});  // autoplay needs the Start click; a refusal is not fatal
}

// Connected: all good. Disconnected or failed for RECONNECT_AFTER_MS: a new peer.
function peerState(s, pc) {
  const state = pc.connectionState;
  if (state === 'connected') {
    clearTimeout(s.watch);
    s.watch = null;
    s.retries = 0;
    s.connected = true;
    resumesInRow = 0;
    setStatus(s.label);
  } else if ((state === 'disconnected' || state === 'failed') && !s.watch) {
    setStatus('Connection lost, reconnecting…');
    watch(s, pc, RECONNECT_AFTER_MS);
  }
}

// A peer that never connected falls back to plain HTTP (UDP blocked and no TURN server, say);
// one that did connect before is replaced.
function watch(s, pc, ms) {
  clearTimeout(s.watch);
  s.watch = setTimeout(() => {
    s.watch = null;
    if (session !== s || s.pc !== pc || pc.connectionState === 'connected') return;
    if (s.connected) reconnect(s);
    else startFallback(s, 'the media connection did not open');
  }, ms);
}

async function reconnect(s) {
  if (++s.retries > MAX_RECONNECTS) {
    stop();
    return showError('The media connection was lost; press Start for a new session.');
  }
  setStatus('Reconnecting media…');
  try {
    await connectPeer(s);
  } catch (err) {
    if (session !== s || ended(err.status, err.message, err.id)) return;
    setStatus(`Reconnecting failed (${err.message}), retrying…`);
    const pc = s.pc;
    s.watch = setTimeout(() => { s.watch = null; if (s.pc === pc) reconnect(s); },
      RECONNECT_AFTER_MS);
  }
}

// The client creates the data channel (the server uses it): JSON both ways. Its pings measure
// the round trip and tell within PONG_TIMEOUT_MS that the renderer stopped answering.
function openChannel(s, pc, channel) {
  s.channel = channel;
  channel.addEventListener('open', () => {
    if (session !== s || s.pc !== pc) return;
    clearInterval(s.ping);
    s.lastPong = s.probedAt = performance.now();
    const ping = () => {
      if (session !== s || s.channel !== channel || channel.readyState !== 'open') return;
      const now = performance.now();
      if (now - Math.max(s.lastPong, s.probedAt) >= PONG_TIMEOUT_MS) checkAlive(s);
      send(s, { type: 'ping', t: now });
    };
    ping();
    s.ping = setInterval(ping, PING_EVERY_MS);
  });
  channel.addEventListener('message', (ev) => {
    if (session !== s || s.pc !== pc) return;
    let msg;
    try { msg = JSON.parse(ev.data); } catch { return; }
    if (msg?.type === 'pong') s.lastPong = performance.now();
    if (msg && typeof msg.type === 'string') onEvent(msg.type, msg);
  });
}

// Sends a message on the data channel; false when it is not open (reconnecting).
function send(s, msg) {
  if (s.channel?.readyState !== 'open') return false;
  s.channel.send(JSON.stringify(msg));
  return true;
}

async function openMic(s) {
  if (s.mic?.getAudioTracks().some((t) => t.readyState === 'live')) return s.mic;
  try {
    s.mic = await navigator.mediaDevices.getUserMedia(micConstraints(RAW_MIC));
    return s.mic;
  } catch (err) {
    micWanted = false;
    setMicButton(false);
    showError(`Microphone unavailable: ${err.message}`);
    return null;
  }
}

function micConstraints(raw) {
  const dsp = !raw;
  return { audio: { channelCount: 1, echoCancellation: dsp, noiseSuppression: dsp,
    autoGainControl: dsp } };
}

function releaseMic(s) {
  for (const track of s.mic?.getTracks() || []) track.stop();
  s.mic = null;
}

// The Mic button: before Start it only sets the wish; during a session it re-offers.
async function toggleMic() {
  micWanted = !micWanted;
  setMicButton(micWanted);
  const s = session;
  if (!s) return;
  if (s.mode !== 'webrtc') {
    micWanted = false;
    setMicButton(false);
    return showError('The microphone needs WebRTC, which this connection does not have.');
  }
  if (!micWanted) releaseMic(s);
  s.retries = 0;
  await reconnect(s);
}

// Inbound media counters of the current peer (tests and the HUD read them).
async function mediaStats(pc) {
  const out = { audioEnergy: 0, audioLevel: 0, framesDecoded: 0, fps: 0,
    connection: pc ? pc.connectionState : 'none' };
  if (!pc) return out;
  (await pc.getStats()).forEach((r) => {
    if (r.type !== 'inbound-rtp') return;
    if (r.kind === 'audio') {
      out.audioEnergy += r.totalAudioEnergy || 0;
      out.audioLevel = Math.max(out.audioLevel, r.audioLevel || 0);
    } else if (r.kind === 'video') {
      out.framesDecoded += r.framesDecoded || 0;
      out.fps = Math.max(out.fps, r.framesPerSecond || 0);
    }
  });
  return out;
}

// HUD: Send -> first reply audio heard, from the inbound audio energy once a clause is near.
async function watchFirstAudio(s, mark) {
  const energy = async () => (await mediaStats(s.pc)).audioEnergy;
  const base = await energy();
  while (session === s && sendAt === mark && performance.now() - mark.ms < 30000) {
    await sleep(ENERGY_POLL_MS);
    if (sendAt === mark && (await energy()) - base > ENERGY_STEP) {
      ui.hudClient.textContent = String(Math.round(performance.now() - mark.ms));
      sendAt = null;
    }
  }
}

// ------------------------------------------------------------------------------ events
// One handler per event type, from the data channel or (fallback) the SSE stream.
const handlers = {
  transcript(d) {
    ui.transcript.textContent = d.text;
    if (!d.is_final || !squash(d.text)) return;
    // A typed turn comes back as a final transcript: it is already in the log.
    if (typedEcho !== null && squash(d.text) === typedEcho) { typedEcho = null; return; }
    addChat('user', d.text);
  },
  text_delta(d) {
    replyItem ??= addChat('avatar', '');
    replyItem.querySelector('.text').textContent += d.text;
  },
  clause(d) {
    if (session?.mode === 'http') return clauses.set(d.index, d.text);
    queueCaption(d.text);
    if (sendAt && !sendAt.watching) {
      sendAt.watching = true;
      watchFirstAudio(session, sendAt);
    }
  },
  state(d) { setState(d.state); },
  audio(d) { playChunk(d); },
  interrupt(d) {
    dropTurn(d.turn_id);  // barge-in: silence now
    // The reply may be fully generated and still playing out: mark that one then.
    const item = replyItem ?? (lastReply?.turnId === d.turn_id ? lastReply.item : null);
    item?.classList.add('interrupted');
  },
  turn_end(d) {
    if (d.reply) {  // what was actually said (and kept in the conversation's history)
      replyItem ??= addChat('avatar', '');
      replyItem.querySelector('.text').textContent = d.reply;
    }
    if (d.refused) replyItem?.classList.add('refused');
    if (d.interrupted) replyItem?.classList.add('interrupted');
    lastReply = replyItem ? { item: replyItem, turnId: d.turn_id } : null;
    replyItem = null;
    showMarks(d.marks_ms || {});
    const left = player.ctx ? (player.playhead - player.ctx.currentTime) * 1000 : 0;
    const ahead = Math.max(left, captionFreeAt - performance.now());
    later(Math.max(0, ahead), () => { ui.caption.textContent = ''; });  // once it was said
  },
  error(d) { showError(d.message); },
  pong(d) {
    if (Number.isFinite(d.t)) ui.hudRtt.textContent = String(Math.round(performance.now() - d.t));
  },
  closed() {
    stop({ remote: false });
    showError('The session ended; press Start for a new one.');
  },
};

function onEvent(type, data) {
  recent.push({ ...data, type });
  if (recent.length > DEBUG_EVENTS) recent.splice(0, recent.length - DEBUG_EVENTS);
  const handle = handlers[type];
  if (!handle) return;
  try { handle(data); } catch (err) { console.error(type, err); }
}

// The data channel runs ahead of the audio (speech is synthesized faster than real time), so
// each clause is captioned after the previous one had time to be spoken (estimated by length).
function queueCaption(text) {
  const now = performance.now();
  const at = Math.max(now, captionFreeAt);
  captionFreeAt = at + (1000 * text.length) / CAPTION_CHARS_PER_S;
  later(at - now, () => { ui.caption.textContent = text; });
}

// HUD: the latest turn's server marks (ms on the session's media clock), as durations.
function showMarks(m) {
  const diff = (a, b) => (m[a] != null && m[b] != null ? String(Math.round(m[a] - m[b])) : '–');
  const voice = m.speech_end != null;
  ui.hudFirstLabel.textContent = voice ? 'voice to first audio' : 'text to first audio';
  ui.hudFirst.textContent = diff('tts_first_audio', voice ? 'speech_end' : 'asr_final');
  ui.hudRetrieval.textContent = diff('retrieval_done', 'asr_final');
  ui.hudLlm.textContent = diff('llm_first_token', 'asr_final');
}

// ------------------------------------------------------------------------------ text, barge-in
async function sendText(ev) {
  ev.preventDefault();
  const text = ui.text.value.trim();
  const s = session;
  if (!text || !s) return;
  ui.text.value = '';
  addChat('user', text);
  typedEcho = squash(text);
  sendAt = { ms: performance.now(), after: player.lastTurn, watching: false };
  ui.hudClient.textContent = '…';
  if (send(s, { type: 'text', text })) return;
  try {  // no open data channel (fallback, or a peer being replaced): plain HTTP
    const id = s.id;
    const res = await fetch(`${s.base}/text`, {
      method: 'POST', headers: { ...JSON_HEADERS, ...s.auth }, body: JSON.stringify({ text }),
    });
    if (!res.ok) {
      typedEcho = sendAt = null;
      await failed(res, 'Sending text failed', id);
    }
  } catch (err) {
    showError(`Sending text failed: ${err.message}`);
  }
}

function interrupt() {
  const s = session;
  if (!s || send(s, { type: 'interrupt' })) return;
  const id = s.id;
  fetch(`${s.base}/interrupt`, { method: 'POST', headers: s.auth })
    .then(async (res) => { if (!res.ok) ended(res.status, await errorText(res), id); })
    .catch(() => {});
}

// ------------------------------------------------------------------------------ fallback
// Plain HTTP: events over SSE, the face as polled JPEGs, the voice scheduled with Web Audio.
function startFallback(s, why) {
  closePeer(s);
  releaseMic(s);
  s.mode = 'http';
  micWanted = false;
  setMicButton(false);
  ui.video.hidden = true;
  ui.avatar.hidden = false;
  setStatus(`${s.label} (without WebRTC: ${why})`);
  ensureAudio();
  openStream(s);
}

// The fallback's event stream and frame loop for the session's current id (again after a resume).
function openStream(s) {
  s.events?.close();
  const id = s.id;
  // EventSource cannot send headers: the token goes in the query.
  const es = new EventSource(`${s.base}/events?token=${encodeURIComponent(s.token || '')}`);
  s.events = es;
  const live = () => session === s && s.events === es;
  es.onopen = () => {  // also after a reconnect
    if (!live()) return;
    resumesInRow = 0;
    setStatus(s.label);
  };
  for (const type of Object.keys(handlers)) {
    es.addEventListener(type, (ev) => {
      if (!live()) return;
      // `error` is also EventSource's own connection-error event, which carries no data.
      if (type === 'error' && ev.data === undefined) return streamError(s, es);
      let data;
      try { data = JSON.parse(ev.data); } catch (err) { return console.error(type, err); }
      // The stream's last event when the session is lost: 410 resumes, 404 ends.
      if (type === 'error' && ended(data?.status, data?.message, id)) return;
      onEvent(type, data);
    });
  }
  s.frames = (s.frames || 0) + 1;
  frameLoop(s, s.frames);
}

// A stream that EventSource gave up on (it hides the refusal's status): the session's info
// tells a dead renderer (410: resume) from a session that is gone.
async function streamError(s, es) {
  if (es.readyState !== EventSource.CLOSED) return setStatus('Connection lost, reconnecting…');
  const id = s.id;
  const live = () => session === s && s.events === es;
  try {
    const res = await fetch(s.base, { cache: 'no-store', headers: s.auth });
    if (live() && !res.ok && ended(res.status, await errorText(res), id)) return;
  } catch { /* no answer: the stream is over */ }
  if (!live()) return;
  stop({ remote: false });
  showError('The event stream closed; press Start to open a new session.');
}

// Polls frame.jpg one request at a time; each frame's object URL is revoked when replaced. A
// newer loop (`run`, after a resume) replaces this one; none polls while a resume is under way.
async function frameLoop(s, run = s.frames) {
  let shown = null;
  while (session === s && s.frames === run) {
    const began = performance.now();
    if (!document.hidden && !s.resuming) {
      const id = s.id;
      try {
        const res = await fetch(`${s.base}/frame.jpg`, { cache: 'no-store', headers: s.auth });
        if (res.ok) {
          const url = URL.createObjectURL(await res.blob());
          if (session !== s || s.frames !== run) { URL.revokeObjectURL(url); break; }
          ui.avatar.src = url;
          if (shown) URL.revokeObjectURL(shown);
          shown = url;
        } else if (session === s && (res.status === 404 || res.status === 410)) {
          await failed(res, 'Video', id);
        }
      } catch { /* a transient network error: try the next frame */ }
    }
    await sleep(Math.max(0, FRAME_INTERVAL_MS - (performance.now() - began)));
  }
}

function ensureAudio() {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!player.ctx && Ctx) player.ctx = new Ctx();
  if (player.ctx?.state === 'suspended') player.ctx.resume();
  return player.ctx;
}

// base64 PCM16 little-endian mono -> Float32 samples in [-1, 1).
function decodePcm16(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const pcm = new Int16Array(bytes.buffer, 0, bytes.length >> 1);  // browsers are little-endian
  return Float32Array.from(pcm, (v) => v / 32768);
}

// Schedules one `audio` event right after the previous one: gapless while chunks keep up.
function playChunk(d) {
  if (d.turn_id <= player.dropUpTo) return;  // late audio of an interrupted turn
  const ctx = ensureAudio();
  const caption = clauses.get(d.clause_index);
  const samples = decodePcm16(d.pcm16_b64);
  if (!ctx || !samples.length) {
    if (caption !== undefined) ui.caption.textContent = caption;
    return;
  }
  const buf = ctx.createBuffer(1, samples.length, d.sample_rate_hz);
  buf.getChannelData(0).set(samples);
  const src = ctx.createBufferSource();
  src.buffer = buf;
  src.connect(ctx.destination);
  const at = Math.max(player.playhead, ctx.currentTime + PLAYOUT_LEAD_S);
  src.start(at);
  player.playhead = at + buf.duration;
  player.sources.add(src);
  src.onended = () => player.sources.delete(src);
  const delayMs = (at - ctx.currentTime) * 1000;
  if (caption !== undefined) later(delayMs, () => { ui.caption.textContent = caption; });
  if (sendAt !== null && d.turn_id > sendAt.after) {  // client-side Send -> first audio heard
    ui.hudClient.textContent = String(Math.round(performance.now() + delayMs - sendAt.ms));
    sendAt = null;
  }
  player.lastTurn = Math.max(player.lastTurn, d.turn_id);
}

// A timer that barge-in cancels together with the audio and captions it belongs to.
function later(ms, fn) {
  const t = setTimeout(() => { player.timers.delete(t); fn(); }, ms);
  player.timers.add(t);
}

// Barge-in: stop what is scheduled and ignore audio of this turn (or older) still in flight.
function dropTurn(turnId) {
  if (Number.isFinite(turnId)) player.dropUpTo = Math.max(player.dropUpTo, turnId);
  stopPlayback();
}

function stopPlayback() {
  for (const src of player.sources) { try { src.stop(); } catch { /* not started */ } }
  for (const t of player.timers) clearTimeout(t);
  player.sources.clear();
  player.timers.clear();
  player.playhead = 0;
  captionFreeAt = 0;
  ui.caption.textContent = '';
}

// ------------------------------------------------------------------------------ wiring
ui.start.addEventListener('click', () => start());
ui.stop.addEventListener('click', () => stop());
ui.interrupt.addEventListener('click', () => interrupt());
ui.form.addEventListener('submit', sendText);  // Enter in the text box submits the form
ui.mic.addEventListener('click', () => toggleMic());
window.addEventListener('pagehide', () => { if (session) stop(); });
measureNetwork();

// For diagnostics and browser tests; reads only.
window.avatarDebug = {
  get state() { return ui.state.dataset.state; },
  get session_id() { return session?.id ?? null; },
  get mode() { return session?.mode ?? null; },
  get peers() { return session?.peers ?? 0; },  // peer connections made for this session
  get resumes() { return resumes; },  // sessions resumed after a renderer loss on this page
  events: recent,
  get network() { return network; },  // the probe of this gateway (null until measured)
  stats: () => mediaStats(session?.pc ?? null),
};
