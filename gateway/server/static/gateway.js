// The WebSocket protocol (docs/PROTOCOL.md) for the browser: requests matched to answers by `id`, chat streams
// routed to their callbacks, and the `auth` frame first when a token is known. Browsers cannot set an
// Authorization header on a WebSocket, so the token always travels in that first frame.

const TERMINAL = new Set(["chat.stream.end", "chat.state", "error"]);
const REQUEST_TIMEOUT_MS = 60000;

export class GatewayError extends Error {
  constructor(frame) {
    super(frame.message || frame.code);
    this.code = frame.code;
    this.retryable = !!frame.retryable;
    this.frame = frame;
  }
}

export class Gateway extends EventTarget {
  constructor(url) {
    super();
    this.url = url;
    this.ws = null;
    this.token = null;
    this.ready = false;
    this.nextId = 1;
    // Unique beyond this page: a page that answers an approval for a turn whose client left (itself before a reload,
    // say) takes that turn over and gets its frames under the old chat.send's id, which must not be one of ours.
    this.idPrefix = "ui-" + Math.random().toString(36).slice(2, 10) + "-";
    this.waiting = new Map(); // id -> {resolve, reject, stream?}
  }

  // Open the socket and prove it works (auth.ok, or pong when no token is known). Rejects with
  // GatewayError code UNAUTHORIZED when the gateway wants a token (it then closes the socket with 1008).
  async open() {
    this.close();
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.addEventListener("message", (event) => this._frame(ws, event.data));
    ws.addEventListener("close", (event) => this._closed(ws, event));
    await new Promise((resolve, reject) => {
      ws.addEventListener("open", resolve, { once: true });
      ws.addEventListener("close", () => reject(new GatewayError({ code: "CONNECTION_FAILED",
        message: "cannot reach the gateway", retryable: true })), { once: true });
    });
    if (this.token) await this.request({ type: "auth", token: this.token });
    else await this.request({ type: "ping" });
    this.ready = true;
    this.dispatchEvent(new Event("open"));
  }

  close() {
    const ws = this.ws;
    this.ws = null;
    this.ready = false;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
    this._failAll(new GatewayError({ code: "CONNECTION_CLOSED", message: "connection closed", retryable: true }));
  }

  request(frame, timeoutMs = REQUEST_TIMEOUT_MS) {
    const id = this.idPrefix + this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new GatewayError({ code: "TIMEOUT", message: `no answer to ${frame.type}`, retryable: true }));
      }, timeoutMs);
      this.waiting.set(id, {
        resolve: (answer) => { clearTimeout(timer); resolve(answer); },
        reject: (error) => { clearTimeout(timer); reject(error); },
      });
      this._send({ ...frame, id });
    });
  }

  // Send a chat.send. Callbacks: onDelta(kind, text) for text and thinking, onFrame(frame) for every other frame of
  // the turn (session.created, chat.stream.start, the tool loop's frames). Frames for no request of this page are
  // dispatched as an "orphan" event (`detail`: the frame).
  // Returns {id, done}: `done` resolves with the chat.stream.end (or chat.state) frame, rejects with GatewayError.
  chat(fields, { onFrame = () => {}, onDelta = () => {} } = {}) {
    const id = this.idPrefix + this.nextId++;
    const done = new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject, stream: { onFrame, onDelta } });
    });
    this._send({ type: "chat.send", id, ...fields });
    return { id, done };
  }

  _send(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      this._fail(frame.id, new GatewayError({ code: "CONNECTION_CLOSED", message: "not connected", retryable: true }));
      return;
    }
    this.ws.send(JSON.stringify(frame));
  }

  _failAll(error) {
    for (const id of [...this.waiting.keys()]) this._fail(id, error);
  }

  _fail(id, error) {
    const waiter = this.waiting.get(id);
    if (waiter) {
      this.waiting.delete(id);
      waiter.reject(error);
    }
  }

  _frame(ws, data) {
    if (ws !== this.ws) return;
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    const waiter = this.waiting.get(frame.id);
    if (!waiter) {
      this.dispatchEvent(Object.assign(new Event("orphan"), { detail: frame }));
      return;
    }
    const stream = waiter.stream;
    if (stream && frame.type === "chat.stream.delta") return stream.onDelta("text", frame.delta);
    if (stream && frame.type === "chat.stream.thinking") return stream.onDelta("thinking", frame.delta);
    if (stream && !TERMINAL.has(frame.type)) return stream.onFrame(frame);
    this.waiting.delete(frame.id);
    if (frame.type === "error") waiter.reject(new GatewayError(frame));
    else waiter.resolve(frame);
  }

  // Only for the socket in use: one this client closed itself is already forgotten.
  _closed(ws, event) {
    if (ws !== this.ws) return;
    const wasReady = this.ready;
    this.ws = null;
    this.ready = false;
    const error = new GatewayError(event.code === 1008
      ? { code: "UNAUTHORIZED", message: event.reason || "authentication required", retryable: false }
      : { code: "CONNECTION_CLOSED", message: `connection closed (${event.code})`, retryable: true });
    this._failAll(error);
    this.dispatchEvent(Object.assign(new Event("close"), { code: event.code, error, wasReady }));
  }
}
