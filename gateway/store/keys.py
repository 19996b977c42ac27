"""Named gateway keys (`agentspace token create --name`): made once, kept only as a SHA-256, looked up by it.

A key is 32 random bytes: far beyond guessing, so a fast hash is the right one (as for GitHub's or Stripe's tokens);
slow password hashes exist for secrets people choose. Lookup is by the hash's unique index, so the time it takes says
nothing about how close a guess was.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from gateway.clock import SYSTEM_CLOCK, Clock

from .base import Database
from .chats import new_id
from .models import ApiKey, UsageRecord

KEY_PREFIX = "asg_"  # AgentSpace Gateway; tells a named key from the single token at a glance
KEY_BYTES = 32
PREFIX_CHARS = 12  # what `token list` shows of a key: "asg_" and 8 random characters

_K = cast(Table, ApiKey.__table__)
_U = cast(Table, UsageRecord.__table__)
_BY_HASH = select(_K).where(_K.c.key_hash == bindparam("key_hash"))
_ANY_ACTIVE = select(_K.c.id).where(_K.c.revoked_at.is_(None)).limit(1)
_TOUCH = update(_K).where(_K.c.id == bindparam("key_id")).values(last_used_at=bindparam("now"))


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyUsage:
    key: ApiKey
    spent: int  # nano-USD over the key's priced usage rows, all time
    requests: int


class KeyStore:
    def __init__(self, database: Database, clock: Clock = SYSTEM_CLOCK) -> None:
        self._db = database
        self._clock = clock
        self.changes = 0  # bumped by every change made through this store: what callers cached is stale

    async def create(self, name: str, key: str, *, daily_cap: int | None, monthly_cap: int | None) -> ApiKey:
        row = ApiKey(
            id=new_id(),
            name=name,
            prefix=key[:PREFIX_CHARS],
            key_hash=key_hash(key),
            created_at=self._clock.now(),
            daily_cap=daily_cap,
            monthly_cap=monthly_cap,
        )
        values = {c.key: getattr(row, c.key) for c in _K.c}
        try:
            await self._db.run(lambda conn: conn.execute(_K.insert(), values), write=True)
        except IntegrityError:
            raise ValueError(f"a key named {name!r} exists already (names stay taken after revoke)") from None
        self.changes += 1
        return row

    async def find(self, key: str) -> ApiKey | None:
        """The key row for a presented key (revoked ones too), or None."""

        def work(conn: Connection) -> ApiKey | None:
            found = conn.execute(_BY_HASH, {"key_hash": key_hash(key)}).first()
            return None if found is None else ApiKey(**found._asdict())

        return await self._db.run(work)

    async def any_active(self) -> bool:
        return await self._db.run(lambda conn: conn.execute(_ANY_ACTIVE).first() is not None)

    async def touch(self, key_id: str) -> None:
        params = {"key_id": key_id, "now": self._clock.now()}
        await self._db.run(lambda conn: conn.execute(_TOUCH, params), write=True)

    async def by_name(self, name: str) -> ApiKey | None:
        async with self._db.read() as db:
            return await db.scalar(select(ApiKey).where(ApiKey.name == name))

    async def listed(self) -> list[KeyUsage]:
        """Every key, oldest first, with its spend and request count from the usage rows that name it."""
        spend = (
            select(
                _U.c.key_id,
                func.coalesce(func.sum(_U.c.total_cost), 0).label("spent"),
                func.count().label("requests"),
            )
            .where(_U.c.key_id.is_not(None))
            .group_by(_U.c.key_id)
            .subquery()
        )
        query = (
            select(ApiKey, spend.c.spent, spend.c.requests)
            .outerjoin(spend, spend.c.key_id == ApiKey.id)
            .order_by(ApiKey.created_at, ApiKey.name)
        )
        async with self._db.read() as db:
            rows = (await db.execute(query)).all()
        return [KeyUsage(key, int(spent or 0), int(requests or 0)) for key, spent, requests in rows]

    async def capped(self) -> list[ApiKey]:
        """Active keys with a spend cap, for budget reports."""
        query = select(ApiKey).where(
            ApiKey.revoked_at.is_(None), (ApiKey.daily_cap.is_not(None)) | (ApiKey.monthly_cap.is_not(None))
        )
        async with self._db.read() as db:
            return list((await db.scalars(query.order_by(ApiKey.name))).all())

    async def revoke(self, name: str) -> bool:
        """Revoke an active key; False when no active key has that name. The row stays: usage rows name it."""
        active = (ApiKey.name == name) & ApiKey.revoked_at.is_(None)
        query = update(ApiKey).where(active).values(revoked_at=self._clock.now())
        self.changes += 1
        async with self._db.write() as db:
            return bool(getattr(await db.execute(query), "rowcount", 0))

    async def set_caps(self, name: str, *, daily_cap: int | None, monthly_cap: int | None) -> bool:
        query = update(ApiKey).where(ApiKey.name == name).values(daily_cap=daily_cap, monthly_cap=monthly_cap)
        self.changes += 1
        async with self._db.write() as db:
            return bool(getattr(await db.execute(query), "rowcount", 0))

    async def spent_since(self, key_id: str, since: datetime) -> int:
        """Priced spend of one key since a moment, nano-USD (for its budget), by the (key_id, created_at) index."""
        query = select(func.coalesce(func.sum(_U.c.total_cost), 0)).where(
            _U.c.key_id == key_id, _U.c.created_at >= since
        )
        async with self._db.read() as db:
            return int(await db.scalar(query) or 0)
