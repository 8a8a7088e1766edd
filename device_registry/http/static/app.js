// gridwatch dashboard: vanilla JS, no build step. Data from the registry API; the session is an
// HttpOnly cookie set by POST /api/v1/session, so no script (ours or an injected one) can read the
// token. Live updates from the SSE alert stream.
//
// Gateways choose alert ids, device ids, units and messages: every piece of data goes into the
// page through textContent or setAttribute on elements built here, never through HTML text. The
// page's Content-Security-Policy (dashboard.py) enforces it with Trusted Types: an innerHTML
// assignment would throw.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { alerts: [], health: null, stream: null, role: null };
const SVG = "http://www.w3.org/2000/svg";

function build(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value != null && value !== false) el.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));  // a string becomes a text node
  }
  return el;
}

// h("a", {href: "#/x", class: "y"}, "text", otherNode): an element; strings stay text
const h = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);
const svg = (tag, attrs, ...children) => build(document.createElementNS(SVG, tag), attrs, children);

function ago(ms) {
  if (ms == null) return "never";
  const s = Math.round((Date.now() - ms) / 1000);
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

function clock(ms) {
  return ms == null ? "" : new Date(ms).toLocaleString();
}

function span(ms) {
  const neg = ms < 0, s = Math.floor(Math.abs(ms) / 1000);
  const hr = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const txt = hr ? `${hr} h ${m} min` : m ? `${m} min ${r} s` : `${r} s`;
  return neg ? `overdue by ${txt}` : `${txt} left`;
}

function text(value) {
  return value == null ? "" : String(value);
}

async function api(path, options) {
  const r = await fetch(path, { credentials: "same-origin", ...options });
  if (r.status === 401) {
    const body = await r.json().catch(() => ({}));
    showLogin();
    throw Object.assign(new Error(body.detail || "not logged in"), { auth: true });
  }
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    throw new Error(body.detail || body.title || `HTTP ${r.status}`);
  }
  return r.json();
}

function send(method, path, body) {
  // JSON only: the registry refuses cookie-authenticated writes in any other type (CSRF)
  const options = { method };
  if (body !== undefined) {
    options.headers = { "Content-Type": "application/json" };
    options.body = JSON.stringify(body);
  }
  return api(path, options);
}

// ---- login --------------------------------------------------------------------------------

function showLogin() {
  for (const s of ["#health", "#alerts", "#device"]) $(s).hidden = true;
  $("#login").hidden = false;
  $("#logout").hidden = true;
  if (state.stream) { state.stream.close(); state.stream = null; }
  setLive("offline", false);
}

function loggedIn(who) {
  state.role = who.role;
  $("#login").hidden = true;
  $("#logout").hidden = false;
  $("#who").textContent = `${who.name} (${who.role})`;
  // the stream is for operators and platforms; a maintenance crew refreshes by the clock
  if (["operator", "platform", "admin"].includes(who.role)) startStream();
  route();
}

$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = $("#token");
  try {
    const who = await send("POST", "/api/v1/session", { token: input.value.trim() });
    input.value = "";
    $("#login-error").textContent = "";
    loggedIn(who);
  } catch (e) {
    $("#login-error").textContent = e.message;
  }
});

$("#logout").addEventListener("click", async () => {
  try { await send("DELETE", "/api/v1/session"); } catch (e) { console.error(e); }
  $("#who").textContent = "";
  showLogin();
});

// ---- maintenance: health ------------------------------------------------------------------

function reasonList(reasons) {
  return reasons.length ? h("ul", { class: "reasons" }, ...reasons.map((r) => h("li", {}, r))) : null;
}

function deviceCard(d) {
  const cls = d.healthy ? "online" : d.status === "online" ? "unhealthy" : d.status;
  return h("article", { class: `card ${cls}`, "data-device": d.id },
    h("h5", {},
      h("a", { href: `#/device/${encodeURIComponent(d.id)}` }, d.device),
      h("span", { class: `badge ${d.status}` }, d.status)),
    reasonList(d.reasons),
    d.since ? h("div", { class: "meta" }, `${d.status} since ${clock(d.since)}`) : null,
    h("div", { class: "meta" },
      `${d.profile || "unknown profile"} · gateway ${d.gateway} · last seen ${ago(d.last_seen)}`));
}

