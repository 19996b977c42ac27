"""The HTTP and WebSocket edge of the aiohttp app: routes (`handlers`), one `Connection` per socket (auth, limits,
frame dispatch, its one writer), the non-chat queries (`queries`: sessions, history, inspection, usage), logging set-up
and the Control UI's static files.

It owns everything that knows about sockets and HTTP. Frames are validated once here (by `gateway.protocol`) and
domain errors become error frames here. It may import `gateway.chat` and everything below it; nothing below imports
it. Handlers never touch SQL: they go through the store via the chat layer's `Services`.
"""
