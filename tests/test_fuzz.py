"""Property-based: thousands of random and mutated frames at the parser, hundreds at a live connection. Every frame
gets a well-formed answer, the connection stays open, the process stays up; and the answer is the one
tests/frame_oracle.py (the protocol's rules, written down apart from gateway/protocol.py) says it must be: a frame is
refused exactly when it breaks a rule, naming a rule it breaks."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.errors import GatewayError
from gateway.protocol import SCHEMAS, Field, Request, dump, error_frame, parse_frame
from gateway.settings import Settings
from tests.fake_anthropic import FakeAnthropic, Reply
from tests.frame_oracle import RULES as ORACLE_RULES
from tests.frame_oracle import boundary_values, expected_answer, refusals

T = TypeVar("T")
MAX_CONTENT = 10_000
PARSER_ERRORS = {"PARSE_ERROR", "INVALID_MESSAGE", "MESSAGE_TOO_LARGE"}
TERMINAL = ("chat.stream.end", "error", "chat.state")
SESSION = "$SESSION"
NASTY = [
    "",
    " ",
    "\u0000",
    "a\u0000b",
    "\ud800",
    "x\udfffy",
    "\ud83d\ude00",
    "'; DROP TABLE messages; --",
    "../../etc/passwd",
    "NaN",
    "null",
    "\u202e\u200b\ufeff",
    "😀" * 300,
    "a" * 257,
    "9" * 30,
]

# --- strategies ------------------------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(NASTY),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6,
)
plausible: dict[str, st.SearchStrategy[Any]] = {
    "content": st.text(min_size=1, max_size=60).filter(str.strip),
    # $SESSION becomes a real session of the live gateway, so session requests reach real rows too.
    "sessionId": st.sampled_from([SESSION, SESSION, "nope", "00000000-0000-0000-0000-000000000000"]),
    "agentId": st.sampled_from(["default", "ghost"]),
    "model": st.sampled_from(["claude-sonnet-5-5", "claude-haiku-4-5", "claude-sonnet-4"]),
    "maxTokens": st.integers(min_value=1, max_value=1_000_000),
    "limit": st.integers(min_value=1, max_value=1_000_000),
    "beforeSeq": st.integers(min_value=0, max_value=50),
    "groupBy": st.sampled_from(["model", "day", "session", "agent"]),
    "since": st.sampled_from(["2026-11-01", "2026-11-25T10:00:00Z"]),
    "exact": st.booleans(),
    "decision": st.sampled_from(["allow_once", "allow_session", "deny"]),
    "toolUseId": st.sampled_from(["toolu_01", "toolu_nope"]),
    "tools": st.sampled_from(
        [
            [],
            [{"name": "lookup", "input_schema": {"type": "object"}}],
            [{"name": "memory", "input_schema": {"type": "object"}}],
        ]
    ),
    "isError": st.booleans(),
    "streamToolInput": st.booleans(),
    "id": st.one_of(st.text(max_size=20), st.integers()),
}
nasty = st.sampled_from(NASTY)
KINDS = sorted(SCHEMAS) + ["chat.send"] * 3  # streams are where most can go wrong: more of them


def field_value(name: str, *, hostile: bool) -> st.SearchStrategy[Any]:
    usual = plausible.get(name, st.text(max_size=30))
    # Hostile frames mix plausible values with nasty ones, values at the edges of the field's bounds, and any JSON at
    # all; the others stay plausible, so they get past the parser and reach the handlers (and the upstream).
    if not hostile:
        return usual
    edges = boundary_values(name)
    return st.one_of(usual, usual, nasty, scalars, json_values, *([st.sampled_from(edges)] if edges else []))


@st.composite
def frame_dicts(draw: st.DrawFn, *, hostile: bool = True) -> dict[str, Any]:
    """A frame of a known type with its own fields, each maybe present; hostile ones may also get a wrong type,
    a stray field, or any value anywhere."""
    kind = draw(st.sampled_from(KINDS))
    frame: dict[str, Any] = {"type": kind}
    if hostile and not draw(st.integers(min_value=0, max_value=9)):
        frame["type"] = draw(scalars)
    for spec in (Field("id", str), *SCHEMAS[kind]):
        present = draw(st.integers(min_value=0, max_value=9)) > (0 if spec.required else 5)
        if present or (spec.required and not hostile):
            frame[spec.wire] = draw(field_value(spec.wire, hostile=hostile))
    if hostile and not draw(st.integers(min_value=0, max_value=4)):
        frame[draw(st.text(max_size=8))] = draw(json_values)
    return frame


def encode(frame: Any) -> str:
    # ensure_ascii: lone surrogates travel as "\ud800" escapes, the way a hostile client would send them.
    return json.dumps(frame, allow_nan=True)


@st.composite
def mutated_text(draw: st.DrawFn) -> str:
    """A valid-looking frame's JSON text with characters inserted, deleted or replaced."""
    text = encode(draw(frame_dicts()))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        at = draw(st.integers(min_value=0, max_value=len(text)))
        cut = draw(st.integers(min_value=0, max_value=3))
        insert = draw(st.text(alphabet='{}[]",:\\ 0123456789abcdeftrunl\u0000é😀', max_size=4))
        text = text[:at] + insert + text[at + cut :]
    return text


