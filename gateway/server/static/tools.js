// One tool call inside a reply: a fold (name, short input and outcome on its summary line; the whole input and the
// result inside), and, while the call waits for the user, an approval prompt beside it that stays visible when the
// fold is closed: Allow, Allow for session, Deny, and the time left before the request expires into a denial.

import { el } from "./format.js";

const OUTCOME = { done: "ok", error: "error", denied: "denied", interrupted: "interrupted" };
const DECIDED = { allow_once: "Allowed once", allow_session: "Allowed for this session", deny: "Denied" };

export function shortJson(value, limit = 80) {
  const text = JSON.stringify(value ?? {});
  return text.length <= limit ? text : text.slice(0, limit - 1) + "…";
}

function resultText(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content.map((b) => (b && b.type === "text" ? b.text : `[${(b && b.type) || "block"}]`)).join("\n");
  }
  return content == null ? "" : JSON.stringify(content, null, 2);
}

export class ToolView {
  constructor(call) {
    this.id = call.toolUseId;
    this.name = call.name;
    this.outcome = el("span", { class: "outcome" }, "running…");
    this.result = el("pre", { class: "result" });
    this.fold = el("details", { class: "tool-call" },
      el("summary", {},
        el("span", { class: "tool-name" }, "⚙ " + call.name),
        el("code", { class: "tool-input" }, shortJson(call.input)),
        this.outcome),
      el("div", { class: "tool-label" }, "Input"),
      el("pre", { class: "input" }, JSON.stringify(call.input ?? {}, null, 2)),
      el("div", { class: "tool-label" }, "Result"),
      this.result);
    this.node = el("div", {
      class: "tool", dataset: { toolUseId: call.toolUseId, status: "running", executor: call.executor || "" },
    }, this.fold);
    this.prompt = null;
    this.timer = null;
  }

  setStatus(status, text) {
    this.node.dataset.status = status;
    this.outcome.textContent = text;
  }

  // The call's outcome: a gateway chat.tool.result frame, or the same fields read back from history.
  finish({ status, isError, content, truncated, durationMs }) {
    this.closePrompt();
    const label = OUTCOME[status] || status || (isError ? "error" : "ok");
    this.setStatus(status || (isError ? "error" : "done"), durationMs == null ? label : `${label} · ${durationMs} ms`);
    this.result.textContent = resultText(content) + (truncated ? "\n…" : "");
  }

  // Ask the user. `decide(decision)` sends chat.tool.approve and resolves with the recorded frame (or rejects).
  ask({ expiresAt }, decide) {
    this.closePrompt();
    this.setStatus("waiting", "waiting for approval");
    const expiry = el("span", { class: "expiry" });
    const note = el("span", { class: "note" });
    const buttons = [
      ["allow_once", "Allow", "primary"],
      ["allow_session", "Allow for session", ""],
      ["deny", "Deny", "danger"],
    ].map(([decision, label, kind]) => el("button", {
      type: "button", class: kind, dataset: { decision }, onclick: () => choose(decision),
    }, label));
    const prompt = el("div", { class: "approval", role: "group", "aria-label": `Approve ${this.name}` },
      el("span", { class: "question" }, "Run ", el("b", {}, this.name), "?"), ...buttons, expiry, note);
    const choose = async (decision) => {
      for (const b of buttons) b.disabled = true;
      note.textContent = "";
      try {
        await decide(decision);
        note.textContent = DECIDED[decision];
        prompt.dataset.decided = decision;
      } catch (error) {
        note.textContent = `${error.code}: ${error.message}`;
        note.classList.add("error");
        if (error.code !== "APPROVAL_NOT_PENDING" && error.code !== "TOOL_CALL_NOT_FOUND") {
          for (const b of buttons) b.disabled = false;
        }
      }
    };
    const deadline = expiresAt ? Date.parse(expiresAt) : NaN;
    const tick = () => {
      if (Number.isNaN(deadline)) return;
      const left = Math.max(0, Math.round((deadline - Date.now()) / 1000));
      expiry.textContent = left > 0
        ? `expires in ${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`
        : "expired: it counts as denied";
      expiry.title = new Date(deadline).toLocaleString();
    };
    tick();
    this.timer = setInterval(tick, 1000);
    this.prompt = prompt;
    this.node.append(prompt);
    return prompt;
  }

  closePrompt() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.prompt) this.prompt.remove();
    this.prompt = null;
  }
}
