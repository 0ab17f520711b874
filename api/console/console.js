// civic-iot operations console: plain JavaScript, no library, nothing loaded from elsewhere.
// Streams are read with fetch (EventSource cannot send an Authorization header): the public
// /live/console always, /live/ops with a token. The token is kept in this tab's
// sessionStorage only; a "#token=..." fragment (never sent to a server) is moved there.
"use strict";

const LEVEL_COLOURS = ["#2e9e4f", "#f1c232", "#e69138", "#cc0000", "#7b1fa2"];
const NO_DATA = "#999999";
const INTENSITIES = ["0", "1", "2", "3", "4", "5-", "5+", "6-", "6+", "7"];
const INTENSITY_COLOURS = ["#e8f5e9", "#c8e6c9", "#81c784", "#fff176", "#ffb74d",
  "#ff8a65", "#f4511e", "#d32f2f", "#b71c1c", "#6a1b9a"];
const QUIET_S = 15 * 60;      // a device silent this long is drawn faded
const CELL_DEG = 0.1;
const SVG_NS = "http://www.w3.org/2000/svg";

const state = {
  townships: [], devices: new Map(), health: new Map(), alerts: new Map(),
  quakes: [], stats: null, clockOffset: 0, who: null,
};

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, text) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
};
const svg = (tag, attrs = {}) => {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
};
const now = () => Date.now() / 1000 + state.clockOffset;

// ------------------------------------------------------------------ token

function readToken() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("civic-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("civic-token");
}
let token = readToken();
const authHeaders = () => (token ? { Authorization: "Bearer " + token } : {});

// ------------------------------------------------------------------ SSE over fetch

class Stream {
  constructor(url, handlers, { auth = false } = {}) {
    this.url = url; this.handlers = handlers; this.auth = auth;
    this.lastId = null; this.retryMs = 2000; this.stopped = false; this.ctrl = null;
  }
  start() { this.stopped = false; this.loop(); return this; }
  stop() { this.stopped = true; if (this.ctrl) this.ctrl.abort(); }
  async loop() {
    let backoff = this.retryMs;
    while (!this.stopped) {
      this.ctrl = new AbortController();
      try {
        const headers = { Accept: "text/event-stream", ...(this.auth ? authHeaders() : {}) };
        if (this.lastId) headers["Last-Event-ID"] = this.lastId;
        const resp = await fetch(this.url, { headers, signal: this.ctrl.signal, cache: "no-store" });
        if (resp.status === 401 || resp.status === 403) {
          (this.handlers.denied || (() => {}))(resp.status, await resp.text());
          return;
        }
        if (!resp.ok) throw new Error("HTTP " + resp.status);
        (this.handlers.open || (() => {}))();
        backoff = this.retryMs;
        await this.read(resp.body.getReader());
      } catch (err) {
        if (this.stopped) return;
      }
      (this.handlers.closed || (() => {}))();
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(backoff * 2, 15000);
    }
  }
  async read(reader) {
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += dec.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
        this.dispatch(block);
      }
    }
  }
  dispatch(block) {
    let name = "message", data = "", id = null;
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      const val = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
      if (field === "event") name = val;
      else if (field === "data") data += (data ? "\n" : "") + val;
      else if (field === "id") id = val;
      else if (field === "retry" && /^\d+$/.test(val)) this.retryMs = +val;
    }
    if (id !== null) this.lastId = id;
    if (!data) return;
    const h = this.handlers[name];
    if (h) h(JSON.parse(data));
  }
}

// ------------------------------------------------------------------ map

let proj = null;  // {k: cos(lat0)} ; x = lon*100*k, y = -lat*100

function project(lat, lon) { return [lon * 100 * proj.k, -lat * 100]; }

function fitView() {
  const pts = [...state.devices.values()].map((d) => [d.lat, d.lon]);
  for (const q of state.quakes.filter((q) => !q.ended)) pts.push([q.epicentre.lat, q.epicentre.lon]);
  if (!pts.length) return;
  const lats = pts.map((p) => p[0]), lons = pts.map((p) => p[1]);
  const lat0 = Math.min(...lats) - 0.12, lat1 = Math.max(...lats) + 0.12;
  const lon0 = Math.min(...lons) - 0.12, lon1 = Math.max(...lons) + 0.12;
  if (!proj) proj = { k: Math.cos(((lat0 + lat1) / 2) * Math.PI / 180) };
  const [x0, y1] = project(lat0, lon0), [x1, y0] = project(lat1, lon1);
  $("#map").setAttribute("viewBox", `${x0} ${y0} ${x1 - x0} ${y1 - y0}`);
}

