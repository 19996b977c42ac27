"""Prometheus metrics and the one log line per turn.

Each app owns its own `CollectorRegistry` (never prometheus_client's global one), so two gateways in one process,
as in the tests, never share or double-register series. A turn reports through a `TurnObserver` at a few points;
everything else (connections, active streams, database statements) is read or hooked from outside the turn.

Gateway overhead is what the gateway itself adds to a reply's latency, in two phases:
  request: from the `chat.send` frame parsed to the first upstream request sent (validation, locks, SQL, assembly);
  delta:   from an upstream event in hand (parsed by the SDK) to its frame written to the socket.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import Engine, event
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.billing.accounting import TokenUsage

log = logging.getLogger("gateway.turns")

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
_FAST_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0)
_SQL_VERBS = ("select", "insert", "update", "delete", "begin", "commit", "rollback")


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.connections = Gauge("agentspace_connections", "Open WebSocket connections", registry=r)
        self.active_streams = Gauge("agentspace_active_streams", "Replies streaming right now", registry=r)
        self.turns = Counter(
            "agentspace_turns",
            "Chat turns by how they ended (status: complete, cancelled, disconnected, interrupted, failed, or "
            "rejected before streaming); code is the error code, if any",
            ["status", "code"],
            registry=r,
        )
        self.tokens = Counter(
            "agentspace_tokens", "Tokens Anthropic reported, by model and kind", ["model", "kind"], registry=r
        )
        self.cost = Counter("agentspace_cost_usd", "Priced cost in USD, by model", ["model"], registry=r)
        self.upstream_latency = Histogram(
            "agentspace_upstream_latency_seconds",
            "Upstream request sent to response headers received",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "agentspace_time_to_first_token_seconds",
            "Upstream request sent to the first text or thinking delta received",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.turn_duration = Histogram(
            "agentspace_turn_duration_seconds", "Stream start to terminal frame", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.overhead = Histogram(
            "agentspace_gateway_overhead_seconds",
            "Time the gateway adds: phase=request (chat.send parsed to upstream request sent), "
            "phase=delta (upstream event received to frame written)",
            ["phase"],
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.db_latency = Histogram(
            "agentspace_db_statement_seconds",
            "Database statement execution time, by SQL verb",
            ["operation"],
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self._delta_overhead = self.overhead.labels("delta")

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def watch(self, connections: Callable[[], int], active_streams: Callable[[], int]) -> None:
        """Gauges read at scrape time from the app's own bookkeeping, so no code path has to keep them in step."""
        self.connections.set_function(connections)
        self.active_streams.set_function(active_streams)

    def watch_engine(self, engine: AsyncEngine | Engine) -> None:
        """Time every statement at the driver cursor, which covers all SQL without touching the store."""
        sync = engine.sync_engine if isinstance(engine, AsyncEngine) else engine

        def before(conn: Any, _cursor: Any, _statement: str, _params: Any, _context: Any, _many: bool) -> None:
            conn.info["agentspace_t0"] = time.perf_counter()

        def after(conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, _many: bool) -> None:
            started = conn.info.pop("agentspace_t0", None)
            if started is not None:
                self.db_latency.labels(_verb(statement)).observe(time.perf_counter() - started)

        event.listen(sync, "before_cursor_execute", before)
        event.listen(sync, "after_cursor_execute", after)

    def turn(self, request_id: object, content: str | None = None) -> TurnObserver:
        return TurnObserver(self, request_id, content)


def _verb(statement: str) -> str:
    head = statement.lstrip()[:8].split(None, 1)
    verb = head[0].lower() if head else ""
    return verb if verb in _SQL_VERBS else "other"


class TurnObserver:
    """One turn's timings. The turn calls it at a few points; it never raises and never blocks."""

    __slots__ = ("_content", "_first_token", "_m", "_received", "_request_id", "_sent")

    def __init__(self, metrics: Metrics, request_id: object, content: str | None) -> None:
        self._m = metrics
        self._request_id = request_id
        self._content = content
        self._received = time.perf_counter()
        self._sent: float | None = None
        self._first_token = False

    def upstream_request(self) -> None:
        """Just before a request goes upstream (each retry too; only the first counts as overhead)."""
        now = time.perf_counter()
        if self._sent is None:
            self._m.overhead.labels("request").observe(now - self._received)
        self._sent = now

    def upstream_headers(self) -> None:
        if self._sent is not None:
            self._m.upstream_latency.observe(time.perf_counter() - self._sent)

    def relayed(self, received: float) -> None:
        """A delta that arrived at `received` (perf_counter) has just been written to the client."""
        self._m._delta_overhead.observe(time.perf_counter() - received)
        if not self._first_token and self._sent is not None:
            self._first_token = True
            self._m.time_to_first_token.observe(received - self._sent)

    def rejected(self, code: str) -> None:
        """The turn ended with an error before any reply was stored (nothing streamed)."""
        self._m.turns.labels("rejected", code).inc()
        _log_turn({"requestId": self._request_id, "status": "rejected", "errorCode": code}, self._content)

    def finished(
        self,
        *,
        session_id: str,
        message_id: str,
        agent_id: str,
        model: str,
        status: str,
        stop_reason: str | None,
        usage: TokenUsage | None,
        cost_nano: int | None,
        duration_ms: int,
        error_code: str | None,
    ) -> None:
        m = self._m
        m.turns.labels(status, error_code or "").inc()
        m.turn_duration.observe(duration_ms / 1000)
        if usage is not None:
            for kind, count in _token_kinds(usage):
                if count:
                    m.tokens.labels(model, kind).inc(count)
        if cost_nano:
            m.cost.labels(model).inc(cost_nano / 1e9)
        fields: dict[str, Any] = {
            "requestId": self._request_id,
            "sessionId": session_id,
            "messageId": message_id,
            "agentId": agent_id,
            "model": model,
            "status": status,
            "stopReason": stop_reason,
            "inputTokens": usage.input_tokens if usage else 0,
            "outputTokens": usage.output_tokens if usage else 0,
            "cacheReadTokens": usage.cache_read_tokens if usage else 0,
            "cacheWriteTokens": usage.cache_creation_input_tokens if usage else 0,
            "costNanoUsd": cost_nano,
            "durationMs": duration_ms,
            "errorCode": error_code,
        }
        _log_turn(fields, self._content)


def _token_kinds(usage: TokenUsage) -> Iterable[tuple[str, int]]:
    return (
        ("input", usage.input_tokens),
        ("output", usage.output_tokens),
        ("cache_read", usage.cache_read_tokens),
        ("cache_write", usage.cache_creation_input_tokens),
    )


def _log_turn(fields: dict[str, Any], content: str | None) -> None:
    """One INFO line per turn: ids, model, tokens, cost, duration, status. The user's words only at DEBUG."""
    if not log.isEnabledFor(logging.INFO):
        return
    if content is not None and log.isEnabledFor(logging.DEBUG):
        fields = {**fields, "content": content}
    text = " ".join(f"{k}={v!r}" if k == "content" else f"{k}={v}" for k, v in fields.items() if v is not None)
    log.info("turn %s", text, extra={"fields": {"event": "turn", **fields}})
