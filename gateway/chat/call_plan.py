"""Planning a step's tool calls before anything runs: which executor and policy each gets, and which are refused at
once (a bound was hit, no such tool, the repeat guard, a `deny` policy), with the result the model then reads."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gateway.context.tool_config import ToolLimits
from gateway.store.chats import new_id
from gateway.tools.base import Content, OfferedTool, Toolbox

from .step_frames import StepIds

DECLINED = "The user declined this call; it did not run."
# What an open call's result says when the turn stops it, by why it stopped: (not started yet, running).
STOPPED = {
    "cancelled": ("Not run: the user cancelled the turn.", "Cancelled by the user while running; outcome unknown."),
    "interrupted": (
        "Not run: the gateway shut down.",
        "Interrupted; outcome unknown: the gateway shut down while this tool was running.",
    ),
    "wall_clock": (
        "Not run: the turn reached its time limit.",
        "Stopped: the turn reached its time limit while this tool was running; outcome unknown.",
    ),
}


@dataclass(slots=True)
class Call:
    block: dict[str, Any]  # the tool_use block
    row_id: str
    position: int
    tool: OfferedTool | None
    status: str  # pending | approved | error | denied (what planning decided)
    result: Content | None = None
    is_error: bool = False
    decision: str | None = None
    expires_at: datetime | None = None
    deadline: float | None = None  # time.monotonic() when its approval expires (durations are not the clock's)
    started: float | None = None
    reported: bool = False  # its chat.tool.result frame was sent

    @property
    def executor(self) -> str:
        return self.tool.executor if self.tool is not None else "none"

    @property
    def policy(self) -> str:
        return self.tool.policy if self.tool is not None else "deny"


class CallPlanner:
    """A turn's calls so far, for the tool-call bound and the repeat guard."""

    def __init__(self, toolbox: Toolbox, limits: ToolLimits, session_id: str) -> None:
        self.toolbox = toolbox
        self.limits = limits
        self.session_id = session_id
        self.made = 0  # calls the model made this turn
        self.over_limit = False  # the tool-call bound was hit
        self._seen: Counter[str] = Counter()
        self.grants: set[str] = set()  # tools the user allowed for the whole session

    def plan(self, blocks: list[dict[str, Any]], refuse: str | None, now: datetime) -> list[Call]:
        """Decide what happens to each call before anything runs; `refuse` refuses them all (a bound was hit)."""
        calls: list[Call] = []
        for position, block in enumerate(blocks):
            name, tool = block["name"], self.toolbox.get(block["name"])
            self.made += 1
            key = name + "\0" + json.dumps(block.get("input"), sort_keys=True, ensure_ascii=False)
            self._seen[key] += 1
            call = Call(block, new_id(), position, tool, "error", is_error=True)
            if refuse is not None:
                call.result = refuse
            elif self.made > self.limits.max_tool_calls:
                self.over_limit = True
                call.result = f"Not run: this turn reached its limit of {self.limits.max_tool_calls} tool calls."
            elif tool is None:
                call.result = f"Not run: no tool named {name!r} is available."
            elif self._seen[key] > self.limits.repeat_limit:
                call.result = (
                    f"Not run: {name} was already called with exactly this input {self.limits.repeat_limit} times in "
                    "this turn. Repeating it will not help: change your approach or answer with what you have."
                )
            elif tool.policy == "deny":
                call.status, call.result = "denied", f"Not run: this agent's policy does not allow {name}."
            elif tool.policy == "allow" or name in self.grants:
                call.status, call.is_error = "approved", False
                call.decision = "allow_session" if tool.policy == "ask" else None
            else:
                call.status, call.is_error = "pending", False
                call.expires_at = now + timedelta(seconds=self.limits.approval_timeout_s)
                call.deadline = time.monotonic() + self.limits.approval_timeout_s
            calls.append(call)
        return calls

    def rows(self, calls: list[Call], ids: StepIds, message_id: str, result_message_id: str) -> list[dict[str, Any]]:
        return [
            {
                "id": c.row_id,
                "session_id": self.session_id,
                "message_id": message_id,
                "result_message_id": result_message_id,
                "tool_use_id": c.block["id"],
                "step": ids.step,
                "position": c.position,
                "name": c.block["name"],
                "input": c.block.get("input", {}),
                "executor": c.executor,
                "policy": c.policy,
                "status": c.status,
                "decision": c.decision,
                "result": c.result,
                "is_error": c.is_error,
                "expires_at": c.expires_at,
            }
            for c in calls
        ]
