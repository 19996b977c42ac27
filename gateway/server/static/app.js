// The Control UI: sessions in the sidebar, a streaming chat, the context inspector and the usage page, all over the
// gateway's own WebSocket (same origin). No framework and no build step: the browser loads these modules as they are.

import { Gateway } from "./gateway.js";
import { el, stats, when } from "./format.js";
import { renderInspection } from "./inspector.js";
import { renderUsage, sinceFor } from "./usage.js";

const $ = (selector) => document.querySelector(selector);
const TOKEN_KEY = "agentspace.token";
const wsUrl = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/gateway";
const gw = new Gateway(wsUrl);
gw.token = sessionStorage.getItem(TOKEN_KEY) || localStorage.getItem(TOKEN_KEY);

const state = {
  sessionId: decodeURIComponent(location.hash.slice(1)) || null,
  sessions: [],
  view: "chat",
  streaming: null, // {id, sessionId}
  retryMs: 500,
};

// ---- connection and token ----

function setStatus(text, kind) {
  const status = $("#status");
  status.textContent = text;
  status.dataset.kind = kind;
}

async function connect() {
  setStatus("connecting…", "busy");
  try {
    await gw.open();
  } catch (error) {
    if (error.code === "UNAUTHORIZED") return askToken(gw.token ? "That token was not accepted." : "");
    setStatus("offline, retrying…", "bad");
    setTimeout(connect, state.retryMs);
    state.retryMs = Math.min(state.retryMs * 2, 10000);
    return;
  }
  state.retryMs = 500;
  setStatus("connected", "ok");
  $("#input").disabled = false;
  await refreshSessions();
  await openSession(state.sessionId);
}

gw.addEventListener("close", (event) => {
  if (!event.wasReady) return; // open() reports its own failures
  $("#input").disabled = true;
  if (event.code === 1008) askToken("The gateway asked for its token.");
  else {
    setStatus("offline, retrying…", "bad");
    setTimeout(connect, state.retryMs);
  }
});

function askToken(message) {
  setStatus("token needed", "bad");
  $("#token-error").textContent = message;
  $("#token-input").value = "";
  if (!$("#token-dialog").open) $("#token-dialog").showModal();
  $("#token-input").focus();
}

$("#token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("#token-input").value.trim();
  if (!token) return;
  gw.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  if ($("#token-remember").checked) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
  $("#token-dialog").close();
  connect();
});

// ---- sessions ----

async function refreshSessions() {
  const result = await gw.request({ type: "session.list", limit: 100 });
  state.sessions = result.sessions;
  renderSessions();
}

function renderSessions() {
  const list = $("#sessions");
  list.replaceChildren(...state.sessions.map((s) => el("li", {
    class: s.sessionId === state.sessionId ? "current" : "", dataset: { session: s.sessionId },
  },
  el("button", { class: "open", title: s.sessionId, onclick: () => openSession(s.sessionId) },
    el("span", { class: "title" }, s.title || "Untitled"),
    el("span", { class: "meta" }, `${s.messageCount} messages · ${when(s.updatedAt)}`)),
  el("button", { class: "delete", title: "Delete this session", "aria-label": "Delete session",
    onclick: () => deleteSession(s) }, "×"))));
  if (!state.sessions.length) list.append(el("li", { class: "muted empty" }, "No sessions yet"));
  const current = state.sessions.find((s) => s.sessionId === state.sessionId);
  $("#session-title").textContent = current ? current.title || "Untitled" : "New chat";
}

async function openSession(sessionId) {
  state.sessionId = sessionId;
  history.replaceState(null, "", sessionId ? "#" + encodeURIComponent(sessionId) : location.pathname);
  renderSessions();
  $("#messages").replaceChildren();
  if (sessionId) {
    try {
      const page = await gw.request({ type: "session.history", sessionId, limit: 200 });
      for (const m of page.messages) showMessage(m);
    } catch (error) {
      if (error.code !== "SESSION_NOT_FOUND") throw error;
      return openSession(null);
    }
  } else {
    $("#messages").append(el("p", { class: "muted hello" }, "Ask anything. Replies stream in as they are written."));
  }
  scrollDown();
  showView(state.view);
}

async function deleteSession(session) {
  if (!confirm(`Delete "${session.title || "Untitled"}" and its messages? Usage records are kept.`)) return;
  try {
    await gw.request({ type: "session.delete", sessionId: session.sessionId });
  } catch (error) {
    return alert(`${error.code}: ${error.message}`);
  }
  if (state.sessionId === session.sessionId) await openSession(null);
  await refreshSessions();
}

$("#new-chat").addEventListener("click", () => {
  openSession(null);
  showView("chat");
  $("#input").focus();
});

// ---- chat ----

function bubble(role) {
  const thinking = el("details", { class: "thinking", hidden: true }, el("summary", {}, "Thinking"), el("pre"));
  const text = el("div", { class: "text" });
  const node = el("div", { class: "msg " + role }, thinking, text, el("div", { class: "stats" }));
  $("#messages").append(node);
  return { node, thinking, text, stats: node.querySelector(".stats") };
}