socket_text = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=200)  # any UTF-8 text
live_frame_text = st.one_of(
    frame_dicts(hostile=False).map(encode),
    frame_dicts(hostile=False).map(encode),
    frame_dicts().map(encode),
    frame_dicts().map(encode),
    mutated_text(),
    socket_text,
)


# --- the parser --------------------------------------------------------------------------------------------------


def check_parse(text: str) -> Request | None:
    """Parse; a refusal must be a well-formed, sendable error frame naming a rule the frame breaks, and only a frame
    that breaks one is refused. Never any other exception."""
    broken = refusals(text, max_content_chars=MAX_CONTENT)
    try:
        request = parse_frame(text, max_content_chars=MAX_CONTENT)
    except GatewayError as exc:
        assert exc.code in PARSER_ERRORS, exc.code
        assert (exc.code, exc.details.get("field")) in broken, (exc.code, exc.details, broken)
        frame = error_frame(exc, exc.details.get("request_id"))
        dump(frame).encode("utf-8")  # can go out on the socket as is
        assert isinstance(frame["message"], str) and frame["retryable"] is False
        return None
    assert not broken, f"accepted a frame that breaks {broken}: {text!r}"
    assert request.type in SCHEMAS
    dump({"type": "x", "id": request.id, **request.fields}).encode("utf-8")  # everything accepted is storable text
    return request


FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(frame_dicts().map(encode))
def test_parser_on_random_frames(text: str) -> None:
    check_parse(text)


@FUZZ
@given(mutated_text())
def test_parser_on_mutated_frames(text: str) -> None:
    check_parse(text)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.binary().map(lambda b: b.decode("latin-1")), json_values.map(encode)))
def test_parser_on_arbitrary_text(text: str) -> None:
    check_parse(text)


def test_parser_at_every_bound() -> None:
    """Each field of each frame, alone at the edges of its bounds and with each nasty value, in an otherwise valid
    frame: the oracle and the parser must agree on every one (random frames rarely break exactly one rule)."""
    checked = 0
    for kind, rules in ORACLE_RULES.items():
        valid = {"type": kind, "id": "b", **{name: "x" for name, rule in rules.items() if rule.required}}
        for name in rules:
            for edge in [*boundary_values(name), *NASTY, True, 1.5, [], {}]:
                check_parse(encode({**valid, name: edge}))
                checked += 1
        for rid in ["a" * 256, "a" * 257, 2**53 - 1, 2**53, -(2**53 - 1), -(2**53), *NASTY, True, 1.5, [], {}]:
            check_parse(encode({**valid, "id": rid}))
    assert checked > 500


def test_parser_on_pathological_json() -> None:
    for text in ("[" * 100_000, '{"a":' * 50_000, "1" * 10_000, '{"type":"ping","id":1e999}', '"\\ud800"'):
        check_parse(text)


# --- a live connection ----------------------------------------------------------------------------------------------


