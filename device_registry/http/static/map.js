// The map of the operator and crew views: the district's devices and open cases (docs/map.md).
// Leaflet (static/leaflet.js, npm's leaflet 1.9.4) draws it. Positions are WGS-84, from
// GET /api/v1/map with each grid cell as the box around its devices, so the map is whole
// without any tile server; the city GIS server's tiles are laid under it when the registry is
// told their URL (GRIDWATCH_MAP_TILES).
//
// A marker says what it means in words as well as in colour (a crew reads a phone in the sun):
// an open case shows its severity and stage, a device that needs attention its state; healthy
// devices are small dots without words, and the legend says so. Everything in the map goes in as
// elements and text, never as HTML (the Trusted Types policy would refuse it: trusted.js).
"use strict";

const MAP = { map: null, layers: null, fitted: "", data: null, at: 0, open: null };
const MAP_TTL_MS = 30000;  // positions change when installers work, not every refresh
const TONE = { critical: "bad", major: "warn", minor: "minor", info: "info" };
const TONE_RANK = { bad: 0, warn: 1, minor: 2, info: 3, ok: 4, unknown: 5 };

async function mapData() {
  // the positions, at most every MAP_TTL_MS; the health and cases come with each view's refresh
  if (!MAP.data || Date.now() - MAP.at > MAP_TTL_MS) {
    MAP.data = await api("/api/v1/map");
    MAP.at = Date.now();
  }
  return MAP.data;
}

function healthTone(d) {
  if (!d) return "unknown";
  if (d.healthy) return "ok";
  return d.status === "offline" || d.status === "never_connected" ? "bad" : "warn";
}

function healthWord(d) {
  if (!d) return t("state unknown");
  if (d.healthy) return t("healthy");
  return statusWord(d.status === "online" ? "unhealthy" : d.status);
}

// what one marker stands for: a device, its health and the open cases on it
function markersOf(data, health, cases) {
  const byId = new Map(data.devices.map((d) => [d.id, { at: d, cases: [], health: null }]));
  for (const hd of health || []) {
    const m = byId.get(hd.id);
    if (m) m.health = hd;
  }
  let lost = 0;
  for (const a of cases || []) {
    const id = `${a.gateway}:${a.device}`;
    let m = byId.get(id);
    const loc = a.location || {};
    if (!m && loc.lat != null && loc.lon != null) {  // a device the registry does not place
      m = { at: { id, device: a.device, lat: loc.lat, lon: loc.lon, own: true }, cases: [], health: null };
      byId.set(id, m);
    }
    if (m) m.cases.push(a); else lost += 1;
  }
  return { markers: [...byId.values()], lost };
}

function markerLook(m, showHealth, restHealthy) {
  // the most urgent of the device's cases, else its health: a tone and the words for it
  const sorted = [...m.cases].sort(before);
  if (sorted.length) {
    const a = sorted[0];
    const more = sorted.length > 1 ? ` +${sorted.length - 1}` : "";
    return { tone: TONE[a.severity] || "info", words: [severityWord(a.severity), stageWord(a.stage)].join(" · ") + more };
  }
  if (!showHealth) return { tone: "unknown", words: "" };
  const tone = !m.health && restHealthy ? "ok" : healthTone(m.health);
  return { tone, words: tone === "ok" ? "" : healthWord(m.health) };
}

function pin(m, look) {
  // a dot, and beside it the words (none for a healthy device)
  return h("div", { class: `pin ${look.tone}`, "data-pin": m.at.id },
    h("span", { class: "dot" }),
    look.words ? h("span", { class: "words" }, look.words) : null);
}

function popup(m) {
  const cases = [...m.cases].sort(before);
  return h("div", { class: "pop" },
    h("a", { href: `#/device/${encodeURIComponent(m.at.id)}` }, m.at.device),
    h("div", { class: "meta" }, [m.at.street, m.at.grid].filter(Boolean).join(" · ")),
    m.health ? h("div", {}, healthWord(m.health)) : null,
    ...cases.map((a) => h("div", { class: "pop-case" },
      [severityWord(a.severity), stageWord(a.stage), named(a.category_name) || a.category].join(" · "))),
    m.at.own === false ? h("div", { class: "meta" }, t("position of its site, not its own")) : null);
}