// one card per problem the API found (a gateway or a bus that accounts for several devices),
// its devices listed inside it; single devices get their own card
function problemCard(p, devices) {
  const cls = p.status === "online" ? "unhealthy" : p.status === "never_connected" ? "offline" : p.status;
  const title = p.kind === "bus" ? `bus ${p.bus} · gateway ${p.gateway}` : `gateway ${p.gateway}`;
  const members = p.devices.map((id) => {
    const d = devices.get(id);
    return h("li", { "data-member": id },
      h("a", { href: `#/device/${encodeURIComponent(id)}` }, d ? d.device : id),
      d && d.reasons.length ? ` · ${d.reasons.join("; ")}` : "");
  });
  return h("article", { class: `card ${cls}`, "data-problem": p.id, "data-kind": p.kind },
    h("h5", {}, title, " ", h("span", { class: `badge ${cls}` }, p.status.replace("_", " "))),
    h("div", {}, p.reason),
    p.since ? h("div", { class: "meta" }, `since ${clock(p.since)}`) : null,
    members.length ? h("ul", { class: "reasons members" }, ...members) : null);
}

function grouped(devices) {
  const out = new Map();
  for (const d of devices) {
    const district = d.district || "(no district)", grid = d.grid || "(no grid cell)";
    if (!out.has(district)) out.set(district, new Map());
    const cells = out.get(district);
    if (!cells.has(grid)) cells.set(grid, []);
    cells.get(grid).push(d);
  }
  return out;
}

function byPlace(title, list) {
  const parts = [h("h2", { class: "group" }, title)];
  for (const [district, cells] of grouped(list)) {
    parts.push(h("h3", { class: "district" }, district));
    for (const [grid, devs] of cells) {
      parts.push(h("h4", { class: "grid" }, grid), h("div", { class: "cards" }, ...devs.map(deviceCard)));
    }
  }
  return parts;
}

async function loadHealth() {
  const hr = await api("/api/v1/health");
  state.health = hr;
  const s = hr.summary, devices = new Map(hr.devices.map((d) => [d.id, d]));
  const causes = hr.problems.filter((p) => p.kind !== "device");
  const single = hr.problems.filter((p) => p.kind === "device").map((p) => devices.get(p.id)).filter(Boolean);
  const n = hr.problems.length;
  // devices and gateways are counted apart, never added together
  $("#health-summary").textContent =
    `${n === 0 ? "no problems" : n === 1 ? "1 problem" : `${n} problems`} · ` +
    `${s.devices_unhealthy} of ${s.devices} devices unhealthy · ` +
    `${s.gateways_unhealthy} of ${s.gateways} gateways unhealthy`;
  const parts = [];
  if (causes.length) {
    parts.push(h("h2", { class: "group" }, "Gateways and buses"),
               h("div", { class: "cards" }, ...causes.map((p) => problemCard(p, devices))));
  }
  if (single.length) parts.push(...byPlace("Unhealthy", single));
  const healthy = hr.devices.filter((d) => d.healthy);
  if (healthy.length) parts.push(...byPlace("Healthy", healthy));
  if (!parts.length) parts.push(h("p", { class: "empty" }, "No devices known yet."));
  $("#health-list").replaceChildren(...parts);
}

// ---- operators: alerts --------------------------------------------------------------------

const NEXT = { open: ["ack", "resolve"], acknowledged: ["resolve"], cleared: ["resolve", "close"],
               resolved: ["close"] };
const LABEL = { ack: "Acknowledge", resolve: "Resolve", close: "Close" };

