"""One streamed reply, folded from the API's events into the content blocks it returned, its usage, and what it
generated so far (for the estimate of a stream cut short, chat/spend.py)."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from gateway.billing.accounting import TokenUsage

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Reply:
    """Accumulates one streamed reply into the content blocks the API returned, thinking signatures included."""

    blocks: list[dict[str, Any]] = field(default_factory=list)
    usage: TokenUsage = field(default_factory=TokenUsage)
    stop_reason: str | None = None
    message_id: str | None = None
    finished: bool = False  # saw message_stop
    text_parts: list[str] = field(default_factory=list)
    # usage.server_tool_use: Anthropic's own tools run for this request (e.g. {"web_search_requests": 2}).
    server_tools: dict[str, int] = field(default_factory=dict)
    _tool_json: dict[int, list[str]] = field(default_factory=dict)
    # Our own id for this upstream request's usage row: its provisional row (from the first event) and its final row
    # are the same row (chat/spend.py).
    usage_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    # Everything generated so far as it streamed (text, thinking, tool input JSON), for the estimate of the output
    # tokens of a stream cut short; `counted` of its parts are already in `counted_tokens`.
    generated: list[str] = field(default_factory=list)
    counted: int = 0
    counted_tokens: int = 0
    usage_final: bool = False  # saw message_delta: the usage is Anthropic's final count
    ended: bool = False  # its end is being accounted: a provisional row not yet written is no longer needed
    estimated_output: int | None = None  # set for a stream cut short: output tokens estimated from `generated`

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def content(self, *, complete: bool) -> list[dict[str, Any]]:
        """Blocks for storage. An unfinished reply keeps only what can be replayed: text, and signed thinking."""
        if complete:
            return self.blocks
        out: list[dict[str, Any]] = []
        for block in self.blocks:
            if block["type"] == "text" and block["text"]:
                out.append(block)
            elif block["type"] == "thinking" and block.get("signature"):
                out.append(block)
        return out

    @property
    def tool_uses(self) -> list[dict[str, Any]]:
        """The calls the model made in this reply (client-side tools; server tools run at Anthropic)."""
        return [block for block in self.blocks if block.get("type") == "tool_use"]

    def block(self, index: int) -> dict[str, Any] | None:
        return self.blocks[index] if index < len(self.blocks) else None

    def feed(self, event: dict[str, Any]) -> tuple[str, str] | None:
        """Apply one event (its JSON, as the API sent it); returns ("text" | "thinking" | "tool_input", chunk) to
        relay. A tool_input chunk is a piece of a tool call's JSON input (not valid JSON alone)."""
        kind = event.get("type")
        if kind == "content_block_delta":
            delta, index = event["delta"], event["index"]
            block = self.blocks[index] if index < len(self.blocks) else None
            delta_type = delta.get("type")
            if delta_type == "text_delta":
                text: str = delta["text"]
                if block is not None:
                    block["text"] += text
                self.text_parts.append(text)
                self.generated.append(text)
                return ("text", text)
            if delta_type == "thinking_delta":
                thinking: str = delta["thinking"]
                if block is not None:
                    block["thinking"] += thinking
                self.generated.append(thinking)
                return ("thinking", thinking)
            if delta_type == "signature_delta" and block is not None:
                block["signature"] = block.get("signature", "") + delta["signature"]
            elif delta_type == "input_json_delta":
                self._tool_json.setdefault(index, []).append(delta["partial_json"])
                self.generated.append(delta["partial_json"])
                return ("tool_input", delta["partial_json"])
            return None
        if kind == "content_block_start":
            self._start_block(event["index"], event["content_block"])
        elif kind == "content_block_stop":
            index = event["index"]
            parts = self._tool_json.pop(index, None)
            if parts and index < len(self.blocks):
                try:
                    self.blocks[index]["input"] = json.loads("".join(parts))
                except ValueError:
                    log.warning("tool_use block %s had invalid JSON input", index)
        elif kind == "message_start":
            message = event["message"]
            self.message_id = message["id"]
            self.usage = TokenUsage.from_api(message.get("usage") or {})
            self._server_tools(message.get("usage"))
        elif kind == "message_delta":
            self.stop_reason = (event.get("delta") or {}).get("stop_reason")
            self.usage_final = True
            self.usage = self.usage.merged(TokenUsage.from_api(event.get("usage") or {}))
            self._server_tools(event.get("usage"))
        elif kind == "message_stop":
            self.finished = True
        return None

    def _server_tools(self, usage: Any) -> None:
        counts = usage.get("server_tool_use") if isinstance(usage, dict) else None
        if isinstance(counts, dict):  # cumulative, like the token counts
            self.server_tools = {k: v for k, v in counts.items() if isinstance(v, int) and not isinstance(v, bool)}

    def _start_block(self, index: int, block: dict[str, Any]) -> None:
        data = {k: v for k, v in block.items() if v is not None}
        if data.get("type") == "text":
            data = {"type": "text", "text": data.get("text", "")}
        elif data.get("type") == "thinking":
            data = {"type": "thinking", "thinking": data.get("thinking", ""), "signature": data.get("signature", "")}
        while len(self.blocks) < index:
            self.blocks.append({"type": "text", "text": ""})
        if index < len(self.blocks):
            self.blocks[index] = data
        else:
            self.blocks.append(data)
