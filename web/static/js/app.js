// The single-page app: hash routes (#/traces, #/trace/ID, #/sessions, #/session/ID, #/charts, #/alerts) so every view is a
// link that can be shared or reloaded; each view renders into <main id="view">.

import { api, newView } from "./api.js";
import { clear, showError } from "./dom.js";
import { parseHash } from "./router.js";
import { renderAlerts } from "./alerts.js";
import { renderCharts } from "./charts.js";
import { renderSession, renderSessions } from "./sessions.js";
import { renderTrace } from "./trace.js";
import { renderTraces } from "./traces.js";

const view = document.getElementById("view");

async function route() {
  const { parts, params } = parseHash();
  const page = parts[0] || "traces";
  for (const link of document.querySelectorAll("[data-nav]")) {
    const section = page === "trace" ? "traces" : page === "session" ? "sessions" : page;
    link.classList.toggle("active", link.dataset.nav === section);
  }
  const signal = newView();
  clear(view);
  view.className = `page-${page}`;
  try {
    if (page === "trace" && parts[1]) await renderTrace(view, parts[1], params, signal);
    else if (page === "sessions") await renderSessions(view, params, signal);
    else if (page === "session" && parts[1]) await renderSession(view, parts[1], params, signal);
    else if (page === "charts") await renderCharts(view, params, signal);
    else if (page === "alerts") await renderAlerts(view, params, signal);
    else await renderTraces(view, params, signal);
  } catch (err) {
    showError(view, err);
  }
}

async function refreshFiringBadge() {
  const badge = document.getElementById("firing-badge");
  try {
    const answer = await api("alerts", { limit: 1 }, undefined);
    badge.textContent = String(answer.firing.length);
    badge.hidden = answer.firing.length === 0;
  } catch {
    badge.hidden = true;
  }
}

window.addEventListener("hashchange", route);
route();
refreshFiringBadge();
setInterval(refreshFiringBadge, 60_000);
