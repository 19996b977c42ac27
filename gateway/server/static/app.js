// The Control UI: sessions in the sidebar, a streaming chat, the context inspector and the usage page, all over the
// gateway's own WebSocket (same origin). No framework and no build step: the browser loads these modules as they are.

import { ChatView } from "./chat.js";
import { Gateway } from "./gateway.js";
import { el, when } from "./format.js";
import { renderInspection } from "./inspector.js";
import { renderUsage, sinceFor } from "./usage.js";

const $ = (selector) => document.querySelector(selector);
const TOKEN_KEY = "agentspace.token";
const AGENT_KEY = "agentspace.agent";
const wsUrl = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/gateway";
const gw = new Gateway(wsUrl);
gw.token = sessionStorage.getItem(TOKEN_KEY) || localStorage.getItem(TOKEN_KEY);

const state = {
  sessionId: decodeURIComponent(location.hash.slice(1)) || null,
  sessions: [],
  view: "chat",
  streaming: null, // {id, sessionId}
  retryMs: 500,
  agents: [],
};

const chat = new ChatView(gw, state, {
  sessionCreated(sessionId) {
    state.sessionId = sessionId;
    history.replaceState(null, "", "#" + encodeURIComponent(sessionId));
    refreshSessions();
  },
  async turnEnded() {
    if (gw.ready) await refreshSessions();
  },
  agentForNewChat() {
    return $("#agent").value || "default";
  },
});

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
  await loadAgents();
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
    el("span", { class: "meta" }, `${s.agentId} · ${s.messageCount} messages · ${when(s.updatedAt)}`)),
  el("button", { class: "delete", title: "Delete this session", "aria-label": "Delete session",
    onclick: () => deleteSession(s) }, "×"))));
  if (!state.sessions.length) list.append(el("li", { class: "muted empty" }, "No sessions yet"));
  const current = state.sessions.find((s) => s.sessionId === state.sessionId);
  $("#session-title").textContent = current ? current.title || "Untitled" : "New chat";
  showAgent();
}

async function openSession(sessionId) {
  state.sessionId = sessionId;
  history.replaceState(null, "", sessionId ? "#" + encodeURIComponent(sessionId) : location.pathname);
  renderSessions();
  if (!(await chat.show(sessionId))) return openSession(null);
  showView(state.view);
}

// ---- the agent picker: chooses the agent of a new chat; shows the agent of an open session ----

async function loadAgents() {
  try {
    state.agents = (await gw.request({ type: "agent.list" })).agents;
  } catch (error) {
    state.agents = [{ agentId: "default", model: null }];
    console.warn(error);
  }
  const picker = $("#agent");
  const chosen = picker.value || localStorage.getItem(AGENT_KEY) || "default";
  picker.replaceChildren(...state.agents.map((a) => el("option", {
    value: a.agentId, title: a.problemCount ? `${a.problemCount} problem(s) in its files` : null,
  }, a.model ? `${a.agentId} · ${a.model}` : a.agentId)));
  picker.value = state.agents.some((a) => a.agentId === chosen) ? chosen : "default";
  showAgent();
}

function showAgent() {
  const picker = $("#agent");
  const current = state.sessions.find((s) => s.sessionId === state.sessionId);
  if (current) {
    if (![...picker.options].some((o) => o.value === current.agentId)) {
      picker.append(el("option", { value: current.agentId }, current.agentId));
    }
    picker.value = current.agentId;
  } else if (state.sessionId === null) {
    picker.value = localStorage.getItem(AGENT_KEY) || picker.value || "default";
    if (!picker.value) picker.value = "default";
  }
  picker.disabled = state.sessionId !== null;
  picker.title = picker.disabled ? "The agent of this session" : "The agent of the new chat";
}

$("#agent").addEventListener("change", () => localStorage.setItem(AGENT_KEY, $("#agent").value));

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

async function compactSession() {
  if (!state.sessionId) return;
  try {
    const preview = (await gw.request({ type: "context.inspect", sessionId: state.sessionId, compact: true })).compaction;
    if (!preview.possible) return alert(preview.why);
    const cost = preview.request.inputCostEstimate;
    if (!confirm(`Summarise ${preview.compactedMessages} older messages (${preview.keptMessages} kept)? ` +
      `The summary request reads about ${preview.request.tokenEstimate} tokens` +
      (cost === null ? "." : ` (about $${cost.toFixed(4)} before caching).`))) return;
    // The model writes the summary first: on a long session that can take minutes.
    const done = await gw.request({ type: "session.compact", sessionId: state.sessionId }, 600000);
    alert(`Compacted ${done.compactedMessages} messages: the next request goes from about ${done.tokensBefore} to ` +
      `${done.tokensAfter} tokens. Cost: $${(done.cost.totalCost ?? 0).toFixed(6)}.`);
  } catch (error) {
    return alert(`${error.code}: ${error.message}`);
  }
  await openSession(state.sessionId);
  await loadInspection();
}

$("#inspect-compact").addEventListener("click", compactSession);

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
