"""Token counting with the offline cl100k encoding."""

from __future__ import annotations

import asyncio
import json
import time

from gateway.context.tokens import COUNTER_NAME, TokenCounter


def test_known_count() -> None:
    counter = TokenCounter()
    assert counter.name == COUNTER_NAME
    assert counter.count("hello world") == 2
    assert counter.count("") == 0


def test_second_count_is_a_cache_hit() -> None:
    counter = TokenCounter()
    first = counter.count("The quick brown fox")
    assert counter.cache_info() == (0, 1)
    assert counter.count("The quick brown fox") == first
    assert counter.cache_info() == (1, 1)


def test_special_token_text_is_plain_text() -> None:
    counter = TokenCounter()
    assert counter.count("<|endoftext|>") > 1  # split into ordinary tokens, not one special token, no error


def test_lone_surrogate_does_not_crash() -> None:
    counter = TokenCounter()
    assert counter.count("a\ud800b") >= 2
    assert counter.count("\udfff") >= 1
    # A surrogate pair spelled as two code points counts like the real character.
    assert counter.count("\ud83d\ude00") == counter.count("\U0001f600")


def test_count_json() -> None:
    counter = TokenCounter()
    value = {"role": "user", "content": [{"type": "text", "text": "héllo"}]}
    compact = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    assert counter.count_json(value) == counter.count(compact)
    assert counter.cache_info()[0] == 1  # count_json and count share one cache


def test_eviction_bounds_the_cache() -> None:
    counter = TokenCounter(max_entries=2)
    for text in ("one", "two", "three"):
        counter.count(text)
    counter.count("one")  # evicted as least recently used
    assert counter.cache_info() == (0, 4)
    counter.count("three")
    assert counter.cache_info() == (1, 4)


def test_byte_budget_skips_huge_strings() -> None:
    counter = TokenCounter(max_bytes=400)
    counter.count("x" * 100)  # ~150 bytes as a Python string: more than a quarter of the budget
    counter.count("x" * 100)
    assert counter.cache_info() == (0, 2)


def test_the_cache_is_bounded_in_bytes_not_characters() -> None:
    """Issue 14: bounded by characters, emoji drafts (4 bytes a character in memory) held 4x the intended memory."""
    budget = 1024 * 1024
    counter = TokenCounter(max_bytes=budget)
    for n in range(400):
        counter.count(f"{n}" + "😀" * 5000)  # 20 KB each in memory, 5,001 characters
    assert counter.cached_bytes <= budget
    assert counter.cached_bytes > budget // 2  # and it is used, not merely emptied


async def test_a_long_draft_is_counted_off_the_event_loop() -> None:
    """Issue 14: a 1 MB draft without spaces held the loop for 450 ms in the tokenizer. Now the loop keeps turning."""
    counter = TokenCounter()
    counter.warm()
    ticks = 0
    stop = asyncio.Event()

    async def tick() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    tokens = await counter.count_async("a" * 300_000)
    stop.set()
    await ticker
    assert tokens == counter.count("a" * 300_000) > 0
    assert ticks > 10  # the loop ran other work while the tokenizer did


def test_recounting_a_long_session_is_fast() -> None:
    counter = TokenCounter()
    messages = [{"role": "user" if i % 2 else "assistant", "content": f"message {i} " * 40} for i in range(1000)]
    counter.warm()
    start = time.perf_counter()
    first = sum(counter.count_json(m) for m in messages)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    second = sum(counter.count_json(m) for m in messages)
    warm = time.perf_counter() - start
    assert first == second
    assert counter.cache_info() == (1000, 1000)
    assert warm < cold
