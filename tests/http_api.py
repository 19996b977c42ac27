"""Shared pieces for the HTTP API tests: a gateway with a named key, and the real Anthropic SDK pointed at it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anthropic
from sqlalchemy import text

from gateway.server.handlers import SERVICES
from gateway.settings import Settings
from gateway.store.db import create_engine
from gateway.store.keys import new_key
from tests.conftest import Gateway

Factory = Callable[[Settings], Awaitable[Gateway]]
MODEL = "claude-sonnet-5-5"


class Api:
    """A running gateway, a named key for it, and an SDK client using that key."""

    def __init__(self, gateway: Gateway, key: str, settings: Settings) -> None:
        self.gateway = gateway
        self.key = key
        self.settings = settings
        self.base_url = str(gateway.client.make_url("")).rstrip("/")
        self.sdk = self.client(key)

    def client(self, api_key: str, **options: Any) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(base_url=self.base_url, api_key=api_key, max_retries=0, **options)

    async def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        return await db_rows(self.settings.db_url, sql, **params)


async def db_rows(db_url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            return [tuple(r) for r in (await conn.execute(text(sql), params)).all()]
    finally:
        await engine.dispose()


async def make_api(factory: Factory, settings: Settings, **caps: int | None) -> Api:
    gateway = await factory(settings)
    key = new_key()
    store = gateway.app[SERVICES].store
    await store.keys.create("sdk-app", key, daily_cap=caps.get("daily_cap"), monthly_cap=caps.get("monthly_cap"))
    return Api(gateway, key, settings)


def user(text_: str) -> dict[str, Any]:
    return {"role": "user", "content": text_}


def assistant(content: Any) -> dict[str, Any]:
    """The reply as an SDK app appends it: the Message's content blocks, passed back as they came."""
    return {"role": "assistant", "content": content}
