"""JSON for client frames at a cost bounded per frame, whatever the frame holds.

`json.loads` costs about 0.1 ms per kilobyte of text, but several times more per value: a 4 MiB frame of tiny keys
(`{"k0":0,"k1":0,...}`, ~400,000 of them) took 171 ms on a quiet machine (465 ms loaded), all of it on the event
loop, where every other connection waits (issue 14). A real frame is a handful of fields, one of them perhaps a long
string. So frames up to SMALL_FRAME_CHARS go to `json.loads` (their cost is bounded by their size), and longer ones
to the small parser below, which reads strings with the standard library's C `scanstring` (as fast as `json.loads`
on a long string) and gives up after `max_values` values (1,024; a real frame has a few dozen) or `max_depth`
levels: a frame of 400,000 keys costs what 1,024 do.

Both accept exactly JSON as `json.loads` does (duplicate keys: the last wins), except NaN and Infinity, which are not
JSON and are refused.
"""

from __future__ import annotations

import json
import re
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any

SMALL_FRAME_CHARS = 16 * 1024
MAX_VALUES = 1024
MAX_DEPTH = 32
_SPACE = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"(-?(?:0|[1-9][0-9]*))(\.[0-9]+)?([eE][-+]?[0-9]+)?")


class FrameTooComplex(ValueError):
    """Valid JSON, perhaps, but with more values or deeper nesting than any frame of the protocol has."""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def load_frame_json(text: str, *, max_values: int = MAX_VALUES, max_depth: int = MAX_DEPTH) -> Any:
    """One frame's JSON. ValueError (json.JSONDecodeError for bad syntax, FrameTooComplex for too many values or
    levels); never RecursionError."""
    if len(text) <= SMALL_FRAME_CHARS:
        try:
            value = json.loads(text, parse_constant=_no_constant)
        except RecursionError:
            raise FrameTooComplex(f"nested deeper than {max_depth} levels") from None
        # The same limits for every frame; a text this short holds too few values to need the walk.
        if len(text) > 2 * max_values or max_depth < len(text) // 2:
            _check_limits(value, max_values, max_depth)
        return value
    return _Parser(text, max_values, max_depth).document()


def _check_limits(value: Any, max_values: int, max_depth: int) -> None:
    """What the bounded parser would refuse, checked on a parsed (small) value; iterative, so depth costs no stack."""
    seen = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > max_values:
            raise FrameTooComplex(f"more than {max_values} JSON values")
        if isinstance(item, dict | list):
            if depth + 1 > max_depth:
                raise FrameTooComplex(f"nested deeper than {max_depth} levels")
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))


class _Parser:
    def __init__(self, text: str, max_values: int, max_depth: int) -> None:
        self.text = text
        self.values_left = max_values
        self.max_values = max_values
        self.max_depth = max_depth

    def document(self) -> Any:
        value, end = self.value(self.skip(0), 0)
        end = self.skip(end)
        if end != len(self.text):
            raise self.error("Extra data", end)
        return value

    def skip(self, pos: int) -> int:
        match = _SPACE.match(self.text, pos)
        return match.end() if match else pos

    def error(self, message: str, pos: int) -> json.JSONDecodeError:
        return json.JSONDecodeError(message, self.text, pos)

    def value(self, pos: int, depth: int) -> tuple[Any, int]:
        self.values_left -= 1
        if self.values_left < 0:
            raise FrameTooComplex(f"more than {self.max_values} JSON values")
        text = self.text
        char = text[pos : pos + 1]
        if char == '"':
            found: tuple[str, int] = scanstring(text, pos + 1, True)
            return found
        if char == "{":
            return self.object(pos + 1, depth + 1)
        if char == "[":
            return self.array(pos + 1, depth + 1)
        for word, meaning in (("null", None), ("true", True), ("false", False)):
            if text.startswith(word, pos):
                return meaning, pos + len(word)
        for word in ("NaN", "Infinity", "-Infinity"):
            if text.startswith(word, pos):
                raise ValueError(f"{word} is not valid JSON")
        number = _NUMBER.match(text, pos)
        if number is None:
            raise self.error("Expecting value", pos)
        integer, fraction, exponent = number.groups()
        if fraction or exponent:
            return float(integer + (fraction or "") + (exponent or "")), number.end()
        return int(integer), number.end()

    def object(self, pos: int, depth: int) -> tuple[dict[str, Any], int]:
        self.check_depth(depth)
        result: dict[str, Any] = {}
        pos = self.skip(pos)
        if self.text[pos : pos + 1] == "}":
            return result, pos + 1
        while True:
            if self.text[pos : pos + 1] != '"':
                raise self.error("Expecting property name enclosed in double quotes", pos)
            key, pos = scanstring(self.text, pos + 1, True)
            pos = self.skip(pos)
            if self.text[pos : pos + 1] != ":":
                raise self.error("Expecting ':' delimiter", pos)
            result[key], pos = self.value(self.skip(pos + 1), depth)
            pos = self.skip(pos)
            char = self.text[pos : pos + 1]
            if char == "}":
                return result, pos + 1
            if char != ",":
                raise self.error("Expecting ',' delimiter", pos)
            pos = self.skip(pos + 1)

    def array(self, pos: int, depth: int) -> tuple[list[Any], int]:
        self.check_depth(depth)
        result: list[Any] = []
        pos = self.skip(pos)
        if self.text[pos : pos + 1] == "]":
            return result, pos + 1
        while True:
            item, pos = self.value(pos, depth)
            result.append(item)
            pos = self.skip(pos)
            char = self.text[pos : pos + 1]
            if char == "]":
                return result, pos + 1
            if char != ",":
                raise self.error("Expecting ',' delimiter", pos)
            pos = self.skip(pos + 1)

    def check_depth(self, depth: int) -> None:
        if depth > self.max_depth:
            raise FrameTooComplex(f"nested deeper than {self.max_depth} levels")
