// gridwatch dashboard: vanilla JS, no build step. Data from the registry API; the session is an
// HttpOnly cookie set by POST /api/v1/session, so no script (ours or an injected one) can read the
// token. Live updates from the SSE alert stream for the roles that may read it; the others poll.
//
// Gateways choose alert ids, device ids, units and messages: every piece of data goes into the
// page through textContent or setAttribute on elements built here, never through HTML text. The
// page's Content-Security-Policy (dashboard.py) enforces it with Trusted Types: an innerHTML
// assignment would throw.
//
// Each role sees what it may do: the session answer lists the calls the role may make ("may",
// read from the same declarations the API enforces), and a button is only drawn for a call in it.
// Failures are said in the card they concern, in words for the person at the screen: never a
// browser pop-up, never the API's developer text for a refusal.
//
// Chinese first: every word a person reads goes through t() (i18n.js), whose catalogue the
// registry serves; the catalogue's item names come from the API (name.zh / name.en), not from
// this page's catalogue. The map is in map.js.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = {
  alerts: [], health: null, stream: null, role: null, may: new Set(), profiles: new Map(),
  inputs: new Map(), msgs: new Map(), updated: null, overriding: new Set(), listed: 100,
  healthPaged: null,
};
const SVG = "http://www.w3.org/2000/svg";
const POLL_MS = 10000;

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
  if (ms == null) return t("never");
  const s = Math.round((Date.now() - ms) / 1000);
  if (s < 90) return t("{n} s ago", { n: s });
  if (s < 5400) return t("{n} min ago", { n: Math.round(s / 60) });
  return t("{n} h ago", { n: Math.round(s / 3600) });
}

function clock(ms) {
  return ms == null ? "" : new Date(ms).toLocaleString(I18N.lang);
}

function hhmm(ms, seconds) {
  const o = { hour: "2-digit", minute: "2-digit", ...(seconds ? { second: "2-digit" } : {}) };
  return new Date(ms).toLocaleTimeString(I18N.lang, o);
}

function span(ms) {
  const neg = ms < 0, s = Math.floor(Math.abs(ms) / 1000);
  const hr = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const txt = hr ? t("{h} h {m} min", { h: hr, m }) : m ? t("{m} min {s} s", { m, s: r })
    : t("{s} s", { s: r });
  return neg ? t("overdue by {time}", { time: txt }) : t("{time} left", { time: txt });
}

// the words for the API's codes: severities, stages, device and gateway states
const SEVERITY_WORDS = { critical: N_("critical"), major: N_("major"), minor: N_("minor"), info: N_("info") };
const STAGE_WORDS = {
  // the city's case workflow (立案 派遣 处置 核查 结案)
  reported: N_("reported"), filed: N_("filed"), dispatched: N_("dispatched"), disposed: N_("disposed"),
  verified: N_("verified"), closed: N_("closed"),
};
const STATUS_WORDS = {
  online: N_("online"), offline: N_("offline"), stale: N_("stale"), new: N_("new"), silent: N_("silent"),
  unhealthy: N_("unhealthy"), never_connected: N_("never connected"), not_ingesting: N_("not ingesting"),
  retired: N_("retired"), degraded: N_("degraded"), ok: N_("ok"), down: N_("down"),
};
const QUALITY_WORDS = { good: N_("good"), stale: N_("stale value"), comm_error: N_("no answer"),
                        out_of_range: N_("out of range"), invalid: N_("invalid") };
const qualityWord = (q) => (QUALITY_WORDS[q] ? t(QUALITY_WORDS[q]) : text(q));
const severityWord = (s) => (SEVERITY_WORDS[s] ? t(SEVERITY_WORDS[s]) : text(s));
const stageWord = (s) => (STAGE_WORDS[s] ? t(STAGE_WORDS[s]) : text(s));
const statusWord = (s) => (STATUS_WORDS[s] ? t(STATUS_WORDS[s]) : text(s).replace("_", " "));

// a name the API gives in both languages ({zh, en}), in the reader's
function named(n) {
  if (n == null) return "";
  if (typeof n === "string") return n;
  return (I18N.lang.startsWith("zh") ? n.zh || n.en : n.en || n.zh) || "";
}

function text(value) {
  return value == null ? "" : String(value);
}

// ---- values: shown with their point's decimals (from the profile), on/off as words ----------

function shownOf(profile, point) {
  const p = profile && state.profiles.get(profile);
  return (p && p.shown && p.shown[point]) || null;
}

function decimalsFor(v) {
  // a point no profile describes: enough digits to tell values apart, not float noise
  const a = Math.abs(v);
  return a >= 1000 ? 0 : a >= 100 ? 1 : a >= 1 ? 2 : 3;
}

function fmt(value, shown) {
  if (value == null) return t("no value");
  if (typeof value === "boolean" || (shown && shown.onoff && typeof value === "number")) {
    return value ? t("on") : t("off");
  }
  if (typeof value !== "number") return String(value);
  const d = shown && shown.decimals != null ? shown.decimals : decimalsFor(value);
  return value.toFixed(d);
}

function withUnit(value, unit, shown) {
  const v = fmt(value, shown);
  return unit && typeof value === "number" && !(shown && shown.onoff) ? `${v} ${unit}` : v;
}

// ---- talking to the API, and saying what went wrong in words --------------------------------

// one call to the API: the answer once it is fine, else an error that says what in words
async function request(path, options) {
  let r;
  try {
    const headers = { "Accept-Language": I18N.lang, ...((options && options.headers) || {}) };
    r = await fetch(path, { credentials: "same-origin", ...options, headers });
  } catch (e) {
    throw Object.assign(new Error(t("the registry cannot be reached")), { network: true });
  }
  if (r.status === 401) {
    const body = await r.json().catch(() => ({}));
    showLogin();
    throw Object.assign(new Error(body.detail || t("not logged in")), { auth: true, status: 401 });
  }
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    throw Object.assign(new Error(body.detail || body.title || `HTTP ${r.status}`), { status: r.status });
  }
  return r;
}

async function api(path, options) {
  return (await request(path, options)).json();
}

