// The charts page: latency p50/p95/p99, calls, errors, tokens and cost over time, one series per
// model, service, kind or span name, from GET /api/rollups (the per-minute aggregates).

import { api } from "./api.js";
import { clear, fmtCompact, fmtCost, fmtMs, h, showError } from "./dom.js";
import { go } from "./router.js";
import { chart, PALETTE } from "./svgchart.js";

const RANGES = [["1h", "Last hour"], ["6h", "Last 6 hours"], ["24h", "Last 24 hours"], ["7d", "Last 7 days"],
  ["30d", "Last 30 days"]];
const BY = [["model", "Model"], ["service", "Service"], ["kind", "Kind"], ["name", "Span name"]];
const KINDS = [["", "LLM, retrieval, embedding, rerank"], ["*", "All kinds"], ["LLM", "LLM"],
  ["RETRIEVER", "Retriever"], ["RERANKER", "Reranker"], ["EMBEDDING", "Embedding"], ["TOOL", "Tool"],
  ["AGENT", "Agent"], ["CHAIN", "Chain"], ["GUARDRAIL", "Guardrail"], ["EVALUATOR", "Evaluator"],
  ["PROMPT", "Prompt"]];

const CHARTS = [
  { title: "Latency p50", key: "p50_ms", kind: "line", format: fmtMs },
  { title: "Latency p95", key: "p95_ms", kind: "line", format: fmtMs },
  { title: "Latency p99", key: "p99_ms", kind: "line", format: fmtMs },
  { title: "Calls", key: "calls", kind: "bar", format: fmtCompact, integer: true },
  { title: "Errors", key: "errors", kind: "bar", format: fmtCompact, integer: true },
  { title: "Tokens", key: "total_tokens", kind: "bar", format: fmtCompact, integer: true },
  { title: "Cost", key: "cost_usd", kind: "bar", format: (v) => fmtCost(v, "$0") },
];

function select(name, options, value, onChange) {
  return h("label.field", h("span", name),
    h("select", { name, onchange: (e) => onChange(e.target.value) },
      options.map(([v, label]) => h("option", { value: v, selected: v === value }, label))));
}

export async function renderCharts(root, params, signal) {
  const state = {
    since: params.get("since") || "1h",
    by: params.get("by") || "model",
    kind: params.get("kind") || "",
    service: params.get("service") || "",
  };
  const body = h("div.charts-body");
  const update = (change) => {
    Object.assign(state, change);
    go("charts", state, { replace: true });
    load(body, state, signal);
  };
  const services = h("select", { name: "service", onchange: (e) => update({ service: e.target.value }) },
    h("option", { value: "" }, "All services"),
    state.service ? h("option", { value: state.service, selected: true }, state.service) : null);
  root.append(
    h("div.page-head", h("h1", "Charts"), h("span.muted", "from the per-minute aggregates of every span")),
    h("form.filters", { onsubmit: (e) => e.preventDefault() },
      select("range", RANGES, state.since, (v) => update({ since: v })),
      select("by", BY, state.by, (v) => update({ by: v })),
      select("kind", KINDS, state.kind, (v) => update({ kind: v })),
      h("label.field", h("span", "service"), services)),
    body);
  api("services", {}, signal).then((answer) => {
    for (const { name } of answer.services) {
      if (name !== state.service) services.append(h("option", { value: name }, name));
    }
  }).catch(() => {});
  await load(body, state, signal);
}

async function load(body, state, signal) {
  clear(body).append(h("div.loading", "Loading…"));
  let data;
  try {
    data = await api("rollups", state, signal);
  } catch (err) {
    showError(body, err);
    return;
  }
  clear(body);
  if (!data.series.length) {
    body.append(h("div.empty", h("strong", "No calls in this range."), " Try a longer range or another kind."));
    return;
  }
  const times = [];
  for (let t = data.since_s; t < data.until_s; t += data.step_seconds) times.push(t);
  const index = new Map(times.map((t, i) => [t, i]));
  const colored = data.series.map((ser, i) => ({ ...ser, color: PALETTE[i % PALETTE.length] }));
  const legend = h("div.legend.chart-legend", colored.map((ser) => h("span.legend-item",
    h("span.swatch", { style: { background: ser.color } }), ser.group,
    h("span.muted", ` ${fmtCompact(ser.calls)} calls${ser.errors ? `, ${fmtCompact(ser.errors)} errors` : ""}`))),
    data.groups_omitted ? h("span.muted", `+${data.groups_omitted} smaller groups not shown`) : null);
  const step = data.step_seconds >= 3600 ? `${data.step_seconds / 3600} h` : `${data.step_seconds / 60} min`;
  const cards = CHARTS.map((spec) => h("section.card.chart-card", { dataset: { chart: spec.key } }, h("h3", spec.title)));
  body.append(h("div.chart-meta", legend, h("span.muted.nowrap", `one step = ${step}`)),
    h("div.chart-grid.latency", cards.slice(0, 3)), h("div.chart-grid.volume", cards.slice(3)));
  CHARTS.forEach((spec, c) => {
    const width = Math.max(cards[c].clientWidth - 28, 260);
    const series = colored.map((ser) => {
      const values = new Array(times.length).fill(spec.kind === "bar" ? 0 : null);
      for (const point of ser.points) {
        const i = index.get(point.t);
        if (i !== undefined) values[i] = point[spec.key];
      }
      return { name: ser.group, color: ser.color, values };
    });
    cards[c].append(chart({ times, series, kind: spec.kind, format: spec.format, width, integer: spec.integer }));
  });
}
