// edge-runtime live page: status, pipelines with their latest result and rate, camera views,
// health and events. No framework, no build step; everything comes from this daemon.
"use strict";

const token = new URLSearchParams(location.hash.slice(1)).get("token");
const $ = (id) => document.getElementById(id);
const MAX_EVENTS = 50;
const pipelines = new Map();  // name -> {root, rate, result, seq}

function url(path) {
  if (!token) return path;
  return path + (path.includes("?") ? "&" : "?") + "access_token=" + encodeURIComponent(token);
}

async function getJSON(path) {
  const response = await fetch(url(path), { headers: { Accept: "application/json" } });
  if (!response.ok && response.status !== 503) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function fill(dl, rows) {
  dl.replaceChildren();
  for (const [key, value] of rows) {
    dl.append(el("dt", "", key), el("dd", "", value === null || value === undefined ? "-" : String(value)));
  }
}

function count(n, noun) {
  return n + " " + noun + (n === 1 ? "" : "s");
}

function summary(result) {
  const r = result.result || {};
  const heads = r.top ? { "": r } : r;
  const parts = [];
  for (const [name, head] of Object.entries(heads)) {
    if (head && Array.isArray(head.top) && head.top.length) {
      const best = head.top[0];
      parts.push((name ? name + ": " : "") + best.label + " " + Number(best.score).toFixed(2));
    } else if (head && Array.isArray(head.detections)) {
      parts.push((name ? name + ": " : "") + count(head.detections.length, "detection"));
    }
  }
  if (Array.isArray(r.detections) && !r.top) parts.push(count(r.detections.length, "detection"));
  return parts.join(", ") || JSON.stringify(r).slice(0, 200);
}

function pipelineCard(name) {
  let card = pipelines.get(name);
  if (card) return card;
  const root = el("div", "pipeline");
  root.dataset.pipeline = name;
  const rate = el("span", "rate", "");
  const head = el("div", "", "");
  head.append(el("span", "name", name), rate);
  const top = el("div", "top", "waiting for a result");
  const result = el("pre", "result", "");
  root.append(head, top, result);
  $("pipelines").append(root);
  card = { root, rate, top, result };
  pipelines.set(name, card);
  return card;
}

function showResult(result) {
  const card = pipelineCard(result.pipeline);
  card.top.textContent = "#" + result.seq + "  " + summary(result);
  card.top.dataset.seq = result.seq;
  card.result.textContent = JSON.stringify(result.result);
}

function addEvent(event) {
  const time = new Date((event.ts || Date.now() / 1000) * 1000).toLocaleTimeString();
  const item = el("li", "", time + "  " + (event.kind || "event") + ": " + (event.message || ""));
  $("events").prepend(item);
  while ($("events").children.length > MAX_EVENTS) $("events").lastChild.remove();
}

async function refresh() {
  try {
    const [status, list, health] = await Promise.all([
      getJSON("api/status"), getJSON("api/pipelines"), getJSON("api/health"),
    ]);
    $("device").textContent = status.device;
    const state = health.state || status.state;
    $("state").textContent = state + (status.ready ? ", ready" : ", not ready");
    $("state").className = "badge " + state;
    fill($("status"), [
      ["version", status.version], ["uptime", Math.round(status.uptime_s) + " s"],
      ["pipelines", status.pipelines.join(", ")], ["stream clients", status.http.stream_clients],
    ]);
    for (const p of list.pipelines) {
      const card = pipelineCard(p.name);
      card.rate.textContent = p.fps_out.toFixed(1) + " results/s" + (p.paused ? " (paused)" : "");
    }
    const sys = health.system || {};
    const mb = (b) => (b ? (b / 1e6).toFixed(1) + " MB" : "-");
    fill($("health"), [
      ["cpu", sys.cpu_percent === null ? "-" : sys.cpu_percent + " %"], ["rss", mb(sys.rss_bytes)],
      ["load", (sys.load_avg || []).join(" ")], ["disk free", mb(sys.disk_free_bytes)],
      ["temperature", Object.entries(sys.temperature_c || {}).map(([k, v]) => k + " " + v + " °C").join(", ")],
      ["mqtt", health.mqtt ? (health.mqtt.connected ? "connected" : "disconnected") : "off"],
      ["outbox", health.outbox ? health.outbox.depth : "-"],
    ]);
    $("problems").replaceChildren(...(health.problems || []).map((p) => el("li", "", p)));
    showCameras(health.sources || {});
  } catch (error) {
    $("state").textContent = "unreachable";
    $("state").className = "badge down";
  }
}

function showCameras(sources) {
  for (const [name, source] of Object.entries(sources)) {
    if (source.type !== "camera" || document.querySelector('figure[data-source="' + CSS.escape(name) + '"]')) continue;
    const figure = el("figure");
    figure.dataset.source = name;
    const img = el("img");
    img.alt = "live view of " + name;
    img.src = url("api/sources/" + encodeURIComponent(name) + "/stream.mjpg");
    figure.append(img, el("figcaption", "", name));
    $("cameras").append(figure);
  }
}

async function start() {
  try {
    const recent = await getJSON("api/events");
    for (const event of recent.events) addEvent(event);
  } catch (error) {
    addEvent({ kind: "page", message: "events unavailable: " + error.message });
  }
  const stream = new EventSource(url("api/results/stream?events=true"));
  stream.addEventListener("result", (message) => showResult(JSON.parse(message.data)));
  stream.addEventListener("event", (message) => addEvent(JSON.parse(message.data)));
  stream.addEventListener("dropped", () => addEvent({ kind: "page", message: "stream dropped; reconnecting" }));
  await refresh();
  setInterval(refresh, 2000);
}

window.addEventListener("load", start);
