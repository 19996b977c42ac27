"""One chat turn's life: the `Turn` (lock the session, persist the user turn, call upstream, relay deltas, end with
exactly one terminal frame), its ending (`turn_end`: save and account for the reply however the stream ended), its
frames, the upstream client (`upstream`, the anthropic SDK), checkpoints, recovery after a crash, and the
one-stream-per-session locks (in process for SQLite, advisory locks for PostgreSQL). `Services` bundles the
long-lived pieces a process shares; `metrics` records what turns do.

It may import `gateway.context`, `gateway.billing`, `gateway.store` and the shared bottom (settings, errors,
protocol); never `gateway.server` or the CLI.
"""