// a list a page at a time (docs/registry.md, "Lists and pages"): the rows, whether a next page
// exists (the Link header), and how many rows match on all pages (X-Total-Count)
async function apiPage(path) {
  const r = await request(path);
  const total = r.headers.get("X-Total-Count");
  return { body: await r.json(), next: /<[^>]*>;\s*rel="?next"?/.test(r.headers.get("Link") || ""),
           total: total == null ? null : Number(total) };
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

function sentence(s) {
  const x = text(s).trim();
  if (!x) return "";
  if (/[。！？]$/.test(x)) return x;  // Chinese, already a sentence
  return x[0].toUpperCase() + x.slice(1) + (/[.!?]$/.test(x) ? "" : ".");
}

function said(e, doing) {
  // what a person reads when `doing` ("acknowledge this alert", already in the page's
  // language) failed
  if (e.network) return t("Could not {doing}: the registry cannot be reached. Check the connection and try again.", { doing });
  if (e.status === 403) return t("Your role ({role}) may not {doing}.", { role: state.role, doing });
  if (e.status === 404) return t("Could not {doing}: it is no longer there. The list is refreshed.", { doing });
  if (e.status === 409 || e.status === 422) return sentence(e.message);
  if (e.status >= 500) return t("Could not {doing}: the registry had a problem. Try again in a minute.", { doing });
  return t("Could not {doing}: {why}", { doing, why: sentence(e.message) });
}

function can(call) {
  return state.may.has(call);
}

const ROLE_WORDS = { admin: N_("admin"), installer: N_("installer"), maintenance: N_("maintenance"),
                     operator: N_("operator"), platform: N_("platform") };
const roleWord = (r) => (ROLE_WORDS[r] ? t(ROLE_WORDS[r]) : text(r));

// ---- login --------------------------------------------------------------------------------

const PAGES = ["#health", "#alerts", "#device", "#nothing", "#map-box"];

function showLogin() {
  for (const s of PAGES) $(s).hidden = true;
  forgetMap();
  $("#login").hidden = false;
  $("#logout").hidden = true;
  for (const a of ["#nav-health", "#nav-alerts"]) $(a).hidden = true;
  if (state.stream) { state.stream.close(); state.stream = null; }
  state.may = new Set();
  setLive(t("offline"), "off", t("not logged in"));
}

function loggedIn(who) {
  state.who = who;
  state.role = who.role;
  state.may = new Set(who.may || []);
  $("#login").hidden = true;
  $("#logout").hidden = false;
  $("#who").textContent = `${who.name} (${roleWord(who.role)})`;
  $("#nav-health").hidden = !can("GET /api/v1/health");
  $("#nav-alerts").hidden = !can("GET /api/v1/alerts/lifecycle");
  api("/api/v1/profiles").then((list) => {
    state.profiles = new Map(list.map((p) => [p.id, p]));
  }).catch(() => {});
  // the stream is for the roles the API lets read it; the others refresh by the clock, and the
  // header says when the page was last updated, not that something is broken
  if (can("GET /api/v1/alerts/stream")) startStream();
  else setLive(t("updating…"), "poll", t("this page refreshes every {n} s", { n: POLL_MS / 1000 }));
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
    $("#login-error").textContent = e.status === 401
      ? t("This token is unknown or has been revoked. Check it, or ask an administrator for a new one.")
      : said(e, t("log in"));
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

const unknownProfile = () => t("unknown profile");

function deviceCard(d) {
  const cls = d.healthy ? "online" : d.status === "online" ? "unhealthy" : d.status;
  return h("article", { class: `card ${cls}`, "data-device": d.id },
    h("h5", {},
      h("a", { href: `#/device/${encodeURIComponent(d.id)}` }, d.device),
      h("span", { class: `badge ${d.status}` }, statusWord(d.status))),
    reasonList(d.reasons),
    d.since ? h("div", { class: "meta" }, t("{status} since {when}", { status: statusWord(d.status), when: clock(d.since) })) : null,
    h("div", { class: "meta" }, t("{profile} · gateway {gateway} · last seen {ago}", {
      profile: d.profile || unknownProfile(), gateway: d.gateway, ago: ago(d.last_seen) })));
}

// one card per problem the API found (a gateway or a bus that accounts for several devices),
// its devices listed inside it; single devices get their own card
function problemCard(p, devices) {
  const cls = p.status === "online" ? "unhealthy" : p.status === "never_connected" ? "offline" : p.status;
  const title = p.kind === "centre" ? t("the centre")
    : p.kind === "bus" ? t("bus {bus} · gateway {gateway}", { bus: p.bus, gateway: p.gateway })
      : t("gateway {gateway}", { gateway: p.gateway });
  const members = p.devices.map((id) => {
    const d = devices.get(id);
    // under the centre every device's reason is the centre's: said once, in the card
    return h("li", { "data-member": id },
      h("a", { href: `#/device/${encodeURIComponent(id)}` }, d ? d.device : id),
      d && d.reasons.length && p.kind !== "centre" ? ` · ${d.reasons.join("; ")}` : "");
  });
  return h("article", { class: `card ${cls}`, "data-problem": p.id, "data-kind": p.kind },
    h("h5", {}, title, " ", h("span", { class: `badge ${cls}` }, statusWord(p.status))),
    h("div", {}, p.reason),
    p.since ? h("div", { class: "meta" }, t("since {when}", { when: clock(p.since) })) : null,
    members.length ? h("ul", { class: "reasons members" }, ...members) : null);
}

function grouped(devices) {
  const out = new Map();
  for (const d of devices) {
    const district = d.district || t("(no district)"), grid = d.grid || t("(no grid cell)");
    if (!out.has(district)) out.set(district, new Map());
    const cells = out.get(district);
    if (!cells.has(grid)) cells.set(grid, []);
    cells.get(grid).push(d);
  }
  return out;
}

// a district's code (310104) as its name (徐汇区), from the map's places data; the code until
// that has come, or for a code the data does not know
function placeName(code) {
  const n = MAP.data && MAP.data.places && MAP.data.places[code];
  return n ? named(n) : code;
}

function byPlace(title, list) {
  const parts = [h("h2", { class: "group" }, title)];
  for (const [district, cells] of grouped(list)) {
    parts.push(h("h3", { class: "district", title: district }, placeName(district)));
    for (const [grid, devs] of cells) {
      parts.push(h("h4", { class: "grid" }, grid), h("div", { class: "cards" }, ...devs.map(deviceCard)));
    }
  }
  return parts;
}

// the centre's own dependencies (public /health: 503 unless all are ok), shown only when one
// is not ok, so that frozen values are not read as silent devices
async function dependencyCard() {
  const body = await fetch("/health").then((r) => r.json()).catch(() => null);
  if (!body || body.status === "ok") return null;
  const bad = body.dependencies.filter((d) => d.status !== "ok");
  return h("article", { class: "card not_ingesting", "data-kind": "dependencies" },
    h("h5", {}, t("the centre's dependencies"), " ", h("span", { class: "badge not_ingesting" }, statusWord(body.status))),
    h("ul", { class: "reasons" }, ...bad.map((d) =>
      h("li", { "data-dependency": `${d.part}: ${d.name}` }, `${d.part} · ${d.name}: ${d.status}: ${d.reason}`))));
}

// A district has thousands of healthy devices, and a phone that draws them all is slow: the crew
// view lists a page of devices, unhealthy first, and a button brings the next. The registry pages
// them (limit, Link, X-Total-Count: docs/health.md) and orders the unhealthy first; a registry
// that does not (a 422 for limit) answers them all, and the page lists them a page at a time.
const PAGE = 100;

$("#health-list").addEventListener("click", (ev) => {
  if (!ev.target.closest("#more-devices")) return;
  state.listed += PAGE;
  route();
});

async function healthReport() {
  if (state.healthPaged !== false) {
    try {
      const p = await apiPage(`/api/v1/health?limit=${Math.min(state.listed, 10000)}`);
      state.healthPaged = true;
      return { hr: p.body, more: p.next, total: p.total ?? p.body.devices.length };
    } catch (e) {
      if (e.status !== 422) throw e;
      state.healthPaged = false;
    }
  }
  const hr = await api("/api/v1/health");
  return { hr, more: false, total: hr.devices.length };
}

function moreDevices(listed, total) {
  const more = Math.min(PAGE, total - listed);
  return h("p", { class: "more" },
    h("button", { class: "secondary", id: "more-devices" }, tn(N_("Show 1 more device"), N_("Show {n} more devices"), more)),
    " ", h("span", { class: "meta" }, t("{shown} of {all} devices listed", { shown: listed, all: total })));
}

async function loadHealth() {
  // the map's data brings the places' names for the headings (cached: no extra request mostly)
  const [page, deps] = await Promise.all([healthReport(), dependencyCard(), mapData().catch(() => null)]);
  const hr = page.hr;
  if (!state.healthPaged) {  // the registry answered them all: the unhealthy first, then a page
    const sick = hr.devices.filter((d) => !d.healthy);
    hr.devices = [...sick, ...hr.devices.filter((d) => d.healthy)].slice(0, Math.max(state.listed, sick.length));
    page.more = hr.devices.length < page.total;
  }
  state.health = hr;
  const s = hr.summary, devices = new Map(hr.devices.map((d) => [d.id, d]));
  const causes = hr.problems.filter((p) => p.kind !== "device");
  const single = hr.problems.filter((p) => p.kind === "device").map((p) => devices.get(p.id)).filter(Boolean);
  const n = hr.problems.length;
  // devices and gateways are counted apart, never added together
  $("#health-summary").textContent = [
    n === 0 ? t("no problems") : tn(N_("1 problem"), N_("{n} problems"), n),
    t("{bad} of {all} devices unhealthy", { bad: s.devices_unhealthy, all: s.devices }) +
      (s.devices_unknown ? t(" ({n} unknown: the centre is not ingesting)", { n: s.devices_unknown }) : ""),
    t("{bad} of {all} gateways unhealthy", { bad: s.gateways_unhealthy, all: s.gateways }),
  ].join(" · ");
  const parts = deps ? [h("div", { class: "cards" }, deps)] : [];
  if (causes.length) {
    parts.push(h("h2", { class: "group" }, t("Root causes")),
               h("div", { class: "cards" }, ...causes.map((p) => problemCard(p, devices))));
  }
  if (single.length) parts.push(...byPlace(t("Unhealthy"), single));
  const healthy = hr.devices.filter((d) => d.healthy);
  if (healthy.length) parts.push(...byPlace(t("Healthy"), healthy));
  if (page.more) parts.push(moreDevices(hr.devices.length, page.total));
  if (!parts.length) parts.push(h("p", { class: "empty" }, t("No devices known yet.")));
  $("#health-list").replaceChildren(...parts);
  // on the map, a device not listed is healthy when every unhealthy one is listed
  const unwell = hr.devices.filter((d) => !d.healthy).length;
  const restHealthy = unwell >= s.devices_unhealthy + (s.devices_unknown || 0);
  await drawMap($("#map-box"), hr.devices, await mapCases(), true, restHealthy).catch(mapFailed);
}

async function mapCases() {
  // the crew's map shows the open cases too, for a role that may read them
  if (!can("GET /api/v1/alerts/lifecycle")) return [];
  return (await loadCases().catch(() => null)) || [];
}

function mapFailed(e) {
  if (e && e.auth) throw e;
  console.error(e);
  $("#map-box").hidden = false;
  $("#map-box").replaceChildren(h("p", { class: "empty" }, said(e, t("draw the map"))));
}

// ---- operators: cases ------------------------------------------------------------------------
//
// The page keeps the whole not-closed list and filters it here: counts for the heading, the
// filters' choices and the bulk close come from the same list. A refresh (live or by the clock)
// rebuilds the cards, but a note being typed is never lost: the very same input element moves
// into the new card, keeps its text, and keeps the focus and the caret.
//
// Every alert is a case of the city's workflow (docs/alerts.md): 上报 reported -> 立案 filed ->
// 派遣 dispatched -> 处置 disposed -> 核查 verified -> 结案 closed, with re-dispatch when the
// verification fails and 督办 (urging) of an overdue case. A button is drawn only for a step the
// stage allows and the role may call; the API judges.

const SEVERITY_RANK = { critical: 0, major: 1, minor: 2, info: 3 };
const CASE_STAGES = ["reported", "filed", "dispatched", "disposed", "verified"];
// a case that is over: verified, or cleared by its sensor before anyone filed it
const closable = (a) => a.stage === "verified" || (a.stage === "reported" && a.state === "cleared");
const WORK = ["reported", "filed", "dispatched", "disposed"];
const STAGE_VIEWS = {
  work: { label: N_("Open work"), has: (a) => WORK.includes(a.stage) && !closable(a) },
  done: { label: N_("Verified or cleared, to close"), has: closable },
  all: { label: N_("All not closed"), has: (a) => CASE_STAGES.includes(a.stage) },
  reported: { label: N_("Reported, to file"), has: (a) => a.stage === "reported" },
  filed: { label: N_("Filed, to dispatch"), has: (a) => a.stage === "filed" },
  dispatched: { label: N_("Dispatched, being disposed"), has: (a) => a.stage === "dispatched" },
  disposed: { label: N_("Disposed, to verify"), has: (a) => a.stage === "disposed" },
  verified: { label: N_("Verified, to close"), has: (a) => a.stage === "verified" },
};

const LABEL = {
  file: N_("File the case"), dispatch: N_("Dispatch"), dispose: N_("Report disposed"),
  verify: N_("Verified: passed"), reject: N_("Verification failed: dispatch again"),
  close: N_("Close the case"), urge: N_("Urge"),
};
const DOING = {
  file: N_("file this case"), dispatch: N_("dispatch this case"), dispose: N_("report this case disposed"),
  verify: N_("verify this case"), reject: N_("send this case back for disposal"),
  close: N_("close this case"), urge: N_("urge this case"),
};
const INC_LABEL = { file: N_("File all"), dispatch: N_("Dispatch all"), dispose: N_("Report all disposed"),
                    close: N_("Close all") };
const DOING_INC = { file: N_("file this incident's cases"), dispatch: N_("dispatch this incident's cases"),
                    dispose: N_("report this incident's cases disposed"), close: N_("close this incident's cases") };
// what the workflow allows at each stage (lifecycle.TRANSITIONS; the API judges, this draws)
const CASE_ACTS = { reported: ["file", "close"], filed: ["dispatch"], dispatched: ["dispose"],
                    disposed: ["verify", "reject"], verified: ["close"] };
const URGED_IN = ["filed", "dispatched"];  // the time limit runs: the department has to act
const ENDING = ["verify", "close"];  // refused while the sensor still reports the condition
const NOTE_NEEDED = new Set(["verify", "reject", "urge"]);  // a person says what and why
const NOTE_ASK = {
  verify: N_("Say what the inspection found: the note is kept with the case and sent to the city platform."),
  reject: N_("Say why the verification failed: the note is kept with the case and sent to the city platform."),
  urge: N_("Say what is urged: the note is kept with the case and sent to the department."),
};

const active = (a) => a.state !== "cleared";  // the sensor still reports the condition
const label = (act) => t(LABEL[act]);
const doing = (act) => t(DOING[act]);

function nextActs(a) {
  // what may be done with this case now: verify and close wait for the sensor to clear it (a
  // reported case that never cleared is filed, not closed)
  const acts = [...(CASE_ACTS[a.stage] || []), ...(a.overdue && URGED_IN.includes(a.stage) ? ["urge"] : [])];
  return acts.filter((act) => !(active(a) && ENDING.includes(act)))
             .filter((act) => can(`POST /api/v1/alerts/{id}/${act}`));
}

// A case whose sensor still reports the condition is not verified or closed (the API's 409),
// unless its sensor is broken or gone: then an operator ends it anyway, deliberately, saying why
// (the API's override; recorded and sent to the city platform). The reason is asked in the card.
const OVERRIDE_NOTE_MIN = 15;  // the API's (lifecycle.OVERRIDE_NOTE_MIN); it judges, this helps
const ANYWAY = { verify: N_("Verify anyway…"), close: N_("Close anyway…") };
const AGAINST = { verify: N_("Verify against the sensor"), close: N_("Close against the sensor") };

function overrideAct(a) {
  // the step the sensor blocks, for a role that may take it
  const act = active(a) ? { disposed: "verify", verified: "close" }[a.stage] : null;
  return act && can(`POST /api/v1/alerts/{id}/${act}`) ? act : null;
}

function overrideForm(a, act) {
  const key = `alert:${a.alert_id}`;
  if (!state.overriding.has(key)) {
    return h("div", { class: "actions anyway" },
      h("button", { "data-anyway": act, class: "secondary" }, t(ANYWAY[act])));
  }
  return h("div", { class: "actions override" },
    h("input", { class: "note why", "data-key": `why:${a.alert_id}`, maxlength: 2000,
                 placeholder: t("why: the sensor is broken or gone (at least {n} characters)", { n: OVERRIDE_NOTE_MIN }),
                 "aria-label": t("why it ends against the sensor") }),
    h("button", { "data-act": act, "data-override": "1" }, t(AGAINST[act])),
    h("button", { "data-cancel": "1", class: "secondary" }, t("Cancel")));
}

function note(key, needed) {
  return h("input", { class: "note", "data-key": key, maxlength: 2000,
                      placeholder: needed ? t("note (required)") : t("note (optional)"),
                      "aria-label": t("note") });
}

// who took each step, when, and what they said: the centre and the sensor take steps too
const STEPS = [
  ["filed", N_("filed by {who} {ago}"), "file"], ["dispatched", N_("dispatched by {who} {ago}"), "dispatch"],
  ["disposed", N_("disposal reported by {who} {ago}"), "dispose"], ["verified", N_("verified by {who} {ago}"), "verify"],
];
const ACTORS = { centre: N_("the centre"), sensor: N_("the sensor (自动核查)") };

function people(a) {
  // the centre's own notes come in Chinese too (notes_zh); a person's note as typed
  const n = { ...(a.notes || {}), ...(I18N.lang.startsWith("zh") ? a.notes_zh || {} : {}) };
  return STEPS.map(([step, words, action]) => {
    const by = a[`${step}_by`], at = a[`${step}_at`];
    if (!by) return null;
    const who = ACTORS[by] ? t(ACTORS[by]) : by;
    return h("div", { class: `meta who-${step}`, title: clock(at) },
      t(words, { who, ago: ago(at) }), n[action] ? `: “${n[action]}”` : "");
  });
}

function urgedCount(a) {
  return a.urge_count || (a.urged ? 1 : 0);  // 督办: how often
}

function caseLines(a) {
  // the city's facts of a case: component and area class, the department it goes to
  const dept = named(a.department);
  return [
    a.component_id ? h("div", { class: "meta component" },
      t("component {id}", { id: a.component_id }),
      a.area_class ? " · " + t("area class {c}", { c: a.area_class }) : "") : null,
    dept ? h("div", { class: "meta department" }, t("department: {dept}", { dept }),
      a.dispatch_count > 1 ? " · " + t("dispatched {n} times", { n: a.dispatch_count }) : "") : null,
  ];
}

function stillLine(a, anyway) {
  // why no "verify" or "close": the sensor still reports it
  if (!active(a) || !["disposed", "verified"].includes(a.stage) || !anyway) return null;
  return h("div", { class: "meta still" },
    a.stage === "disposed" ? t("Sensor still reports it: verify once it clears.")
      : t("Sensor reports it again: close once it clears."),
    " " + (anyway === "verify" ? t("If the sensor is broken or gone, verify anyway and say why.")
      : t("If the sensor is broken or gone, close anyway and say why.")));
}

function alertCard(a, inIncident, listed) {
  const acts = nextActs(a);
  const anyway = overrideAct(a);
  const shown = { decimals: a.decimals };  // the API's, from the device's profile
  const key = `alert:${a.alert_id}`;
  const urged = urgedCount(a);
  // a silent or offline alert is about the whole device: no point, no reading to show
  const reading = a.point ? `${a.message || a.rule}: ${withUnit(a.value, a.unit, shown)}`
    : a.message || (typeof a.value === "number" ? t("no answer to {n} polls in a row", { n: a.value })
      : t("the device sends no data"));
  const catName = named(a.category_name);
  return h("article", { class: `card alert ${a.severity} ${a.overdue ? "overdue" : ""} ${listed ? "" : "context"}`,
                        "data-alert": a.alert_id, "data-stage": a.stage },
    h("h5", {},
      h("span", { class: `badge ${a.severity}` }, severityWord(a.severity)),
      h("span", { class: "badge stage", "data-stage": a.stage }, stageWord(a.stage)),
      a.overdue ? h("span", { class: "badge overdue" }, t("overdue")) : null,
      urged ? h("span", { class: "badge urged" }, urged > 1 ? t("urged ×{n}", { n: urged }) : t("urged")) : null,
      h("span", { class: "code" }, a.class_code || a.category)),
    catName ? h("div", { class: "catline" }, h("span", { class: "catname" }, catName)) : null,
    ...caseLines(a),
    h("div", { class: "reading" }, reading,
      active(a) ? null : h("span", { class: "meta" }, " · " + t("sensor cleared {ago}", { ago: ago(a.cleared_at) }))),
    h("div", { class: "meta" },
      h("a", { href: `#/device/${encodeURIComponent(`${a.gateway}:${a.device}`)}` }, a.device),
      inIncident ? null : ` · ${a.district} ${a.grid}`,
      " · " + t("raised {ago}", { ago: ago(a.raised_at) })),
    ...people(a),
    a.time_left_ms == null || a.due_at == null ? null : h("div", {},
      h("span", { class: `timeleft ${a.time_left_ms < 0 ? "overdue" : ""}`, "data-due": a.due_at },
        span(a.due_at - Date.now()))),
    stillLine(a, anyway),
    acts.length ? h("div", { class: "actions" }, note(key, acts.some((x) => NOTE_NEEDED.has(x))),
      ...acts.map((act, i) => h("button", { "data-act": act, class: i === 0 && act !== "urge" ? null : "secondary" },
                                label(act)))) : null,
    anyway ? overrideForm(a, anyway) : null,
    h("p", { class: "msg", role: "status", "data-key": key }, state.msgs.get(key) || ""));
}

function incidentBox(id, alerts, listed) {
  const key = `incident:${id}`;
  const first = alerts[0];
  const acts = Object.keys(INC_LABEL).filter((act) =>
    can(`POST /api/v1/incidents/{id}/${act}`) && alerts.some((a) => nextActs(a).includes(act)));
  return h("section", { class: "incident", "data-incident": id },
    h("div", { class: "incident-head" },
      h("h4", {}, h("span", { class: "badge incident" }, t("incident of {n}", { n: alerts.length })), " ",
        named(first.category_name) || first.category, " · ", `${first.district} ${first.grid}`),
      acts.length ? h("div", { class: "actions" }, note(key),
        ...acts.map((act, i) => h("button", { "data-inc-act": act, class: i === 0 ? null : "secondary" },
                                  t(INC_LABEL[act])))) : null,
      h("p", { class: "msg", role: "status", "data-key": key }, state.msgs.get(key) || "")),
    h("div", { class: "cards" }, ...alerts.map((a) => alertCard(a, true, listed.has(a.alert_id)))));
}

function urgency(a) {
  // open work first, then the overdue, the urged, the severe, the newest
  const waiting = STAGE_VIEWS.work.has(a) ? 0 : 1;
  return [waiting, a.overdue ? 0 : 1, -urgedCount(a), SEVERITY_RANK[a.severity] ?? 9, -a.raised_at];
}

function before(x, y) {
  const a = urgency(x), b = urgency(y);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return 0;
}

function filters() {
  const stage = STAGE_VIEWS[$("#f-stage").value] ? $("#f-stage").value : "work";
  return { stage, district: $("#f-district").value,
           category: $("#f-category").value, severity: $("#f-severity").value };
}

function stageChoices() {
  // the stage filter, in the page's language
  const sel = $("#f-stage");
  const keep = sel.value || "work";
  if (sel.dataset.opts === I18N.lang) return;
  sel.dataset.opts = I18N.lang;
  sel.replaceChildren(...Object.entries(STAGE_VIEWS).map(([value, v]) => h("option", { value }, t(v.label))));
  sel.value = STAGE_VIEWS[keep] ? keep : "work";
}

function choices(sel, values, all, word) {
  // keep the choice made even when no alert has it any more
  const keep = sel.value;
  const opts = [...new Set([...values, ...(keep ? [keep] : [])])].sort();
  const same = JSON.stringify([I18N.lang, opts]);
  if (sel.dataset.opts === same) return;  // rebuilding would close a list the user has open
  sel.dataset.opts = same;
  sel.replaceChildren(h("option", { value: "" }, all),
                      ...opts.map((v) => h("option", { value: v }, word ? word(v) : v)));
  sel.value = keep;
}

function matches(a, f, stageToo) {
  return (!stageToo || STAGE_VIEWS[f.stage].has(a))
    && (!f.district || a.district === f.district) && (!f.category || a.category === f.category)
    && (!f.severity || a.severity === f.severity);
}

function loadCases() {
  return api(`/api/v1/alerts/lifecycle?stage=${CASE_STAGES.join(",")}`);
}

async function loadAlerts() {
  state.alerts = await loadCases();
  renderAlerts();
}

function categoryWord(code) {
  const a = state.alerts.find((x) => x.category === code);
  const name = a && named(a.category_name);
  return name ? `${code} ${name}` : code;
}

function renderAlerts() {
  const list = state.alerts;
  stageChoices();
  choices($("#f-district"), list.map((a) => a.district).filter(Boolean), t("all districts"));
  choices($("#f-category"), list.map((a) => a.category), t("all categories"), categoryWord);
  choices($("#f-severity"), Object.keys(SEVERITY_RANK), t("all severities"), severityWord);
  const f = filters();
  const around = list.filter((a) => matches(a, f, false));  // the other filters, every stage
  const shown = around.filter((a) => matches(a, f, true)).sort(before);
  // an incident is listed whole: its other alerts (a cleared one beside one still burning) show
  // as context, so the incident's buttons never act on alerts the operator cannot see
  const incidents = new Map(shown.map((a) => [a.incident_id, []]));
  for (const a of [...around].sort(before)) {
    if (incidents.has(a.incident_id)) incidents.get(a.incident_id).push(a);
  }
  const listed = new Set(shown.map((a) => a.alert_id));
  const narrowed = [f.district, f.category, f.severity && severityWord(f.severity)].filter(Boolean).join(", ");
  // (a marked text inside another's arguments escapes the extraction: each stands alone)
  const listedCount = tn(N_("1 case"), N_("{n} cases"), shown.length);
  const incidentCount = tn(N_("1 incident"), N_("{n} incidents"), incidents.size);
  $("#alerts-title").textContent =
    t("{view}: {count}", { view: t(STAGE_VIEWS[f.stage].label), count: listedCount }) +
    (shown.length ? t(" in {incidents}", { incidents: incidentCount }) : "") +
    (narrowed ? ` (${narrowed})` : "");
  const overdue = around.filter((a) => a.overdue).length;
  const toClose = around.filter(closable);
  $("#alerts-summary").textContent = [
    ...WORK.map((st) => t("{n} {stage}", { n: around.filter((a) => a.stage === st && !closable(a)).length,
                                          stage: stageWord(st) })),
    overdue ? t("{n} overdue", { n: overdue }) : null,
    t("{n} verified or cleared, to close", { n: toClose.length }),
  ].filter(Boolean).join(" · ");
  bulkButton(toClose);

  // incidents of several alerts in boxes; the single alerts between them side by side
  const parts = [];
  for (const [id, alerts] of incidents) {
    if (alerts.length > 1) { parts.push(incidentBox(id, alerts, listed)); continue; }
    if (!parts.length || !parts[parts.length - 1].classList.contains("single")) {
      parts.push(h("div", { class: "cards single" }));
    }
    parts[parts.length - 1].append(alertCard(alerts[0], false, true));
  }
  const empty = f.stage === "work" ? t("No open work: nothing waits for people.") : t("No cases match.");
  place($("#alerts-list"), parts.length ? parts : [h("p", { class: "empty" }, empty)]);
  // the map shows what the list shows
  if (!$("#alerts").hidden) drawMap($("#map-box"), null, shown, false).catch(mapFailed);
}

function place(where, parts) {
  // notes being typed survive: the same input (text, focus, caret) moves into the new card
  const focused = document.activeElement;
  const caret = focused && focused.matches && focused.matches("input.note")
    ? [focused.selectionStart, focused.selectionEnd] : null;
  for (const part of parts) {
    for (const input of part.querySelectorAll ? part.querySelectorAll("input.note") : []) {
      const old = state.inputs.get(input.dataset.key);
      if (old && (old.value || old === focused)) {
        old.placeholder = input.placeholder;  // the words may have changed (a language, a stage)
        input.replaceWith(old);
      }
    }
  }
  where.replaceChildren(...parts);
  state.inputs = new Map([...where.querySelectorAll("input.note")].map((i) => [i.dataset.key, i]));
  if (caret && where.contains(focused) && document.activeElement !== focused) {
    focused.focus({ preventScroll: true });
    focused.setSelectionRange(caret[0], caret[1]);
  }
}

function bulkButton(done) {
  const btn = $("#close-done");
  btn.hidden = !done.length || !can("POST /api/v1/alerts/close");
  btn.dataset.ids = JSON.stringify(done.map((a) => a.alert_id));
  if (!btn.dataset.armed) btn.textContent = t("Close {n} verified or cleared", { n: done.length });
}

function tell(key, message, ok) {
  if (message) state.msgs.set(key, message); else state.msgs.delete(key);
  const el = document.querySelector(`p.msg[data-key="${CSS.escape(key)}"]`);
  if (el) { el.textContent = message || ""; el.classList.toggle("ok", !!ok); }
}

$("#alerts-list").addEventListener("click", (ev) => {
  // "Resolve anyway…" opens the reason in the card; Cancel folds it away (no pop-ups)
  const btn = ev.target.closest("button[data-anyway], button[data-cancel]");
  if (!btn) return;
  const id = btn.closest("[data-alert]").dataset.alert;
  const key = `alert:${id}`;
  if (btn.dataset.anyway) state.overriding.add(key); else state.overriding.delete(key);
  tell(key, "");
  renderAlerts();
  const why = document.querySelector(`input.why[data-key="${CSS.escape(`why:${id}`)}"]`);
  if (why) why.focus();
});

$("#alerts-list").addEventListener("click", async (ev) => {
  const btn = ev.target.closest("button[data-act], button[data-inc-act]");
  if (!btn) return;
  const box = btn.closest("[data-alert], [data-incident]");
  const alertId = btn.dataset.act ? box.dataset.alert : null;
  const act = btn.dataset.act || btn.dataset.incAct;
  const key = alertId ? `alert:${alertId}` : `incident:${box.dataset.incident}`;
  const override = !!btn.dataset.override;
  const input = box.querySelector(override ? "input.why" : "input.note:not(.why)");
  const body = { note: input ? input.value : "" };
  if (override) {
    if (body.note.trim().length < OVERRIDE_NOTE_MIN) {
      tell(key, t("Say why the sensor is not to be believed, in at least {n} characters (e.g. “detector destroyed by the water”): it is recorded and sent to the city platform.", { n: OVERRIDE_NOTE_MIN }));
      input.focus();
      return;
    }
    body.override = true;
  }
  if (NOTE_NEEDED.has(act) && !body.note.trim()) {
    tell(key, t(NOTE_ASK[act]));
    if (input) input.focus();
    return;
  }
  const path = alertId ? `/api/v1/alerts/${encodeURIComponent(alertId)}/${act}`
    : `/api/v1/incidents/${encodeURIComponent(box.dataset.incident)}/${act}`;
  btn.disabled = true;
  try {
    const done = await send("POST", path, body);
    if (input) input.value = "";
    if (override) state.overriding.delete(key);
    if (alertId) tell(key, "");
    else tell(key, incidentResult(act, done), !done.skipped.length);
  } catch (e) {
    tell(key, said(e, alertId ? doing(act) : t(DOING_INC[act])));
    btn.disabled = false;
    // a 404 or 409 means the alert changed under the page: show it as it is now (the message
    // stays); after a network failure or a refusal there is nothing new to show
    if (![404, 409].includes(e.status)) return;
  }
  await loadAlerts().catch(() => {});
});

function incidentResult(act, done) {
  const moved = { file: N_("{n} filed."), dispatch: N_("{n} dispatched."), dispose: N_("{n} reported disposed."),
                  close: N_("{n} closed.") }[act];
  const kept = { file: N_("{n} not filed:"), dispatch: N_("{n} not dispatched:"),
                 dispose: N_("{n} not reported disposed:"), close: N_("{n} not closed:") }[act];
  const head = t(moved, { n: done.applied.length });
  if (!done.skipped.length) return head;
  const why = done.skipped.map((s) => `${s.alert_id}: ${sentence(s.reason)}`).join(" ");
  return [head, t(kept, { n: done.skipped.length }), why].join(" ");
}

for (const id of ["#f-stage", "#f-district", "#f-category", "#f-severity"]) {
  $(id).addEventListener("change", () => renderAlerts());
}

$("#close-done").addEventListener("click", async () => {
  const btn = $("#close-done");
  const ids = JSON.parse(btn.dataset.ids || "[]");
  if (!btn.dataset.armed) {
    // a second tap confirms: closing many is not undone, and no pop-up asks
    btn.dataset.armed = "1";
    btn.textContent = t("Tap again to close {n} cases", { n: ids.length });
    state.disarm = setTimeout(() => { delete btn.dataset.armed; renderAlerts(); }, 6000);
    return;
  }
  clearTimeout(state.disarm);
  delete btn.dataset.armed;
  btn.disabled = true;
  let closed = 0;
  const left = [];
  try {
    for (let i = 0; i < ids.length; i += 1000) {
      const done = await send("POST", "/api/v1/alerts/close", { alert_ids: ids.slice(i, i + 1000) });
      closed += done.closed.length;
      left.push(...done.skipped);
    }
    $("#alerts-msg").textContent = tn(N_("Closed 1 case."), N_("Closed {n} cases."), closed) +
      (left.length ? " " + t("{n} left open:", { n: left.length }) + " " +
        left.map((s) => `${s.alert_id}: ${sentence(s.reason)}`).join(" ") : "");
  } catch (e) {
    $("#alerts-msg").textContent = said(e, t("close these cases"));
  } finally {
    btn.disabled = false;
  }
  await loadAlerts().catch(() => {});
});

setInterval(() => {
  for (const el of document.querySelectorAll(".timeleft[data-due]")) {
    const left = Number(el.dataset.due) - Date.now();
    el.textContent = span(left);
    el.classList.toggle("overdue", left < 0);
  }
}, 1000);

// ---- device detail ------------------------------------------------------------------------

const STEPS_MS = [1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440].map((m) => m * 60000);

function niceTicks(lo, hi, count) {
  // round values (1, 2 or 5 times a power of ten apart) for the value axis, and their decimals
  const raw = (hi - lo) / count, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((st) => st >= raw);
  const decimals = Math.max(0, Math.min(6, -Math.floor(Math.log10(step) + 1e-9)));
  const values = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) values.push(Math.abs(v) < step / 1e6 ? 0 : v);
  return { values, decimals };
}

// a chart is drawn on a frame: its size, its margins, and the scales from time and value to pixels
function frame(vals, limits, onoffs, width) {
  const W = Math.max(280, Math.round(width || 600)), H = onoffs ? 110 : 180;
  const f = { W, H, L: onoffs ? 34 : 52, R: 12, T: 12, B: 26, lo: 0, hi: 1,
              t0: vals[0].ts, t1: Math.max(vals[vals.length - 1].ts, vals[0].ts + 1) };
  if (!onoffs) {
    const all = [...vals.map((p) => p.v), ...limits.map((l) => l.v)];
    f.lo = Math.min(...all); f.hi = Math.max(...all);
    const pad = (f.hi - f.lo) * 0.08 || Math.abs(f.hi) * 0.1 || 1;
    f.lo -= pad; f.hi += pad;
  }
  f.x = (t) => f.L + ((t - f.t0) / (f.t1 - f.t0)) * (W - f.L - f.R);
  f.y = (v) => H - f.B - ((v - f.lo) / (f.hi - f.lo)) * (H - f.T - f.B);
  return f;
}

function runs(vals) {
  // a gap: two readings further apart than three times the usual spacing
  const steps = vals.slice(1).map((p, i) => p.ts - vals[i].ts).sort((a, b) => a - b);
  const gapMs = Math.max(3 * steps[Math.floor(steps.length / 2)], 1000);
  const out = [[vals[0]]], gaps = [];
  for (let i = 1; i < vals.length; i++) {
    if (vals[i].ts - vals[i - 1].ts > gapMs) { gaps.push([vals[i - 1].ts, vals[i].ts]); out.push([]); }
    out[out.length - 1].push(vals[i]);
  }
  return { runs: out, gaps };
}

function timeAxis(f) {
  // round times at a step that leaves room for the labels
  const { x, W, H, L, R, T, B, t0, t1 } = f;
  const step = STEPS_MS.find((s) => (t1 - t0) / s <= (W - L - R) / 90) || STEPS_MS[STEPS_MS.length - 1];
  const parts = [svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B })];
  for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
    parts.push(svg("line", { class: "tick", x1: x(t).toFixed(1), x2: x(t).toFixed(1), y1: T, y2: H - B }));
    if (x(t) < W - R - 28) {  // a label cut by the edge says nothing
      parts.push(svg("text", { class: "xlabel", x: x(t).toFixed(1), y: H - 8, "text-anchor": "middle" }, hhmm(t)));
    }
  }
  return parts;
}

