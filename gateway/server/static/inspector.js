// The context inspector: what the session's next request would carry, section by section, as the gateway's
// `context.inspection` frame reports it. Every number shown comes straight from that frame (data-* attributes keep
// the raw values), so what you see is what the protocol says.

import { el, num, pct, usd } from "./format.js";

const COLORS = {
  system_prompt: "#5b6ee1", memory: "#2fa37a", skills: "#d4912a", tools: "#b0529b", summary: "#7a7f8c",
  history: "#3aa0c8",
};
const FALLBACK = ["#8a6fd1", "#c75a5a", "#6b8e23", "#708090"];
const MAX_SHOWN_CHARS = 20000;

export function colorOf(name, index) {
  return COLORS[name] || FALLBACK[index % FALLBACK.length];
}

export function renderInspection(root, frame) {
  const sections = frame.sections || [];
  const totals = frame.totals || {};
  const totalTokens = totals.tokenEstimate || 0;
  const window = frame.contextWindow;
  root.replaceChildren(
    el("div", { class: "inspect-head" },
      el("span", {}, "model ", el("b", {}, frame.model)),
      el("span", {}, "agent ", el("b", {}, frame.agentId)),
      el("span", {}, "counter ", el("b", {}, frame.tokenCounter)),
      el("span", {}, "cache ", el("b", {}, frame.cacheMode || "off")),
      el("span", {}, "max_tokens ", el("b", {}, num(frame.maxTokens)))),
    stackedBar(sections, totalTokens),
    legend(sections),
    windowBar(frame, totalTokens),
    sectionTable(sections, totals, window),
    notes(frame),
  );
}

function stackedBar(sections, totalTokens) {
  const bar = el("div", { class: "stack", role: "img", "aria-label": "tokens per section" });
  sections.forEach((s, i) => {
    if (!s.tokenEstimate || !totalTokens) return;
    const share = s.tokenEstimate / totalTokens;
    const segment = el("div", {
      class: "segment", title: `${s.name}: ${num(s.tokenEstimate)} tokens (${pct(share)})`,
      dataset: { section: s.name, tokens: s.tokenEstimate },
    });
    segment.style.width = (100 * share).toFixed(4) + "%";
    segment.style.background = colorOf(s.name, i);
    if (share > 0.08) segment.append(s.name);
    bar.append(segment);
  });
  if (!bar.children.length) bar.append(el("div", { class: "segment empty" }, "empty"));
  return bar;
}

function legend(sections) {
  return el("div", { class: "legend" }, sections.map((s, i) => {
    const swatch = el("i");
    swatch.style.background = colorOf(s.name, i);
    return el("span", {}, swatch, s.name);
  }));
}

function windowBar(frame, totalTokens) {
  const window = frame.contextWindow;
  if (!window) return el("p", { class: "muted" }, "This model's context window is not known.");
  const best = frame.calibratedTokenEstimate ?? totalTokens + (frame.requestOverheadTokens || 0);
  const fill = el("div", { class: "window-fill" });
  fill.style.width = Math.min(100, 100 * (frame.windowShare || 0)).toFixed(4) + "%";
  return el("div", { class: "window" },
    el("div", { class: "window-label" },
      "Context window: ", el("b", { id: "window-tokens", dataset: { value: best } }, num(best)),
      ` of ${num(window)} tokens (`,
      el("b", { id: "window-share", dataset: { value: frame.windowShare } }, pct(frame.windowShare, 4)), ")",
      el("span", { class: "muted" }, frame.calibrationRatio
        ? " · calibrated estimate, request overhead included" : " · estimate, request overhead included")),
    el("div", { class: "window-track" }, fill));
}

