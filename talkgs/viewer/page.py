"""The viewer's page: one HTML document with inline CSS and JS (served by ``server.py`` at GET /).

It lives in a Python string so that it ships inside the package with no package-data setup.

How the picture follows the audio: the <audio> element plays the clip and is the clock. A loop asks
for the frame of floor(audio.currentTime * fps) and, when it arrives, asks for the frame of the
current time again, so at most one request per tab is in flight and it is always for the latest
time: when rendering is slower than the frame rate, frames are dropped and the picture never falls
behind the sound. Paused, a frame is asked for only when something changes (seek, camera, controls).
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>talkgs view</title>
<style>
  body { margin: 0; padding: 16px; display: flex; gap: 20px; align-items: flex-start;
         font: 14px/1.4 system-ui, sans-serif; background: #1b1d20; color: #ddd; }
  #stage { display: flex; flex-direction: column; gap: 8px; }
  #view { width: 512px; height: 512px; background: #000; cursor: grab; touch-action: none;
          border-radius: 4px; }
  #view.dragging { cursor: grabbing; }
  #audio { width: 512px; }
  #hint { color: #888; font-size: 12px; }
  #panel { width: 300px; display: flex; flex-direction: column; gap: 10px; }
  h1 { font-size: 16px; margin: 0; }
  h1 span { color: #9ab; font-weight: normal; }
  fieldset { border: 1px solid #3a3d42; border-radius: 6px; margin: 0; padding: 8px 10px; min-width: 0;
             display: flex; flex-direction: column; gap: 6px; }
  legend { color: #9ab; padding: 0 4px; }
  select, button, input[type=file] { font: inherit; max-width: 100%; }
  #clip { width: 100%; }
  .row { display: flex; gap: 10px; flex-wrap: wrap; }
  #msg { min-height: 1.4em; word-break: break-word; }
  #msg.error { color: #ff7b72; }
  table { border-collapse: collapse; }
  td { padding: 1px 8px 1px 0; white-space: nowrap; }
  td.v { font-variant-numeric: tabular-nums; color: #fff; }
</style>
</head>
<body>
<div id="stage">
  <canvas id="view" width="512" height="512"></canvas>
  <audio id="audio" controls preload="auto"></audio>
  <div id="hint">drag: orbit &middot; wheel: zoom &middot; shift-drag or right-drag: pan &middot;
    double-click: tracked view</div>
</div>
<div id="panel">
  <h1>talkgs view <span id="subject"></span></h1>
  <fieldset><legend>Audio</legend>
    <select id="clip" aria-label="clip"></select>
    <input type="file" id="file" accept="audio/*,video/*" aria-label="upload audio">
    <div id="msg" role="status"></div>
  </fieldset>
  <fieldset><legend>View</legend>
    <button id="reset">Reset to tracked view</button>
    <label>Resolution <select id="scale"></select></label>
    <label>Blink <select id="blink"></select></label>
    <label><input type="checkbox" id="centres"> Gaussian centres</label>
  </fieldset>
  <fieldset><legend>Layers</legend><div class="row" id="layers"></div></fieldset>
  <fieldset><legend>Read-outs</legend>
    <table>
      <tr><td>render FPS</td><td class="v" id="fps">-</td></tr>
      <tr><td>audio-to-frame latency</td><td class="v" id="latency">-</td></tr>
      <tr><td>server render</td><td class="v" id="render">-</td></tr>
      <tr><td>frame</td><td class="v" id="frame">-</td></tr>
      <tr><td>resolution</td><td class="v" id="size">-</td></tr>
      <tr><td>device</td><td class="v" id="device">-</td></tr>
    </table>
  </fieldset>
</div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const canvas = $("view"), ctx2d = canvas.getContext("2d"), audio = $("audio");
const HOME = {yaw: 0, pitch: 0, zoom: 1, pan_x: 0, pan_y: 0};
const state = {info: null, clip: null, cam: {...HOME}, dirty: true, dragging: false, movedAt: -1e9,
               lowRes: false};
// Read by the tests and shown in the read-outs.
const stats = {shown: 0, requested: 0, lowResShown: 0, lastT: null, lastFrame: null, lastSize: null, renderMs: null,
               latencyMs: null, latencies: [], shownAt: [], fps: 0, errors: 0, lastError: null};
window.viewer = {state, stats};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function message(text, isError) {
  $("msg").textContent = text;
  $("msg").className = isError ? "error" : "";
}

async function loadInfo(select) {
  const r = await fetch("/info", {cache: "no-store"});
  const info = await r.json();
  if (!r.ok) throw new Error(info.error || r.statusText);
  const first = state.info === null;
  state.info = info;
  $("subject").textContent = info.subject;
  $("device").textContent = info.device;
  const clips = $("clip");
  clips.replaceChildren(...info.clips.map((c) => new Option(`${c.name} (${c.duration.toFixed(1)} s)`, c.id)));
  if (first) {
    for (const f of [1, 0.75, 0.5, 0.25]) {
      $("scale").add(new Option(`${Math.max(16, 2 * Math.round(info.size * f / 2))} px` +
                                (f === 1 ? " (full)" : ""), f));
    }
    for (const b of info.blink_modes) $("blink").add(new Option(b, b, false, b === info.blink));
    for (const name of info.layers) {
      const label = document.createElement("label");
      label.innerHTML = `<input type="checkbox" id="layer-${name}" checked> ${name}`;
      $("layers").append(label);
      label.querySelector("input").addEventListener("change", changed);
    }
  }
  const want = select || state.clip || (info.clips[0] && info.clips[0].id);
  if (want && info.clips.some((c) => c.id === want)) {
    clips.value = want;
    if (want !== state.clip) selectClip(want);
  } else if (!info.clips.length) {
    message("this subject has no audio of its own: upload an audio file", false);
  }
}

function selectClip(id) {
  state.clip = id;
  audio.src = "/audio/" + encodeURIComponent(id);
  audio.load();
  state.dirty = true;
}

function changed() { state.dirty = true; }

$("clip").addEventListener("change", (e) => selectClip(e.target.value));
for (const id of ["scale", "blink", "centres"]) $(id).addEventListener("change", changed);
for (const ev of ["seeked", "seeking", "pause", "play", "loadeddata"]) audio.addEventListener(ev, changed);

$("file").addEventListener("change", async () => {
  const file = $("file").files[0];
  if (!file) return;
  const limit = state.info ? state.info.max_upload_mb : 50;
  try {
    if (file.size > limit * 1048576) {
      throw new Error(`${file.name} is ${(file.size / 1048576).toFixed(1)} MB; the viewer takes at most ${limit} MB`);
    }
    message(`decoding ${file.name} ...`, false);
    const r = await fetch("/upload", {method: "POST", body: file,
      headers: {"X-Filename": encodeURIComponent(file.name), "Content-Type": file.type || "application/octet-stream"}});
    const j = await r.json().catch(() => ({error: `upload failed (${r.status} ${r.statusText})`}));
    if (!r.ok) throw new Error(j.error || r.statusText);
    await loadInfo(j.id);
    message(`loaded ${j.name} (${j.duration.toFixed(1)} s): press play`, false);
  } catch (e) {
    message(e.message, true);
  } finally {
    $("file").value = "";
  }
});

// -- camera: drag orbits, shift-drag or right-drag pans, the wheel zooms --------------------------------
function moved() { state.movedAt = performance.now(); state.dirty = true; }
canvas.addEventListener("contextmenu", (e) => e.preventDefault());
canvas.addEventListener("pointerdown", (e) => {
  state.dragging = true;
  canvas.setPointerCapture(e.pointerId);
  canvas.classList.add("dragging");
});
canvas.addEventListener("pointerup", (e) => {
  state.dragging = false;
  canvas.releasePointerCapture(e.pointerId);
  canvas.classList.remove("dragging");
  moved();
});
canvas.addEventListener("pointermove", (e) => {
  if (!state.dragging) return;
  const cam = state.cam, rect = canvas.getBoundingClientRect();
  if (e.shiftKey || (e.buttons & 2)) {
    // Pan in focal lengths: one image width of drag moves the head by one image width.
    const focal = state.info ? state.info.focal : 1;
    cam.pan_x += e.movementX / rect.width / focal;
    cam.pan_y += e.movementY / rect.height / focal;
  } else {
    cam.yaw -= e.movementX * 0.3;
    cam.pitch = Math.max(-80, Math.min(80, cam.pitch + e.movementY * 0.3));
  }
  moved();
});
canvas.addEventListener("wheel", (e) => {
  e.preventDefault();
  state.cam.zoom = Math.max(0.2, Math.min(8, state.cam.zoom * Math.exp(-e.deltaY * 0.001)));
  moved();
}, {passive: false});
function resetView() { state.cam = {...HOME}; state.dirty = true; }
canvas.addEventListener("dblclick", resetView);
$("reset").addEventListener("click", resetView);

// -- frames: one request in flight, always for the audio's current time -------------------------------
function isMoving() { return state.dragging || performance.now() - state.movedAt < 250; }

function query(t, moving) {
  const layers = state.info.layers.filter((n) => $("layer-" + n).checked);
  const scale = Number($("scale").value) * (moving ? state.info.moving_scale : 1);
  return new URLSearchParams({clip: state.clip, t: t.toFixed(4), cam: JSON.stringify(state.cam),
    scale: String(scale), layers: layers.join(","), centres: $("centres").checked ? "1" : "0",
    blink: $("blink").value});
}

async function showFrame(moving, playing) {
  const t = Math.round(audio.currentTime * 1e4) / 1e4;  // the time sent, to the digit
  stats.requested++;
  const r = await fetch("/frame?" + query(t, moving), {cache: "no-store"});
  if (!r.ok) {
    const j = await r.json().catch(() => ({error: r.statusText}));
    throw new Error(j.error || r.statusText);
  }
  const bitmap = await createImageBitmap(await r.blob());
  if (canvas.width !== bitmap.width) { canvas.width = bitmap.width; canvas.height = bitmap.height; }
  ctx2d.drawImage(bitmap, 0, 0);
  bitmap.close();
  const now = performance.now();
  state.lowRes = moving;
  stats.shown++;
  if (moving) stats.lowResShown++;
  stats.lastT = t;
  stats.lastFrame = Number(r.headers.get("X-Frame"));
  stats.lastSize = Number(r.headers.get("X-Size"));
  stats.renderMs = Number(r.headers.get("X-Render-Ms"));
  stats.shownAt.push(now);
  // Latency: how far the audio has moved on between asking for this frame and showing it.
  if (playing && !audio.paused) {
    stats.latencies.push({at: now, ms: (audio.currentTime - t) * 1000});
  }
  $("frame").textContent = `${stats.lastFrame} (t = ${t.toFixed(2)} s)`;
  $("size").textContent = `${stats.lastSize} px` + (moving ? " (moving)" : "");
  $("render").textContent = `${stats.renderMs.toFixed(0)} ms`;
}

function updateReadouts() {
  const now = performance.now();
  while (stats.shownAt.length && now - stats.shownAt[0] > 1000) stats.shownAt.shift();
  while (stats.latencies.length && now - stats.latencies[0].at > 2000) stats.latencies.shift();
  stats.fps = stats.shownAt.length;
  $("fps").textContent = String(stats.fps);
  if (audio.paused) {
    $("latency").textContent = "- (paused)";
  } else if (stats.latencies.length) {
    stats.latencyMs = stats.latencies.reduce((a, b) => a + b.ms, 0) / stats.latencies.length;
    $("latency").textContent = `${stats.latencyMs.toFixed(0)} ms`;
  }
}
setInterval(updateReadouts, 250);

async function loop() {
  for (;;) {
    const playing = !audio.paused && !audio.ended;
    const moving = isMoving();
    // The full resolution once the camera comes to rest after a low-resolution frame.
    const refine = state.lowRes && !moving;
    if (!state.info || !state.clip || !(playing || state.dirty || refine)) {
      await sleep(8);
      continue;
    }
    state.dirty = false;
    try {
      await showFrame(moving, playing);
      updateReadouts();
    } catch (e) {
      stats.errors++;
      stats.lastError = e.message;
      message(e.message, true);
      await sleep(500);  // a failing server is not asked again at full speed
    }
  }
}

loadInfo().catch((e) => message(e.message, true)).then(loop);
</script>
</body>
</html>
"""
