// The streamer page: streams and their status, a live preview, the memory timeline, questions over
// the websocket with streamed answers, and a browser webcam sent over WebRTC as a new stream.
"use strict";

// A token given in the page's URL is traded once for a same-site HttpOnly cookie (POST /session) and
// taken out of the address bar, so it never appears in a request URL, the history or a proxy log.
const token = new URLSearchParams(location.search).get("token") || "";
const $ = (id) => document.getElementById(id);

const state = {
  selected: null,       // stream id shown and asked about
  timeline: null,       // last /streams/{id}/timeline reply
  evidence: [],         // [[t0, t1], ...] highlighted on the timeline
  socket: null,
  answers: new Map(),   // question_id -> {card, text}
  nextQuestion: 1,
  watches: new Map(),   // watch_id -> its text
  episodes: [],         // [[t_onset, t_end or null], ...] of watch events on the selected stream
  nextWatch: 1,
};

async function startSession() {
  if (!token) return;
  const reply = await fetch("/session", { method: "POST", headers: { Authorization: "Bearer " + token } });
  if (reply.ok) history.replaceState(null, "", location.pathname + location.hash);
}

async function api(path, options = {}) {
  const headers = { "Content-Type": "application/json", ...(options.headers || {}) };
  return fetch(path, { ...options, headers });
}

function clock(seconds) {
  const whole = Math.floor(seconds);
  const minutes = Math.floor(whole / 60);
  return String(minutes).padStart(2, "0") + ":" + String(whole % 60).padStart(2, "0");
}

// Health and streams

async function refreshHealth() {
  const badge = $("health");
  try {
    const reply = await api("/health/ready");
    const body = await reply.json();
    badge.textContent = body.status === "ready" ? "ready: " + body.model : body.status;
    badge.className = "badge " + body.status;
  } catch {
    badge.textContent = "server unreachable";
    badge.className = "badge failed";
  }
}

async function refreshStreams() {
  const reply = await api("/streams");
  if (!reply.ok) return;
  const { streams } = await reply.json();
  const list = $("stream-list");
  list.replaceChildren(...streams.map(streamItem));
  if (!streams.some((s) => s.stream_id === state.selected)) {
    select(streams.length ? streams[0].stream_id : null);
  }
  const current = streams.find((s) => s.stream_id === state.selected);
  if (current) showStatus(current.state, current.ingest_fps, current.lag_ms, current.frames_ingested, current.reason);
}

function streamItem(stream) {
  const item = document.createElement("li");
  item.dataset.streamId = stream.stream_id;
  item.className = stream.stream_id === state.selected ? "selected" : "";
  const name = document.createElement("strong");
  name.textContent = stream.stream_id;
  const status = document.createElement("span");
  status.className = "state " + stream.state;
  status.textContent = stream.state;
  const counters = document.createElement("span");
  counters.className = "counters";
  counters.textContent = `${stream.frames_ingested} frames, ${stream.ingest_fps.toFixed(1)} fps, ` +
    `${stream.resident_tokens}/${stream.budget_tokens} tokens`;
  item.append(name, status, counters);
  item.addEventListener("click", () => select(stream.stream_id));
  return item;
}

function select(streamId) {
  if (streamId === state.selected) return;
  state.selected = streamId;
  state.timeline = null;
  state.evidence = [];
  for (const item of $("stream-list").children) {
    item.className = item.dataset.streamId === streamId ? "selected" : "";
  }
  if (streamId && state.socket && state.socket.readyState === WebSocket.OPEN) {
    send({ type: "stream.detach" });
    send({ type: "stream.attach", stream_id: streamId });
  }
  if (!streamId) $("stream-status").textContent = "No stream selected.";
  refreshPreview();
  refreshTimeline();
}

function showStatus(streamState, fps, lagMs, frames, reason) {
  const why = reason ? ` (${reason})` : "";
  $("stream-status").textContent =
    `${state.selected}: ${streamState}${why}, ${fps.toFixed(2)} frames/s ingested, ` +
    `lag ${Math.round(lagMs)} ms, ${frames} frames`;
}

// Preview and timeline

function refreshPreview() {
  if (!state.selected) return;
  const image = new Image();
  image.onload = () => { $("preview").src = image.src; };
  image.src = `/streams/${encodeURIComponent(state.selected)}/preview.jpg?at=${Date.now()}`;
}

async function refreshTimeline() {
  if (!state.selected) return;
  const reply = await api(`/streams/${encodeURIComponent(state.selected)}/timeline?limit=2000`);
  if (!reply.ok) return;
  state.timeline = await reply.json();
  const t = state.timeline;
  const counts = { clear: 0, fuzzy: 0, host: 0, gone: 0 };
  for (const frame of t.frames) {
    counts[frame.tier] = (counts[frame.tier] || 0) + 1;
    if (frame.location !== "device") counts[frame.location] += 1;
  }
  $("memory-summary").textContent = `${t.total_frames} frames: ${counts.clear} clear, ${counts.fuzzy} fuzzy, ` +
    `${counts.host} offloaded, ${counts.gone} dropped; ${t.resident_tokens}/${t.budget_tokens} tokens on device`;
  drawTimeline();
}

