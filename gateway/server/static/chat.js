// The chat view: a session's messages (history.js), sending and streaming a turn into its bubble (turn.js), Stop,
// approvals answered from the page, and the frames of a turn this page took over by answering one of its approvals
// after the client that started it went away (they arrive under that client's chat.send id).

import { el } from "./format.js";
import { renderHistory, userBubble } from "./history.js";
import { TurnView } from "./turn.js";

const $ = (selector) => document.querySelector(selector);

export class ChatView {
  // `state`: the app's {sessionId, streaming}; `hooks`: {sessionCreated(id), turnEnded(), agentForNewChat()}.
  constructor(gw, state, hooks) {
    this.gw = gw;
    this.state = state;
    this.hooks = hooks;
    this.adopted = null; // {sessionId, turn}: the last turn drawn from history, for frames this page takes over
    gw.addEventListener("orphan", (event) => this.onOrphan(event.detail));
    $("#composer").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("#input");
      if (!input.value.trim() || state.streaming || !gw.ready) return;
      const content = input.value;
      input.value = "";
      this.send(content);
    });
    $("#input").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        $("#composer").requestSubmit();
      }
    });
    $("#stop").addEventListener("click", () => this.stop());
  }

  decider(sessionId) {
    return (toolUseId, decision) => this.gw.request({ type: "chat.tool.approve", toolUseId, decision, sessionId });
  }

  // Draw a session (or the empty new chat).
  async show(sessionId) {
    const box = $("#messages");
    box.replaceChildren();
    this.adopted = null;
    if (!sessionId) {
      box.append(el("p", { class: "muted hello" }, "Ask anything. Replies stream in as they are written."));
      return true;
    }
    let page;
    try {
      page = await this.gw.request({ type: "session.history", sessionId, limit: 200 });
    } catch (error) {
      if (error.code === "SESSION_NOT_FOUND") return false;
      throw error;
    }
    if (this.state.sessionId !== sessionId) return true; // the user moved on meanwhile
    const last = renderHistory(box, page, this.decider(sessionId));
    if (last) this.adopted = { sessionId, turn: last };
    this.scrollDown();
    return true;
  }

  scrollDown() {
    const box = $("#messages");
    box.scrollTop = box.scrollHeight;
  }

  setStreaming(streaming) {
    this.state.streaming = streaming;
    $("#send").hidden = !!streaming;
    $("#stop").hidden = !streaming;
  }

  async send(content) {
    for (const hello of document.querySelectorAll("#messages .hello")) hello.remove();
    const box = $("#messages");
    userBubble(box, content);
    const turn = new TurnView(box);
    turn.streaming = true;
    this.scrollDown();
    const startedIn = this.state.sessionId;
    const fields = { content };
    if (startedIn) fields.sessionId = startedIn;
    else fields.agentId = this.hooks.agentForNewChat();
    let sessionId = startedIn;
    const decide = (frame) => (decision) => this.decider(sessionId)(frame.toolUseId, decision);
    const chat = this.gw.chat(fields, {
      onFrame: (frame) => {
        if (frame.sessionId) sessionId = frame.sessionId;
        if (frame.sessionId && this.state.streaming) this.state.streaming.sessionId = frame.sessionId;
        // Follow the new session only if the user is still on the "new chat" this reply started from.
        if (frame.type === "session.created" && this.state.sessionId === startedIn) {
          this.hooks.sessionCreated(frame.sessionId);
        }
        turn.onFrame(frame, decide(frame));
        this.scrollDown();
      },
      onDelta: (kind, text) => {
        if (kind === "thinking") turn.thinking(text);
        else turn.text(text);
        this.scrollDown();
      },
    });
    this.setStreaming({ id: chat.id, sessionId: startedIn });
    try {
      turn.onFrame(await chat.done, null);
    } catch (error) {
      turn.fail(`${error.code}: ${error.message}`);
    } finally {
      this.setStreaming(null);
      this.scrollDown();
    }
    await this.hooks.turnEnded();
  }

  async stop() {
    const streaming = this.state.streaming;
    if (!streaming || !streaming.sessionId) return;
    try {
      await this.gw.request({ type: "chat.cancel", sessionId: streaming.sessionId, sendId: streaming.id });
    } catch (error) {
      if (error.code !== "NOTHING_TO_CANCEL") console.warn(error);
    }
  }

  // A frame for no request of this page: the rest of a turn it took over by answering an approval.
  onOrphan(frame) {
    const adopted = this.adopted;
    if (!adopted || frame.sessionId !== adopted.sessionId || !String(frame.type).startsWith("chat.")) return;
    adopted.turn.streaming = true;
    adopted.turn.onFrame(frame, (decision) => this.decider(adopted.sessionId)(frame.toolUseId, decision));
    this.scrollDown();
    if (frame.type === "chat.stream.end" || frame.type === "error") this.hooks.turnEnded();
  }
}