function ensureMap(box, data) {
  if (MAP.map) return;
  const el = h("div", { class: "map", id: "map-canvas", role: "region", "aria-label": t("Map") });
  box.replaceChildren(el, h("div", { class: "legend", id: "map-legend" }),
                      h("p", { class: "meta map-note", id: "map-note" }));
  MAP.map = L.map(el, { attributionControl: false, zoomSnap: 0.5, maxZoom: 19 });
  if (data.tiles) {
    // the city's own GIS server; a tile it cannot serve leaves the outlines on a plain ground
    L.tileLayer(data.tiles, { maxZoom: 19, crossOrigin: false }).addTo(MAP.map);
  }
  MAP.layers = L.layerGroup().addTo(MAP.map);
}

function legend(showHealth) {
  const item = (tone, words) => h("span", { class: `key ${tone}` }, h("span", { class: "dot" }), words);
  return [
    item("bad", t("critical or offline")), item("warn", t("major, or needs attention")),
    item("minor", severityWord("minor")), item("info", severityWord("info")),
    showHealth ? item("ok", t("healthy (no words)")) : item("unknown", t("device without an open case")),
    h("span", { class: "key cell" }, h("span", { class: "box" }), t("grid cell (around its devices)")),
  ].filter(Boolean);
}

// draws the map into `box` (#map-box): devices, their health (crew) and open cases (both)
// (restHealthy: the health list is one page, and every device left off it is healthy)
async function drawMap(box, health, cases, showHealth, restHealthy) {
  const data = await mapData();
  box.hidden = false;
  if (!data.devices.length && !(cases || []).some((a) => a.location && a.location.lat != null)) {
    if (MAP.map) { MAP.map.remove(); MAP.map = null; MAP.fitted = ""; }
    box.replaceChildren(h("p", { class: "empty", id: "map-empty" },
      t("No device has a position yet, so there is no map. Installers give each device its latitude and longitude (WGS-84).")));
    return;
  }
  ensureMap(box, data);
  const layers = MAP.layers;
  // a refresh redraws every marker: the popup the reader opened stays open on its device
  const reopen = MAP.open;
  MAP.map.closePopup();
  layers.clearLayers();
  for (const c of data.cells) {
    layers.addLayer(L.rectangle([[c.south, c.west], [c.north, c.east]],
                                { className: "cell", weight: 1, interactive: false }));
    // the cell's code above its box's corner, under every marker: never over a device's words
    const name = L.divIcon({ html: h("span", { class: "cell-name" }, c.grid), className: "cell-label", iconSize: null });
    layers.addLayer(L.marker([c.north, c.west], { icon: name, interactive: false, keyboard: false, zIndexOffset: -1000 }));
  }
  const { markers, lost } = markersOf(data, health, cases);
  const shown = markers.map((m) => ({ m, look: markerLook(m, showHealth, restHealthy) }))
    // the urgent on top of the rest
    .sort((x, y) => TONE_RANK[y.look.tone] - TONE_RANK[x.look.tone]);
  shown.forEach(({ m, look }, i) => {
    const icon = L.divIcon({ html: pin(m, look), className: "pin-icon", iconSize: null });
    const marker = L.marker([m.at.lat, m.at.lon], { icon, zIndexOffset: i, keyboard: true,
                                                     title: `${m.at.device} ${look.words}`.trim() });
    marker.bindPopup(popup(m), { closeButton: false });
    marker.on("popupopen", () => { MAP.open = m.at.id; });
    marker.on("popupclose", () => { if (MAP.open === m.at.id) MAP.open = null; });
    layers.addLayer(marker);
    if (m.at.id === reopen) marker.openPopup();
  });
  const key = markers.map((m) => m.at.id).sort().join("|");
  if (key !== MAP.fitted) {  // keep where the user panned and zoomed, until the set changes
    const pts = markers.map((m) => [m.at.lat, m.at.lon]);
    MAP.map.fitBounds(L.latLngBounds(pts).pad(0.25), { maxZoom: 17 });  // room for the words
    MAP.fitted = key;
  }
  MAP.map.invalidateSize();
  $("#map-legend").replaceChildren(...legend(showHealth));
  const notes = [];
  if (data.unplaced) notes.push(tn(N_("1 device has no position and is not on the map."), N_("{n} devices have no position and are not on the map."), data.unplaced));
  if (lost) notes.push(tn(N_("1 case is on a device without a position."), N_("{n} cases are on devices without a position."), lost));
  if (data.attribution) notes.push(t("Map tiles: {who}", { who: data.attribution }));
  $("#map-note").textContent = notes.join(" ");
}

function hideMap() {
  $("#map-box").hidden = true;
}

function forgetMap() {
  // a language change redraws the map's words; a logout forgets the positions
  if (MAP.map) MAP.map.remove();
  Object.assign(MAP, { map: null, layers: null, fitted: "", data: null, at: 0, open: null });
  $("#map-box").replaceChildren();
}