// Frames in which OCR read some text: signs, captions, the moments people ask about.
function readText(frame) {
  return frame.text.includes('text: "');
}

function timeRange() {
  const frames = state.timeline ? state.timeline.frames : [];
  if (!frames.length) return [0, 1];
  const start = frames[0].t;
  return [start, Math.max(start + 1, frames[frames.length - 1].t)];
}

function drawTimeline() {
  const canvas = $("timeline");
  const scale = window.devicePixelRatio || 1;
  canvas.width = canvas.clientWidth * scale;
  canvas.height = canvas.clientHeight * scale;
  const context = canvas.getContext("2d");
  context.scale(scale, scale);
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  context.clearRect(0, 0, width, height);
  if (!state.timeline) return;
  const [start, end] = timeRange();
  const x = (t) => 4 + ((t - start) / (end - start)) * (width - 8);
  const style = getComputedStyle(document.documentElement);
  const colour = (name) => style.getPropertyValue("--" + name).trim();
  const base = height - 18;

  context.fillStyle = colour("evidence");
  for (const [t0, t1] of state.evidence) {
    context.fillRect(x(t0) - 3, 0, Math.max(6, x(t1) - x(t0) + 6), base);
  }
  const barWidth = Math.max(1, Math.min(6, (width - 8) / state.timeline.frames.length - 1));
  for (const frame of state.timeline.frames) {
    const barHeight = frame.tier === "clear" ? base - 22 : (base - 22) / 2;
    context.fillStyle = colour(frame.location);
    context.fillRect(x(frame.t) - barWidth / 2, base - barHeight, barWidth, barHeight);
    if (readText(frame)) {
      context.fillStyle = colour("needle");
      context.beginPath();
      context.moveTo(x(frame.t) - 4, 4);
      context.lineTo(x(frame.t) + 4, 4);
      context.lineTo(x(frame.t), 12);
      context.fill();
    }
  }
  context.fillStyle = colour("watch");
  for (const [t0, t1] of state.episodes) {
    context.fillRect(x(t0), base + 2, Math.max(3, x(t1 === null ? end : t1) - x(t0)), 4);
  }
  context.fillStyle = colour("muted");
  context.font = "11px system-ui, sans-serif";
  context.fillText(clock(start), 4, height - 4);
  const last = clock(end);
  context.fillText(last, width - 4 - context.measureText(last).width, height - 4);
}

function frameNear(clientX) {
  const frames = state.timeline ? state.timeline.frames : [];
  if (!frames.length) return null;
  const canvas = $("timeline");
  const [start, end] = timeRange();
  const t = start + ((clientX - canvas.getBoundingClientRect().left - 4) / (canvas.clientWidth - 8)) * (end - start);
  return frames.reduce((best, frame) => (Math.abs(frame.t - t) < Math.abs(best.t - t) ? frame : best));
}

function describeFrame(frame) {
  return `${clock(frame.t)} — ${frame.tier}, ${frame.location}, ${frame.tokens} tokens: ${frame.text}`;
}

function showEvidence(span) {
  state.evidence = [span];
  drawTimeline();
  const frames = state.timeline ? state.timeline.frames.filter((f) => f.t >= span[0] && f.t <= span[1]) : [];
  $("frame-info").textContent = frames.length
    ? frames.map(describeFrame).join("\n")
    : `${clock(span[0])}–${clock(span[1])}: these frames are older than the timeline shows.`;
  $("memory").scrollIntoView({ behavior: "smooth", block: "nearest" });
}

