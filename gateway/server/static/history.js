// A stored session drawn as the live chat draws it (session.history: messages, toolCalls and pending approvals). A
// turn's replies and the tool_result messages between them become one bubble, as they were while it streamed; an
// approval still waiting is asked again, so a page opened later (or reloaded) can answer it.

import { el } from "./format.js";
import { TurnView } from "./turn.js";

const OPEN = new Set(["pending", "approved", "running"]);

export function userBubble(container, text) {
  const node = el("div", { class: "msg user" }, el("div", { class: "text" }, text));
  container.append(node);
  return node;
}

function isToolResults(message) {
  const blocks = message.content || [];
  return message.role === "user" && !message.text && blocks.length > 0 && blocks.every((b) => b.type === "tool_result");
}

// Draw `page` into `container`. `decide(toolUseId, decision)` answers an approval. Returns the last bubble's TurnView
// (null when the page ends with the user's message), where the frames of a turn still running can go on.
export function renderHistory(container, page, decide) {
  const rows = new Map((page.toolCalls || []).map((c) => [c.toolUseId, c]));
  const turns = new Map();
  let turn = null;
  for (const m of page.messages) {
    if (isToolResults(m)) {
      for (const block of m.content) showResult(turns.get(block.tool_use_id), block, rows.get(block.tool_use_id));
      continue;
    }
    if (m.kind === "summary") {
      // A compaction's summary: sent in place of the messages before it, which stay shown, dimmed.
      const summary = new TurnView(container);
      summary.node.classList.add("summary");
      drawReply(summary, m, rows, turns);
      turn = null;
      continue;
    }
    if (m.role === "user") {
      const node = userBubble(container, m.text);
      if (m.compacted) node.classList.add("compacted");
      turn = null;
      continue;
    }
    turn = turn || new TurnView(container);
    if (m.compacted) turn.node.classList.add("compacted");
    drawReply(turn, m, rows, turns);
  }
  for (const request of page.pending || []) {
    const owner = turns.get(request.toolUseId);
    if (owner) owner.approval(request, (decision) => decide(request.toolUseId, decision));
  }
  return turn;
}

function drawReply(turn, m, rows, turns) {
  const blocks = m.content || [];
  for (const block of blocks) {
    if (block.type === "thinking") turn.thinking(block.thinking);
    else if (block.type === "text") turn.text(block.text);
    else if (block.type === "tool_use" || block.type === "server_tool_use") {
      const row = rows.get(block.id) || {};
      const view = turn.call({ toolUseId: block.id, name: block.name, input: block.input,
        executor: block.type === "server_tool_use" ? "server" : row.executor });
      if (row.status === "running" || row.status === "approved") view.setStatus("running", "running…");
      if (block.type === "server_tool_use") view.setStatus("done", "run by Anthropic");
      turns.set(block.id, turn);
    } else if (block.type && block.type.endsWith("_tool_result") && block.tool_use_id) {
      turn.result({ toolUseId: block.tool_use_id, status: "done", content: `[${block.type}]` });
    }
  }
  if (!blocks.length && m.text) turn.text(m.text); // a reply still streaming: its checkpointed text
  turn.flush();
  if (m.status === "streaming") turn.stats.textContent = "streaming…";
  else if (m.status !== "complete") {
    turn.node.classList.add(m.status);
    turn.stats.textContent = m.errorCode ? `${m.status}: ${m.errorCode}` : m.status;
  } else turn.stats.textContent = "";
}

function showResult(turn, block, row) {
  if (!turn) return;
  if (row && OPEN.has(row.status)) return; // still open: its stored result is only a placeholder
  turn.result({
    toolUseId: block.tool_use_id,
    name: row ? row.name : undefined,
    status: row ? row.status : block.is_error ? "error" : "done",
    isError: !!block.is_error,
    content: block.content,
    durationMs: row ? row.durationMs : null,
  });
}