function showMessage(m) {
  const b = bubble(m.role);
  for (const block of m.content || []) {
    if (block.type === "thinking" && block.thinking) {
      b.thinking.hidden = false;
      b.thinking.querySelector("pre").textContent += block.thinking;
    }
  }
  b.text.textContent = m.text;
  if (m.status !== "complete") b.stats.textContent = m.errorCode ? `${m.status}: ${m.errorCode}` : m.status;
}

function scrollDown() {
  const box = $("#messages");
  box.scrollTop = box.scrollHeight;
}

function setStreaming(streaming) {
  state.streaming = streaming;
  $("#send").hidden = !!streaming;
  $("#stop").hidden = !streaming;
}

async function send(content) {
  for (const hello of document.querySelectorAll("#messages .hello")) hello.remove();
  const userBubble = bubble("user");
  userBubble.text.textContent = content;
  const reply = bubble("assistant");
  reply.node.classList.add("streaming");
  scrollDown();
  const startedIn = state.sessionId;
  const fields = { content };
  if (state.sessionId) fields.sessionId = state.sessionId;
  const chat = gw.chat(fields, {
    onFrame(frame) {
      if (frame.sessionId && state.streaming) state.streaming.sessionId = frame.sessionId;
      // Follow the new session only if the user is still on the "new chat" this reply started from.
      if (frame.type === "session.created" && state.sessionId === startedIn) {
        state.sessionId = frame.sessionId;
        history.replaceState(null, "", "#" + encodeURIComponent(frame.sessionId));
        refreshSessions();
      }
    },
    onDelta(kind, text) {
      if (kind === "thinking") {
        reply.thinking.hidden = false;
        reply.thinking.open = true;
        reply.thinking.querySelector("pre").textContent += text;
      } else {
        reply.thinking.open = false;
        reply.text.textContent += text;
      }
      scrollDown();
    },
  });
  setStreaming({ id: chat.id, sessionId: state.sessionId });
  try {
    const end = await chat.done;
    if (end.type === "chat.state") reply.text.textContent = end.text;
    else reply.stats.textContent = stats(end);
    if (end.status && end.status !== "complete") reply.node.classList.add(end.status);
  } catch (error) {
    reply.node.classList.add("failed");
    reply.stats.textContent = `${error.code}: ${error.message}`;
  } finally {
    reply.node.classList.remove("streaming");
    setStreaming(null);
    scrollDown();
  }
  if (gw.ready) await refreshSessions();
}

$("#composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("#input");
  const content = input.value;
  if (!content.trim() || state.streaming || !gw.ready) return;
  input.value = "";
  send(content);
});

$("#input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("#composer").requestSubmit();
  }
});

$("#stop").addEventListener("click", async () => {
  const streaming = state.streaming;
  if (!streaming || !streaming.sessionId) return;
  try {
    await gw.request({ type: "chat.cancel", sessionId: streaming.sessionId, sendId: streaming.id });
  } catch (error) {
    if (error.code !== "NOTHING_TO_CANCEL") console.warn(error);
  }
});

// ---- views: chat, context, usage ----

function showView(view) {
  state.view = view;
  for (const tab of document.querySelectorAll("[data-view]")) {
    tab.classList.toggle("active", tab.dataset.view === view);
    tab.setAttribute("aria-selected", tab.dataset.view === view);
  }
  for (const name of ["chat", "context", "usage"]) $("#view-" + name).hidden = name !== view;
  if (view === "context") loadInspection();
  if (view === "usage") loadUsage();
}

for (const tab of document.querySelectorAll("[data-view]")) {
  tab.addEventListener("click", () => showView(tab.dataset.view));
}

async function loadInspection(exact = false) {
  const root = $("#inspector");
  if (!state.sessionId) {
    root.replaceChildren(el("p", { class: "muted" },
      "Start a chat first: the inspector shows exactly what the session's next request would carry."));
    return;
  }
  const request = { type: "context.inspect", sessionId: state.sessionId };
  const draft = $("#input").value;
  if ($("#include-draft").checked && draft.trim()) request.content = draft;
  if (exact) request.exact = true;
  root.classList.add("loading");
  try {
    renderInspection(root, await gw.request(request));
  } catch (error) {
    root.replaceChildren(el("p", { class: "error" }, `${error.code}: ${error.message}`));
  } finally {
    root.classList.remove("loading");
  }
}

$("#inspect-refresh").addEventListener("click", () => loadInspection());
$("#inspect-exact").addEventListener("click", () => loadInspection(true));
$("#include-draft").addEventListener("change", () => loadInspection());

async function loadUsage() {
  const days = Number($("#usage-range").value) || null;
  const request = { type: "usage.query", groupBy: "day" };
  const since = sinceFor(days);
  if (since) request.since = since;
  try {
    renderUsage($("#usage"), await gw.request(request), days);
  } catch (error) {
    $("#usage").replaceChildren(el("p", { class: "error" }, `${error.code}: ${error.message}`));
  }
}

$("#usage-range").addEventListener("change", loadUsage);

connect();