function alertCard(a, sizes) {
  const n = sizes.get(a.incident_id) || 1;
  const acts = NEXT[a.stage] || [];
  const device = `${a.gateway}:${a.device}`;
  return h("article", { class: `card ${a.severity} ${a.overdue ? "overdue" : ""}`, "data-alert": a.alert_id },
    h("h5", {}, a.category, " ",
      h("span", { class: `badge ${a.severity}` }, a.severity), " ",
      h("span", { class: "badge stage", "data-stage": a.stage }, a.stage), " ",
      a.overdue ? h("span", { class: "badge overdue" }, "overdue") : null,
      n > 1 ? h("span", { class: "badge incident", title: "alerts of one incident" }, `incident of ${n}`) : null),
    h("div", {}, `${a.message || a.rule}: ${text(a.value)} ${a.unit}`),
    h("div", { class: "meta" },
      h("a", { href: `#/device/${encodeURIComponent(device)}` }, a.device),
      ` · ${a.district} ${a.grid} · raised ${ago(a.raised_at)} · incident ${a.incident_id}`),
    a.acked_by ? h("div", { class: "meta" }, `acknowledged by ${a.acked_by} ${ago(a.acked_at)}`) : null,
    h("div", {}, a.time_left_ms == null ? null :
      h("span", { class: `timeleft ${a.time_left_ms < 0 ? "overdue" : ""}`, "data-due": a.due_at },
        span(a.due_at - Date.now()))),
    h("div", { class: "actions" }, ...(acts.length ? [
      h("input", { placeholder: "note (optional)", "aria-label": "note" }),
      ...acts.map((act) => h("button", { "data-act": act, class: act === "ack" ? null : "secondary" }, LABEL[act])),
    ] : [])),
    h("p", { class: "error", role: "alert" }));
}

async function loadAlerts() {
  const list = await api("/api/v1/alerts/lifecycle?stage=open,acknowledged,cleared,resolved");
  state.alerts = list;
  const waiting = list.filter((a) => a.stage === "open" || a.stage === "acknowledged");
  $("#alerts-summary").textContent =
    `${waiting.length} waiting · ${list.filter((a) => a.overdue).length} overdue · ${list.length} not closed`;
  // one incident's alerts side by side, newest incident first: crews go to incidents
  const sizes = new Map(), first = new Map();
  list.forEach((a, i) => {
    sizes.set(a.incident_id, (sizes.get(a.incident_id) || 0) + 1);
    if (!first.has(a.incident_id)) first.set(a.incident_id, i);
  });
  const ordered = [...list].sort((x, y) => first.get(x.incident_id) - first.get(y.incident_id));
  $("#alerts-list").replaceChildren(list.length
    ? h("div", { class: "cards" }, ...ordered.map((a) => alertCard(a, sizes)))
    : h("p", { class: "empty" }, "No open alerts."));
}

$("#alerts-list").addEventListener("click", async (ev) => {
  const btn = ev.target.closest("button[data-act]");
  if (!btn) return;
  const card = btn.closest("article[data-alert]");
  const note = card.querySelector(".actions input")?.value || "";
  btn.disabled = true;
  try {
    await send("POST", `/api/v1/alerts/${encodeURIComponent(card.dataset.alert)}/${btn.dataset.act}`, { note });
  } catch (e) {
    card.querySelector(".error").textContent = e.message;
    btn.disabled = false;
    return;
  }
  await loadAlerts();
});

setInterval(() => {
  for (const el of document.querySelectorAll(".timeleft[data-due]")) {
    const left = Number(el.dataset.due) - Date.now();
    el.textContent = span(left);
    el.classList.toggle("overdue", left < 0);
  }
}, 1000);

// ---- device detail ------------------------------------------------------------------------

function chart(points) {
  const vals = points.filter((p) => typeof p.value === "number");
  if (vals.length < 2) return h("p", { class: "empty" }, "Not enough readings for a chart.");
  const W = 600, H = 160, P = 24;
  const t0 = vals[0].ts, t1 = vals[vals.length - 1].ts;
  let lo = Math.min(...vals.map((p) => p.value)), hi = Math.max(...vals.map((p) => p.value));
  if (hi === lo) { hi += 1; lo -= 1; }
  const x = (t) => P + ((t - t0) / Math.max(t1 - t0, 1)) * (W - 2 * P);
  const y = (v) => H - P - ((v - lo) / (hi - lo)) * (H - 2 * P);
  const line = vals.map((p) => `${x(p.ts).toFixed(1)},${y(p.value).toFixed(1)}`).join(" ");
  return svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" },
    svg("polyline", { fill: "none", stroke: "#1a73e8", "stroke-width": 2, points: line }),
    svg("text", { x: P, y: 14, "font-size": 11, fill: "#5f6368" }, hi.toPrecision(4)),
    svg("text", { x: P, y: H - 6, "font-size": 11, fill: "#5f6368" }, lo.toPrecision(4)));
}

