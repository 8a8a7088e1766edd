// The page's one Trusted Types policy (the Content-Security-Policy admits no other: dashboard.py).
// Our own code never writes HTML (app.js builds elements and text nodes). The map library,
// Leaflet as npm ships it, writes a few constant strings through innerHTML: a feature test when
// it loads and the zoom buttons' labels. Exactly those pass; any other string is refused, so an
// id or a message a gateway chose still cannot become markup.
"use strict";
(function () {
  const LEAFLET = new Set([
    "<svg/>",  // Leaflet's inline-SVG feature test, run once when leaflet.js loads
    '<span aria-hidden="true">+</span>',  // the zoom control's labels
    '<span aria-hidden="true">&#x2212;</span>',
  ]);
  if (window.trustedTypes && window.trustedTypes.createPolicy) {
    window.trustedTypes.createPolicy("default", {
      createHTML: (s) => (LEAFLET.has(s) ? s : null),  // null: the browser refuses the write
    });
  }
})();
