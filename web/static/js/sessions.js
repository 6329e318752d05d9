// Conversations as sessions: the list (GET /api/sessions, the most recently active first, "Load more" by
// cursor) and one conversation (GET /api/sessions/{id}) as its turns, each with what the user asked, what
// came back, its tokens, cost and latest scores, and a link into the trace's waterfall.

import { api } from "./api.js";
import {
  clear, fmtCost, fmtDuration, fmtFullTime, fmtInt, fmtTime, h, showError, statusPill,
} from "./dom.js";
import { go, hashFor } from "./router.js";
import { scoreChips } from "./scores.js";

const RANGES = [["1h", "Last hour"], ["24h", "Last 24 hours"], ["7d", "Last 7 days"], ["30d", "Last 30 days"]];
const PAGE = 50;

function sessionHref(id) {
  return hashFor(`session/${encodeURIComponent(id)}`);
}

export async function renderSessions(root, params, signal) {
  const filters = { since: params.get("since") || "24h", user_id: params.get("user_id") || "",
    service: params.get("service") || "" };
  const results = h("section.card.sessions-card");
  const change = (changed) => {
    Object.assign(filters, changed);
    go("sessions", filters, { replace: true });
    load(results, filters, signal);
  };
  root.append(
    h("div.page-head", h("h1", "Sessions"), h("span.muted", "conversations, most recently active first")),
    h("form.filters", { onsubmit: (e) => e.preventDefault() },
      h("label.field", h("span", "Time range"), h("select", { name: "since", onchange: (e) => change({ since: e.target.value }) },
        RANGES.map(([v, label]) => h("option", { value: v, selected: v === filters.since }, label)))),
      h("label.field", h("span", "User"), h("input", { type: "text", name: "user_id", value: filters.user_id,
        placeholder: "user id", onchange: (e) => change({ user_id: e.target.value.trim() }) })),
      h("label.field", h("span", "Service"), h("input", { type: "text", name: "service", value: filters.service,
        placeholder: "service", onchange: (e) => change({ service: e.target.value.trim() }) }))),
    results);
  await load(results, filters, signal);
}

async function load(results, filters, signal) {
  clear(results).append(h("div.loading", "Loading sessions…"));
  try {
    const page = await api("sessions", { ...filters, limit: PAGE }, signal);
    clear(results);
    if (!page.sessions.length) {
      results.append(h("div.empty", h("strong", "No sessions in this range."),
        " A session is the traces that share a session id (set session_id on your spans)."));
      return;
    }
    const body = h("tbody");
    const more = h("div.more");
    results.append(h("div.table-wrap", h("table.grid.sessions", h("thead", h("tr",
      h("th", "Last turn"), h("th", "Session"), h("th", "User"), h("th.num", "Turns"), h("th.num", "Duration"),
      h("th.num", "Tokens"), h("th.num", "Cost"), h("th.num", "Errors"), h("th", "Scores"))), body)), more);
    addRows(body, page.sessions);
    pager(more, body, page, filters, signal);
  } catch (err) {
    showError(results, err);
  }
}

function pager(more, body, page, filters, signal) {
  clear(more);
  if (!page.next_cursor) {
    more.append(h("span.muted", `${body.children.length} sessions`));
    return;
  }
  more.append(h("button.secondary", { type: "button", onclick: async (e) => {
    e.target.disabled = true;
    try {
      const next = await api("sessions", { ...filters, limit: PAGE, cursor: page.next_cursor }, signal);
      addRows(body, next.sessions);
      pager(more, body, next, filters, signal);
    } catch (err) {
      showError(more, err);
    }
  } }, "Load more"));
}

