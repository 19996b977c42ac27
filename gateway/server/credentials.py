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
# How long this process trusts what it read of the keys: whether any is active, and a presented key's row. A key made
# or revoked by `agentspace token` (another process) takes effect within this; a request pays no database round trip
# for its credential meanwhile.
KEYS_FRESH_S = 1.0


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
        self._any_active: tuple[float, bool] | None = None
        self._found: dict[str, tuple[float, ApiKey | None]] = {}
        self._seen_changes = keys.changes

    async def required(self) -> bool:
        """Whether a client must present a credential: the gateway has a token, or at least one active key."""
        if self._token is not None:
            return True
        self._forget_if_changed()
        now = time.monotonic()
        if self._any_active is None or now - self._any_active[0] > KEYS_FRESH_S:
            self._any_active = (now, await self._keys.any_active())
        return self._any_active[1]

    def _forget_if_changed(self) -> None:
        """Keys changed through this process's own store take effect at once."""
        if self._keys.changes != self._seen_changes:
            self._seen_changes = self._keys.changes
            self._any_active = None
            self._found.clear()

    async def _find(self, presented: str) -> ApiKey | None:
        self._forget_if_changed()
        now = time.monotonic()
        known = self._found.get(presented)
        if known is not None and now - known[0] <= KEYS_FRESH_S:
            return known[1]
        if len(self._found) > 1000:  # guesses must not grow the memory
            self._found.clear()
        key = await self._keys.find(presented)
        self._found[presented] = (now, key)
        return key

    async def check(self, presented: str | None) -> Verdict:
        if presented:
            if self._token is not None and token_ok(self._token, presented):
                return Verdict(True)
            if presented.startswith(KEY_PREFIX):
                key = await self._find(presented)
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
