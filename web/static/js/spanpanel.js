// The span panel: everything about the selected span, each section only when the span has it —
// exceptions with their stack, retrieved documents with score and rank, LLM parameters, messages, the
// prompt template with its variables, input and output, scores, events and attributes.

import { api } from "./api.js";
import {
  append, clear, fmtCost, fmtDuration, fmtInt, fmtScore, h, kindBadge, prettyText, showError, statusPill,
} from "./dom.js";

function section(title, ...content) {
  return h("section.panel-section", h("h3", title), ...content);
}

function kv(pairs) {
  const rows = pairs.filter(([, value]) => value !== undefined && value !== null && value !== "");
  return h("table.kv", h("tbody", rows.map(([key, value]) => h("tr", h("th", key), h("td", value)))));
}

function textBlock(text, cls = "") {
  return h(`pre.text${cls}`, prettyText(text));
}

function truncatedNote(shown, total, onLoad) {
  if (total <= shown) return null;
  return h("div.note", `Showing the first ${fmtInt(shown)} of ${fmtInt(total)} characters. `,
    h("button.link", { type: "button", onclick: onLoad }, "Load all"));
}

function exceptions(span) {
  const items = span.exceptions.map((e) => h("div.exception",
    h("div.exc-head", h("strong", e.type || "exception"), h("span.muted", ` at +${fmtDuration(e.offset_ns)}`)),
    e.message ? h("div.exc-message", e.message) : null,
    e.stacktrace ? h("pre.stack", e.stacktrace) : null));
  if (!items.length && span.status === "ERROR") {
    items.push(h("div.exception", h("div.exc-head", h("strong", span.error_type || "error")),
      h("div.exc-message", span.status_message || "status ERROR, no exception recorded (often: a child failed)")));
  }
  return items.length ? section(`Exceptions (${items.length})`, ...items) : null;
}

function documents(span) {
  if (!span.documents.length) return null;
  // scores in [0, 1] (similarities) are drawn on that scale; others (BM25...) relative to the best one
  const top = Math.max(...span.documents.map((d) => (d.score === null ? 0 : Math.abs(d.score))), 1);
  const rows = span.documents.map((d) => {
    const width = d.score === null ? 0 : Math.min(100, (Math.abs(d.score) / top) * 100);
    const content = h("div.doc-content.clamped", { title: "click to expand",
      onclick: (e) => e.currentTarget.classList.toggle("clamped") }, d.content);
    return h("li.doc", { dataset: { position: d.position } },
      h("div.doc-head",
        h("span.doc-pos", { title: "position (rank) as the retriever returned it" }, `#${d.position}`),
        h("span.doc-score", h("span.score-bar", h("span", { style: { width: `${width}%` } })),
          h("span.score-value", { title: "score" }, fmtScore(d.score))),
        h("span.doc-id.mono", d.id)),
      content,
      Object.keys(d.metadata).length
        ? h("div.chips", Object.entries(d.metadata).map(([k, v]) => h("span.chip", `${k}: ${v}`))) : null);
  });
  return section(`Documents (${span.documents.length})`, h("ol.docs", rows));
}

function llm(span) {
  const p = span.llm;
  if (!p) return null;
  const tokens = span.total_tokens
    ? `${fmtInt(span.input_tokens, "0")} in${span.cached_tokens ? ` (${fmtInt(span.cached_tokens)} cached)` : ""}`
      + ` · ${fmtInt(span.output_tokens, "0")} out`
      + `${span.reasoning_tokens ? ` (${fmtInt(span.reasoning_tokens)} reasoning)` : ""}`
      + ` · ${fmtInt(span.total_tokens)} total`
    : "";
  const parts = [kv([
    ["model", p.model], ["provider", p.provider], ["temperature", p.temperature], ["max tokens", p.max_tokens],
    ["top_p", p.top_p], ["stop", p.stop.length ? p.stop.join(", ") : null], ["finish reason", p.finish_reason],
    ["tokens", tokens], ["cost", span.cost_usd ? `${fmtCost(span.cost_usd)} (${span.cost_source})` : null],
  ])];
  if (p.system_prompt) parts.push(h("h4", "System prompt"), textBlock(p.system_prompt));
  if (p.invocation_parameters) {
    parts.push(h("details", h("summary", "Invocation parameters"), textBlock(p.invocation_parameters)));
  }
  return section("LLM parameters", ...parts);
}

function messageList(messages) {
  return h("div.messages", messages.map((m) => h(`div.msg.role-${(m.role || "other").replace(/\W/g, "")}`,
    h("div.msg-role", m.role || "message", m.name ? h("span.muted", ` · ${m.name}`) : null,
      m.tool_call_id ? h("span.muted", ` · tool call ${m.tool_call_id}`) : null),
    m.content ? h("div.msg-content", m.content) : null,
    m.tool_calls.map((t) => h("div.tool-call", h("span.mono", `${t.name}(`), h("span.mono", t.arguments),
      h("span.mono", ")"))))));
}

