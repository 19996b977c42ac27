"""Who may connect: the gateway token (header or first `auth` frame), browser origins, and the loopback default."""

from __future__ import annotations

import argparse
import logging
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType

from gateway.cli import main
from gateway.cli.serve_cmd import run as serve
from gateway.server.connection import token_ok
from gateway.settings import Settings
from tests.conftest import Gateway, chat, recv, request, send

TOKEN = "correct-horse-battery-staple-0123456789"
Factory = Callable[[Settings], Awaitable[Gateway]]


@pytest.fixture
async def guarded(gateway_factory: Factory, settings: Settings) -> Gateway:
    # Long enough that no test's own auth frame misses it on a loaded machine; only the silent test waits it out.
    return await gateway_factory(settings.with_overrides(token=TOKEN, auth_timeout_s=1.0))


# --- the token itself ---------------------------------------------------------------------------------------------


def test_token_create_stores_a_strong_token_0600_and_prints_it_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGENTSPACE_TOKEN", raising=False)
    assert main(["token", "create"]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert len(token) >= 40 and "\n" not in token
    path = tmp_path / "home" / "token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == token
    assert token not in err  # printed once, on stdout only
    assert Settings.from_env().token == token
    # An existing token is not silently replaced (clients using it would be locked out).
    assert main(["token", "create"]) == 1
    assert capsys.readouterr().out == ""
    assert main(["token", "create", "--force"]) == 0
    assert capsys.readouterr().out.strip() not in ("", token)
    monkeypatch.setenv("AGENTSPACE_TOKEN", "from-the-environment")
    assert Settings.from_env().token == "from-the-environment"
    monkeypatch.delenv("AGENTSPACE_TOKEN")
    assert main(["token", "remove"]) == 0
    assert Settings.from_env().token is None


def _serve_args(host: str) -> argparse.Namespace:
    return argparse.Namespace(host=host, port=None, log_format=None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "gateway.example"])
def test_serve_refuses_non_loopback_bind_without_token(
    host: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGENTSPACE_TOKEN", raising=False)
    assert serve(_serve_args(host)) == 2
    assert "refusing to bind" in capsys.readouterr().err


def test_token_compare_is_exact() -> None:
    assert token_ok(None, None)  # no token configured: nothing to present
    assert token_ok(TOKEN, TOKEN)
    assert not token_ok(TOKEN, None)
    assert not token_ok(TOKEN, TOKEN[:-1])
    assert not token_ok(TOKEN, TOKEN + "x")
    assert not token_ok(TOKEN, "\udcff" + TOKEN)  # undecodable header bytes: a mismatch, not a crash


# --- presenting it -------------------------------------------------------------------------------------------------


async def test_bearer_header_lets_the_connection_in(guarded: Gateway) -> None:
    ws = await guarded.ws(headers={"Authorization": f"Bearer {TOKEN}"})
    frames = await chat(ws, "hello")
    assert frames[-1]["type"] == "chat.stream.end"
    await ws.close()


async def test_wrong_bearer_header_is_refused_before_upgrade(guarded: Gateway) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await guarded.ws(headers={"Authorization": "Bearer not-the-token"})
    assert refused.value.status == 401


async def test_auth_frame_first_lets_the_connection_in(guarded: Gateway) -> None:
    ws = await guarded.ws()
    answer = await request(ws, {"type": "auth", "id": "a", "token": TOKEN})
    assert answer == {"type": "auth.ok", "id": "a", "requestId": "a"}
    assert (await chat(ws, "hello"))[-1]["type"] == "chat.stream.end"
    await ws.close()


async def _closed_with(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    msg = await ws.receive(timeout=5)
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED), msg
    return ws.close_code


async def test_wrong_auth_frame_gets_an_error_then_1008(guarded: Gateway) -> None:
    ws = await guarded.ws()
    answer = await request(ws, {"type": "auth", "id": "a", "token": "guess"})
    assert answer["code"] == "UNAUTHORIZED" and answer["id"] == "a"
    assert await _closed_with(ws) == WSCloseCode.POLICY_VIOLATION


async def test_any_other_first_frame_is_refused_with_1008(guarded: Gateway) -> None:
    ws = await guarded.ws()
    answer = await request(ws, {"type": "session.list", "id": "s"})
    assert answer["code"] == "UNAUTHORIZED"
    assert await _closed_with(ws) == WSCloseCode.POLICY_VIOLATION


async def test_silent_connection_is_closed_after_auth_timeout(guarded: Gateway) -> None:
    ws = await guarded.ws()
    assert await _closed_with(ws) == WSCloseCode.POLICY_VIOLATION


async def test_tokens_never_reach_the_log(guarded: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    good = await guarded.ws(headers={"Authorization": f"Bearer {TOKEN}"})
    await chat(good, "hello")
    await good.close()
    framed = await guarded.ws()
    await request(framed, {"type": "auth", "token": TOKEN})
    await framed.close()
    wrong = await guarded.ws()
    await request(wrong, {"type": "auth", "token": "wrong-guess-0451"})
    await _closed_with(wrong)
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await guarded.ws(headers={"Authorization": "Bearer wrong-guess-0452"})
    assert caplog.records  # the log did run at DEBUG
    assert TOKEN not in caplog.text
    assert "wrong-guess" not in caplog.text


# --- browsers --------------------------------------------------------------------------------------------------------


async def test_foreign_origin_is_refused(gateway: Gateway) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gateway.ws(headers={"Origin": "https://evil.example"})
    assert refused.value.status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await gateway.ws(headers={"Origin": "null"})  # sandboxed iframes and file:// pages


async def test_own_origin_and_allowlisted_origins_work(gateway_factory: Factory, settings: Settings) -> None:
    gw = await gateway_factory(settings.with_overrides(allowed_origins=("https://app.example",)))
    host = f"{gw.client.host}:{gw.client.port}"
    for origin in (f"http://{host}", "https://app.example"):
        ws = await gw.ws(headers={"Origin": origin})
        assert (await request(ws, {"type": "ping", "id": 1}))["type"] == "pong"
        await ws.close()
    no_origin = await gw.ws()  # CLIs and SDKs send none
    assert (await request(no_origin, {"type": "ping"}))["type"] == "pong"
    await no_origin.close()


async def test_dns_rebinding_page_is_refused(gateway: Gateway) -> None:
    """evil.example rebound to 127.0.0.1 looks same-origin; its Host header betrays it."""
    port = gateway.client.port
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gateway.ws(headers={"Origin": f"http://evil.example:{port}", "Host": f"evil.example:{port}"})
    assert refused.value.status == 403
    ws = await gateway.ws(headers={"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"})
    await send(ws, {"type": "ping", "id": 2})
    assert (await recv(ws))["id"] == 2
    await ws.close()


def test_loopback_bind_needs_no_token(tmp_path: Path) -> None:
    settings = Settings.from_env({"AGENTSPACE_HOME": str(tmp_path)})
    assert settings.host == "127.0.0.1" and settings.token is None
