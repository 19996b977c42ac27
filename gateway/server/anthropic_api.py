"""The Anthropic-compatible HTTP API on the gateway's port (docs/HTTP_API.md): `POST /v1/messages` (streamed or not),
`POST /v1/messages/count_tokens`, `GET /v1/models[/{id}]`. An Anthropic SDK pointed at the gateway
(`base_url`/`ANTHROPIC_BASE_URL`, a gateway key as `api_key`/`ANTHROPIC_API_KEY`) works unchanged: the body goes
upstream byte for byte with the client's `anthropic-*` headers and the gateway's own key, and the answer comes back as
the upstream sent it. The client's key is never forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from gateway import errors
from gateway.chat.passthrough import ApiCall, Passthrough, messages_exchange
from gateway.chat.passthrough_stream import Exchange, error_event, relay_once
from gateway.protocol import AGENT_ID_PATTERN
from gateway.settings import DEFAULT_AGENT
from gateway.store.db import json_loads
from gateway.store.models import ApiKey

from .api_errors import error_response, gateway_error, new_request_id
from .handlers import CREDENTIALS, SERVICES, origin_allowed

IN_FLIGHT = web.AppKey("http_in_flight", dict[asyncio.Task[Any], Passthrough])
SESSION_HEADER = "x-agentspace-session"
AGENT_HEADER = "x-agentspace-agent"
SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,35}")


class Refused(Exception):
    """A request answered with an error before anything else happened."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _presented(request: web.Request) -> str | None:
    """The client's key: Anthropic's `x-api-key`, or `Authorization: Bearer` (what the Python SDK sends)."""
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


async def _admit(request: web.Request) -> ApiKey | None:
    settings = request.app[SERVICES].settings
    if not origin_allowed(request, settings.allowed_origins, has_token=settings.token is not None):
        raise Refused(error_response(403, "permission_error", "this origin may not use the gateway"))
    verdict = await request.app[CREDENTIALS].check(_presented(request))
    if not verdict.accepted:
        message = f"{verdict.reason}: send a gateway key (agentspace token create --name NAME) as x-api-key"
        raise Refused(error_response(401, "authentication_error", message))
    return verdict.key


async def _read_body(request: web.Request) -> bytes:
    limit = request.app[SERVICES].settings.max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        raise Refused(error_response(413, "request_too_large", f"request body over {limit} bytes"))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise Refused(error_response(413, "request_too_large", f"request body over {limit} bytes"))
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_messages_body(raw: bytes) -> dict[str, Any]:
    """Only what the gateway itself must read: an object with a `model` and a list of `messages` with roles. The
    rest is the upstream's to judge, and reaches it untouched."""
    try:
        body = json_loads(raw)
    except ValueError:
        raise Refused(error_response(400, "invalid_request_error", "the body is not valid JSON")) from None
    if not isinstance(body, dict):
        raise Refused(error_response(400, "invalid_request_error", "the body must be a JSON object"))
    if not isinstance(body.get("model"), str):
        raise Refused(error_response(400, "invalid_request_error", "model: Field required"))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Refused(error_response(400, "invalid_request_error", "messages: Field required"))
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise Refused(error_response(400, "invalid_request_error", f"messages.{i}.role: must be user or assistant"))
    return body


def _forwarded(request: web.Request) -> dict[str, str]:
    """The client's `anthropic-*` headers (version, beta flags): how it asks the API to read its body."""
    return {name.lower(): value for name, value in request.headers.items() if name.lower().startswith("anthropic-")}


def _header(request: web.Request, name: str, pattern: re.Pattern[str], default: str | None) -> str | None:
    value = request.headers.get(name)
    if value is None:
        return default
    if not pattern.fullmatch(value):
        raise Refused(error_response(400, "invalid_request_error", f"{name}: not a valid id"))
    return value


