"""Where a turn waits for an answer that arrives as a client frame, on whichever connection: a client tool's result
(`chat.tool.result`) or an approval (`chat.tool.approve`). Keyed by the tool_use id; in this process only (an
approval is also a database row, which a turn polls, so an answer given through another process still arrives)."""

from __future__ import annotations

import asyncio
from typing import Any


class Waits:
    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[Any]] = {}

    def expect(self, key: str) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futures[key] = future
        return future

    def forget(self, key: str) -> None:
        self._futures.pop(key, None)

    def waiting(self, key: str) -> bool:
        future = self._futures.get(key)
        return future is not None and not future.done()

    def resolve(self, key: str, value: Any) -> bool:
        """Hand `value` to the turn waiting on `key`; False when none is (any more)."""
        future = self._futures.get(key)
        if future is None or future.done():
            return False
        future.set_result(value)
        return True
