// The Tern dashboard: polls the JSON API once a second and draws what it reads. No build
// step and no libraries: the charts are drawn on canvases by `chart` below.
"use strict";

const HISTORY = 300; // samples kept per chart: five minutes at one a second
const PAGE_SIZE = 20;
const history = { t: [], in: [], out: [], conn: [], drops: [] };
let last = null; // the previous stats sample, for rates
let page = 1;
let updates = 0;

const $ = (sel) => document.querySelector(sel);
const el = (tag, props = {}, ...children) => {
  const e = Object.assign(document.createElement(tag), props);
  for (const c of children) e.append(c);
  return e;
};
const get = (obj, path) => path.split(".").reduce((o, k) => (o == null ? o : o[k]), obj);
const fmt = (n) => (typeof n === "number" ? n.toLocaleString("en-US") : n ?? "–");
const fmtRate = (n) => (n >= 100 ? Math.round(n).toLocaleString("en-US") : n.toFixed(1));

async function api(path, options) {
  const r = await fetch(`api/v1/${path}`, options);
  const text = await r.text();
  const body = text ? JSON.parse(text) : null;
  if (!r.ok) throw new Error((body && body.error) || `${r.status} ${r.statusText}`);
  return body;
}

function duration(secs) {
  const d = Math.floor(secs / 86400), h = Math.floor(secs / 3600) % 24;
  const m = Math.floor(secs / 60) % 60, s = secs % 60;
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
}

function push(series, value) {
  series.push(value);
  if (series.length > HISTORY) series.shift();
}

