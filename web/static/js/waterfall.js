// The waterfall: one row per span in the server's tree order (depth first, children by start time),
// indented by depth, with a bar placed by start offset and duration on the trace's timeline.
//
// Rows are virtualised: only the rows in (and just around) the viewport exist in the DOM, absolutely
// positioned in a spacer as tall as every row, so a trace of 1,000 or 20,000 spans costs the same few
// dozen elements. Subtrees collapse: in depth-first order a span's subtree is the run of rows after it
// that are deeper, so hiding it is a jump to where that run ends (computed once).

import { fmtDuration, h, KIND_SHORT } from "./dom.js";

const ROW_H = 28;
const OVERSCAN = 12;
const INDENT = 14;
const MAX_INDENT_DEPTH = 40;
const DIVISIONS = 5;

/** For each span index, the index just past its subtree. */
function subtreeEnds(spans) {
  const ends = new Array(spans.length).fill(spans.length);
  const stack = [];
  spans.forEach((span, i) => {
    while (stack.length && spans[stack[stack.length - 1]].depth >= span.depth) ends[stack.pop()] = i;
    stack.push(i);
  });
  return ends;
}

export class Waterfall {
  constructor(trace, { onSelect }) {
    this.spans = trace.spans;
    this.total = Math.max(trace.duration_ns, 1);
    this.ends = subtreeEnds(this.spans);
    this.collapsed = new Set();
    this.onSelect = onSelect;
    this.selected = -1;
    this.visible = [];
    this.frame = 0;

    const ticks = [];
    for (let k = 0; k <= DIVISIONS; k++) {
      ticks.push(h(`span.wf-tick${k === DIVISIONS ? ".last" : ""}`, { style: { left: `${(k / DIVISIONS) * 100}%` } },
        fmtDuration((this.total * k) / DIVISIONS)));
    }
    this.rows = h("div.wf-rows");
    this.body = h("div.wf-body", { tabindex: 0, onscroll: () => this.schedule(), onkeydown: (e) => this.key(e) },
      this.rows);
    this.el = h("div.waterfall",
      h("div.wf-head", h("div.wf-name-head", `${this.spans.length} span${this.spans.length === 1 ? "" : "s"}`),
        h("div.wf-axis", ticks)),
      this.body);
    this.rows.addEventListener("click", (e) => this.click(e));
    this.observer = new ResizeObserver(() => this.schedule());
    this.observer.observe(this.body);
    this.layout();
  }

