"""The requests of `GatewayClient` answered by one frame: sessions, history, usage, inspection, agents, approvals."""

from __future__ import annotations

from typing import Any

from .tool_types import Decision
from .types import Frame


class Queries:
    """Mixed into GatewayClient, which provides `request`."""

    async def request(self, frame: Frame, wait_s: float | None = None) -> Frame:
        raise NotImplementedError

    async def inspect(
        self,
        session_id: str,
        content: str | None = None,
        model: str | None = None,
        exact: bool = False,
        compact: bool = False,
    ) -> Frame:
        """`compact`: also preview a compaction (the frame's `compaction`), changing nothing."""
        return await self.request(
            _fields(
                type="context.inspect",
                sessionId=session_id,
                content=content,
                model=model,
                exact=exact or None,
                compact=compact or None,
            )
        )

    async def compact(
        self, session_id: str, instructions: str | None = None, keep_turns: int | None = None, wait_s: float = 600.0
    ) -> Frame:
        """Summarise the session's older part (`session.compact`); the `session.compacted` frame. The model writes the
        summary first, which can take a minute on a long session: hence the longer wait."""
        frame = _fields(type="session.compact", sessionId=session_id, instructions=instructions, keepTurns=keep_turns)
        return await self.request(frame, wait_s)

    async def usage(
        self,
        session_id: str | None = None,
        agent_id: str | None = None,
        model: str | None = None,
        since: str | None = None,
        until: str | None = None,
        group_by: str | None = None,
    ) -> Frame:
        return await self.request(
            _fields(
                type="usage.query",
                sessionId=session_id,
                agentId=agent_id,
                model=model,
                since=since,
                until=until,
                groupBy=group_by,
            )
        )

    async def sessions(self, agent_id: str | None = None, limit: int | None = None, cursor: str | None = None) -> Frame:
        return await self.request(_fields(type="session.list", agentId=agent_id, limit=limit, cursor=cursor))

    async def history(self, session_id: str, limit: int | None = None, before_seq: int | None = None) -> Frame:
        return await self.request(
            _fields(type="session.history", sessionId=session_id, limit=limit, beforeSeq=before_seq)
        )

    async def delete_session(self, session_id: str) -> Frame:
        return await self.request({"type": "session.delete", "sessionId": session_id})

    async def ping(self) -> Frame:
        return await self.request({"type": "ping"})

    async def agents(self) -> Frame:
        """`agent.list`: the agents a chat may name, each with the model a new session uses."""
        return await self.request({"type": "agent.list"})

    async def pending(self, session_id: str | None = None) -> Frame:
        """`session.pending`: the approvals waiting for an answer, in one session or in all."""
        return await self.request(_fields(type="session.pending", sessionId=session_id))

    async def approve(self, tool_use_id: str, decision: Decision, session_id: str | None = None) -> Frame:
        """Answer an approval request by its call's id, e.g. one found with `pending()` after a reconnect (this
        connection then receives the rest of that turn's frames, which no ChatStream here reads)."""
        return await self.request(
            _fields(type="chat.tool.approve", toolUseId=tool_use_id, decision=decision, sessionId=session_id)
        )


def _fields(**values: Any) -> Frame:
    """A frame without its unset (None) fields."""
    return {k: v for k, v in values.items() if v is not None}
