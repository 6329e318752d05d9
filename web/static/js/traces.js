// The traces list: filters (service, status, time range, min duration, min cost, session, user, search,
// score name / min / max / label) kept in the address, one page at a time from GET /api/traces, "Load more" by cursor.

import { api } from "./api.js";
import {
  clear, debounce, fmtCost, fmtDuration, fmtFullTime, fmtInt, fmtTime, h, showError, statusPill,
} from "./dom.js";
import { go, hashFor } from "./router.js";
import { scoreChips } from "./scores.js";

const RANGES = [["15m", "Last 15 minutes"], ["1h", "Last hour"], ["6h", "Last 6 hours"], ["24h", "Last 24 hours"],
  ["7d", "Last 7 days"], ["30d", "Last 30 days"], ["custom", "Custom range…"]];
const FILTERS = ["service", "status", "since", "until", "min_duration_ms", "min_cost", "session_id", "user_id", "q",
  "score_name", "score_min", "score_max", "score_label"];
const PAGE = 50;

function filtersFrom(params) {
  const filters = {};
  for (const key of FILTERS) filters[key] = params.get(key) || "";
  return filters;
}

/** datetime-local value <-> ISO (the input speaks local time without a zone). */
function toLocalInput(iso) {
  if (!iso) return "";
  const d = new Date(/^\d+$/.test(iso) ? Number(iso) : iso);
  if (Number.isNaN(d.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function fromLocalInput(value) {
  return value ? new Date(value).toISOString() : "";
}

export async function renderTraces(root, params, signal) {
  const filters = filtersFrom(params);
  const results = h("section.card.traces-card");
  const form = filterBar(filters, (changed) => {
    Object.assign(filters, changed);
    go("traces", filters, { replace: true });
    load(results, filters, signal);
  });
  root.append(h("div.page-head", h("h1", "Traces"), h("span.muted", "newest first")), form, results);
  fillServices(form, filters.service, signal);
  await load(results, filters, signal);
}

function field(label, control) {
  return h("label.field", h("span", label), control);
}

function filterBar(filters, onChange) {
  const now = debounce(onChange, 350);
  const text = (key, placeholder, type = "text", extra = {}) =>
    h("input", { type, name: key, value: filters[key], placeholder, oninput: (e) => now({ [key]: e.target.value.trim() }),
      ...extra });
  const range = RANGES.some(([v]) => v === filters.since) || !filters.since ? filters.since || "24h" : "custom";
  const custom = h("span.custom-range", { hidden: range !== "custom" },
    h("input", { type: "datetime-local", name: "since_at", value: toLocalInput(filters.since),
      onchange: (e) => onChange({ since: fromLocalInput(e.target.value) }) }),
    "→",
    h("input", { type: "datetime-local", name: "until_at", value: toLocalInput(filters.until),
      onchange: (e) => onChange({ until: fromLocalInput(e.target.value) }) }));
  const rangeSelect = h("select", { name: "range", onchange: (e) => {
    const value = e.target.value;
    custom.hidden = value !== "custom";
    if (value !== "custom") onChange({ since: value, until: "" });
  } }, RANGES.map(([value, label]) => h("option", { value, selected: value === range }, label)));
  const status = h("select", { name: "status", onchange: (e) => onChange({ status: e.target.value }) },
    [["", "Any status"], ["OK", "OK"], ["ERROR", "Error"], ["UNSET", "Unset"]].map(([v, label]) =>
      h("option", { value: v, selected: v === filters.status }, label)));
  const service = h("select", { name: "service", onchange: (e) => onChange({ service: e.target.value }) },
    h("option", { value: "" }, "All services"),
    filters.service ? h("option", { value: filters.service, selected: true }, filters.service) : null);
  return h("form.filters", { onsubmit: (e) => e.preventDefault() },
    field("Search", text("q", "trace id or name", "search")),
    field("Service", service),
    field("Status", status),
    field("Time range", h("span.range", rangeSelect, custom)),
    field("Min duration (ms)", text("min_duration_ms", "0", "number", { min: 0, step: "any" })),
    field("Min cost ($)", text("min_cost", "0", "number", { min: 0, step: "any" })),
    field("Session", text("session_id", "session id")),
    field("User", text("user_id", "user id")),
    field("Score", text("score_name", "name, e.g. user_feedback")),
    field("Score ≥", text("score_min", "min", "number", { step: "any" })),
    field("Score ≤", text("score_max", "max", "number", { step: "any" })),
    field("Score label", text("score_label", "e.g. thumbs_down")),
  );
}

async function fillServices(form, selected, signal) {
  try {
    const answer = await api("services", {}, signal);
    const select = form.querySelector("select[name=service]");
    clear(select).append(h("option", { value: "" }, "All services"));
    const names = answer.services.map((s) => s.name);
    if (selected && !names.includes(selected)) names.unshift(selected);
    for (const name of names) select.append(h("option", { value: name, selected: name === selected }, name));
  } catch {
    /* the dropdown keeps "All services"; the list shows any error */
  }
}

async function load(results, filters, signal) {
  clear(results).append(h("div.loading", "Loading traces…"));
  try {
    const page = await api("traces", { ...filters, limit: PAGE }, signal);
    clear(results);
    if (!page.traces.length) {
      results.append(h("div.empty", h("strong", "No traces match."),
        " Widen the time range or clear a filter. Traces appear once the worker has assembled them."));
      return;
    }
    const body = h("tbody");
    const table = h("table.grid.traces", h("thead", h("tr",
      h("th", "Started"), h("th", "Trace"), h("th", "Service"), h("th.num", "Duration"), h("th.num", "Spans"),
      h("th.num", "Errors"), h("th.num", "Tokens"), h("th.num", "Cost"), h("th", "Session"), h("th", "User"),
      h("th", "Status"), h("th", "Scores"))), body);
    const more = h("div.more");
    results.append(h("div.table-wrap", table), more);
    const maxDuration = { value: 1 };
    addRows(body, page.traces, maxDuration, filters);
    pager(more, body, page, filters, maxDuration, signal);
  } catch (err) {
    showError(results, err);
  }
}

function pager(more, body, page, filters, maxDuration, signal) {
  clear(more);
  if (!page.next_cursor) {
    more.append(h("span.muted", `${body.children.length} traces`));
    return;
  }
  more.append(h("button.secondary", { type: "button", onclick: async (e) => {
    e.target.disabled = true;
    e.target.textContent = "Loading…";
    try {
      const next = await api("traces", { ...filters, limit: PAGE, cursor: page.next_cursor }, signal);
      addRows(body, next.traces, maxDuration, filters);
      pager(more, body, next, filters, maxDuration, signal);
    } catch (err) {
      showError(more, err);
    }
  } }, "Load more"));
}

function filterLink(key, value, filters) {
  if (!value) return h("span.muted", "–");
  return h("a.chip", { href: hashFor("traces", { ...filters, [key]: value }), title: `only ${key} ${value}`,
    onclick: (e) => e.stopPropagation() }, value);
}

function addRows(body, traces, maxDuration, filters) {
  for (const t of traces) maxDuration.value = Math.max(maxDuration.value, t.duration_ns);
  const rows = traces.map((t) => {
    const open = () => go(`trace/${t.trace_id}`);
    const name = h("a.trace-name", { href: `#/trace/${t.trace_id}`, onclick: (e) => e.stopPropagation() },
      t.root_name || "(no root span)");
    // log scale: a 50 ms trace and a 5 s one both stay visible beside a one-minute batch job
    const width = Math.max(3, (Math.log1p(t.duration_ns / 1e6) / Math.log1p(maxDuration.value / 1e6)) * 100);
    return h(`tr.clickable${t.status === "ERROR" ? ".is-error" : ""}`,
      { tabindex: 0, dataset: { traceId: t.trace_id }, onclick: open,
        onkeydown: (e) => { if (e.key === "Enter") open(); } },
      h("td.time", { title: fmtFullTime(t.start_time) }, fmtTime(t.start_time)),
      h("td", name, h("div.sub.mono", t.trace_id.slice(0, 16), t.complete ? null : h("span.warn-tag", "incomplete"))),
      h("td", t.service),
      h("td.num", h("div.dur", h("span.dur-bar", { style: { width: `${width}%` } }), h("span", fmtDuration(t.duration_ns)))),
      h("td.num", fmtInt(t.span_count)),
      h("td.num", t.error_count ? h("span.err-text", fmtInt(t.error_count)) : h("span.muted", "0")),
      h("td.num", fmtInt(t.total_tokens, "–")),
      h("td.num", fmtCost(t.cost_usd, "–")),
      h("td", t.session_id ? h("a.chip", { href: hashFor(`session/${encodeURIComponent(t.session_id)}`),
        title: "the whole conversation", onclick: (e) => e.stopPropagation() }, t.session_id) : h("span.muted", "–")),
      h("td", filterLink("user_id", t.user_id, filters)),
      h("td", statusPill(t.status)),
      h("td.scores-cell", scoreChips(t.scores) || h("span.muted", "–")));
  });
  body.append(...rows);
}
