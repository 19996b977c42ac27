"""The bytes of a request as sent upstream: the assembled parameters as compact JSON, exactly the JSON the inspector
measures, with `"stream":true`.

Encoded here rather than by the SDK: the SDK copies, transforms and encodes every message of every request (issue
15: ~10 ms for a 1,000-message session, on the event loop), while the turns a session kept from its earlier requests
(assembly_cache.py) are encoded once and then only added to.
"""

from __future__ import annotations

import json
from typing import Any

from .assembly import Assembled
from .assembly_cache import prefix_json
from .tokens import compact_json


def messages_json(assembled: Assembled) -> str:
    """compact_json(params["messages"]), from the kept turns' JSON where there is some."""
    messages = assembled.params["messages"]
    sections = {s.name: s for s in assembled.sections}
    summary, history = sections.get("summary"), sections.get("history")
    if history is None or history.prefix is None or summary is None:
        return compact_json(messages)
    head, turns = summary.content, history.content
    if (
        isinstance(head, str) or isinstance(turns, str) or len(head) + len(turns) != len(messages)
    ):  # not the assembled messages any more: encode what is there
        return compact_json(messages)
    prefix = history.prefix
    parts = [compact_json(turn) for turn in head]
    if prefix.turns:
        parts.append(prefix_json(prefix, turns))
    parts += [compact_json(turn) for turn in turns[prefix.turns :]]
    return "[" + ",".join(parts) + "]"


def request_body(assembled: Assembled) -> bytes:
    """The body of the streamed `POST /v1/messages` for `assembled`."""
    parts = []
    for name, value in assembled.params.items():
        encoded = messages_json(assembled) if name == "messages" else compact_json(value)
        parts.append(f"{json.dumps(name)}:{encoded}")
    parts.append('"stream":true')
    text = "{" + ",".join(parts) + "}"
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (pasted from a broken source) cannot be UTF-8: escape everything, as the SDK would.
        body: dict[str, Any] = {**assembled.params, "stream": True}
        return json.dumps(body, separators=(",", ":")).encode("ascii")