function valueAxis(f, onoffs, limits) {
  const { y, W, L, R, lo, hi, H } = f;
  const label = (v, words) => svg("text", { class: "ylabel", x: L - 6, y: (y(v) + 4).toFixed(1),
                                            "text-anchor": "end" }, words);
  const line = (cls, v) => svg("line", { class: cls, x1: L, x2: W - R, y1: y(v).toFixed(1), y2: y(v).toFixed(1) });
  if (onoffs) return [label(1, t("on")), label(0, t("off"))];
  const ticks = niceTicks(lo, hi, H > 150 ? 4 : 3);
  const parts = ticks.values.flatMap((v) => [line("tick", v), label(v, fmt(v, ticks))]);
  for (const l of limits) {
    parts.push(line("limit", l.v), svg("text", { class: "limit-label", x: W - R - 4,
                                                 y: (y(l.v) - 4).toFixed(1), "text-anchor": "end" }, l.label));
  }
  return parts;
}

function series(f, run, onoffs) {
  const { x, y } = f;
  const at = (p) => `${x(p.ts).toFixed(1)},${y(p.v).toFixed(1)}`;
  if (!onoffs) {
    return run.length > 1 ? [svg("polyline", { class: "series", points: run.map(at).join(" ") })]
      : [svg("circle", { class: "series-dot", cx: x(run[0].ts).toFixed(1), cy: y(run[0].v).toFixed(1), r: 2.5 })];
  }
  // on/off: a step where the state changes, and a band while it is on
  let d = `M${at(run[0])}`;
  for (let i = 1; i < run.length; i++) d += ` H${x(run[i].ts).toFixed(1)} V${y(run[i].v).toFixed(1)}`;
  const bands = [];
  for (let i = 0; i < run.length - 1; i++) {
    if (!run[i].v) continue;
    let j = i;
    while (j < run.length - 1 && run[j].v) j++;  // one band for a whole stretch of "on"
    bands.push(svg("rect", { class: "on", x: x(run[i].ts).toFixed(1), y: y(1),
                             width: (x(run[j].ts) - x(run[i].ts)).toFixed(1), height: (y(0) - y(1)).toFixed(1) }));
    i = j;
  }
  return [...bands, svg("path", { class: "steps", d })];
}

