// gridwatch dashboard: vanilla JS, no build step. Data from the registry API with the token
// kept in the gw_token cookie; live updates from the SSE alert stream.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { alerts: [], health: null, stream: null };

function esc(text) {
  const d = document.createElement("div");
  d.textContent = text == null ? "" : String(text);
  return d.innerHTML;
}

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
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const txt = h ? `${h} h ${m} min` : m ? `${m} min ${r} s` : `${r} s`;
  return neg ? `overdue by ${txt}` : `${txt} left`;
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

// ---- login --------------------------------------------------------------------------------

function showLogin() {
  for (const s of ["#health", "#alerts", "#device"]) $(s).hidden = true;
  $("#login").hidden = false;
  $("#logout").hidden = true;
}

$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const token = $("#token").value.trim();
  document.cookie = `gw_token=${encodeURIComponent(token)}; path=/; SameSite=Strict`;
  try {
    await api("/api/v1/alerts/lifecycle?limit=1");
  } catch (e) {
    // a maintenance token may not read alerts: try health before refusing
    try { await api("/api/v1/health?unhealthy=true"); } catch (e2) {
      $("#login-error").textContent = e2.message;
      document.cookie = "gw_token=; path=/; max-age=0";
      return;
    }
  }
  $("#login").hidden = true;
  $("#logout").hidden = false;
  startStream();
  route();
});

$("#logout").addEventListener("click", () => {
  document.cookie = "gw_token=; path=/; max-age=0";
  if (state.stream) state.stream.close();
  showLogin();
});

// ---- maintenance: health ------------------------------------------------------------------