async function drawCoast() {
  const resp = await fetch("taiwan.geojson");
  const gj = await resp.json();
  const g = $("#coast"), line = $("#coastline");
  g.replaceChildren(); line.replaceChildren();
  for (const f of gj.features) {
    const polys = f.geometry.type === "MultiPolygon" ? f.geometry.coordinates : [f.geometry.coordinates];
    let d = "";
    for (const poly of polys) for (const ring of poly) {
      d += ring.map(([lon, lat], i) => (i ? "L" : "M") + project(lat, lon).map((v) => v.toFixed(3)).join(" ")).join("") + "Z";
    }
    g.append(svg("path", { d }));
    line.append(svg("path", { d }));
  }
}

function drawTowns() {
  const g = $("#towns");
  g.replaceChildren();
  for (const t of state.townships) {
    const [x, y] = project(t.lat, t.lon);
    g.append(svg("circle", { cx: x, cy: y, r: 0.35 }));
    const label = svg("text", { x: x + 0.6, y: y - 0.4 });
    label.textContent = t.name.replace(/ (District|Township|City)\b.*$/, "");
    g.append(label);
  }
}

function deviceClass(d) {
  const cls = ["device"];
  const issues = state.health.get(d.id);
  if (issues && Object.keys(issues).length) cls.push("sick");
  if (d.last_seen_s && now() - d.last_seen_s > QUIET_S) cls.push("quiet");
  const q = state.quakes.find((q) => !q.ended);
  if (q && q.stations && q.stations.includes(d.id)) cls.push("in-quake");
  return cls.join(" ");
}

function deviceTitle(d) {
  const lines = [`${d.id} (${d.sensor}) ${d.township}`];
  for (const [hz, v] of Object.entries(d.levels || {})) {
    lines.push(`${hz}: level ${v.level}, ${v.metric} ${v.value === null ? "-" : (+v.value).toFixed(1)}`);
  }
  lines.push(d.last_seen_s ? `last seen ${new Date(d.last_seen_s * 1000).toLocaleTimeString()}` : "not seen yet");
  const issues = state.health.get(d.id) || {};
  for (const [issue, detail] of Object.entries(issues)) lines.push(`health: ${issue} ${detail}`);
  return lines.join("\n");
}

function drawDevice(d) {
  let c = document.getElementById("dev-" + d.id);
  if (!c) {
    const [x, y] = project(d.lat, d.lon);
    c = svg("circle", { id: "dev-" + d.id, cx: x, cy: y, r: 0.9, "data-id": d.id });
    c.append(svg("title"));
    $("#devices").append(c);
  }
  const colour = d.last_seen_s === null && !Object.keys(d.levels || {}).length
    ? NO_DATA : LEVEL_COLOURS[Math.min(d.level || 0, 4)];
  c.setAttribute("fill", colour);
  c.setAttribute("class", deviceClass(d));
  c.setAttribute("data-level", d.level || 0);
  c.firstChild.textContent = deviceTitle(d);
}

function drawDevices() {
  for (const d of state.devices.values()) drawDevice(d);
  $("#device-count").textContent = `${state.devices.size} devices`;
}

// ------------------------------------------------------------------ alerts

function fmtTime(s) { return s ? s.replace(/^\d{4}-\d\d-\d\dT/, "").replace(/[+-]\d\d:\d\d$/, "") : ""; }

function drawAlerts() {
  const body = $("#alerts tbody");
  body.replaceChildren();
  const rows = [...state.alerts.values()].sort((a, b) => (b.level - a.level) || (a.sent < b.sent ? 1 : -1));
  for (const a of rows) {
    const tr = el("tr", { class: "alert sev-" + a.severity, "data-alert-id": a.alert_id, "data-hazard": a.hazard });
    const status = a.status && a.status !== "Actual" ? ` <span class="badge">${a.status}</span>` : "";
    tr.append(el("td", {}, a.hazard), el("td", {}, (a.area || {}).desc || ""),
      el("td", {}, `${a.severity} L${a.level}`));
    const head = el("td"); head.textContent = a.headline; head.insertAdjacentHTML("beforeend", status);
    tr.append(head, el("td", {}, fmtTime(a.sent)));
    const td = el("td", { class: "acks" });
    const acks = a.acknowledgements || [];
    if (acks.length) {
      const last = acks[acks.length - 1];
      td.append(el("span", { class: "acked", title: acks.map((x) => `${x.by} ${x.at} ${x.note || ""}`).join("\n") },
        `✔ ${last.by}`));
    } else {
      const btn = el("button", { class: "ack", type: "button" }, "ack");
      btn.disabled = !(state.who && (state.who.role === "operator" || state.who.role === "admin"));
      btn.title = btn.disabled ? "needs an operator token" : "acknowledge this alert";
      btn.addEventListener("click", () => ack(a.alert_id, btn));
      td.append(btn);
    }
    tr.append(td);
    body.append(tr);
  }
  $("#alert-count").textContent = String(rows.length);
}

