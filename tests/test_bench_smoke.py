"""The benchmark harness runs end to end, so it cannot rot unnoticed: `python -m bench --quick` brings up the fake
upstream, the gateway, the bare relay and the load generator as separate processes and runs every scenario, tiny.

Nothing here asserts speed (the targets are the benchmark's business): only that every scenario produced figures
for every target and that no turn, stream or query failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STREAMING = ("ttft1", "ttft50", "turns", "deltas")


@pytest.mark.bench_smoke
def test_quick_benchmark_runs_every_scenario_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "gateway vs" in proc.stdout  # the table was printed
    report = json.loads(out.read_text())
    scenarios = report["scenarios"]
    assert set(scenarios) == {*STREAMING, "messages", "idle", "queries", "history"}
    assert report["machine"]["nproc"] >= 1 and report["rows"]

    for key in STREAMING:
        clients = scenarios[key]["config"]["clients"]
        for target in ("direct", "bare", "gateway"):
            result = scenarios[key]["results"][target]
            assert result["errors"] == {}, (key, target, result)
            assert result["unfinished"] == 0 and result["stalled"] == 0, (key, target, result)
            assert result["turns_total"] >= clients, (key, target, result)
            assert result["deltas_total"] >= result["turns_total"], (key, target, result)

    # The SDK as the client: straight to the upstream, and through the gateway's HTTP API, beside its WebSocket.
    messages = scenarios["messages"]
    for target in ("direct", "gateway", "http"):
        result = messages["results"][target]
        assert result["errors"] == {} and result["unfinished"] == 0, (target, result)
        assert result["turns_total"] >= messages["config"]["clients"], (target, result)

    for target in ("bare", "gateway"):
        idle = scenarios["idle"]["results"][target]
        assert idle["pongs"] == idle["connections"], idle
        assert idle["streams_finished"] == idle["streaming"] and idle["stream_errors"] == {}, idle
        assert idle["rss_idle_kb"] > 0

    # A session's length against the first token: each length, direct and through the gateway, every turn done.
    history = scenarios["history"]
    for n in history["config"]["sizes"]:
        for target in ("direct", "gateway"):
            result = history["results"][f"{target}-{n}"]
            assert result["errors"] == {} and result["turns_total"] == history["config"]["turns"] + 1, (n, result)
            assert result["ttft_ms"]["n"] == history["config"]["turns"] and result["cpu_ms_per_turn"] >= 0

    queries = scenarios["queries"]
    runs = queries["config"]["runs"]
    assert any(name.startswith("context.inspect") for name in queries["results"])
    for name, result in queries["results"].items():
        assert result["errors"] == {} and result["n"] == runs, (name, result)


def test_agentspace_bench_hands_every_argument_to_the_harness(capfd: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    assert main(["bench", "--help"]) == 0
    out = capfd.readouterr().out
    assert "python -m bench" in out and "--quick" in out and "--db-url" in out


def test_other_commands_still_refuse_unknown_options() -> None:
    from gateway.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["prices", "--no-such-option"])
    assert exc.value.code == 2
