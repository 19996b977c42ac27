"""What is sent to the model: the agent's workspace files (SYSTEM.md, MEMORY.md, skills, tools.json, agent.toml) and
their parsers, the one assembler (`assembly.assemble`) that builds the request for both a chat turn and the
inspector, token counting (tiktoken, calibrated per model) and the inspection report (bytes, tokens, cost per
section).

It may import `gateway.billing` (to price sections), `gateway.store` (models, calibration) and the shared bottom;
never `gateway.chat` or anything above.
"""
