"""A bare relay, for comparison only: the least a WebSocket-to-Anthropic relay can do with the same SDK.

No sessions, no history, no persistence, no accounting, no token counting: a `chat.send` becomes one
`messages.create(stream=True)` and every text or thinking delta becomes one frame of the gateway's own shape, so the
load generator drives both with the same client code. What the gateway costs beyond this is the price of
everything it keeps.

    python -m bench.bare_relay --port 4020      # ANTHROPIC_BASE_URL and ANTHROPIC_API_KEY from the environment
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

import anthropic
import httpx2
from aiohttp import WSMsgType, web

CLIENT = web.AppKey("client", anthropic.AsyncAnthropic)
MODEL = "claude-sonnet-5-5"


async def client_ctx(app: web.Application) -> Any:
    # The gateway's client settings: no SDK retries, its timeouts, the SDK's aiohttp transport, one pooled client
    # for every stream.
    timeout = httpx2.Timeout(120.0, connect=10.0)
    client = anthropic.AsyncAnthropic(
        max_retries=0, timeout=timeout, http_client=anthropic.DefaultAioHttpClient(timeout=timeout)
    )
    app[CLIENT] = client
    yield
    await client.close()


async def relay(ws: web.WebSocketResponse, client: anthropic.AsyncAnthropic, frame: dict[str, Any]) -> None:
    # The gateway's frame shapes (ids on every frame), so both send the same bytes per delta; nothing is stored, so
    # a session id is only echoed (or made up) and a message id made up.
    rid = frame.get("id")
    ids = {"id": rid, "sessionId": frame.get("sessionId") or str(uuid.uuid4()), "messageId": str(uuid.uuid4())}
    started = time.monotonic()
    try:
        await ws.send_str(json.dumps({"type": "chat.stream.start", **ids, "model": frame.get("model") or MODEL}))
        stream = await client.messages.create(
            model=frame.get("model") or MODEL,
            max_tokens=frame.get("maxTokens") or 8192,
            messages=[{"role": "user", "content": str(frame.get("content", ""))}],
            stream=True,
        )
        stop_reason = None
        usage: dict[str, int] = {}
        async for event in stream:
            if event.type == "content_block_delta":
                delta = event.delta
                if delta.type == "text_delta":
                    await ws.send_str(json.dumps({"type": "chat.stream.delta", **ids, "delta": delta.text}))
                elif delta.type == "thinking_delta":
                    await ws.send_str(json.dumps({"type": "chat.stream.thinking", **ids, "delta": delta.thinking}))
            elif event.type == "message_start":
                usage["inputTokens"] = event.message.usage.input_tokens
            elif event.type == "message_delta":
                stop_reason = event.delta.stop_reason
                usage["outputTokens"] = event.usage.output_tokens
        end = {
            "type": "chat.stream.end",
            **ids,
            "stopReason": stop_reason,
            "status": "complete",
            "usage": usage,
            "durationMs": int((time.monotonic() - started) * 1000),
        }
        await ws.send_str(json.dumps(end))
    except (ConnectionError, RuntimeError):
        pass  # the client left
    except anthropic.APIError as exc:
        error = {"type": "error", **ids, "code": "UPSTREAM_ERROR", "message": str(exc), "retryable": True}
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(json.dumps(error))


async def gateway_ws(request: web.Request) -> web.WebSocketResponse:
    # The gateway's defaults (30 s heartbeat, 4 MiB frames), so idle connections cost the same machinery.
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=4 * 1024 * 1024)
    await ws.prepare(request)
    client = request.app[CLIENT]
    task: asyncio.Task[None] | None = None
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            if frame.get("type") == "ping":
                await ws.send_str(json.dumps({"type": "pong", "id": frame.get("id")}))
            elif frame.get("type") == "chat.send":
                if task is not None and not task.done():
                    await ws.send_str(
                        json.dumps({"type": "error", "id": frame.get("id"), "code": "STREAM_IN_PROGRESS"})
                    )
                    continue
                task = asyncio.create_task(relay(ws, client, frame))
    finally:
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return ws


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app() -> web.Application:
    app = web.Application()
    app.cleanup_ctx.append(client_ctx)
    app.router.add_get("/gateway", gateway_ws)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="bare WebSocket relay over the anthropic SDK (benchmark baseline)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4020)
    args = parser.parse_args()
    web.run_app(create_app(), host=args.host, port=args.port, print=None, access_log=None, shutdown_timeout=2)


if __name__ == "__main__":
    main()
