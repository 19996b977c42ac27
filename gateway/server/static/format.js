// Number formats shared by every view. Money arrives from the gateway as USD numbers (exact nano-USD rounded to 9
// decimals); it is shown with 6 decimals, the same as `agentspace chat`, so the two can be compared by eye.

export function num(value) {
  return value === null || value === undefined ? "–" : Math.round(value).toLocaleString("en-US");
}

export function usd(value) {
  return value === null || value === undefined ? "unpriced" : "$" + value.toFixed(6);
}

export function usdShort(value) {
  if (value === null || value === undefined) return "unpriced";
  if (value === 0) return "$0";
  return value >= 1 ? "$" + value.toFixed(2) : "$" + value.toPrecision(2);
}

export function pct(fraction, digits = 1) {
  return fraction === null || fraction === undefined ? "–" : (100 * fraction).toFixed(digits) + "%";
}

export function when(iso) {
  if (!iso) return "";
  const then = new Date(iso);
  const seconds = (Date.now() - then.getTime()) / 1000;
  if (seconds < 60) return "just now";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min ago";
  if (seconds < 86400) return Math.floor(seconds / 3600) + " h ago";
  return then.toISOString().slice(0, 10);
}

export function stats(end) {
  const u = end.usage || {};
  const parts = [num(u.inputTokens) + " in", num(u.outputTokens) + " out"];
  if (u.cacheReadInputTokens) parts.push(num(u.cacheReadInputTokens) + " cache read");
  if (u.cacheCreationInputTokens) parts.push(num(u.cacheCreationInputTokens) + " cache write");
  parts.push(usd(end.cost ? end.cost.totalCost : null));
  parts.push((end.durationMs / 1000).toFixed(1) + "s");
  if (end.status && end.status !== "complete") parts.push(end.status);
  else if (end.stopReason && end.stopReason !== "end_turn") parts.push("stopped: " + end.stopReason);
  return parts.join(" · ");
}

// A tiny element builder: el("td", {class: "num", dataset: {value: 3}}, "3"). Text only ever goes in as text.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}
