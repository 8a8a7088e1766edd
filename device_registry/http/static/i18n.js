// The page's language: Chinese first, English second. The words are in the dashboard's message
// catalogue (gridwatch/locale/<lang>/LC_MESSAGES/dashboard.po), served as JSON by the registry
// (GET /dashboard/messages), never in this code: t() looks an English text up (N_ marks
// a text in a table, tn picks singular or plural), and the
// English text itself is what English readers see. A test fails when a text used here has no
// Chinese translation (tests/test_dashboard_i18n.py).
//
// Which language: the one picked with the header's button (kept in this browser), else the one
// the browser asks for (Accept-Language, decided by the registry), else Chinese.
"use strict";

const I18N = { lang: "zh-CN", messages: {}, languages: [] };
const LANG_KEY = "gw_lang";

function fill(s, vars) {
  return vars ? s.replace(/\{(\w+)\}/g, (m, k) => (k in vars ? String(vars[k]) : m)) : s;
}

// t("{n} min ago", {n: 5}): the catalogue's words for this text, with the values put in
function t(msgid, vars) {
  return fill(I18N.messages[msgid] || msgid, vars);
}

// the English singular or plural text by n: tn(N_("1 case"), N_("{n} cases"), n). Each is a
// message of its own in the catalogue (Chinese says both alike), not a gettext plural: the
// browser gets the catalogue as one plain object
function tn(one, many, n, vars) {
  return t(n === 1 ? one : many, { n, ...(vars || {}) });
}

function pickedLanguage() {
  try { return localStorage.getItem(LANG_KEY) || ""; } catch (e) { return ""; }
}

async function loadLanguage(lang) {
  const q = lang ? `?lang=${encodeURIComponent(lang)}` : "";
  const r = await fetch(`/dashboard/messages${q}`, { credentials: "same-origin" });
  if (!r.ok) throw new Error(`HTTP ${r.status}`);
  const body = await r.json();
  Object.assign(I18N, { lang: body.lang, messages: body.messages, languages: body.languages });
  document.documentElement.lang = body.lang;
  translateStatic();
}

// the page's own words (index.html): each element names its text in data-i18n, so a language
// change can translate it again from the English
function translateStatic() {
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll("[data-i18n-label]")) {
    el.setAttribute("aria-label", t(el.dataset.i18nLabel));
  }
  document.title = t("gridwatch city operations");
  const other = I18N.languages.find((l) => l.code !== I18N.lang);
  const btn = document.querySelector("#lang");
  if (btn && other) {
    btn.textContent = other.name;  // the other language, named in itself
    btn.dataset.lang = other.code;
    btn.setAttribute("lang", other.code);
    btn.setAttribute("aria-label", t("Switch language to {name}", { name: other.name }));
  }
}

async function switchLanguage(lang) {
  try { localStorage.setItem(LANG_KEY, lang); } catch (e) { /* private mode: for this page only */ }
  await loadLanguage(lang);
}

// marks a text in a table for the catalogue without translating it: t() translates it where
// it is shown
const N_ = (msgid) => msgid;
