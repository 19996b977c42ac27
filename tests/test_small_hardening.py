"""The smaller findings of issue 14, each as a user would meet it: forged log lines, a home readable by everyone, a
weak token, `synchronous` and its default, and frame JSON parsed at a bounded cost."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.cli import main
from gateway.cli.serve_cmd import run as serve
from gateway.frame_json import FrameTooComplex, _Parser, load_frame_json
from gateway.server.logs import TextFormatter
from gateway.settings import Settings, token_problem
from tests.conftest import Gateway, chat

STRONG = "s7Vq-2mXb_9LpZ0kR4tW8yN1cF6hJ3dA5eG"


async def test_a_request_id_with_a_newline_cannot_forge_a_log_line(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(TextFormatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        ws = await gateway.ws()
        forged = "t1\n2026-01-01 00:00:00,000 INFO gateway: admin logged in\r\x1b[2K"
        assert (await chat(ws, "hello", id=forged))[-1]["type"] == "chat.stream.end"
    finally:
        root.removeHandler(handler)
    text = "\n".join(lines)
    assert "admin logged in" in text  # it was logged...
    assert not any(line.startswith("2026-01-01") for line in text.splitlines())  # ...on its own line, escaped
    assert "\\x0a2026-01-01" in text and "\x1b" not in text


def test_a_fresh_home_is_private_and_a_wide_one_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    home = tmp_path / "home"
    assert main(["usage"]) == 0  # creates the database, as `serve` does
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "gateway.db").stat().st_mode) == 0o600
    for companion in ("gateway.db-wal", "gateway.db-shm"):
        if (home / companion).exists():
            assert stat.S_IMODE((home / companion).stat().st_mode) == 0o600
    os.chmod(home / "gateway.db", 0o644)
    from gateway.app import private_home

    os.chmod(home, 0o755)
    with caplog.at_level(logging.WARNING):
        private_home(home)
        assert main(["usage"]) == 0
    assert "open to other users (mode 755)" in caplog.text
    assert "readable by other users (mode 644)" in caplog.text


@pytest.mark.parametrize("weak", ["x", "secret", "correct-horse", "a" * 40, "abababababababababababababababab"])
def test_a_weak_token_is_refused_at_start(
    weak: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTSPACE_TOKEN", weak)
    assert token_problem(weak) is not None
    assert serve(argparse.Namespace(host=None, port=None, log_format=None)) == 2
    assert "too weak" in capsys.readouterr().err


def test_token_create_makes_tokens_that_pass_the_rule(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGENTSPACE_TOKEN", raising=False)
    assert token_problem(STRONG) is None
    for _ in range(20):
        assert main(["token", "create", "--force"]) == 0
        assert token_problem(capsys.readouterr().out.strip()) is None


@pytest.mark.parametrize(("configured", "pragma"), [(None, 2), ("NORMAL", 1), ("full", 2)])
async def test_synchronous_is_configurable_and_full_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, configured: str | None, pragma: int
) -> None:
    if configured is not None:
        monkeypatch.setenv("AGENTSPACE_SQLITE_SYNCHRONOUS", configured)
    settings = Settings.from_env()
    assert settings.sqlite_synchronous == (configured or "FULL").upper()
    from gateway.store.db import sqlite_pragmas_for

    connection = sqlite3.connect(tmp_path / "probe.db")
    sqlite_pragmas_for(settings.sqlite_synchronous)(connection, None)
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == pragma
    connection.close()


def test_an_unknown_synchronous_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTSPACE_SQLITE_SYNCHRONOUS", "OFF; DROP TABLE messages")
    with pytest.raises(ValueError, match="AGENTSPACE_SQLITE_SYNCHRONOUS"):
        Settings.from_env()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSON_VALUES, st.sampled_from([None, 0, 2]), st.sampled_from(["", " ", "\n\t "]))
def test_the_bounded_parser_reads_json_exactly_as_json_loads(value: object, indent: int | None, pad: str) -> None:
    text = pad + json.dumps(value, indent=indent, ensure_ascii=False) + pad
    assert _Parser(text, 10_000, 100).document() == json.loads(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='{}[]":,0123456789.eE-+ntrufalsNIy\\ \n', max_size=60))
def test_the_bounded_parser_refuses_what_json_loads_refuses(text: str) -> None:
    try:
        expected: object = json.loads(text, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
    except (ValueError, RecursionError):
        with pytest.raises(ValueError):
            _Parser(text, 10_000, 100).document()
    else:
        assert _Parser(text, 10_000, 100).document() == expected


def test_a_frame_of_tiny_keys_or_deep_nesting_is_too_complex() -> None:
    keys = "{" + ",".join(f'"k{n}":0' for n in range(400_000)) + "}"
    with pytest.raises(FrameTooComplex, match="more than 1024"):
        load_frame_json(keys)
    with pytest.raises(FrameTooComplex):
        load_frame_json("[" * 100_000 + "]" * 100_000)
    with pytest.raises(FrameTooComplex):
        load_frame_json("[" * 5_000 + "]" * 5_000)  # small enough for json.loads, which recurses too deep
    long_text = json.dumps({"type": "chat.send", "content": 'a "quoted" \\ line\n' * 100_000})
    assert load_frame_json(long_text) == json.loads(long_text)  # one long string is cheap and exact


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_short_and_long_frames_meet_the_same_limits(value: object) -> None:
    """Short frames go to json.loads and are checked after; long ones to the bounded parser: one rule for both."""
    text = json.dumps(value)

    def verdict(parse: Callable[[], object]) -> object:
        try:
            return parse()
        except FrameTooComplex:
            return "too complex"

    assert verdict(lambda: load_frame_json(text, max_values=20, max_depth=3)) == verdict(
        lambda: _Parser(text, 20, 3).document()
    )
