// The alerts page: what is firing now (however long ago it fired) and the recent state changes.

import { api } from "./api.js";
import { clear, fmtAgo, fmtFullTime, fmtTime, h, showError } from "./dom.js";
import { go } from "./router.js";

const RANGES = [["1h", "Last hour"], ["24h", "Last 24 hours"], ["7d", "Last 7 days"], ["30d", "Last 30 days"]];

function severity(level) {
  return h(`span.sev.sev-${level.replace(/\W/g, "")}`, level);
}

function num(value) {
  return value === null ? "–" : Number(value.toPrecision(6)).toLocaleString();
}

export async function renderAlerts(root, params, signal) {
  const since = params.get("since") || "24h";
  const body = h("div.alerts-body");
  root.append(
    h("div.page-head", h("h1", "Alerts"),
      h("label.field.inline", h("span", "changes in"),
        h("select", { name: "since", onchange: (e) => {
          go("alerts", { since: e.target.value }, { replace: true });
          load(body, e.target.value, signal);
        } }, RANGES.map(([v, label]) => h("option", { value: v, selected: v === since }, label))))),
    body);
  await load(body, since, signal);
}

async function load(body, since, signal) {
  clear(body).append(h("div.loading", "Loading alerts…"));
  let data;
  try {
    data = await api("alerts", { since }, signal);
  } catch (err) {
    showError(body, err);
    return;
  }
  const firing = data.firing.length
    ? h("div.alert-cards", data.firing.map((a) => h(`article.alert-card.sev-border-${a.severity}`,
      h("div.alert-top", severity(a.severity), h("strong", a.rule), h("span.muted", a.service),
        a.group ? h("span.chip", a.group) : null),
      h("div.alert-msg", a.message),
      h("div.alert-foot.muted", `value ${num(a.value)} · threshold ${num(a.threshold)} · firing since `,
        h("span", { title: fmtFullTime(a.firing_since) }, fmtAgo(a.firing_since))))))
    : h("div.empty.ok-box", h("strong", "No alert is firing."));
  const recent = data.recent.length
    ? h("div.table-wrap", h("table.grid", h("thead", h("tr", h("th", "When"), h("th", "State"), h("th", "Severity"),
      h("th", "Rule"), h("th", "Service"), h("th", "Group"), h("th.num", "Value"), h("th.num", "Threshold"),
      h("th", "Message"))), h("tbody", data.recent.map((a) => h("tr",
      h("td.time", { title: fmtFullTime(a.fired_at) }, fmtTime(a.fired_at)),
      h("td", h(`span.pill.${a.state === "firing" ? "err" : "ok"}`, a.state)),
      h("td", severity(a.severity)), h("td", a.rule), h("td", a.service), h("td", a.group || "–"),
      h("td.num", num(a.value)), h("td.num", num(a.threshold)), h("td", a.message))))))
    : h("div.empty", "No alert state changes in this range.");
  clear(body).append(
    h("section.card", h("h2", `Firing now (${data.firing.length})`), firing),
    h("section.card", h("h2", "Recent changes"), recent));
}
