// The usage page: totals per model and a cost-per-day chart, both from one `usage.query` with groupBy "day".

import { el, num, usd, usdShort } from "./format.js";

const SVG = "http://www.w3.org/2000/svg";
const DAY_MS = 86400000;

export function sinceFor(days) {
  return days ? new Date(Date.now() - (days - 1) * DAY_MS).toISOString().slice(0, 10) : null;
}

export function renderUsage(root, report, days) {
  const perModel = Object.entries(report.perModel || {}).sort(([a], [b]) => a.localeCompare(b));
  const head = el("tr", {}, ["Model", "Requests", "Input", "Output", "Cache read", "Cache write", "Cost",
    "Saved by cache"].map((h) => el("th", {}, h)));
  const row = (name, t, cls) => el("tr", { class: cls, dataset: { model: name } },
    el("td", {}, name),
    cell("requests", t.requestCount, num(t.requestCount)),
    cell("input", t.inputTokens, num(t.inputTokens)),
    cell("output", t.outputTokens, num(t.outputTokens)),
    cell("cacheRead", t.cacheReadInputTokens, num(t.cacheReadInputTokens)),
    cell("cacheWrite", t.cacheCreationInputTokens, num(t.cacheCreationInputTokens)),
    cell("cost", t.totalCost, usd(t.totalCost)),
    cell("saved", t.savedCost, usd(t.savedCost)));
  const body = perModel.map(([model, t]) => row(model, t, ""));
  if (report.grandTotal) body.push(row("Total", report.grandTotal, "total"));
  const parts = [
    el("h3", {}, "Cost per day"),
    chart(report.groups || [], days),
    el("h3", {}, "Per model"),
    perModel.length
      ? el("table", { class: "grid", id: "usage-table" }, el("thead", {}, head), el("tbody", {}, body))
      : el("p", { class: "muted" }, "No usage in this period."),
    report.unpricedRequests
      ? el("p", { class: "muted" }, `${report.unpricedRequests} requests to unpriced models are not in the cost.`)
      : null,
  ];
  root.replaceChildren(...parts.filter(Boolean));
}

function cell(field, value, text) {
  return el("td", { class: "num", dataset: { field, value: value ?? "" } }, text);
}

function dayRange(groups, days) {
  const today = new Date(new Date().toISOString().slice(0, 10));
  let start = days ? new Date(today.getTime() - (days - 1) * DAY_MS) : null;
  if (!start) start = groups.length ? new Date(groups[0].key) : today;
  const keys = [];
  for (let t = start.getTime(); t <= today.getTime(); t += DAY_MS) keys.push(new Date(t).toISOString().slice(0, 10));
  return keys;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function chart(groups, days) {
  const byDay = new Map(groups.map((g) => [g.key, g]));
  const keys = dayRange(groups, days);
  const costs = keys.map((k) => (byDay.get(k) ? byDay.get(k).totalCost || 0 : 0));
  const max = Math.max(...costs, 0);
  const W = 720, H = 220, left = 64, bottom = 28, top = 10, right = 8;
  const plotW = W - left - right, plotH = H - top - bottom;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", id: "cost-chart", role: "img",
    "aria-label": "cost per day" });
  const scale = max > 0 ? max : 1;
  for (let i = 0; i <= 4; i++) {
    const y = top + plotH - (plotH * i) / 4;
    root.append(svg("line", { x1: left, x2: W - right, y1: y, y2: y, class: "gridline" }));
    root.append(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end", class: "axis" },
      max > 0 ? usdShort((scale * i) / 4) : i === 0 ? "$0" : ""));
  }
  const slot = plotW / keys.length;
  const barW = Math.max(1, Math.min(40, slot * 0.7));
  const labelEvery = Math.ceil(keys.length / 10);
  keys.forEach((key, i) => {
    const h = (plotH * costs[i]) / scale;
    const x = left + slot * i + (slot - barW) / 2;
    const bar = svg("rect", { x, y: top + plotH - h, width: barW, height: Math.max(h, costs[i] > 0 ? 1 : 0),
      class: "bar", "data-day": key, "data-cost": costs[i] });
    const group = byDay.get(key);
    bar.append(svg("title", {}, `${key}: ${usd(costs[i])}` +
      (group ? ` · ${num(group.requestCount)} requests · ${num(group.outputTokens)} output tokens` : "")));
    root.append(bar);
    if (i % labelEvery === 0 || i === keys.length - 1) {
      root.append(svg("text", { x: left + slot * i + slot / 2, y: H - 8, "text-anchor": "middle", class: "axis" },
        key.slice(5)));
    }
  });
  return root;
}
