// Web client for one avatar session over the Gateway's plain HTTP API.
// Text and microphone audio go up by POST; everything comes back over one Server-Sent-Events
// stream; the face is a polled frame.jpg. No framework, no build step, no network but the Gateway.

const API = '/v1/sessions';
const MIC_RATE_HZ = 16000;        // what the page sends to /audio
const MIC_CHUNK_SAMPLES = 1600;   // 100 ms at 16 kHz
const MIC_QUEUE_MAX = 50;         // 5 s of unsent audio before the oldest chunk is dropped
const FRAME_INTERVAL_MS = 75;     // ~13 fps frame polling
const PLAYOUT_LEAD_S = 0.05;      // scheduling margin for the first chunk after a gap
const DEFAULT_RETRY_S = 5;        // when a 503 has no usable Retry-After

const $ = (id) => document.getElementById(id);
const ui = {
  start: $('start'), stop: $('stop'), persona: $('persona'), status: $('status'), error: $('error'),
  avatar: $('avatar'), caption: $('caption'), transcript: $('transcript'), chat: $('chat'),
  state: $('state'), form: $('text-form'), text: $('text-input'), send: $('send'), mic: $('mic'),
  hudFirst: $('hud-first-audio'), hudFirstLabel: $('hud-first-audio-label'),
  hudRetrieval: $('hud-retrieval'), hudLlm: $('hud-llm'), hudClient: $('hud-client'),
};

let session = null;      // {base, events, label} of the live session; loops holding an older
                         // one end by themselves
let attempt = 0;         // bumped by Stop so that a Start still in flight is abandoned
let retryTimer = null;   // the 503 countdown
let typedEcho = null;    // typed text the server will echo back as a final transcript
let replyItem = null;    // the chat entry of the avatar reply growing with text_delta
let sendAt = null;       // {ms, after}: time of the last Send and the newest turn heard then
let micState = null;     // {stream, nodes, down, pending, queue, sending} while the mic is on
const clauses = new Map();  // clause index -> text, captioned when its audio starts
const player = {
  ctx: null, playhead: 0, sources: new Set(), timers: new Set(), dropUpTo: 0, lastTurn: 0,
};

// ------------------------------------------------------------------------------ UI helpers
const setStatus = (text) => { ui.status.textContent = text; };
const squash = (s) => String(s ?? '').replace(/\s+/g, ' ').trim();
const showError = (text) => Object.assign(ui.error, { textContent: text, hidden: !text });

function setConnected(on) {
  ui.start.disabled = on;
  ui.stop.disabled = !on;
  ui.persona.disabled = on;
  for (const el of [ui.text, ui.send, ui.mic]) el.disabled = !on;
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

// A failed call on the session: 404/410 mean the session is gone; other errors are shown.
async function failed(res, what) {
  const msg = await errorText(res);
  if (res.status === 404 || res.status === 410) stop({ remote: false });
  showError(res.status === 404 || res.status === 410 ? `Session ended: ${msg}` : `${what}: ${msg}`);
}

// ------------------------------------------------------------------------------ session
// Start: POST /v1/sessions, then open the event stream and the frame loop.
async function start() {
  clearRetry();
  showError('');
  setStatus('Connecting…');
  ensureAudio();  // created inside the click, so the browser lets it play
  ui.start.disabled = true;
  ui.stop.disabled = false;
  const mine = ++attempt;
  const persona = ui.persona.value.trim() || null;
  let res;
  try {
    res = await fetch(API, {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ persona, video: true }),
    });
  } catch (err) {
    if (mine === attempt) retryLater(DEFAULT_RETRY_S, `Cannot reach the server (${err.message})`);
    return;
  }
  if (mine !== attempt) {  // Stop was pressed meanwhile: give back a session we got anyway
    if (res.ok) {
      res.json().then((i) => deleteSession(`${API}/${encodeURIComponent(i.session_id)}`))
        .catch(() => {});
    }
    return;
  }
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
  const label = `Connected to ${info.persona || 'the avatar'}.`;
  session = { base: `${API}/${encodeURIComponent(info.session_id)}`, events: null, label };
  Object.assign(player, { dropUpTo: 0, playhead: 0, lastTurn: 0 });
  clauses.clear();
  typedEcho = replyItem = sendAt = null;
  setConnected(true);
  setStatus(label);
  if (info.greeting) addChat('avatar', info.greeting);
  openEvents(session);
  frameLoop(session);
}

// 503 (or no server): count down visibly, then try again; Stop cancels.
function retryLater(secs, why) {
  let left = secs;
  const tick = () => {
    if (left <= 0) return start();
    setStatus(`${why}, retrying in ${left} s`);
    left -= 1;
    retryTimer = setTimeout(tick, 1000);
  };
  tick();
}