async def messages(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    request_id = new_request_id()
    try:
        key = await _admit(request)
        raw = await _read_body(request)
        call = ApiCall(
            raw=raw,
            body=_parse_messages_body(raw),
            headers=_forwarded(request),
            params=dict(request.query),
            key=key,
            agent_id=_header(request, AGENT_HEADER, AGENT_ID_PATTERN, DEFAULT_AGENT) or DEFAULT_AGENT,
            session_hint=_header(request, SESSION_HEADER, SESSION_ID, None),
            request_id=request_id,
        )
    except Refused as refused:
        return refused.response
    in_flight = request.app[IN_FLIGHT]
    task = asyncio.current_task()
    assert task is not None
    turn = in_flight[task] = Passthrough(services, call)
    try:
        async with messages_exchange(turn):
            exchange = turn.exchange
            assert exchange is not None and turn.session_id is not None
            headers = CIMultiDict(exchange.headers)
            headers[SESSION_HEADER] = turn.session_id
            try:
                if not exchange.streaming:
                    return web.Response(status=exchange.status, body=await exchange.read(), headers=headers)
                return await _stream(request, turn, exchange, headers)
            except asyncio.CancelledError:
                if not turn.interrupted:
                    # A server that cancels the handlers of clients that left (aiohttp's handler_cancellation).
                    transport = request.transport
                    turn.client_gone = transport is None or transport.is_closing()
                raise
    except errors.GatewayError as exc:
        if turn.interrupted:
            return error_response(529, "overloaded_error", "the gateway is shutting down; retry", request_id=request_id)
        return gateway_error(exc, request_id)
    finally:
        in_flight.pop(task, None)


async def stop_all(app: web.Application) -> None:
    """At shutdown, as for WebSocket streams: end every request in flight now (a stream gets a last `error` event),
    saving its partial reply as `interrupted`, rather than hold the shutdown for as long as a reply may take."""
    in_flight = app[IN_FLIGHT]
    for task, turn in list(in_flight.items()):
        turn.interrupted = True
        if turn.exchange is not None:
            turn.exchange.stopped = True
        task.cancel()
    if in_flight:
        await asyncio.wait(list(in_flight))


async def _stream(
    request: web.Request, turn: Passthrough, exchange: Exchange, headers: CIMultiDict[str]
) -> web.StreamResponse:
    finish = request.app[SERVICES].settings.on_disconnect == "finish"
    response = web.StreamResponse(status=exchange.status, headers=headers)
    await response.prepare(request)
    try:
        await _relay_chunks(response, turn, exchange, finish)
    except asyncio.CancelledError:
        await _last_words(response, turn)
        raise
    await _last_words(response, turn)
    # Not ended here: aiohttp ends the body once the handler returns, after the reply and its usage are saved, so an
    # app that has read its whole stream finds them in SQL (as a chat.send's terminal frame follows its saving).
    return response


async def _last_words(response: web.StreamResponse, turn: Passthrough) -> None:
    """A stream the shutdown cut ends with an `error` event, so the app's SDK raises instead of waiting."""
    if turn.interrupted and not turn.client_gone:
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(1.0):
                await response.write(error_event("overloaded_error", "the gateway is shutting down; retry"))


async def _relay_chunks(response: web.StreamResponse, turn: Passthrough, exchange: Exchange, finish: bool) -> None:
    async with contextlib.aclosing(exchange.chunks()) as chunks:
        async for chunk in chunks:
            if turn.client_gone:
                continue  # AGENTSPACE_ON_DISCONNECT=finish: read on, for the history and the accounting
            try:
                await response.write(chunk)
            except ConnectionError:
                turn.client_gone = True
                if not finish:
                    break  # closing the upstream response stops the generation, and its billing


async def _relay(request: web.Request, method: str, path: str, content: bytes | None) -> web.Response:
    status, headers, body = await relay_once(
        request.app[SERVICES].upstream, method, path, content, _forwarded(request), dict(request.query)
    )
    return web.Response(status=status, body=body, headers=CIMultiDict(headers))


async def count_tokens(request: web.Request) -> web.Response:
    """Free, so nothing is stored: relayed as it came, both ways."""
    try:
        await _admit(request)
        raw = await _read_body(request)
        return await _relay(request, "POST", "/v1/messages/count_tokens", raw)
    except Refused as refused:
        return refused.response
    except errors.GatewayError as exc:
        return gateway_error(exc)


async def models(request: web.Request) -> web.Response:
    """The upstream's model list (or one model), paging parameters and all."""
    try:
        await _admit(request)
        return await _relay(request, "GET", request.path, None)
    except Refused as refused:
        return refused.response
    except errors.GatewayError as exc:
        return gateway_error(exc)


def add_routes(app: web.Application) -> None:
    app[IN_FLIGHT] = {}
    app.on_shutdown.append(stop_all)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{model_id}", models)