function messages(span) {
  const p = span.llm;
  if (!p || (!p.input_messages.length && !p.output_messages.length)) return null;
  return section("Messages",
    p.input_messages.length ? messageList(p.input_messages) : null,
    p.output_messages.length ? [h("h4", "Response"), messageList(p.output_messages)] : null);
}

function templateText(text, variables) {
  const pre = h("pre.text.template");
  for (const part of text.split(/(\{\{?\s*[\w.-]+\s*\}?\})/)) {
    const name = part.replace(/[{}\s]/g, "");
    if (/^\{/.test(part) && name in variables) pre.append(h("mark", { title: variables[name] }, part));
    else pre.append(part);
  }
  return pre;
}

function firstLine(text) {
  const line = text.split("\n").map((l) => l.trim()).find((l) => l) || "";
  return line.length > 60 ? line.slice(0, 59) + "…" : line;
}

function prompt(span) {
  const p = span.prompt;
  if (!p) return null;
  return section("Prompt template",
    h("div.prompt-name", h("strong", p.template || "(unnamed)"),
      // a template sent without a name is known by the hash of its text (`#` + 10 hex digits): say which one
      p.template.startsWith("#") && p.text ? h("span.muted", firstLine(p.text)) : null,
      p.version ? h("span.chip", p.version) : null),
    p.text ? templateText(p.text, p.variables) : null,
    Object.keys(p.variables).length
      ? [h("h4", "Variables"), kv(Object.entries(p.variables).map(([k, v]) => [k, h("span.pre-wrap", v)]))] : null);
}

function payload(title, text, total, onLoad) {
  if (!text) return null;
  return section(title, truncatedNote(text.length, total, onLoad), textBlock(text));
}

function scores(span, trace) {
  // the latest per name from the scores table (posted later, or carried by the span); the span's own
  // list when the trace came without them
  const latest = (trace.span_scores || []).filter((s) => s.span_id === span.span_id);
  const shown = latest.length ? latest : span.scores.map((s) => ({ ...s, author: "", count: 1 }));
  if (!shown.length) return null;
  return section("Scores", h("table.grid.compact.span-scores", h("thead", h("tr", h("th", "name"),
    h("th.num", "value"), h("th", "label"), h("th", "source"), h("th", "comment"))), h("tbody", shown.map((s) => h("tr",
    h("td", s.name), h("td.num", s.value === null ? "–" : String(s.value)), h("td", s.label),
    h("td", s.author ? `${s.source} (${s.author})` : s.source),
    h("td", s.count > 1 ? [s.comment, h("span.muted", ` (latest of ${s.count})`)] : s.comment))))));
}

function events(span) {
  if (!span.events.length) return null;
  return section(`Events (${span.events.length})`, span.events.map((e) => h("div.event",
    h("div", h("strong", e.name), h("span.muted", ` at +${fmtDuration(e.offset_ns)}`)),
    Object.keys(e.attributes).length ? kv(Object.entries(e.attributes)) : null)));
}

function attributes(title, map, open = true) {
  const entries = Object.entries(map).sort(([a], [b]) => a.localeCompare(b));
  if (!entries.length) return null;
  return h("details.panel-section", { open },
    h("summary", h("h3", `${title} (${entries.length})`)), kv(entries.map(([k, v]) => [k, h("span.pre-wrap", v)])));
}

/** Draw `span` into `panel`; "Load all" fetches the span's long texts whole and redraws. */
export function renderSpanPanel(panel, span, trace) {
  const loadAll = async (e) => {
    e.target.disabled = true;
    try {
      const full = await api(`traces/${trace.trace_id}/spans/${span.span_id}`);
      renderSpanPanel(panel, { ...span, ...full }, trace);
    } catch (err) {
      showError(panel, err);
    }
  };
  const tokens = span.total_tokens ? `${fmtInt(span.total_tokens)} tokens` : null;
  append(clear(panel), [
    h("div.panel-head",
      h("div.panel-title", kindBadge(span.kind), h("h2", span.name), statusPill(span.status)),
      h("div.panel-meta",
        h("span", h("b", fmtDuration(span.duration_ns))),
        h("span", `at +${fmtDuration(span.offset_ns)}`),
        h("span", span.service),
        span.model ? h("span", span.model) : null,
        tokens ? h("span", tokens) : null,
        span.cost_usd ? h("span", fmtCost(span.cost_usd)) : null),
      h("div.panel-ids.mono", `span ${span.span_id}`, span.parent_span_id ? ` · parent ${span.parent_span_id}` : "",
        span.orphan ? h("span.warn-tag", "orphan: parent not in trace") : null),
      span.tags.length ? h("div.chips", span.tags.map((t) => h("span.chip", t))) : null),
    exceptions(span),
    documents(span),
    llm(span),
    messages(span),
    prompt(span),
    payload("Input", span.input, span.input_chars, loadAll),
    payload("Output", span.output, span.output_chars, loadAll),
    scores(span, trace),
    events(span),
    attributes("Attributes", span.attributes),
    attributes("Resource", span.resource_attributes, false),
    (span.session_id || span.user_id)
      ? section("Context", kv([["session", span.session_id], ["user", span.user_id]])) : null,
  ]);
  panel.scrollTop = 0;
}
