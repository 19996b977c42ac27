"""What each scenario runs, for the full benchmark and for `--quick` (the same scenarios, tiny and fast)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .procs import UpstreamConfig

TARGETS = ("direct", "bare", "gateway")
# The HTTP API's scenario: the same SDK client straight to the upstream, and to the gateway's /v1/messages (`http`),
# beside the gateway's WebSocket path (`gateway`) under the same load.
MESSAGES_TARGETS = ("direct", "gateway", "http")


@dataclass(frozen=True)
class StreamScenario:
    """`clients` clients each sending turns back to back for `duration_s` (after `warmup_s`), against each target.

    kind: "ttft" (time to first token vs direct), "turns" (completed turns/s vs bare), "deltas" (deltas/s vs bare),
    or "messages" (the HTTP API's added first-token latency and CPU vs the WebSocket path's, both vs direct).
    """

    key: str
    kind: str
    upstream: UpstreamConfig
    clients: int
    warmup_s: float
    duration_s: float
    turns_per_session: int = 10
    stall_s: float = 2.0
    targets: tuple[str, ...] = TARGETS

    @property
    def name(self) -> str:
        return f"{self.kind} @{self.clients}"


@dataclass(frozen=True)
class IdleScenario:
    key: str
    upstream: UpstreamConfig
    connections: int
    streaming: int
    settle_s: float = 1.0

    @property
    def name(self) -> str:
        return f"idle {self.connections}"


@dataclass(frozen=True)
class QueryScenario:
    key: str
    usage_rows: int
    sessions: int
    long_session_messages: int
    runs: int
    warmup: int = 3

    @property
    def name(self) -> str:
        return "queries"


@dataclass(frozen=True)
class HistoryScenario:
    """One client continuing a conversation of each length in `sizes` for `turns` turns (after `warmup`), straight
    to the upstream and through the gateway (bench/history.py)."""

    key: str
    upstream: UpstreamConfig
    sizes: tuple[int, ...]
    turns: int
    warmup: int = 3

    @property
    def name(self) -> str:
        return "history"


@dataclass(frozen=True)
class Plan:
    streams: tuple[StreamScenario, ...]
    idle: IdleScenario | None
    queries: QueryScenario | None
    quick: bool = False
    keys: tuple[str, ...] = field(default=())
    workers: int = 1  # the gateway's `serve --workers`
    history: HistoryScenario | None = None


# Model-like pacing: 20 ms between deltas is 50 tokens/s, about what current models stream at.
PACED = UpstreamConfig(words=50, delay_ms=20)
FULL = Plan(
    streams=(
        # One client, short paced replies back to back: a few hundred first-token samples in the window.
        StreamScenario("ttft1", "ttft", UpstreamConfig(words=10, delay_ms=2), clients=1, warmup_s=1, duration_s=10),
        StreamScenario("ttft50", "ttft", PACED, clients=50, warmup_s=2, duration_s=15),
        # Throughput: the upstream answers as fast as it can, so the relay is the bottleneck.
        StreamScenario("turns", "turns", UpstreamConfig(words=20, delay_ms=0), clients=100, warmup_s=2, duration_s=15),
        StreamScenario(
            "deltas", "deltas", UpstreamConfig(words=200, delay_ms=0), clients=200, warmup_s=2, duration_s=15
        ),
        # Ten SDK apps, each a conversation of ten turns sent whole every time, as the API is used.
        StreamScenario(
            "messages",
            "messages",
            UpstreamConfig(words=20, delay_ms=2),
            clients=10,
            warmup_s=2,
            duration_s=15,
            targets=MESSAGES_TARGETS,
        ),
    ),
    idle=IdleScenario("idle", UpstreamConfig(words=20, delay_ms=5), connections=1000, streaming=500),
    queries=QueryScenario("queries", usage_rows=1_000_000, sessions=100_000, long_session_messages=1000, runs=40),
    # Issue 15: a session's length must not cost the first token; 60 turns at each length, 10-word replies.
    history=HistoryScenario("history", UpstreamConfig(words=10, delay_ms=2), sizes=(0, 200, 1000), turns=60),
)

# --quick: one upstream cadence for everything, so one set of processes serves every scenario in a few seconds.
QUICK_UPSTREAM = UpstreamConfig(words=5, delay_ms=1)
QUICK = Plan(
    streams=(
        StreamScenario("ttft1", "ttft", QUICK_UPSTREAM, clients=1, warmup_s=0.1, duration_s=0.4),
        StreamScenario("ttft50", "ttft", QUICK_UPSTREAM, clients=5, warmup_s=0.1, duration_s=0.4),
        StreamScenario("turns", "turns", QUICK_UPSTREAM, clients=10, warmup_s=0.1, duration_s=0.4),
        StreamScenario("deltas", "deltas", QUICK_UPSTREAM, clients=10, warmup_s=0.1, duration_s=0.4),
        StreamScenario(
            "messages", "messages", QUICK_UPSTREAM, clients=3, warmup_s=0.1, duration_s=0.4, targets=MESSAGES_TARGETS
        ),
    ),
    idle=IdleScenario("idle", QUICK_UPSTREAM, connections=50, streaming=25, settle_s=0.1),
    queries=QueryScenario("queries", usage_rows=2000, sessions=300, long_session_messages=50, runs=5, warmup=1),
    quick=True,
    history=HistoryScenario("history", QUICK_UPSTREAM, sizes=(0, 20), turns=4, warmup=1),
)

KEYS = ("ttft1", "ttft50", "turns", "deltas", "messages", "idle", "queries", "history")


def make_plan(quick: bool, only: list[str] | None, duration_s: float | None, workers: int = 1) -> Plan:
    base = QUICK if quick else FULL
    keys = tuple(only) if only else KEYS
    unknown = set(keys) - set(KEYS)
    if unknown:
        raise ValueError(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(KEYS)}")
    streams = tuple(
        replace(s, duration_s=duration_s) if duration_s is not None else s for s in base.streams if s.key in keys
    )
    return Plan(
        streams=streams,
        idle=base.idle if "idle" in keys else None,
        queries=base.queries if "queries" in keys else None,
        quick=quick,
        keys=keys,
        workers=workers,
        history=base.history if "history" in keys else None,
    )
