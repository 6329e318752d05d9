// Inline-SVG time-series charts: lines (latency) and stacked bars (counts, tokens, cost), with a
// shared time axis, nice y ticks, and a hover guide listing every series' value at that step.

import { h, s } from "./dom.js";

// Tableau 10: categorical colours chosen to stay apart from each other.
export const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
  "#9c755f", "#bab0ac"];

const PAD = { top: 12, right: 14, bottom: 26, left: 58 };
const HEIGHT = 210;

function niceStep(max, count) {
  const raw = max / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const unit = [1, 2, 2.5, 5, 10].find((m) => m * power >= raw) * power;
  return unit || 1;
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayFmt = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });

function timeLabel(t, spanSeconds) {
  const d = new Date(t * 1000);
  return spanSeconds > 2 * 86400 ? dayFmt.format(d) : timeFmt.format(d);
}

/**
 * chart({times, series: [{name, color, values}], kind: "line"|"bar", format, integer}) -> element
 * `values[i]` belongs to `times[i]` (seconds); null is "no data" (a gap in a line).
 */
export function chart({ times, series, kind, format, width, integer = false }) {
  const w = Math.max(width || 480, 260);
  const plotW = w - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const n = times.length;
  const step = n > 1 ? times[1] - times[0] : 60;
  const t0 = times[0];
  const span = Math.max(step * n, 1);
  const x = (t) => PAD.left + ((t - t0) / span) * plotW;
  let max = 0;
  if (kind === "bar") {
    for (let i = 0; i < n; i++) max = Math.max(max, series.reduce((sum, ser) => sum + (ser.values[i] || 0), 0));
  } else {
    for (const ser of series) for (const v of ser.values) if (v !== null) max = Math.max(max, v);
  }
  const tick = integer ? Math.max(1, Math.round(niceStep(max || 1, 4))) : niceStep(max || 1, 4);
  const top = Math.max(tick * Math.ceil((max || 1) / tick), tick);
  const y = (v) => PAD.top + plotH - (v / top) * plotH;
  const svg = s("svg", { viewBox: `0 0 ${w} ${HEIGHT}`, width: w, height: HEIGHT, class: "chart", role: "img" });

  for (let v = 0; v <= top + tick / 2; v += tick) {
    svg.append(s("line", { x1: PAD.left, x2: w - PAD.right, y1: y(v), y2: y(v), class: v ? "grid" : "axis" }),
      s("text", { x: PAD.left - 6, y: y(v) + 4, "text-anchor": "end", class: "tick" }, format(v)));
  }
  const labels = Math.max(2, Math.floor(plotW / 90));
  const every = Math.max(1, Math.ceil(n / labels));
  for (let i = 0; i < n; i += every) {
    svg.append(s("text", { x: x(times[i]), y: HEIGHT - 8, "text-anchor": "middle", class: "tick" },
      timeLabel(times[i], span)));
  }

  const slot = plotW / Math.max(n, 1);
  if (kind === "bar") {
    const barW = Math.max(1, slot * 0.78);
    const base = new Array(n).fill(0);
    for (const ser of series) {
      const g = s("g", { fill: ser.color });
      ser.values.forEach((v, i) => {
        if (!v) return;
        const y1 = y(base[i] + v);
        const y0 = y(base[i]);
        base[i] += v;
        g.append(s("rect", { x: x(times[i]) + (slot - barW) / 2, y: y1, width: barW, height: Math.max(y0 - y1, 0.5) }));
      });
      svg.append(g);
    }
  } else {
    // A step without calls has no latency (null), not zero: the line joins the steps that have one,
    // and each measured step gets a dot when there are few enough to tell apart.
    for (const ser of series) {
      const measured = [];
      ser.values.forEach((v, i) => {
        if (v !== null && v !== undefined) measured.push([x(times[i]) + slot / 2, y(v)]);
      });
      if (!measured.length) continue;
      const d = measured.map(([px, py], k) => `${k ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)}`).join("");
      svg.append(s("path", { d, fill: "none", stroke: ser.color, "stroke-width": 1.6, "stroke-linejoin": "round",
        "stroke-opacity": 0.85 }));
      if (measured.length <= 90) {
        svg.append(s("g", { fill: ser.color }, measured.map(([px, py]) => s("circle", { cx: px, cy: py, r: 2.4 }))));
      }
    }
  }

  // hover: a guide line and the values of every series at that step
  const guide = s("line", { y1: PAD.top, y2: PAD.top + plotH, class: "guide", visibility: "hidden" });
  const overlay = s("rect", { x: PAD.left, y: PAD.top, width: plotW, height: plotH, fill: "transparent" });
  svg.append(guide, overlay);
  const tip = h("div.chart-tip", { hidden: true });
  const wrap = h("div.chart-wrap", svg, tip);
  overlay.addEventListener("mousemove", (e) => {
    const box = svg.getBoundingClientRect();
    const px = ((e.clientX - box.left) / box.width) * w;
    const i = Math.min(n - 1, Math.max(0, Math.floor((px - PAD.left) / slot)));
    const gx = x(times[i]) + slot / 2;
    guide.setAttribute("x1", gx);
    guide.setAttribute("x2", gx);
    guide.setAttribute("visibility", "visible");
    const rows = series.filter((ser) => ser.values[i] !== null && ser.values[i] !== undefined && ser.values[i] !== 0)
      .map((ser) => h("div", h("span.swatch", { style: { background: ser.color } }), `${ser.name}: `,
        h("b", format(ser.values[i]))));
    tip.replaceChildren(h("div.tip-time", new Date(times[i] * 1000).toLocaleString()),
      ...(rows.length ? rows : [h("div.muted", "no calls")]));
    tip.hidden = false;
    const left = (gx / w) * box.width;
    tip.style.left = `${left > box.width * 0.6 ? left - tip.offsetWidth - 12 : left + 12}px`;
  });
  overlay.addEventListener("mouseleave", () => {
    guide.setAttribute("visibility", "hidden");
    tip.hidden = true;
  });
  return wrap;
}