const clearRetry = () => { clearTimeout(retryTimer); retryTimer = null; };

const deleteSession = (base) =>
  fetch(base, { method: 'DELETE', keepalive: true }).catch(() => {});

// Stop: close the stream, end loops, mic and sound, and DELETE the session on the server.
function stop({ remote = true } = {}) {
  clearRetry();
  attempt++;
  const s = session;
  session = null;
  stopMic();
  stopPlayback();
  setConnected(false);
  setState('idle');
  setStatus('Stopped. Press Start to talk again.');
  if (!s) return;
  s.events?.close();
  if (remote) deleteSession(s.base);
}

// ------------------------------------------------------------------------------ events
// One handler per SSE event type of the Gateway (`event: <type>` + `data: <json>`).
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
  clause(d) { clauses.set(d.index, d.text); },
  state(d) { setState(d.state); },
  audio(d) { playChunk(d); },
  interrupt(d) {
    dropTurn(d.turn_id);  // barge-in: silence now
    replyItem?.classList.add('interrupted');
  },
  turn_end(d) {
    if (d.reply) {  // what was actually said (and kept in the conversation's history)
      replyItem ??= addChat('avatar', '');
      replyItem.querySelector('.text').textContent = d.reply;
    }
    if (d.refused) replyItem?.classList.add('refused');
    if (d.interrupted) replyItem?.classList.add('interrupted');
    replyItem = null;
    showMarks(d.marks_ms || {});
    const left = player.ctx ? (player.playhead - player.ctx.currentTime) * 1000 : 0;
    later(Math.max(0, left), () => { ui.caption.textContent = ''; });  // once it has been said
  },
  error(d) { showError(d.message); },
};

function openEvents(s) {
  const es = new EventSource(`${s.base}/events`);
  s.events = es;
  es.onopen = () => { if (session === s) setStatus(s.label); };  // also after a reconnect
  for (const [type, handle] of Object.entries(handlers)) {
    es.addEventListener(type, (ev) => {
      if (session !== s) return;
      // `error` is also EventSource's own connection-error event, which carries no data.
      if (type === 'error' && ev.data === undefined) return connectionError(es);
      try { handle(JSON.parse(ev.data)); } catch (err) { console.error(type, err); }
    });
  }
}

function connectionError(es) {
  if (es.readyState !== EventSource.CLOSED) return setStatus('Connection lost, reconnecting…');
  stop({ remote: false });
  showError('The event stream closed; press Start to open a new session.');
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

// ------------------------------------------------------------------------------ avatar frames
// Polls frame.jpg one request at a time at ~13 fps; each frame gets an object URL and the
// previous one is revoked, so memory stays flat.
async function frameLoop(s) {
  let shown = null;
  while (session === s) {
    const began = performance.now();
    if (!document.hidden) {
      try {
        const res = await fetch(`${s.base}/frame.jpg`, { cache: 'no-store' });
        if (res.ok) {
          const url = URL.createObjectURL(await res.blob());
          if (session !== s) { URL.revokeObjectURL(url); break; }
          ui.avatar.src = url;
          if (shown) URL.revokeObjectURL(shown);
          shown = url;
        } else if (session === s && (res.status === 404 || res.status === 410)) {
          await failed(res, 'Video');
        }
      } catch { /* a transient network error: try the next frame */ }
    }
    const wait = Math.max(0, FRAME_INTERVAL_MS - (performance.now() - began));
    await new Promise((ok) => setTimeout(ok, wait));
  }
}

// ------------------------------------------------------------------------------ playback
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

// A timer that barge-in cancels together with the audio it belongs to.
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
  ui.caption.textContent = '';
}

// ------------------------------------------------------------------------------ text input
async function sendText(ev) {
  ev.preventDefault();
  const text = ui.text.value.trim();
  const s = session;
  if (!text || !s) return;
  ui.text.value = '';
  addChat('user', text);
  typedEcho = squash(text);
  sendAt = { ms: performance.now(), after: player.lastTurn };
  ui.hudClient.textContent = '…';
  try {
    const res = await fetch(`${s.base}/text`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ text }),
    });
    if (!res.ok) {
      typedEcho = sendAt = null;
      await failed(res, 'Sending text failed');
    }
  } catch (err) {
    showError(`Sending text failed: ${err.message}`);
  }
}

