// One trace: its summary, the waterfall, and the selected span's panel. The whole trace (every span and
// its details) comes in one request; selecting a span only redraws the panel and updates the address.

import { api } from "./api.js";
import {
  fmtCost, fmtDuration, fmtFullTime, fmtInt, h, KIND_SHORT, statusPill,
} from "./dom.js";
import { go, hashFor } from "./router.js";
import { feedbackBox, scoreChips } from "./scores.js";
import { renderSpanPanel } from "./spanpanel.js";
import { Waterfall } from "./waterfall.js";

function stat(label, value, cls = "") {
  return h(`div.stat${cls}`, h("span.stat-label", label), h("span.stat-value", value));
}

function copyButton(text) {
  if (!navigator.clipboard) return null;
  return h("button.icon", { type: "button", title: "copy the trace id", onclick: async (e) => {
    await navigator.clipboard.writeText(text);
    e.target.textContent = "copied";
    setTimeout(() => { e.target.textContent = "copy"; }, 1200);
  } }, "copy");
}

function legend(spans) {
  const counts = new Map();
  for (const span of spans) counts.set(span.kind, (counts.get(span.kind) || 0) + 1);
  return h("div.legend", [...counts].sort((a, b) => b[1] - a[1]).map(([kind, n]) =>
    h("span.legend-item", h(`span.swatch.k-${kind in KIND_SHORT ? kind : "UNKNOWN"}`), `${kind} ${n}`)));
}

/** After a score is posted: it travels through Kafka and the sink, so ask again until it shows. */
async function refreshScores(trace, target, signal) {
  const before = JSON.stringify(trace.scores);
  for (let attempt = 0; attempt < 20 && !signal.aborted; attempt += 1) {
    await new Promise((resolve) => { setTimeout(resolve, attempt < 5 ? 500 : 1500); });
    let fresh;
    try {
      fresh = await api(`traces/${encodeURIComponent(trace.trace_id)}`, { max_chars: 0 }, signal);
    } catch {
      return;
    }
    if (JSON.stringify(fresh.scores) !== before) {
      trace.scores = fresh.scores;
      trace.span_scores = fresh.span_scores;
      target.querySelector(".stat-value").replaceChildren(scoreChips(fresh.scores) || h("span.muted", "none yet"));
      return;
    }
  }
}

export async function renderTrace(root, traceId, params, signal) {
  const started = performance.now();
  root.append(h("div.loading", "Loading trace…"));
  const trace = await api(`traces/${encodeURIComponent(traceId)}`, {}, signal);
  root.replaceChildren();
  const back = h("a.back", { href: hashFor("traces") }, "← Traces");
  const errors = trace.error_count;
  const scoresStat = h("div.stat.scores-stat", h("span.stat-label", "Scores"),
    h("span.stat-value", scoreChips(trace.scores) || h("span.muted", "none yet")));
  const header = h("section.card.trace-head",
    h("div.trace-title", back, h("h1", trace.root_name || "(no root span)"),
      statusPill(errors ? "ERROR" : "OK"),
      h("span.trace-id.mono", trace.trace_id), copyButton(trace.trace_id)),
    h("div.stats",
      stat("Started", fmtFullTime(trace.start_time)),
      stat("Duration", fmtDuration(trace.duration_ns)),
      stat("Spans", fmtInt(trace.span_count)),
      stat("Errors", fmtInt(errors, "0"), errors ? ".is-error" : ""),
      stat("Tokens", fmtInt(trace.total_tokens, "0")),
      stat("Cost", fmtCost(trace.cost_usd, "$0")),
      stat("Services", trace.services.join(", ")),
      trace.session_id ? stat("Session", h("a", { href: hashFor(`session/${encodeURIComponent(trace.session_id)}`) },
        trace.session_id)) : null,
      trace.user_id ? stat("User", h("a", { href: hashFor("traces", { user_id: trace.user_id }) },
        trace.user_id)) : null),
    h("div.trace-scores", scoresStat, feedbackBox(trace.trace_id, () => refreshScores(trace, scoresStat, signal))),
    trace.orphan_count ? h("div.note.warn", `${trace.orphan_count} orphan span(s): their parent is not in this trace `
      + "(yet); they are shown at the root level.") : null,
    trace.spans_truncated ? h("div.note.warn", `This trace has more spans than the server returns; `
      + `showing the first ${fmtInt(trace.span_count)}.`) : null);

  const panel = h("aside.span-panel", { "aria-label": "span details" });
  const waterfall = new Waterfall(trace, {
    onSelect: (span) => {
      renderSpanPanel(panel, span, trace);
      go(`trace/${trace.trace_id}`, { span: span.span_id }, { replace: true });
    },
  });
  const tools = h("div.wf-tools", legend(trace.spans),
    errors ? h("button.secondary.small", { type: "button", onclick: () => waterfall.nextError() },
      `Next error (${errors})`) : null);
  root.append(header, h("div.trace-layout", h("section.card.wf-card", tools, waterfall.el), panel));
  const wanted = params.get("span");
  if (!(wanted && waterfall.selectById(wanted))) waterfall.select(0, { scroll: false });
  root.dataset.renderMs = String(Math.round(performance.now() - started));
  signal.addEventListener("abort", () => waterfall.destroy());
}