function chart(points, shown, width) {
  // a time axis, the rules' limits as lines, a gap where readings are missing, on/off as steps
  const onoffs = (shown && shown.onoff) || points.some((p) => typeof p.value === "boolean");
  const vals = points.filter((p) => typeof p.value === "number" || typeof p.value === "boolean")
    .map((p) => ({ ts: p.ts, v: Number(p.value) }));
  if (vals.length < 2) return h("p", { class: "empty" }, t("Not enough readings for a chart."));
  const limits = onoffs ? [] : ((shown && shown.limits) || []).flatMap((l) => [
    l.above != null ? { v: l.above, label: t("alarm above {v}", { v: fmt(l.above, shown) }) } : null,
    l.below != null ? { v: l.below, label: t("alarm below {v}", { v: fmt(l.below, shown) }) } : null,
  ]).filter(Boolean);
  const f = frame(vals, limits, onoffs, width);
  const cut = runs(vals);
  const gaps = cut.gaps.map(([a, b]) => svg("rect", { class: "gap", x: f.x(a).toFixed(1), y: f.T,
    width: (f.x(b) - f.x(a)).toFixed(1), height: f.H - f.T - f.B },
    svg("title", {}, t("no readings {from}–{to}", { from: hhmm(a), to: hhmm(b) }))));
  return svg("svg", { class: `chart ${onoffs ? "onoff" : ""}`, viewBox: `0 0 ${f.W} ${f.H}`,
                      width: f.W, height: f.H, role: "img",
                      "aria-label": t("readings from {from} to {to}", { from: hhmm(f.t0), to: hhmm(f.t1) }) },
    ...gaps, ...timeAxis(f), ...valueAxis(f, onoffs, limits),
    ...cut.runs.flatMap((run) => series(f, run, onoffs)));
}

