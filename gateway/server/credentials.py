"""Who may use the gateway: the single gateway token (`AGENTSPACE_TOKEN` / `$AGENTSPACE_HOME/token`) or a named key
(`agentspace token create --name`), over the WebSocket and the HTTP API alike.

A gateway with neither accepts everyone (on loopback, as before keys existed) but a revoked key. Once it has either,
every client must present one of them. A named key is also who the request is accounted to: its usage rows name it
and its caps apply.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from gateway.store import KeyStore
from gateway.store.keys import KEY_PREFIX
from gateway.store.models import ApiKey

# `last_used_at` is written at most this often per key and process: every request writing it would serialize them.
TOUCH_EVERY_S = 60.0


def token_ok(expected: str | None, given: str | None) -> bool:
    """Constant-time, so response timing reveals nothing about how much of a guess was right."""
    if expected is None:
        return True
    if given is None:
        return False
    # surrogatepass: a header with undecodable bytes must be a plain mismatch, not an exception.
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True, slots=True)
class Verdict:
    accepted: bool
    key: ApiKey | None = None  # the named key presented, when it was one
    reason: str = ""  # why not, for the 401 / error frame


class Credentials:
    def __init__(self, token: str | None, keys: KeyStore) -> None:
        self._token = token
        self._keys = keys
        self._touched: dict[str, float] = {}

    async def required(self) -> bool:
        """Whether a client must present a credential: the gateway has a token, or at least one active key."""
        return self._token is not None or await self._keys.any_active()

    async def check(self, presented: str | None) -> Verdict:
        if presented:
            if self._token is not None and token_ok(self._token, presented):
                return Verdict(True)
            if presented.startswith(KEY_PREFIX):
                key = await self._keys.find(presented)
                if key is not None and key.revoked_at is None:
                    await self._touch(key)
                    return Verdict(True, key)
                if key is not None:  # refused even by an open gateway: someone meant this key to stop working
                    return Verdict(False, reason="this gateway key was revoked")
        if not await self.required():
            return Verdict(True)
        if not presented:
            return Verdict(False, reason="a gateway token or key is required")
        return Verdict(False, reason="wrong gateway token or key")

    async def _touch(self, key: ApiKey) -> None:
        now = time.monotonic()
        last = self._touched.get(key.id)
        if last is not None and now - last < TOUCH_EVERY_S:
            return
        self._touched[key.id] = now
        await self._keys.touch(key.id)