// Draws `lines` ([{values, color}]) on `canvas`, scaled to the largest value, with a grid.
function chart(canvas, lines) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== w * ratio) { canvas.width = w * ratio; canvas.height = h * ratio; }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);
  const left = 48, bottom = 16, top = 6;
  const max = Math.max(1, ...lines.flatMap((l) => l.values));
  const step = niceStep(max / 4);
  const ceiling = Math.ceil(max / step) * step;
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#6b7686";
  g.strokeStyle = "#e2e6ec";
  g.lineWidth = 1;
  for (let v = 0; v <= ceiling + step / 2; v += step) {
    const y = top + (h - top - bottom) * (1 - v / ceiling);
    g.beginPath(); g.moveTo(left, y); g.lineTo(w, y); g.stroke();
    g.fillText(shortNumber(v), 4, y + 4);
  }
  g.fillText(`${Math.round(HISTORY / 60)} min ago`, left, h - 3);
  g.fillText("now", w - 24, h - 3);
  for (const line of lines) {
    g.strokeStyle = line.color;
    g.lineWidth = 2;
    g.beginPath();
    line.values.forEach((v, i) => {
      const x = left + (w - left) * ((HISTORY - line.values.length + i) / (HISTORY - 1));
      const y = top + (h - top - bottom) * (1 - v / ceiling);
      i ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.stroke();
  }
}

function niceStep(raw) {
  const p = Math.pow(10, Math.floor(Math.log10(Math.max(raw, 1e-9))));
  for (const m of [1, 2, 5, 10]) if (raw <= m * p) return Math.max(m * p, 0.25);
  return 10 * p;
}

function shortNumber(v) {
  if (v >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (v >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
  return `${+v.toFixed(2)}`;
}

async function refreshStats() {
  const s = await api("stats");
  const now = performance.now();
  for (const e of document.querySelectorAll("[data-stat]")) e.textContent = fmt(get(s, e.dataset.stat));
  $("#version").textContent = s.version;
  $("#uptime").textContent = duration(s.uptime_seconds);
  if (last) {
    const dt = Math.max((now - last.at) / 1000, 0.001);
    const rate = (k) => Math.max(0, (get(s, k) - get(last.s, k)) / dt);
    const rin = rate("messages.received"), rout = rate("messages.sent");
    $("#rate-in").textContent = fmtRate(rin);
    $("#rate-out").textContent = fmtRate(rout);
    push(history.in, rin);
    push(history.out, rout);
    push(history.drops, rate("messages.dropped"));
  }
  push(history.conn, s.clients.connected);
  last = { s, at: now };
  chart($("#chart-rate"), [
    { values: history.in, color: "#2f6fdf" },
    { values: history.out, color: "#15a37f" },
  ]);
  chart($("#chart-conn"), [{ values: history.conn, color: "#2f6fdf" }]);
  chart($("#chart-drops"), [{ values: history.drops, color: "#d9534f" }]);
}

async function refreshClients() {
  const r = await api(`clients?page=${page}&limit=${PAGE_SIZE}`);
  const pages = Math.max(1, Math.ceil(r.meta.count / PAGE_SIZE));
  if (page > pages) { page = pages; return refreshClients(); }
  $("#clients-count").textContent = `(${fmt(r.meta.count)})`;
  $("#page").textContent = `${page} / ${pages}`;
  $("#prev").disabled = page <= 1;
  $("#next").disabled = page >= pages;
  const rows = r.data.map((c) => {
    const since = c.connected_at ? new Date(c.connected_at * 1000).toLocaleTimeString() : "offline";
    const kick = el("button", { className: "kick", type: "button", textContent: "Kick", disabled: !c.connected });
    kick.addEventListener("click", () => kickClient(c.client_id));
    const row = el("tr", { className: c.connected ? "" : "offline" },
      el("td", { className: "id", textContent: c.client_id }),
      el("td", { textContent: c.username ?? "" }),
      el("td", { textContent: c.peer ?? "" }),
      el("td", { textContent: c.transport ?? "" }),
      el("td", { textContent: c.protocol ?? "" }),
      el("td", { textContent: since }),
      el("td", { textContent: c.keepalive != null ? `${c.keepalive}s` : "" }),
      el("td", { textContent: fmt(c.queued) }),
      el("td", { textContent: fmt(c.inflight) }),
      el("td", { textContent: fmt(c.subscriptions) }),
      el("td", {}, kick));
    row.dataset.clientId = c.client_id;
    return row;
  });
  $("#clients tbody").replaceChildren(...rows);
}

async function kickClient(id) {
  if (!confirm(`Disconnect ${id}? Its will is published; a persistent session stays.`)) return;
  try {
    await api(`clients/${encodeURIComponent(id)}`, { method: "DELETE" });
  } catch (e) {
    alert(`Kick failed: ${e.message}`);
  }
  await refreshClients();
}

async function browse(event) {
  if (event) event.preventDefault();
  const filter = $("#browse-filter").value || "#";
  const body = $("#retained tbody");
  try {
    const r = await api(`retained?limit=200&topic=${encodeURIComponent(filter)}`);
    const rows = r.data.map((m) => el("tr", {},
      el("td", { className: "id", textContent: m.topic }),
      el("td", { textContent: m.qos }),
      el("td", { className: "payload", textContent: m.encoding === "plain" ? m.payload : `base64: ${m.payload}` })));
    if (!rows.length) rows.push(el("tr", {}, el("td", { colSpan: 3, className: "muted", textContent: "no retained messages match" })));
    body.replaceChildren(...rows);
  } catch (e) {
    body.replaceChildren(el("tr", {}, el("td", { colSpan: 3, textContent: e.message })));
  }
}

async function publish(event) {
  event.preventDefault();
  const out = $("#pub-result");
  const message = {
    topic: $("#pub-topic").value,
    payload: $("#pub-payload").value,
    qos: Number($("#pub-qos").value),
    retain: $("#pub-retain").checked,
  };
  try {
    const r = await api("publish", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(message),
    });
    out.textContent = `Published to ${r.delivered} session${r.delivered === 1 ? "" : "s"}.`;
    if (message.retain) browse();
  } catch (e) {
    out.textContent = `Not published: ${e.message}`;
  }
}

async function tick() {
  const status = $("#status");
  try {
    await Promise.all([refreshStats(), refreshClients()]);
    status.textContent = "live";
    status.className = "badge ok";
    document.body.dataset.updated = String(++updates);
  } catch (e) {
    status.textContent = "unreachable";
    status.className = "badge down";
  }
}

$("#prev").addEventListener("click", () => { page = Math.max(1, page - 1); refreshClients(); });
$("#next").addEventListener("click", () => { page += 1; refreshClients(); });
$("#browse").addEventListener("submit", browse);
$("#publish").addEventListener("submit", publish);
tick();
browse();
setInterval(tick, 1000);
