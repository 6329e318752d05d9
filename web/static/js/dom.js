// Small DOM and formatting helpers shared by every page.
// Everything user-supplied (span names, LLM output, documents) goes in as text nodes, never as HTML:
// span content is untrusted, and the page's CSP forbids inline scripts anyway.

/** h("div.cls#id", {attr: v, onclick: fn, style: {...}}, child, ...) -> Element */
export function h(tag, attrs, ...children) {
  const [name, ...rest] = tag.split(/(?=[.#])/);
  const el = document.createElement(name || "div");
  for (const part of rest) {
    if (part[0] === ".") el.classList.add(part.slice(1));
    else el.id = part.slice(1);
  }
  if (attrs && (typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "style") Object.assign(el.style, value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

/** An SVG element (charts). */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) el.setAttribute(key, value);
  }
  append(el, children);
  return el;
}

// ---- formatting ----------------------------------------------------------------------------------

export function fmtDuration(ns) {
  if (ns === null || ns === undefined) return "";
  const ms = ns / 1e6;
  if (ms === 0) return "0 ms";
  if (ms < 1) return `${ms.toFixed(2)} ms`;
  if (ms < 10) return `${ms.toFixed(1)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
  if (ms < 3_600_000) return `${Math.floor(ms / 60_000)}m ${Math.round((ms % 60_000) / 1000)}s`;
  return `${(ms / 3_600_000).toFixed(1)} h`;
}

export function fmtMs(ms) {
  return ms === null || ms === undefined ? "–" : fmtDuration(ms * 1e6);
}

export function fmtCost(usd, empty = "") {
  if (!usd) return empty;
  if (usd >= 100) return `$${usd.toFixed(0)}`;
  if (usd >= 1) return `$${usd.toFixed(2)}`;
  if (usd >= 0.0001) return `$${usd.toFixed(4)}`;
  return "<$0.0001";
}

const compact = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });
const whole = new Intl.NumberFormat();

export function fmtInt(n, empty = "") {
  if (!n) return empty;
  return whole.format(n);
}

export function fmtCompact(n) {
  return n ? compact.format(n) : "0";
}

export function fmtScore(score) {
  return score === null || score === undefined ? "–" : score.toFixed(4);
}

const timeOnly = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const dateTime = new Intl.DateTimeFormat(undefined, {
  month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
});
const full = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
  timeZoneName: "short",
});

/** Local time; the date only when it is not today. */
export function fmtTime(iso) {
  const d = new Date(iso);
  const today = new Date();
  return d.toDateString() === today.toDateString() ? timeOnly.format(d) : dateTime.format(d);
}

export function fmtFullTime(iso) {
  return full.format(new Date(iso));
}

export function fmtAgo(iso) {
  const seconds = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  if (seconds < 60) return `${Math.max(seconds, 0)}s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m ago`;
  return `${Math.floor(seconds / 86400)}d ago`;
}

export const KIND_SHORT = {
  LLM: "LLM", RETRIEVER: "RETR", RERANKER: "RRNK", EMBEDDING: "EMB", TOOL: "TOOL", AGENT: "AGNT",
  CHAIN: "CHAIN", GUARDRAIL: "GUARD", EVALUATOR: "EVAL", PROMPT: "PRMT", UNKNOWN: "?",
};

export function kindBadge(kind) {
  return h(`span.kind.k-${kind in KIND_SHORT ? kind : "UNKNOWN"}`, { title: kind }, KIND_SHORT[kind] || kind);
}

export function statusPill(status) {
  const cls = status === "ERROR" ? "err" : status === "OK" ? "ok" : "unset";
  return h(`span.pill.${cls}`, status || "UNSET");
}

/** Text that may be JSON: pretty-printed when it parses, as it is otherwise. */
export function prettyText(text) {
  const t = (text || "").trim();
  if ((t.startsWith("{") && t.endsWith("}")) || (t.startsWith("[") && t.endsWith("]"))) {
    try {
      return JSON.stringify(JSON.parse(t), null, 2);
    } catch {
      /* not JSON after all */
    }
  }
  return text;
}

export function debounce(fn, ms) {
  let timer = 0;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

/** Replace `target`'s content with the error's message (an aborted request is not an error). */
export function showError(target, err) {
  if (err && err.name === "AbortError") return;
  const message = err && err.message ? err.message : String(err);
  clear(target).append(h("div.error-box", h("strong", "Could not load. "), message));
}