// ------------------------------------------------------------------------------ microphone
// Runs on the audio thread: forwards the first input channel in 1024-sample batches.
const TAP_WORKLET = `registerProcessor('pcm-tap', class extends AudioWorkletProcessor {
  constructor() { super(); this.buf = new Float32Array(1024); this.n = 0; }
  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    for (let i = 0; ch && i < ch.length; i++) {
      this.buf[this.n++] = ch[i];
      if (this.n === this.buf.length) { this.port.postMessage(this.buf.slice()); this.n = 0; }
    }
    return true;
  }
});`;

// Streaming downsampler from the context's rate to 16 kHz: each output sample is the mean of
// the input samples it spans (a box low-pass), written as PCM16 integers.
function makeDownsampler(inRate) {
  const ratio = inRate / MIC_RATE_HZ;
  let rest = new Float32Array(0);
  let pos = 0;
  return (input) => {
    const data = new Float32Array(rest.length + input.length);
    data.set(rest);
    data.set(input, rest.length);
    const out = [];
    for (; pos + ratio <= data.length; pos += ratio) {
      const a = Math.floor(pos);
      const b = Math.max(a + 1, Math.floor(pos + ratio));
      let sum = 0;
      for (let i = a; i < b; i++) sum += data[i];
      out.push(Math.round(Math.max(-1, Math.min(1, sum / (b - a))) * 32767));
    }
    const keep = Math.floor(pos);
    rest = data.slice(keep);
    pos -= keep;
    return out;
  };
}

async function startMic() {
  const ctx = ensureAudio();
  if (!ctx || !navigator.mediaDevices?.getUserMedia) {
    return showError('This browser gives no access to a microphone.');
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
    });
  } catch (err) {
    return showError(`Microphone unavailable: ${err.message}`);
  }
  const state = { stream, down: makeDownsampler(ctx.sampleRate), pending: [], queue: [] };
  const onSamples = (f32) => collect(state, f32);
  let tap;
  try {
    if (!player.tapModule) {  // a processor name registers once per AudioContext
      const url = URL.createObjectURL(new Blob([TAP_WORKLET], { type: 'text/javascript' }));
      player.tapModule = ctx.audioWorklet.addModule(url).finally(() => URL.revokeObjectURL(url));
    }
    await player.tapModule;
    tap = new AudioWorkletNode(ctx, 'pcm-tap');
    tap.port.onmessage = (e) => onSamples(e.data);
  } catch {  // no AudioWorklet: ScriptProcessor on the main thread
    tap = ctx.createScriptProcessor(4096, 1, 1);
    tap.onaudioprocess = (e) => onSamples(e.inputBuffer.getChannelData(0).slice());
  }
  const source = ctx.createMediaStreamSource(stream);
  const mute = ctx.createGain();  // keeps the tap pulled by the graph without a sound
  mute.gain.value = 0;
  source.connect(tap).connect(mute).connect(ctx.destination);
  state.nodes = [source, tap, mute];
  micState = state;
  setMicButton(true);
}

// Downsample, cut into 100 ms chunks, queue them for the sequential sender.
function collect(state, f32) {
  if (micState !== state) return;
  state.pending.push(...state.down(f32));
  while (state.pending.length >= MIC_CHUNK_SAMPLES) {
    state.queue.push(Int16Array.from(state.pending.splice(0, MIC_CHUNK_SAMPLES)));
    if (state.queue.length > MIC_QUEUE_MAX) state.queue.shift();
  }
  pump(state);
}

// POSTs queued chunks one after another, never two at once, so they arrive in order.
async function pump(state) {
  if (state.sending) return;
  state.sending = true;
  while (state.queue.length && session) {
    const url = `${session.base}/audio?sample_rate_hz=${MIC_RATE_HZ}`;
    try {
      const res = await fetch(url, {
        method: 'POST', headers: { 'Content-Type': 'application/octet-stream' },
        body: state.queue.shift().buffer,
      });
      if (!res.ok) { await failed(res, 'Sending audio failed'); break; }
    } catch (err) {
      showError(`Sending audio failed: ${err.message}`);
      break;
    }
  }
  state.sending = false;
}

function stopMic() {
  const state = micState;
  micState = null;
  setMicButton(false);
  if (!state) return;
  for (const n of state.nodes) n.disconnect();
  for (const t of state.stream.getTracks()) t.stop();
  if (state.pending.length) {  // send the last partial chunk
    state.queue.push(Int16Array.from(state.pending.splice(0)));
    pump(state);
  }
}

// ------------------------------------------------------------------------------ wiring
ui.start.addEventListener('click', () => start());
ui.stop.addEventListener('click', () => stop());
ui.form.addEventListener('submit', sendText);  // Enter in the text box submits the form
ui.mic.addEventListener('click', () => (micState ? stopMic() : startMic()));
window.addEventListener('pagehide', () => { if (session) stop(); });