function facts(pairs) {
  return h("dl", { class: "facts" }, ...pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

async function loadDevice(id) {
  const d = await api(`/api/v1/devices/${encodeURIComponent(id)}`);
  const hr = state.health || (can("GET /api/v1/health") ? await api("/api/v1/health").catch(() => null) : null);
  const hd = hr && hr.devices.find((x) => x.id === d.id);
  const status = hd ? hd.status : d.status;
  const profile = (hd ? hd.profile : d.profile) || "";
  const rows = [
    [t("Registry id"), d.id], [t("Gateway"), d.gateway],
    [t("Location"), `${d.district} ${d.street || ""} ${d.grid}`],
    d.lat != null ? [t("Position (WGS-84)"), `${d.lat.toFixed(6)}, ${d.lon.toFixed(6)}` +
      (d.coordinates === "site" ? " (" + t("its site's, a guess") + ")" : "")] : null,
    d.component_id ? [t("City component"), d.component_id] : null,
    [t("Profile"), profile],
    [t("Firmware"), (hd ? hd.firmware : d.firmware) || t("unknown")],
    [t("Last seen"), ago(d.last_seen)],
  ].filter(Boolean);
  const labels = Object.entries(d.labels || {});
  if (labels.length) rows.push([t("Labels"), labels.map(([k, v]) => `${k}=${v}`).join(", ")]);
  if (hd) {
    rows.push([t("Health"), hd.reasons.length ? hd.reasons.join("; ") : t("healthy")],
      [t("Read success"), hd.success_rate == null ? t("n/a") : `${Math.round(hd.success_rate * 100)} %`],
      [t("Response time"), hd.response_ms == null ? t("n/a") : `${hd.response_ms.toFixed(1)} ms`]);
  }
  const parts = [h("h2", {}, d.device, " ", h("span", { class: `badge ${status}` }, statusWord(status))),
                 facts(rows), h("h3", {}, t("Recent readings"))];
  const since = Date.now() - 3600 * 1000;
  const width = $("#device-detail").clientWidth || 600;
  const readable = can("GET /api/v1/devices/{id}/readings");
  for (const [point, v] of Object.entries(d.values || {})) {
    const shown = shownOf(profile, point);
    const box = h("div", { class: "point", "data-point": point },
      h("h4", { class: "grid" }, `${point}: ${withUnit(v.value, v.unit, shown)} (${qualityWord(v.quality)})`));
    parts.push(box);
    if (!readable) continue;
    try {
      const r = await api(`/api/v1/devices/${encodeURIComponent(d.id)}/readings?point=${encodeURIComponent(point)}&since=${since}`);
      box.append(chart(r.readings, shown, width));
    } catch (e) {
      box.append(h("p", { class: "empty" }, e.status === 501
        ? t("This registry keeps no reading history, so there is no chart.")
        : said(e, t("load the readings"))));
    }
  }
  $("#device-detail").replaceChildren(...parts);
}

// ---- routing and updates ------------------------------------------------------------------

async function route() {
  if (!$("#login").hidden) return;
  const health = can("GET /api/v1/health"), alerts = can("GET /api/v1/alerts/lifecycle");
  const hash = location.hash || (health ? "#/health" : "#/alerts");
  for (const s of PAGES) $(s).hidden = true;
  if (hash.startsWith("#/device/") || !(health || alerts)) hideMap();
  $("#nav-health").classList.toggle("active", hash.startsWith("#/health"));
  $("#nav-alerts").classList.toggle("active", hash.startsWith("#/alerts"));
  try {
    if (hash.startsWith("#/device/")) {
      $("#device").hidden = false;
      await loadDevice(decodeURIComponent(hash.slice("#/device/".length)));
    } else if (hash.startsWith("#/alerts") && alerts) {
      $("#alerts").hidden = false;
      await loadAlerts();
    } else if (health) {
      $("#health").hidden = false;
      await loadHealth();
    } else {
      $("#nothing").hidden = false;
      $("#nothing-text").textContent = t("This dashboard has no page for the {role} role. Installers register gateways and devices with the gridwatch command (gridwatch gateway add, gridwatch device add).", { role: roleWord(state.role) });
    }
    state.updated = Date.now();
    if (!state.stream) setLive(t("updated {time}", { time: hhmm(state.updated, true) }), "poll",
                               t("this page refreshes every {n} s", { n: POLL_MS / 1000 }));
  } catch (e) {
    if (e.auth) return;
    if (!state.stream) {
      const since = state.updated ? t("not updated since {time}", { time: hhmm(state.updated) }) : t("not updated");
      setLive(e.network ? t("{since}: no connection", { since }) : since, "stale", said(e, t("refresh this page")));
    }
    console.error(e);
  }
}

let pending = null;
function refreshSoon() {
  // a burst of events (an incident of five alerts) refreshes once
  if (pending) return;
  pending = setTimeout(() => { pending = null; route(); }, 150);
}

function setLive(label, kind, title) {
  const el = $("#live");
  el.textContent = label;
  el.className = `live ${kind}`;
  el.title = title || "";
}

function startStream() {
  if (state.stream) state.stream.close();
  const es = new EventSource("/api/v1/alerts/stream");
  es.addEventListener("open", () => setLive(t("live"), "on", t("updates arrive as they happen")));
  es.addEventListener("error", () => {
    // CLOSED: the server refused or ended it for good (logged out, token revoked)
    if (es.readyState === EventSource.CLOSED) { setLive(t("offline"), "off"); refreshSoon(); }
    else setLive(t("reconnecting"), "off", t("the live stream was interrupted; it comes back by itself"));
  });
  for (const kind of ["alert", "lifecycle", "escalation"]) es.addEventListener(kind, refreshSoon);
  state.stream = es;
}

window.addEventListener("hashchange", route);
setInterval(() => {
  // health has no stream; roles without the alert stream refresh everything by the clock
  if ($("#login").hidden && (!state.stream || !$("#health").hidden)) route();
}, POLL_MS);

$("#lang").addEventListener("click", async () => {
  // the other language, kept in this browser; the page is drawn again in it
  await switchLanguage($("#lang").dataset.lang).catch((e) => console.error(e));
  if (MAP.map) forgetMap();
  if (!$("#login").hidden) return;
  $("#who").textContent = state.who ? `${state.who.name} (${roleWord(state.who.role)})` : "";
  await route();
  if (state.stream && state.stream.readyState === EventSource.OPEN) setLive(t("live"), "on", t("updates arrive as they happen"));
});

(async function start() {
  // the words first (Chinese unless this browser or its user asked otherwise), then the session:
  // the cookie is HttpOnly, so ask the registry whether it holds one
  await loadLanguage(pickedLanguage()).catch((e) => console.error(e));
  document.documentElement.classList.remove("loading");
  try {
    loggedIn(await api("/api/v1/session"));
  } catch (e) {
    showLogin();
  }
})();
