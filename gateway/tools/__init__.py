"""What an agent can do: the tools a turn offers the model and the executors that run their calls.

`registry` builds a turn's `Toolbox` (built-ins, the agent's tools.json, its MCP servers' tools, the client's own
tools) with each tool's executor and approval policy (`policy`); `skills` and `memory` are the built-in executors,
`mcp` the MCP connections (the official `mcp` SDK), `waits` where a turn waits for an answer that arrives on some
connection (a client tool's result, an approval). The loop that calls them is `gateway.chat.tool_loop`.

It may import `gateway.context` (an agent's workspace and tool settings), `gateway.billing`, `gateway.store` and the
shared bottom; never `gateway.chat` or anything above.
"""
