"""Shared fixtures: the fake Anthropic server, a gateway app on a real SQLite file (or PostgreSQL), a WS client."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.settings import Settings
from tests.databases import create_database, drop_database, reset_database, run_in_thread
from tests.fake_anthropic import FakeAnthropic

RECV_TIMEOUT_S = 10.0
TERMINAL = ("chat.stream.end", "error", "chat.state")


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may read the developer's real keys, SDK profiles or gateway home."""
    config_dir = tmp_path / "anthropic-config"
    config_dir.mkdir()
    monkeypatch.setenv("ANTHROPIC_CONFIG_DIR", str(config_dir))
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "ANTHROPIC_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AGENTSPACE_HOME", str(tmp_path / "home"))
    # Nor write or read the discovery file a real gateway on this machine uses.
    monkeypatch.setenv("AGENTSPACE_RUNTIME_FILE", str(tmp_path / "runtime.json"))


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    server = FakeAnthropic(api_key="test-key")
    await server.start()
    yield server
    await server.close()


PG_SKIP_REASON = "PostgreSQL leg not run: AGENTSPACE_TEST_PG_URL is not set (.ci/run starts PostgreSQL and sets it)"


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str | None]:
    """One migrated PostgreSQL database for the whole run, emptied before each test that uses it."""
    admin = pg_url()
    if admin is None:
        yield None
        return
    url = run_in_thread(create_database(admin))
    yield url
    run_in_thread(drop_database(admin, url))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One visible line (also under -q) when the PostgreSQL leg did not run, instead of one per skipped test."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if PG_SKIP_REASON in str(r.longrepr)]
    if skipped:
        terminalreporter.write_line(f"{len(skipped)} tests skipped. {PG_SKIP_REASON}", yellow=True, bold=True)


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path, pg_database: str | None) -> str:
    """Every test that touches the database runs twice: on a SQLite file, and on PostgreSQL when it is available."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    if pg_database is None:
        pytest.skip(PG_SKIP_REASON)
    await reset_database(pg_database)
    return pg_database


@pytest.fixture
async def fresh_pg_url() -> AsyncIterator[str]:
    """A brand-new, empty (unmigrated) PostgreSQL database of its own, for tests of start-up and copying."""
    admin = pg_url()
    if admin is None:
        pytest.skip(PG_SKIP_REASON)
    url = await create_database(admin, migrate=False)
    yield url
    await drop_database(admin, url)


def make_settings(home: Path, fake: FakeAnthropic, db_url: str) -> Settings:
    return Settings(
        home=home,
        db_url=db_url,
        anthropic_api_key="test-key",
        anthropic_base_url=fake.base_url,
        upstream_retry_base_s=0.01,
        upstream_retry_max_s=0.05,
        heartbeat_s=0,
    )


@pytest.fixture
def settings(tmp_path: Path, fake: FakeAnthropic, db_url: str) -> Settings:
    return make_settings(tmp_path / "home", fake, db_url)


@pytest.fixture
async def pg_db_url(pg_database: str | None) -> str:
    """The PostgreSQL database alone, emptied, for tests of what only PostgreSQL does (several processes)."""
    if pg_database is None:
        pytest.skip(PG_SKIP_REASON)
    await reset_database(pg_database)
    return pg_database


@pytest.fixture
def pg_settings(tmp_path: Path, fake: FakeAnthropic, pg_db_url: str) -> Settings:
    return make_settings(tmp_path / "home", fake, pg_db_url)


class Gateway:
    """A running gateway app with helpers to talk to it the way a WebSocket client does."""

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client

    @property
    def app(self) -> Any:
        return self.client.app

    async def ws(self, **kwargs: Any) -> ClientWebSocketResponse:
        return await self.client.ws_connect("/gateway", **kwargs)


@pytest.fixture
async def gateway_factory() -> AsyncIterator[Callable[[Settings], Awaitable[Gateway]]]:
    started: list[TestClient[Any, Any]] = []

    async def start(settings: Settings) -> Gateway:
        client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings)))
        await client.start_server()
        started.append(client)
        return Gateway(client)

    yield start
    for client in reversed(started):
        await client.close()


@pytest.fixture
async def gateway(gateway_factory: Callable[[Settings], Awaitable[Gateway]], settings: Settings) -> Gateway:
    return await gateway_factory(settings)


@pytest.fixture
async def ws(gateway: Gateway) -> AsyncIterator[ClientWebSocketResponse]:
    socket = await gateway.ws()
    yield socket
    await socket.close()


async def recv(ws: ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=RECV_TIMEOUT_S)
    assert msg.type == WSMsgType.TEXT, f"expected a text frame, got {msg.type} {msg.data!r}"
    frame: dict[str, Any] = json.loads(msg.data)
    return frame


async def send(ws: ClientWebSocketResponse, frame: dict[str, Any]) -> None:
    await ws.send_str(json.dumps(frame))


async def collect(ws: ClientWebSocketResponse, until: tuple[str, ...] = TERMINAL) -> list[dict[str, Any]]:
    """Frames up to and including the first terminal one."""
    frames: list[dict[str, Any]] = []
    while True:
        frame = await recv(ws)
        frames.append(frame)
        if frame["type"] in until:
            return frames


async def chat(ws: ClientWebSocketResponse, content: str, **fields: Any) -> list[dict[str, Any]]:
    await send(ws, {"type": "chat.send", "id": fields.pop("id", "t1"), "content": content, **fields})
    return await collect(ws)


async def request(ws: ClientWebSocketResponse, frame: dict[str, Any]) -> dict[str, Any]:
    await send(ws, frame)
    return await recv(ws)


def deltas(frames: list[dict[str, Any]], kind: str = "chat.stream.delta") -> str:
    return "".join(f["delta"] for f in frames if f["type"] == kind)


def pg_url() -> str | None:
    return os.environ.get("AGENTSPACE_TEST_PG_URL")