function sectionTable(sections, totals, window) {
  const head = el("tr", {}, ["Section", "Items", "Bytes", "Tokens (est.)", "Cost (est.)", "Share", "Of window",
    "Content"].map((h) => el("th", {}, h)));
  const totalTokens = totals.tokenEstimate || 0;
  const rows = sections.map((s, i) => {
    const swatch = el("i", { class: "swatch" });
    swatch.style.background = colorOf(s.name, i);
    return el("tr", { dataset: { section: s.name } },
      el("td", {}, swatch, s.name, s.truncated ? el("span", { class: "badge" }, "truncated") : null),
      el("td", { class: "num" }, s.itemCount ?? ""),
      cell("bytes", s.byteCount, num(s.byteCount)),
      cell("tokens", s.tokenEstimate, num(s.tokenEstimate)),
      cell("cost", s.costEstimate, usd(s.costEstimate)),
      el("td", { class: "num" }, totalTokens ? pct(s.tokenEstimate / totalTokens) : "–"),
      el("td", { class: "num" }, window ? pct(s.tokenEstimate / window, 4) : "–"),
      el("td", {}, contentView(s.content)));
  });
  const total = el("tr", { class: "total", dataset: { section: "total" } },
    el("td", {}, "Total"), el("td"),
    cell("bytes", totals.byteCount, num(totals.byteCount)),
    cell("tokens", totals.tokenEstimate, num(totals.tokenEstimate)),
    cell("cost", totals.costEstimate, usd(totals.costEstimate)),
    el("td", { class: "num" }, totalTokens ? "100%" : "–"),
    el("td", { class: "num" }, window ? pct(totalTokens / window, 4) : "–"), el("td"));
  return el("table", { class: "grid", id: "inspect-table" }, el("thead", {}, head), el("tbody", {}, rows, total));
}

function cell(field, value, text) {
  return el("td", { class: "num", dataset: { field, value: value ?? "" } }, text);
}

function contentView(content) {
  const empty = content === "" || (Array.isArray(content) && content.length === 0);
  if (empty) return el("span", { class: "muted" }, "empty");
  let text = typeof content === "string" ? content : JSON.stringify(content, null, 2);
  const cut = text.length > MAX_SHOWN_CHARS;
  if (cut) text = text.slice(0, MAX_SHOWN_CHARS);
  return el("details", {}, el("summary", {}, "show"), el("pre", {}, text),
    cut ? el("p", { class: "muted" }, `(first ${num(MAX_SHOWN_CHARS)} characters shown)`) : null);
}

function notes(frame) {
  const items = [`Request overhead: ${num(frame.requestOverheadTokens)} tokens.`];
  if (frame.calibrationRatio) {
    items.push(`Calibrated by what Anthropic reported so far: ×${frame.calibrationRatio} → ` +
      `${num(frame.calibratedTokenEstimate)} tokens.`);
  } else {
    items.push("Not calibrated yet: the first reply's reported usage will calibrate the estimate.");
  }
  if (frame.exactInputTokens !== undefined) {
    items.push(frame.exactInputTokens === null
      ? `Exact count failed: ${frame.exactError ? frame.exactError.code : "unknown"}.`
      : `Exact count from Anthropic: ${num(frame.exactInputTokens)} input tokens.`);
  }
  if (!frame.priced) items.push("This model has no known price: costs are not estimated.");
  const summary = (frame.sections || []).find((s) => s.name === "summary");
  if (summary && summary.messageId) {
    items.push(`Compacted: ${num(summary.compactedMessages)} older messages are stored but no longer sent; ` +
      "the summary is sent in their place.");
  }
  const editing = frame.contextEditing;
  if (editing && (editing.clearedToolResults || editing.clearedThinking)) {
    items.push(`Context editing left out ${num(editing.clearedToolResults)} old tool results and the thinking of ` +
      `${num(editing.clearedThinking)} old replies: ${num(editing.savedTokens)} tokens (${usd(editing.savedCost)}) ` +
      "saved on this request.");
  }
  for (const problem of frame.problems || []) items.push("Problem: " + problem);
  return el("ul", { class: "notes" }, items.map((t) => el("li", {}, t)));
}