function facts(pairs) {
  return h("dl", { class: "facts" }, ...pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

async function loadDevice(id) {
  const d = await api(`/api/v1/devices/${encodeURIComponent(id)}`);
  const hr = state.health || await api("/api/v1/health").catch(() => null);
  const hd = hr && hr.devices.find((x) => x.id === d.id);
  const status = hd ? hd.status : d.status;
  const rows = [
    ["Registry id", d.id], ["Gateway", d.gateway],
    ["Location", `${d.district} ${d.street || ""} ${d.grid}`],
    ["Profile", (hd ? hd.profile : d.profile) || ""],
    ["Firmware", (hd ? hd.firmware : d.firmware) || "unknown"],
    ["Last seen", ago(d.last_seen)],
  ];
  const labels = Object.entries(d.labels || {});
  if (labels.length) rows.push(["Labels", labels.map(([k, v]) => `${k}=${v}`).join(", ")]);
  if (hd) {
    rows.push(["Health", hd.reasons.length ? hd.reasons.join("; ") : "healthy"],
      ["Read success", hd.success_rate == null ? "n/a" : `${Math.round(hd.success_rate * 100)} %`],
      ["Response time", hd.response_ms == null ? "n/a" : `${hd.response_ms.toFixed(1)} ms`]);
  }
  const parts = [h("h2", {}, d.device, " ", h("span", { class: `badge ${status}` }, status)),
                 facts(rows), h("h3", {}, "Recent readings")];
  const since = Date.now() - 3600 * 1000;
  for (const [point, v] of Object.entries(d.values || {})) {
    parts.push(h("h4", { class: "grid" }, `${point}: ${text(v.value)} ${text(v.unit)} (${text(v.quality)})`));
    try {
      const r = await api(`/api/v1/devices/${encodeURIComponent(d.id)}/readings?point=${encodeURIComponent(point)}&since=${since}`);
      parts.push(chart(r.readings));
    } catch (e) {
      parts.push(h("p", { class: "empty" }, e.message));
    }
  }
  $("#device-detail").replaceChildren(...parts);
}

// ---- routing and live updates -------------------------------------------------------------

async function route() {
  if (!$("#login").hidden) return;
  const hash = location.hash || "#/health";
  for (const s of ["#health", "#alerts", "#device"]) $(s).hidden = true;
  $("#nav-health").classList.toggle("active", hash.startsWith("#/health"));
  $("#nav-alerts").classList.toggle("active", hash.startsWith("#/alerts"));
  try {
    if (hash.startsWith("#/device/")) {
      $("#device").hidden = false;
      await loadDevice(decodeURIComponent(hash.slice("#/device/".length)));
    } else if (hash.startsWith("#/alerts")) {
      $("#alerts").hidden = false;
      await loadAlerts();
    } else {
      $("#health").hidden = false;
      await loadHealth();
    }
  } catch (e) {
    if (!e.auth) console.error(e);
  }
}

let pending = null;
function refreshSoon() {
  // a burst of events (an incident of five alerts) refreshes once
  if (pending) return;
  pending = setTimeout(() => { pending = null; route(); }, 150);
}

function setLive(label, on) {
  $("#live").textContent = label;
  $("#live").classList.toggle("on", on);
}

function startStream() {
  if (state.stream) state.stream.close();
  const es = new EventSource("/api/v1/alerts/stream");
  es.addEventListener("open", () => setLive("live", true));
  es.addEventListener("error", () => {
    // CLOSED: the server refused or ended it for good (logged out, token revoked)
    if (es.readyState === EventSource.CLOSED) { setLive("offline", false); refreshSoon(); }
    else setLive("reconnecting", false);
  });
  for (const kind of ["alert", "lifecycle", "escalation"]) es.addEventListener(kind, refreshSoon);
  state.stream = es;
}

window.addEventListener("hashchange", route);
setInterval(() => { if (location.hash.startsWith("#/health") || !location.hash) route(); }, 10000);

(async function start() {
  // the cookie is HttpOnly: ask the registry whether it holds a session
  try {
    loggedIn(await api("/api/v1/session"));
  } catch (e) {
    showLogin();
  }
})();