async function ack(alertId, btn) {
  btn.disabled = true;
  $("#ack-msg").textContent = "";
  try {
    const resp = await fetch(`alerts/${encodeURIComponent(alertId)}/ack`, {
      method: "POST", headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify({ note: "acknowledged in the console" }),
    });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error(body.detail || body.error || "HTTP " + resp.status);
    const a = state.alerts.get(alertId);
    if (a && !(a.acknowledgements || []).some((x) => x.at === body.at && x.by === body.by)) {
      a.acknowledgements = [...(a.acknowledgements || []), body];
    }
    drawAlerts();
  } catch (err) {
    $("#ack-msg").textContent = "acknowledgement failed: " + err.message;
    btn.disabled = false;
  }
}

// ------------------------------------------------------------------ earthquake

function drawQuake() {
  const q = state.quakes[0];
  $("#quake-none").hidden = !!q;
  $("#quake-body").hidden = !q;
  const cells = $("#cells"), epi = $("#epicentre");
  cells.replaceChildren(); epi.replaceChildren();
  if (!q) return;
  const origin = new Date(q.origin_s * 1000).toLocaleTimeString();
  const status = q.status !== "Actual" ? ` <span class="badge">${q.status}</span>` : "";
  $("#quake-head").innerHTML = "";
  $("#quake-head").textContent = `M${q.magnitude.toFixed(1)} at ${q.epicentre.lat.toFixed(2)}N ${q.epicentre.lon.toFixed(2)}E, ` +
    `depth ${q.depth_km.toFixed(0)} km, origin ${origin}, max intensity ${q.max_intensity}` + (q.ended ? " (ended)" : "");
  $("#quake-head").insertAdjacentHTML("beforeend", status);
  $("#quake").dataset.alertId = q.alert_id;
  const body = $("#quake-towns tbody");
  body.replaceChildren();
  for (const t of q.townships) {
    const tr = el("tr", { "data-township": t.code });
    tr.append(el("td", {}, t.name), el("td", {}, t.intensity || `< ${q.report_min}`));
    tr.append(el("td", { class: "countdown", "data-township": t.code, "data-arrival": t.s_arrival_s }));
    body.append(tr);
  }
  for (const [lat, lon, level] of q.cells) {
    const [x0, y0] = project(lat + CELL_DEG / 2, lon - CELL_DEG / 2);
    const [x1, y1] = project(lat - CELL_DEG / 2, lon + CELL_DEG / 2);
    cells.append(svg("rect", { x: x0, y: y0, width: x1 - x0, height: y1 - y0,
      fill: INTENSITY_COLOURS[INTENSITIES.indexOf(level)] || "#fff", "data-intensity": level }));
  }
  const [ex, ey] = project(q.epicentre.lat, q.epicentre.lon);
  const s = 2.2;
  epi.append(svg("path", { d: `M${ex - s} ${ey - s}L${ex + s} ${ey + s}M${ex - s} ${ey + s}L${ex + s} ${ey - s}`,
    stroke: "#000", "stroke-width": 3 }));
  tick();
}

function tick() {
  const t = now();
  for (const td of document.querySelectorAll("#quake-towns td.countdown")) {
    const left = +td.dataset.arrival - t;
    td.classList.toggle("arrived", left <= 0);
    td.textContent = left > 0 ? `in ${left.toFixed(1)} s` : "arrived";
    td.dataset.secondsLeft = Math.max(0, left).toFixed(1);
  }
}

function onQuake(q) {
  state.quakes = [q, ...state.quakes.filter((x) => x.alert_id !== q.alert_id)]
    .sort((a, b) => (a.ended - b.ended) || (b.origin_s - a.origin_s)).slice(0, 4);
  fitView();
  drawQuake();
}

// ------------------------------------------------------------------ pipeline