  layout() {
    const visible = [];
    for (let i = 0; i < this.spans.length; ) {
      visible.push(i);
      i = this.collapsed.has(i) ? this.ends[i] : i + 1;
    }
    this.visible = visible;
    this.position = new Map(visible.map((index, k) => [index, k]));
    this.rows.style.height = `${visible.length * ROW_H}px`;
    this.render();
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => { this.frame = 0; this.render(); });
  }

  render() {
    const top = this.body.scrollTop;
    const height = this.body.clientHeight || 800;
    const first = Math.max(0, Math.floor(top / ROW_H) - OVERSCAN);
    const last = Math.min(this.visible.length, Math.ceil((top + height) / ROW_H) + OVERSCAN);
    const rows = [];
    for (let k = first; k < last; k++) rows.push(this.row(this.visible[k], k));
    this.rows.replaceChildren(...rows);
  }

  row(index, k) {
    const span = this.spans[index];
    const error = span.status === "ERROR";
    const kind = span.kind in KIND_SHORT ? span.kind : "UNKNOWN";
    const depth = Math.min(span.depth, MAX_INDENT_DEPTH);
    const indent = depth * INDENT;
    const hasKids = this.ends[index] > index + 1;
    const twisty = hasKids
      ? h("button.twisty", { type: "button", "aria-label": this.collapsed.has(index) ? "expand" : "collapse",
        dataset: { toggle: index } }, this.collapsed.has(index) ? "▸" : "▾")
      : h("span.twisty-space");
    const left = (span.offset_ns / this.total) * 100;
    const width = (span.duration_ns / this.total) * 100;
    const end = left + width;
    const label = h("span.bar-label", fmtDuration(span.duration_ns));
    if (end > 78) label.style.right = `calc(${100 - left}% + 6px)`;
    else label.style.left = `calc(${end}% + 6px)`;
    const name = h("div.wf-name", { style: { paddingLeft: `${indent + 6}px`, backgroundSize: `${indent}px 100%` } },
      twisty,
      h(`span.kind.k-${kind}`, KIND_SHORT[kind]),
      h("span.span-name", span.name),
      span.depth > MAX_INDENT_DEPTH ? h("span.depth-tag", `depth ${span.depth}`) : null,
      span.orphan ? h("span.warn-tag", { title: "its parent is not in this trace" }, "orphan") : null,
      span.model ? h("span.span-model", span.model) : null,
      error ? h("span.err-dot", { title: span.error_type || span.status_message || "error" }, "!") : null);
    const time = h("div.wf-time",
      h(`div.bar.k-${kind}${error ? ".is-error" : ""}`, { style: { left: `${left}%`, width: `max(${width}%, 2px)` } }),
      label);
    return h(`div.wf-row${index === this.selected ? ".selected" : ""}${error ? ".is-error" : ""}`, {
      style: { transform: `translateY(${k * ROW_H}px)` },
      dataset: { index, spanId: span.span_id, kind: span.kind },
      title: `${span.name} · ${span.kind} · ${fmtDuration(span.duration_ns)} at +${fmtDuration(span.offset_ns)}`,
      role: "row", "aria-selected": index === this.selected ? "true" : "false",
    }, name, time);
  }

  click(event) {
    const toggle = event.target.closest("[data-toggle]");
    if (toggle) {
      event.stopPropagation();
      this.toggle(Number(toggle.dataset.toggle));
      return;
    }
    const row = event.target.closest(".wf-row");
    if (row) this.select(Number(row.dataset.index));
  }

  toggle(index, open) {
    const collapsed = this.collapsed.has(index);
    if (open === undefined ? collapsed : open) this.collapsed.delete(index);
    else if (this.ends[index] > index + 1) this.collapsed.add(index);
    this.layout();
  }

  /** Select a span by index: expand its ancestors, scroll it into view, tell the page. */
  select(index, { scroll = true } = {}) {
    if (index < 0 || index >= this.spans.length) return;
    for (const collapsed of [...this.collapsed]) {
      if (collapsed < index && this.ends[collapsed] > index) this.collapsed.delete(collapsed);
    }
    this.selected = index;
    this.layout();
    if (scroll) this.reveal(index);
    this.onSelect(this.spans[index]);
  }

  selectById(spanId) {
    const index = this.spans.findIndex((s) => s.span_id === spanId);
    if (index >= 0) this.select(index);
    return index >= 0;
  }

  reveal(index) {
    const k = this.position.get(index);
    if (k === undefined) return;
    const top = k * ROW_H;
    const height = this.body.clientHeight || 800;
    if (top < this.body.scrollTop) this.body.scrollTop = top;
    else if (top + ROW_H > this.body.scrollTop + height) this.body.scrollTop = top + ROW_H - height;
    this.render();
  }

  nextError() {
    const errors = this.spans.map((s, i) => (s.status === "ERROR" ? i : -1)).filter((i) => i >= 0);
    if (!errors.length) return;
    this.select(errors.find((i) => i > this.selected) ?? errors[0]);
  }

  key(event) {
    const k = this.position.get(this.selected) ?? -1;
    const moves = {
      ArrowDown: () => this.select(this.visible[Math.min(k + 1, this.visible.length - 1)]),
      ArrowUp: () => this.select(this.visible[Math.max(k - 1, 0)]),
      ArrowLeft: () => this.toggle(this.selected, false),
      ArrowRight: () => this.toggle(this.selected, true),
    };
    if (moves[event.key] && (this.selected >= 0 || event.key === "ArrowDown")) {
      event.preventDefault();
      moves[event.key]();
    }
  }

  destroy() {
    this.observer.disconnect();
    cancelAnimationFrame(this.frame);
  }
}
