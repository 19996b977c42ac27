// One reply bubble: everything a chat.send turn produced, in order. A tool loop's turn is one bubble whatever its
// number of model requests: its thinking (folded), its text as Markdown, and each tool call folded where the model
// made it, with its approval prompt and result. Live frames and a stored history draw the same parts.

import { el, stats } from "./format.js";
import { renderMarkdown } from "./markdown.js";
import { ToolView } from "./tools.js";

export class TurnView {
  constructor(container) {
    this.body = el("div", { class: "body" });
    this.stats = el("div", { class: "stats" });
    this.node = el("div", { class: "msg assistant" }, this.body, this.stats);
    container.append(this.node);
    this.last = null; // the part being written: {kind, node, raw}
    this.tools = new Map(); // toolUseId -> ToolView
    this.dirty = new Set(); // text parts waiting for their next Markdown render
    this.frame = 0;
  }

  set streaming(on) {
    this.node.classList.toggle("streaming", on);
    if (!on) this.flush();
  }

  thinking(text) {
    if (!text) return;
    if (!this.last || this.last.kind !== "thinking") {
      const pre = el("pre");
      const node = el("details", { class: "thinking", open: this.node.classList.contains("streaming") },
        el("summary", {}, "Thinking"), pre);
      this.body.append(node);
      this.last = { kind: "thinking", node, pre };
    }
    this.last.pre.textContent += text;
  }

  text(text) {
    if (!text) return;
    if (!this.last || this.last.kind !== "text") {
      for (const open of this.body.querySelectorAll("details.thinking[open]")) open.open = false;
      const node = el("div", { class: "text markdown" });
      this.body.append(node);
      this.last = { kind: "text", node, raw: "" };
    }
    this.last.raw += text;
    this.dirty.add(this.last);
    // At most one Markdown render per animation frame, however fast the deltas come.
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    for (const part of this.dirty) part.node.replaceChildren(renderMarkdown(part.raw));
    this.dirty.clear();
  }

  call(call) {
    let view = this.tools.get(call.toolUseId);
    if (!view) {
      view = new ToolView(call);
      this.tools.set(call.toolUseId, view);
      this.body.append(view.node);
      this.last = { kind: "tool", node: view.node };
    }
    return view;
  }

  approval(frame, decide) {
    this.call(frame).ask(frame, decide);
  }

  result(frame) {
    const view = this.tools.get(frame.toolUseId) || this.call({ toolUseId: frame.toolUseId, name: frame.name });
    view.finish(frame);
  }

  // The end of the turn: its chat.stream.end frame (tokens, cost, duration), or a status/error line.
  end(frame) {
    this.streaming = false;
    this.stats.textContent = stats(frame);
    if (frame.status && frame.status !== "complete") this.node.classList.add(frame.status);
    this.settleOpenCalls();
  }

  fail(text, kind = "failed") {
    this.streaming = false;
    this.node.classList.add(kind);
    this.stats.textContent = text;
    this.settleOpenCalls();
  }

  // A turn that ended leaves nothing waiting: prompts of calls it never answered go away.
  settleOpenCalls() {
    for (const view of this.tools.values()) view.closePrompt();
  }

  // Everything a live turn's frames say, in one place (the page's own sends and turns it took over alike).
  onFrame(frame, decide) {
    switch (frame.type) {
      case "chat.stream.thinking": return this.thinking(frame.delta);
      case "chat.stream.delta": return this.text(frame.delta);
      case "chat.tool.call": return this.call(frame);
      case "chat.tool.approval": return this.approval(frame, decide);
      case "chat.tool.result": return this.result(frame);
      case "chat.stream.end": return this.end(frame);
      case "chat.state":
        this.text(frame.text || "");
        this.streaming = false;
        return undefined;
      case "error": return this.fail(`${frame.code}: ${frame.message}`);
      default: return undefined;
    }
  }
}