function deviceCard(d) {
  const cls = d.healthy ? "online" : d.status === "online" ? "unhealthy" : d.status;
  const since = d.since ? `<div class="meta">${esc(d.status)} since ${esc(clock(d.since))}</div>` : "";
  const reasons = d.reasons.length
    ? `<ul class="reasons">${d.reasons.map((r) => `<li>${esc(r)}</li>`).join("")}</ul>` : "";
  return `<article class="card ${cls}" data-device="${esc(d.id)}">
    <h5><a href="#/device/${encodeURIComponent(d.id)}">${esc(d.device)}</a>
      <span class="badge ${esc(d.status)}">${esc(d.status)}</span></h5>
    ${reasons}${since}
    <div class="meta">${esc(d.profile || "unknown profile")} · gateway ${esc(d.gateway)} ·
      last seen ${esc(ago(d.last_seen))}</div></article>`;
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

async function loadHealth() {
  const h = await api("/api/v1/health");
  state.health = h;
  const bad = h.devices.filter((d) => !d.healthy), good = h.devices.length - bad.length;
  $("#health-summary").textContent =
    `${bad.length} unhealthy, ${good} healthy devices · ${h.gateways.filter((g) => !g.healthy).length} gateways with findings`;
  let html = "";
  const gws = h.gateways.filter((g) => !g.healthy);
  if (gws.length) {
    html += `<h3 class="district">Gateways</h3><div class="cards">${gws.map((g) => `
      <article class="card ${g.status === "online" ? "unhealthy" : g.status}">
        <h5>${esc(g.id)} <span class="badge ${esc(g.status)}">${esc(g.status)}</span></h5>
        <ul class="reasons">${g.reasons.map((r) => `<li>${esc(r)}</li>`).join("")}</ul>
      </article>`).join("")}</div>`;
  }
  for (const [title, list] of [["Unhealthy", bad], ["Healthy", h.devices.filter((d) => d.healthy)]]) {
    if (!list.length) continue;
    html += `<h2 class="group">${title}</h2>`;
    for (const [district, cells] of grouped(list)) {
      html += `<h3 class="district">${esc(district)}</h3>`;
      for (const [grid, devs] of cells) {
        html += `<h4 class="grid">${esc(grid)}</h4><div class="cards">${devs.map(deviceCard).join("")}</div>`;
      }
    }
  }
  $("#health-list").innerHTML = html || `<p class="empty">No devices known yet.</p>`;
}

// ---- operators: alerts --------------------------------------------------------------------

const NEXT = { open: ["ack", "resolve"], acknowledged: ["resolve"], cleared: ["resolve", "close"],
               resolved: ["close"] };
const LABEL = { ack: "Acknowledge", resolve: "Resolve", close: "Close" };

function alertCard(a, sizes) {
  const n = sizes.get(a.incident_id) || 1;
  const incident = n > 1 ? `<span class="badge incident" title="alerts of one incident">incident of ${n}</span>` : "";
  const left = a.time_left_ms == null ? "" :
    `<span class="timeleft ${a.time_left_ms < 0 ? "overdue" : ""}" data-due="${a.due_at}">${esc(span(a.due_at - Date.now()))}</span>`;
  const buttons = (NEXT[a.stage] || []).map((act) =>
    `<button data-act="${act}" data-id="${esc(a.alert_id)}" class="${act === "ack" ? "" : "secondary"}">${LABEL[act]}</button>`).join("");
  const who = a.acked_by ? `<div class="meta">acknowledged by ${esc(a.acked_by)} ${esc(ago(a.acked_at))}</div>` : "";
  return `<article class="card ${esc(a.severity)} ${a.overdue ? "overdue" : ""}" data-alert="${esc(a.alert_id)}">
    <h5>${esc(a.category)} <span class="badge ${esc(a.severity)}">${esc(a.severity)}</span>
      <span class="badge stage" data-stage="${esc(a.stage)}">${esc(a.stage)}</span>
      ${a.overdue ? `<span class="badge overdue">overdue</span>` : ""}${incident}</h5>
    <div>${esc(a.message || a.rule)}: ${esc(a.value)} ${esc(a.unit)}</div>
    <div class="meta"><a href="#/device/${encodeURIComponent(a.gateway + ":" + a.device)}">${esc(a.device)}</a>
      · ${esc(a.district)} ${esc(a.grid)} · raised ${esc(ago(a.raised_at))} · incident ${esc(a.incident_id)}</div>
    ${who}<div>${left}</div>
    <div class="actions">${buttons ? `<input placeholder="note (optional)" aria-label="note">${buttons}` : ""}</div>
  </article>`;
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
  $("#alerts-list").innerHTML = list.length
    ? `<div class="cards">${ordered.map((a) => alertCard(a, sizes)).join("")}</div>`
    : `<p class="empty">No open alerts.</p>`;
}

$("#alerts-list").addEventListener("click", async (ev) => {
  const btn = ev.target.closest("button[data-act]");
  if (!btn) return;
  const note = btn.closest(".actions").querySelector("input")?.value || "";
  btn.disabled = true;
  try {
    await api(`/api/v1/alerts/${encodeURIComponent(btn.dataset.id)}/${btn.dataset.act}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ note }),
    });
  } catch (e) {
    alert(e.message);
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
  if (vals.length < 2) return `<p class="empty">Not enough readings for a chart.</p>`;
  const W = 600, H = 160, P = 24;
  const t0 = vals[0].ts, t1 = vals[vals.length - 1].ts;
  let lo = Math.min(...vals.map((p) => p.value)), hi = Math.max(...vals.map((p) => p.value));
  if (hi === lo) { hi += 1; lo -= 1; }
  const x = (t) => P + ((t - t0) / Math.max(t1 - t0, 1)) * (W - 2 * P);
  const y = (v) => H - P - ((v - lo) / (hi - lo)) * (H - 2 * P);
  const line = vals.map((p) => `${x(p.ts).toFixed(1)},${y(p.value).toFixed(1)}`).join(" ");
  return `<svg class="chart" viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" role="img">
    <polyline fill="none" stroke="#1a73e8" stroke-width="2" points="${line}"/>
    <text x="${P}" y="14" font-size="11" fill="#5f6368">${hi.toPrecision(4)}</text>
    <text x="${P}" y="${H - 6}" font-size="11" fill="#5f6368">${lo.toPrecision(4)}</text></svg>`;
}

async function loadDevice(id) {
  const d = await api(`/api/v1/devices/${encodeURIComponent(id)}`);
  const h = state.health || await api("/api/v1/health").catch(() => null);
  const hd = h && h.devices.find((x) => x.id === d.id);
  let html = `<h2>${esc(d.device)} <span class="badge ${esc(hd ? hd.status : d.status)}">${esc(hd ? hd.status : d.status)}</span></h2>
    <dl class="facts"><dt>Registry id</dt><dd>${esc(d.id)}</dd><dt>Gateway</dt><dd>${esc(d.gateway)}</dd>
    <dt>Location</dt><dd>${esc(d.district)} ${esc(d.street || "")} ${esc(d.grid)}</dd>
    <dt>Profile</dt><dd>${esc(hd ? hd.profile : d.profile || "")}</dd>
    <dt>Firmware</dt><dd>${esc(hd ? hd.firmware : d.firmware || "") || "unknown"}</dd>
    <dt>Last seen</dt><dd>${esc(ago(d.last_seen))}</dd>`;
  if (hd) {
    html += `<dt>Health</dt><dd>${hd.reasons.length ? esc(hd.reasons.join("; ")) : "healthy"}</dd>
      <dt>Read success</dt><dd>${hd.success_rate == null ? "n/a" : Math.round(hd.success_rate * 100) + " %"}</dd>
      <dt>Response time</dt><dd>${hd.response_ms == null ? "n/a" : hd.response_ms.toFixed(1) + " ms"}</dd>`;
  }
  html += `</dl><h3>Recent readings</h3>`;
  const since = Date.now() - 3600 * 1000;
  for (const [point, v] of Object.entries(d.values || {})) {
    html += `<h4 class="grid">${esc(point)}: ${esc(v.value)} ${esc(v.unit)} (${esc(v.quality)})</h4>`;
    try {
      const r = await api(`/api/v1/devices/${encodeURIComponent(d.id)}/readings?point=${encodeURIComponent(point)}&since=${since}`);
      html += chart(r.readings);
    } catch (e) {
      html += `<p class="empty">${esc(e.message)}</p>`;
    }
  }
  $("#device-detail").innerHTML = html;
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

function startStream() {
  if (state.stream) state.stream.close();
  const es = new EventSource("/api/v1/alerts/stream");
  es.onopen = () => { $("#live").textContent = "live"; $("#live").classList.add("on"); };
  es.onerror = () => { $("#live").textContent = "reconnecting"; $("#live").classList.remove("on"); };
  for (const kind of ["alert", "lifecycle", "escalation"]) es.addEventListener(kind, refreshSoon);
  state.stream = es;
}

window.addEventListener("hashchange", route);
setInterval(() => { if (location.hash.startsWith("#/health") || !location.hash) route(); }, 10000);

(async function start() {
  if (!document.cookie.includes("gw_token=")) { showLogin(); return; }
  $("#logout").hidden = false;
  startStream();
  await route();
})();