// Questions over the websocket

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}/ws`);
  state.socket = socket;
  socket.onopen = () => {
    if (state.selected) send({ type: "stream.attach", stream_id: state.selected });
  };
  socket.onmessage = (event) => receive(JSON.parse(event.data));
  socket.onclose = () => {
    state.socket = null;
    setTimeout(connect, 2000);
  };
}

function send(message) {
  state.socket.send(JSON.stringify({ id: "c" + Date.now(), ts: Date.now() / 1000, ...message }));
}

function receive(message) {
  const answer = state.answers.get(message.question_id);
  switch (message.type) {
    case "stream.status":
      if (message.stream_id === state.selected) {
        showStatus(message.state, message.fps, message.lag_ms, message.frames_ingested, message.reason);
      }
      break;
    case "answer.started":
      if (answer) answer.meta.textContent = `reading memory up to ${clock(message.as_of)}…`;
      break;
    case "answer.delta":
      if (answer) answer.text.textContent += message.text;
      break;
    case "answer.done":
      if (answer) finishAnswer(answer, message);
      break;
    case "watch.event":
      showWatchEvent(message);
      break;
    case "error":
      if (answer) {
        answer.card.classList.add("error");
        answer.text.textContent = message.message;
        answer.meta.textContent = message.code;
      } else {
        $("webcam-status").textContent = message.message;
      }
      break;
  }
}

function finishAnswer(answer, done) {
  answer.text.textContent = done.text || (done.cancelled ? "(cancelled)" : "(no answer)");
  answer.meta.replaceChildren(
    `TTFT ${Math.round(done.ttft_ms)} ms, total ${Math.round(done.latency_ms)} ms, ` +
    `memory up to ${clock(done.as_of)}; evidence:`,
  );
  if (!done.evidence.length) answer.meta.append(" none");
  for (const span of done.evidence) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "evidence";
    button.textContent = span[0] === span[1] ? clock(span[0]) : `${clock(span[0])}–${clock(span[1])}`;
    button.addEventListener("click", () => showEvidence(span));
    answer.meta.append(button);
  }
}

function ask(event) {
  event.preventDefault();
  const text = $("question").value.trim();
  if (!text || !state.socket || state.socket.readyState !== WebSocket.OPEN) return;
  const questionId = "q" + state.nextQuestion++;
  const card = document.createElement("div");
  card.className = "answer";
  const question = document.createElement("div");
  question.className = "question";
  question.textContent = text;
  const answerText = document.createElement("div");
  answerText.className = "text";
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = "waiting…";
  card.append(question, answerText, meta);
  $("answers").append(card);
  state.answers.set(questionId, { card, text: answerText, meta });
  const message = { type: "question.ask", question_id: questionId, text };
  if (state.selected) message.stream_id = state.selected;
  send(message);
  $("question").value = "";
}

// Standing questions: created over the websocket, their events listed and marked on the timeline

function addWatch(event) {
  event.preventDefault();
  const text = $("watch").value.trim();
  if (!text || !state.selected || !state.socket || state.socket.readyState !== WebSocket.OPEN) return;
  const watchId = "pw" + Date.now().toString(36) + state.nextWatch++;
  state.watches.set(watchId, text);
  send({ type: "watch.create", stream_id: state.selected, watch_id: watchId, text });
  $("watch").value = "";
}

function showWatchEvent(event) {
  if (event.stream_id !== state.selected) return;
  const item = document.createElement("li");
  item.className = "watch-event " + event.phase;
  const name = state.watches.get(event.watch_id) || event.watch_id;
  item.textContent = event.phase === "start"
    ? `${clock(event.t_detected)} ${name}: ${event.text}`
    : `${clock(event.t_detected)} ${name}: over`;
  $("events").prepend(item);
  if (event.phase === "start") {
    state.episodes.push([event.t_onset, null]);
  } else {
    const open = state.episodes.find((episode) => episode[0] === event.t_onset && episode[1] === null);
    if (open) open[1] = event.t_detected;
  }
  drawTimeline();
}

// A browser webcam as a new stream

async function useWebcam() {
  const status = $("webcam-status");
  try {
    status.textContent = "asking for the camera…";
    const media = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    const peer = new RTCPeerConnection();
    for (const track of media.getVideoTracks()) peer.addTrack(track, media);
    await peer.setLocalDescription(await peer.createOffer());
    await iceGathered(peer);
    const streamId = "webcam-" + Math.random().toString(36).slice(2, 8);
    const reply = await api("/webrtc/offer", {
      method: "POST",
      body: JSON.stringify({ sdp: peer.localDescription.sdp, type: peer.localDescription.type, stream_id: streamId }),
    });
    const body = await reply.json();
    if (!reply.ok) throw new Error(typeof body.error === "string" ? body.error : body.error.message);
    await peer.setRemoteDescription({ sdp: body.sdp, type: body.type });
    status.textContent = `sending your camera as ${body.stream_id}`;
    await refreshStreams();
    select(body.stream_id);
  } catch (error) {
    status.textContent = "webcam: " + error.message;
  }
}

function iceGathered(peer) {
  if (peer.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    peer.addEventListener("icegatheringstatechange", () => {
      if (peer.iceGatheringState === "complete") resolve();
    });
  });
}

// Start

async function start() {
  await startSession().catch(() => {});  // without a session the page shows the server's 401s
  $("ask-form").addEventListener("submit", ask);
  $("watch-form").addEventListener("submit", addWatch);
  $("webcam").addEventListener("click", useWebcam);
  $("timeline").addEventListener("mousemove", (event) => {
    const frame = frameNear(event.clientX);
    if (frame) $("frame-info").textContent = describeFrame(frame);
  });
  window.addEventListener("resize", drawTimeline);
  refreshHealth();
  refreshStreams().catch(() => {});
  connect();
  // A failed poll (server restarting) is retried by the next one.
  const poll = (refresh, ms) => setInterval(() => refresh().catch(() => {}), ms);
  poll(refreshHealth, 5000);
  poll(refreshStreams, 2000);
  poll(async () => refreshPreview(), 1000);
  poll(refreshTimeline, 3000);
}

start();
