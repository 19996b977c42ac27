"""Prompt caching as the Messages API does it, close enough to count cache reads and writes in tests and benchmarks
(tests/fake_anthropic.py uses it when `FakeAnthropic.prompt_cache` is on).

The prompt is a run of blocks in the API's order: tools, system blocks, then each message's content blocks. A block
with `cache_control` is a breakpoint: the prefix ending there is written to the cache. A later request reads the
longest cached prefix it finds by looking back from each of its breakpoints at most 20 blocks (the API's lookback);
what lies between that and its last breakpoint is written; the rest is plain input. Tokens are bytes of compact JSON
over 4, block by block. Not modelled: lifetimes, the minimum cacheable length, tool_choice and thinking rules.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

LOOKBACK_BLOCKS = 20


@dataclass(frozen=True, slots=True)
class CacheUsage:
    input_tokens: int
    cache_read: int
    cache_write: int


def _blocks(body: dict[str, Any]) -> list[tuple[str, bool]]:
    """(the block as compact JSON without its marker, whether it carries one), in prompt order."""
    found: list[tuple[str, bool]] = []

    def add(prefix: str, block: Any) -> None:
        marked = isinstance(block, dict) and "cache_control" in block
        if marked:
            block = {k: v for k, v in block.items() if k != "cache_control"}
        found.append((prefix + json.dumps(block, separators=(",", ":"), sort_keys=True), marked))

    for tool in body.get("tools") or []:
        add("tool:", tool)
    system = body.get("system")
    for block in [{"type": "text", "text": system}] if isinstance(system, str) else system or []:
        add("system:", block)
    for message in body.get("messages") or []:
        content = message.get("content")
        for block in [{"type": "text", "text": content}] if isinstance(content, str) else content or []:
            add(f"{message.get('role')}:", block)
    return found


@dataclass
class PromptCache:
    entries: set[str] = field(default_factory=set)  # prefix digests (model included) written so far

    def use(self, body: dict[str, Any]) -> CacheUsage:
        """Read and write the cache for one request; its prompt's input, cache read and cache write tokens."""
        blocks = _blocks(body)
        digests: list[str] = []
        sizes: list[int] = []
        running = hashlib.sha256(str(body.get("model")).encode())
        total = 0
        for text, _ in blocks:
            running.update(text.encode())
            digests.append(running.copy().hexdigest())
            total += max(1, len(text) // 4)
            sizes.append(total)
        marks = [i for i, (_, marked) in enumerate(blocks) if marked]
        read = 0
        for mark in marks:
            for i in range(mark, max(-1, mark - LOOKBACK_BLOCKS - 1), -1):
                if digests[i] in self.entries:
                    read = max(read, sizes[i])
                    break
        write = 0
        if marks and digests[marks[-1]] not in self.entries:
            write = sizes[marks[-1]] - read
        for mark in marks:
            self.entries.add(digests[mark])
        return CacheUsage(max(1, total - read - write), read, write)
