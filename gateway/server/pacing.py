"""Fairness between connections: bytes cost every client, requests only a client that does not wait for answers.

Bytes: every frame's bytes are drawn from a per-connection bucket (`bytes_per_second`, `byte_burst` in reserve).
A connection in debt is not read until the debt is repaid, so a client sending more than its share is slowed by TCP
itself; its frames are neither refused nor lost (issue 14: two clients sending 4 MiB frames back to back held the
event loop 40 % of the time, and another client's ping went from 0.5 to 344 ms).

Requests: a client that sends its next request once the last is answered can only go as fast as the gateway answers,
and other connections' requests interleave with its own: it is never limited, at any request rate (issue 14: a batch
job was refused above 50 requests a second). A frame sent while earlier requests of the same connection are still
unanswered (pipelined) draws from a frame bucket; when that is empty the frame is refused unread with `RATE_LIMITED`
and `retryAfter` (the seconds until it would fit), except `chat.cancel`, which is always accepted.
"""

from __future__ import annotations

import time

from .frame_guard import Arrival


class TokenBucket:
    """`rate` units per second with `capacity` in reserve; refilled lazily, so idle sockets cost nothing."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate = rate
        self.capacity = float(capacity)
        self.tokens = float(capacity)
        self.stamp = time.monotonic()

    def wait(self, amount: float) -> float:
        """Seconds until `amount` is available (0: now). A disabled bucket (rate <= 0) never waits."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return max(0.0, (min(amount, self.capacity) - self.tokens) / self.rate)

    def take(self, amount: float) -> None:
        if self.rate > 0:
            self.tokens -= min(amount, self.capacity)

    def spend(self, amount: float) -> float:
        """Take `amount` even into debt; the seconds until the debt is repaid (0: none)."""
        if self.rate <= 0:
            return 0.0
        self.wait(0)  # refill up to now
        self.tokens -= amount
        return max(0.0, -self.tokens / self.rate)


class Pacer:
    def __init__(self, frames_per_second: float, frame_burst: int, bytes_per_second: int, byte_burst: int) -> None:
        self.frames = TokenBucket(frames_per_second, frame_burst)
        self.bytes = TokenBucket(bytes_per_second, byte_burst)

    def admit(self, arrival: Arrival) -> float | None:
        """None to go ahead; otherwise the seconds after which the frame would have been admitted."""
        if arrival.unanswered == 0:
            return None  # sent after every earlier request was answered: the client waited
        wait = self.frames.wait(1)
        if wait > 0:
            return wait
        self.frames.take(1)
        return None

    def pause_after(self, arrival: Arrival) -> float:
        """The frame's bytes are spent; the seconds this connection must not be read for (0: none)."""
        return self.bytes.spend(arrival.size)