function drawStats() {
  const s = state.stats;
  const dl = $("#stats");
  $("#pipeline-locked").hidden = !!s;
  dl.hidden = !s;
  if (!s) return;
  const rates = s.rates || {};
  const rows = [
    ["readings/s", ["air", "water", "seismic"].map((k) => `${k} ${(rates[k] || 0).toFixed(1)}`).join(", ")],
    ["readings seen", Object.values(s.records || {}).reduce((a, b) => a + b, 0).toLocaleString()],
    ["consumer lag", `processors ${s.lag.processors ?? "-"}, alerts ${s.lag.alerts ?? "-"} messages`],
    ["alert service", s.alert_service],
    ["open alerts / quakes", `${s.open_alerts} / ${s.open_quakes}`],
    ["sensor health issues", String([...state.health.values()].filter((v) => Object.keys(v).length).length)],
    ["live clients", `${s.streams} (slow, cut off: ${s.slow_clients})`],
    ["updated", new Date(s.at * 1000).toLocaleTimeString()],
  ];
  dl.replaceChildren();
  for (const [k, v] of rows) dl.append(el("dt", {}, k), el("dd", { "data-stat": k }, v));
}

// ------------------------------------------------------------------ streams

let publicStream = null, opsStream = null;

function startPublic() {
  publicStream = new Stream("../live/console", {
    open: () => { $("#conn").textContent = "live"; $("#conn").className = "conn live"; },
    closed: () => { $("#conn").textContent = "reconnecting…"; $("#conn").className = "conn down"; },
    snapshot: (s) => {
      if (typeof s.now_s === "number") state.clockOffset = s.now_s - Date.now() / 1000;
      state.townships = s.townships;
      state.devices = new Map(s.devices.map((d) => [d.id, d]));
      state.alerts = new Map(s.alerts.map((a) => [a.alert_id, a]));
      state.quakes = s.quakes;
      proj = null; fitView();
      $("#devices").replaceChildren();
      drawCoast(); drawTowns(); drawDevices(); drawAlerts(); drawQuake();
    },
    devices: (m) => {
      for (const d of m.devices) { state.devices.set(d.id, d); drawDevice(d); }
      for (const id of m.removed || []) { state.devices.delete(id); document.getElementById("dev-" + id)?.remove(); }
      $("#device-count").textContent = `${state.devices.size} devices`;
    },
    alert: (a) => {
      if (a.msg_type === "Cancel") state.alerts.delete(a.alert_id); else state.alerts.set(a.alert_id, a);
      drawAlerts();
    },
    ack: (m) => {
      const a = state.alerts.get(m.alert_id);
      if (a) { a.acknowledgements = m.acknowledgements; drawAlerts(); }
    },
    quake: onQuake,
    reset: () => { publicStream.lastId = null; },
  }).start();
}

function startOps() {
  if (opsStream) opsStream.stop();
  state.stats = null; state.health = new Map(); drawStats();
  if (!token) return;
  opsStream = new Stream("../live/ops", {
    snapshot: (s) => {
      state.health = new Map(s.health.map((h) => [h.id, h.issues]));
      state.stats = s.stats; drawStats(); drawDevices();
    },
    health: (m) => {
      for (const h of m.devices) {
        state.health.set(h.id, h.issues);
        const d = state.devices.get(h.id); if (d) drawDevice(d);
      }
    },
    stats: (s) => { state.stats = s; drawStats(); },
    denied: (status) => { $("#who").textContent = `token refused (HTTP ${status})`; },
    reset: () => { opsStream.lastId = null; },
  }, { auth: true }).start();
}

async function whoAmI() {
  state.who = null;
  if (token) {
    const resp = await fetch("me", { headers: authHeaders() }).catch(() => null);
    if (resp && resp.ok) state.who = await resp.json();
  }
  $("#who").textContent = state.who ? `${state.who.name} (${state.who.role})`
    : token ? "token refused" : "no token: public view";
  drawAlerts();
}

$("#auth").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const v = $("#token").value.trim();
  if (!v) return;
  token = v; sessionStorage.setItem("civic-token", v); $("#token").value = "";
  whoAmI(); startOps();
});
$("#token-forget").addEventListener("click", () => {
  token = null; sessionStorage.removeItem("civic-token");
  whoAmI(); startOps();
});

setInterval(tick, 200);
setInterval(() => { for (const d of state.devices.values()) drawDevice(d); }, 30000);
startPublic();
whoAmI();
startOps();
