"""Token counting with the offline cl100k encoding."""

from __future__ import annotations

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


def test_char_budget_skips_huge_strings() -> None:
    counter = TokenCounter(max_chars=10)
    counter.count("x" * 11)
    counter.count("x" * 11)
    assert counter.cache_info() == (0, 2)


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