class LiveGateway:
    """A gateway and fake upstream on an event loop in a thread, so a synchronous hypothesis test can drive one
    WebSocket across hundreds of examples (the point: the same connection must survive all of them)."""

    def __init__(self, home: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="live-gateway", daemon=True)
        self.thread.start()
        self.sent = 0
        self.run(self._start(home))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def prepare(self, text: str) -> str:
        return text.replace(SESSION, self.session_id)

    async def _start(self, home: Path) -> None:
        self.fake = FakeAnthropic(api_key="test-key")
        self.fake.default = Reply(text="ok then", thinking=None)
        await self.fake.start()
        config = Settings(
            home=home,
            db_url=f"sqlite+aiosqlite:///{home / 'fuzz.db'}",
            anthropic_api_key="test-key",
            anthropic_base_url=self.fake.base_url,
            upstream_retry_base_s=0.01,
            upstream_retry_max_s=0.05,
            heartbeat_s=0,
            frames_per_second=0,  # a flood is the point here; rate limiting has its own test
            max_content_chars=MAX_CONTENT,
        )
        self.client: TestClient[Any, Any] = TestClient(TestServer(create_app(config)))
        await self.client.start_server()
        self.ws: ClientWebSocketResponse = await self.client.ws_connect("/gateway")
        self.session_id = await self._new_session()

    async def _new_session(self) -> str:
        self.session_model = "claude-sonnet-5-5"
        await self.ws.send_str(json.dumps({"type": "chat.send", "content": "a session to aim at"}))
        session_id = str((await self._recv())["sessionId"])
        while (await self._recv())["type"] not in TERMINAL:
            pass
        return session_id

    async def _recv(self) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=30)
        assert msg.type == WSMsgType.TEXT, f"connection ended: {msg.type} {msg.data!r}"
        frame = json.loads(msg.data)
        assert isinstance(frame, dict) and isinstance(frame.get("type"), str), frame
        if frame["type"] == "error":
            assert isinstance(frame["code"], str) and isinstance(frame["message"], str), frame
            assert isinstance(frame["retryable"], bool), frame
        return frame

    def exchange(self, text: str, request: Request | None) -> list[dict[str, Any]]:
        return self.run(self._exchange(text, request))

    async def _exchange(self, text: str, request: Request | None) -> list[dict[str, Any]]:
        """Send one frame; read its whole answer (a stream runs to its terminal frame); then prove nothing else
        follows by a ping that must be answered next."""
        await self.ws.send_str(text)
        streams = request is not None and request.type == "chat.send"
        frames = [await self._recv()]
        while streams and frames[-1]["type"] not in TERMINAL:
            frames.append(await self._recv())
        self.sent += 1
        for frame in frames:
            if frame["type"] == "chat.stream.start" and frame["sessionId"] == self.session_id:
                self.session_model = frame["model"]  # the session keeps the model it was last sent to
        if frames[-1]["type"] == "session.deleted" and frames[-1]["sessionId"] == self.session_id:
            self.session_id = await self._new_session()  # keep a live session to aim at
        sentinel = f"sentinel-{self.sent}"
        await self.ws.send_str(json.dumps({"type": "ping", "id": sentinel}))
        assert await self._recv() == {"type": "pong", "id": sentinel, "requestId": sentinel}
        return frames

    async def _health(self) -> dict[str, Any]:
        async with self.client.get("/healthz") as response:
            assert response.status == 200
            health: dict[str, Any] = await response.json()
            return health

    def health(self) -> dict[str, Any]:
        return self.run(self._health())

    async def _close(self) -> None:
        await self.ws.close()
        await self.client.close()
        await self.fake.close()

    def close(self) -> None:
        self.run(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def live(tmp_path: Path) -> Any:
    gateway = LiveGateway(tmp_path / "home")
    yield gateway
    gateway.close()


@settings(
    max_examples=300,
    deadline=None,
    # One gateway and one socket for every example, on purpose.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=live_frame_text)
def test_live_connection_answers_every_frame(live: LiveGateway, text: str) -> None:
    text = live.prepare(text)
    session_id, session_model = live.session_id, live.session_model  # as they were before this frame
    request = check_parse(text)
    frames = live.exchange(text, request)
    answer = frames[-1]
    if request is None:
        assert answer["type"] == "error" and answer["code"] in PARSER_ERRORS, answer
        return
    assert all(f["id"] == request.id for f in frames), frames  # every answer echoes the request's id
    if answer["type"] == "error":
        assert answer["code"] not in ("INTERNAL_ERROR", "PARSE_ERROR"), answer
    expected = expected_answer(request.type, request.fields, session_id, session_model)
    if expected is not None:
        assert answer.get("code", answer["type"]) == expected, (request, frames)
    assert live.health()["status"] == "ok"