function addRows(body, sessions) {
  body.append(...sessions.map((s) => {
    const open = () => go(`session/${encodeURIComponent(s.session_id)}`);
    return h(`tr.clickable${s.error_turns ? ".is-error" : ""}`,
      { tabindex: 0, dataset: { sessionId: s.session_id }, onclick: open,
        onkeydown: (e) => { if (e.key === "Enter") open(); } },
      h("td.time", { title: fmtFullTime(s.last_time) }, fmtTime(s.last_time)),
      h("td", h("a.trace-name", { href: sessionHref(s.session_id), onclick: (e) => e.stopPropagation() },
        s.session_id), h("div.sub", s.first_name)),
      h("td", s.user_id || h("span.muted", "–")),
      h("td.num", fmtInt(s.turns)),
      h("td.num", fmtDuration(s.duration_ns)),
      h("td.num", fmtInt(s.total_tokens, "–")),
      h("td.num", fmtCost(s.cost_usd, "–")),
      h("td.num", s.errors ? h("span.err-text", fmtInt(s.errors)) : h("span.muted", "0")),
      h("td.scores-cell", scoreChips(s.scores) || h("span.muted", "–")));
  }));
}

function bubble(cls, who, text, total) {
  if (!text) return h(`div.bubble.${cls}.empty-bubble`, h("div.bubble-who", who), h("span.muted", "(nothing recorded)"));
  return h(`div.bubble.${cls}`, h("div.bubble-who", who), h("div.bubble-text", text),
    total > text.length ? h("div.muted.small", `… ${fmtInt(total - text.length)} more characters in the trace`) : null);
}

export async function renderSession(root, sessionId, params, signal) {
  root.append(h("div.loading", "Loading session…"));
  const session = await api(`sessions/${encodeURIComponent(sessionId)}`, {}, signal);
  root.replaceChildren();
  const head = h("section.card.session-head",
    h("div.trace-title", h("a.back", { href: hashFor("sessions") }, "← Sessions"),
      h("h1", session.session_id), session.errors ? statusPill("ERROR") : null),
    h("div.stats",
      h("div.stat", h("span.stat-label", "User"), h("span.stat-value", session.user_id
        ? h("a", { href: hashFor("traces", { user_id: session.user_id }) }, session.user_id) : "–")),
      h("div.stat", h("span.stat-label", "Turns"), h("span.stat-value", fmtInt(session.turn_count))),
      h("div.stat", h("span.stat-label", "Started"), h("span.stat-value", fmtFullTime(session.first_time))),
      h("div.stat", h("span.stat-label", "Duration"), h("span.stat-value", fmtDuration(session.duration_ns))),
      h("div.stat", h("span.stat-label", "Tokens"), h("span.stat-value", fmtInt(session.total_tokens, "0"))),
      h("div.stat", h("span.stat-label", "Cost"), h("span.stat-value", fmtCost(session.cost_usd, "$0"))),
      h("div.stat", h("span.stat-label", "Errors"), h("span.stat-value", fmtInt(session.errors, "0"))),
      h("div.stat", h("span.stat-label", "All traces"), h("span.stat-value",
        h("a", { href: hashFor("traces", { session_id: session.session_id, since: "30d" }) }, "in the list")))),
    session.turns_truncated ? h("div.note.warn", `Showing the first ${fmtInt(session.turn_count)} turns.`) : null);
  const turns = session.turns.map((t) => h(`article.turn${t.status === "ERROR" ? ".is-error" : ""}`,
    { dataset: { traceId: t.trace_id, turn: t.turn } },
    h("div.turn-head",
      h("span.turn-no", `#${t.turn}`),
      h("span.time", { title: fmtFullTime(t.start_time) }, fmtTime(t.start_time)),
      h("a.trace-link", { href: hashFor(`trace/${t.trace_id}`), title: "open the waterfall" }, t.root_name || t.trace_id),
      h("span.muted", fmtDuration(t.duration_ns)),
      t.total_tokens ? h("span.muted", `${fmtInt(t.total_tokens)} tokens`) : null,
      t.cost_usd ? h("span.muted", fmtCost(t.cost_usd)) : null,
      t.error_count ? h("span.err-text", `${fmtInt(t.error_count)} error(s)`) : null,
      scoreChips(t.scores)),
    bubble("user", "input", t.input, t.input_chars),
    bubble("assistant", "output", t.output, t.output_chars)));
  root.append(head, h("section.card.conversation", turns));
}
