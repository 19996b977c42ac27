"""Turns raw results into rows (figures side by side, the gateway's ratio, the target, whether it holds) and a table."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# Issue 7's targets (2 cores, SQLite in WAL mode).
ADDED_TTFT_P50_MS = 2.0
ADDED_TTFT_P99_MS = 10.0
MIN_RATIO_VS_BARE = 0.8
MAX_KB_PER_CONNECTION = 50.0
QUERY_P50_MS = {"usage.query": 20.0, "session.list": 20.0, "context.inspect": 30.0}
# Issue 15: a session's length adds at most this to the first token, and at 1,000 messages the gateway is no slower
# than the SDK sending them itself.
HISTORY_ADDED_P50_MS = 1.0
HISTORY_AT_OR_BELOW_DIRECT_FROM = 1000
# Issue 16: the HTTP API adds no more than the WebSocket path does (this much noise allowed on a loaded machine).
HTTP_VS_WS_SLACK_MS = 1.0


@dataclass
class Row:
    scenario: str
    metric: str
    direct: str = ""
    bare: str = ""
    gateway: str = ""
    versus: str = ""  # the gateway against its baseline: "+1.2 ms" or "0.91x bare"
    target: str = ""
    ok: bool | None = None  # None: shown for information, no target


def _num(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _errors(res: dict[str, Any]) -> int:
    return int(sum(res.get("errors", {}).values())) + int(res.get("unfinished", 0))


def _cpu_per_turn(res: dict[str, Any], process: str | None) -> str:
    """CPU ms per completed turn: of one process ("relay": the gateway or the bare relay), or of all of them."""
    cpu = res.get("cpu_s")
    turns = res.get("turns_total")
    if not cpu or not turns:
        return "-"
    seconds = sum(cpu.values()) if process is None else cpu.get(process)
    return "-" if seconds is None else _num(1000 * seconds / turns)


def _info(scenario: str, metric: str, values: list[str]) -> Row:
    """A row shown for information: one figure per target, no target to meet."""
    direct, bare, gateway = values
    return Row(scenario, metric, direct, bare, gateway)


def _stream_rows(key: str, sc: dict[str, Any]) -> list[Row]:
    r = sc["results"]
    d, b, g = r["direct"], r["bare"], r["gateway"]
    name = sc["name"]
    rows: list[Row] = []
    if sc["kind"] == "ttft":
        for pct, limit in (("p50", ADDED_TTFT_P50_MS), ("p99", ADDED_TTFT_P99_MS)):
            dv, bv, gv = d["ttft_ms"][pct], b["ttft_ms"][pct], g["ttft_ms"][pct]
            added = None if gv is None or dv is None else gv - dv
            rows.append(
                Row(
                    name,
                    f"first token {pct.upper()} ms",
                    _num(dv),
                    _num(bv),
                    _num(gv),
                    "-" if added is None else f"{added:+.2f} ms",
                    f"<= +{limit:g} ms vs direct",
                    None if added is None else added <= limit,
                )
            )
        rows.append(Row(name, "turns/s", _num(d["turns_per_s"]), _num(b["turns_per_s"]), _num(g["turns_per_s"])))
    elif sc["kind"] == "turns":
        ratio = g["turns_per_s"] / b["turns_per_s"] if b["turns_per_s"] else None
        rows.append(
            Row(
                name,
                "completed turns/s",
                _num(d["turns_per_s"]),
                _num(b["turns_per_s"]),
                _num(g["turns_per_s"]),
                "-" if ratio is None else f"{ratio:.2f}x bare",
                f">= {MIN_RATIO_VS_BARE}x bare",
                None if ratio is None else ratio >= MIN_RATIO_VS_BARE,
            )
        )
        rows.append(_info(name, "turn P50 ms", [_num(x["turn_ms"]["p50"]) for x in (d, b, g)]))
    else:
        ratio = g["deltas_per_s"] / b["deltas_per_s"] if b["deltas_per_s"] else None
        rows.append(
            Row(
                name,
                "deltas relayed/s",
                _num(d["deltas_per_s"]),
                _num(b["deltas_per_s"]),
                _num(g["deltas_per_s"]),
                "-" if ratio is None else f"{ratio:.2f}x bare",
                f">= {MIN_RATIO_VS_BARE}x bare",
                None if ratio is None else ratio >= MIN_RATIO_VS_BARE,
            )
        )
        rows.append(
            Row(
                name,
                f"stalled streams (pause > {sc['config']['stall_s']:g} s)",
                str(d["stalled"]),
                str(b["stalled"]),
                str(g["stalled"]),
                "",
                "0",
                g["stalled"] == 0,
            )
        )
        rows.append(_info(name, "longest pause ms", [_num(x["max_gap_ms"], 1) for x in (d, b, g)]))
        end_p99 = [_num(x.get("end_ms", {}).get("p99"), 1) for x in (d, b, g)]
        rows.append(_info(name, "last delta to end P99 ms", end_p99))
    rows.append(_info(name, "relay CPU ms/turn", [_cpu_per_turn(x, "relay") for x in (d, b, g)]))
    rows.append(_info(name, "all CPU ms/turn", [_cpu_per_turn(x, None) for x in (d, b, g)]))
    errors = [_errors(x) for x in (d, b, g)]
    rows.append(Row(name, "errors", str(errors[0]), str(errors[1]), str(errors[2]), "", "0", errors[2] == 0))
    return rows


def _idle_rows(sc: dict[str, Any]) -> list[Row]:
    b, g = sc["results"]["bare"], sc["results"]["gateway"]
    name = sc["name"]
    kb = g["kb_per_connection"]
    rows = [
        Row(
            name,
            "KB per idle connection",
            "",
            _num(b["kb_per_connection"], 1),
            _num(kb, 1),
            f"{kb / b['kb_per_connection']:.2f}x bare" if b["kb_per_connection"] > 0 else "",
            f"<= {MAX_KB_PER_CONNECTION:g} KB",
            kb <= MAX_KB_PER_CONNECTION,
        )
    ]
    for label, key in (("finished", "streams_finished"),):
        all_done = g[key] == g["streaming"] and not g["stream_errors"]
        rows.append(
            Row(
                name,
                f"{g['streaming']} streaming at once: {label}",
                "",
                f"{b[key]}/{b['streaming']}",
                f"{g[key]}/{g['streaming']}",
                "",
                "all, no errors",
                all_done,
            )
        )
    errors = [sum(x["stream_errors"].values()) for x in (b, g)]
    rows.append(Row(name, "stream errors", "", str(errors[0]), str(errors[1]), "", "0", errors[1] == 0))
    rows.append(Row(name, "streams' first token P50 ms", "", _num(b["ttft_ms"]["p50"]), _num(g["ttft_ms"]["p50"])))
    return rows


def _query_rows(sc: dict[str, Any]) -> list[Row]:
    rows = []
    seeded = sc["seeded"]
    label = f"{seeded['usage_rows']:,} usage rows, {seeded['sessions']:,} sessions"
    for name, res in sc["results"].items():
        limit = next((v for k, v in QUERY_P50_MS.items() if name.startswith(k)), None)
        p50 = res["p50"]
        failed = bool(res["errors"])
        rows.append(
            Row(
                label,
                f"{name} P50 ms (P99 {_num(res['p99'], 1)}, cold {_num(res['cold_ms'], 1)})",
                "",
                "",
                _num(p50),
                "",
                "" if limit is None else f"<= {limit:g} ms",
                None if limit is None or p50 is None else (p50 <= limit and not failed),
            )
        )
    return rows


def _messages_rows(sc: dict[str, Any]) -> list[Row]:
    """The SDK as the client: straight to the upstream (direct), through the gateway's WebSocket path (shown in the
    bare column: the gateway's own client there, the same conversations) and through its HTTP API (gateway)."""
    r = sc["results"]
    d, ws, http = r["direct"], r["gateway"], r["http"]
    name = f"{sc['name']} (bare column: WebSocket)"
    rows: list[Row] = []
    for pct in ("p50", "p99"):
        dv, wv, hv = d["ttft_ms"][pct], ws["ttft_ms"][pct], http["ttft_ms"][pct]
        if dv is None or wv is None or hv is None:
            rows.append(_info(name, f"first token {pct.upper()} ms", [_num(dv), _num(wv), _num(hv)]))
            continue
        added_http, added_ws = hv - dv, wv - dv
        rows.append(
            Row(
                name,
                f"first token {pct.upper()} ms",
                _num(dv),
                _num(wv),
                _num(hv),
                f"{added_http:+.2f} ms (WebSocket {added_ws:+.2f})",
                f"<= WebSocket's + {HTTP_VS_WS_SLACK_MS:g} ms" if pct == "p50" else "",
                added_http <= added_ws + HTTP_VS_WS_SLACK_MS if pct == "p50" else None,
            )
        )
    rows.append(_info(name, "turns/s", [_num(x["turns_per_s"]) for x in (d, ws, http)]))
    rows.append(_info(name, "relay CPU ms/turn", [_cpu_per_turn(x, "relay") for x in (d, ws, http)]))
    rows.append(_info(name, "all CPU ms/turn", [_cpu_per_turn(x, None) for x in (d, ws, http)]))
    errors = [_errors(x) for x in (d, ws, http)]
    rows.append(Row(name, "errors", *map(str, errors), "", "0", errors[1] == errors[2] == 0))
    return rows


def _history_rows(sc: dict[str, Any]) -> list[Row]:
    """Per length: first-token P50 (and P99) direct and through the gateway, and CPU per turn of each side."""
    r = sc["results"]
    rows: list[Row] = []
    for n in sc["config"]["sizes"]:
        d, g = r[f"direct-{n}"], r[f"gateway-{n}"]
        name = f"history @{n:,}"
        dv, gv = d["ttft_ms"]["p50"], g["ttft_ms"]["p50"]
        added = None if dv is None or gv is None else gv - dv
        limit = 0.0 if n >= HISTORY_AT_OR_BELOW_DIRECT_FROM else HISTORY_ADDED_P50_MS
        rows.append(
            Row(
                name,
                "first token P50 ms",
                _num(dv),
                "",
                _num(gv),
                "-" if added is None else f"{added:+.2f} ms",
                f"<= {limit:+g} ms vs direct",
                None if added is None else added <= limit,
            )
        )
        rows.append(Row(name, "first token P99 ms", _num(d["ttft_ms"]["p99"]), "", _num(g["ttft_ms"]["p99"])))
        cpu = [_num(d.get("cpu_ms_per_turn")), _num(g.get("cpu_ms_per_turn"))]
        rows.append(Row(name, "CPU ms/turn (direct: the SDK client's)", cpu[0], "", cpu[1]))
        errors = [_errors(x) for x in (d, g)]
        rows.append(Row(name, "errors", str(errors[0]), "", str(errors[1]), "", "0", errors[1] == 0))
    return rows


def build_rows(results: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for key, sc in results.items():
        if sc["kind"] == "messages":
            rows.extend(_messages_rows(sc))
        elif sc["kind"] in ("ttft", "turns", "deltas"):
            rows.extend(_stream_rows(key, sc))
        elif sc["kind"] == "idle":
            rows.extend(_idle_rows(sc))
        elif sc["kind"] == "queries":
            rows.extend(_query_rows(sc))
        elif sc["kind"] == "history":
            rows.extend(_history_rows(sc))
    return rows


def format_table(rows: list[Row]) -> str:
    headers = ("scenario", "metric", "direct", "bare", "gateway", "gateway vs", "target", "ok")
    cells = [
        (
            r.scenario,
            r.metric,
            r.direct,
            r.bare,
            r.gateway,
            r.versus,
            r.target,
            {True: "yes", False: "MISS", None: ""}[r.ok],
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = {2, 3, 4}

    def line(values: tuple[str, ...]) -> str:
        return " | ".join(
            v.rjust(w) if i in numeric else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))
        )

    out = [line(headers), "-|-".join("-" * w for w in widths)]
    out += [line(c) for c in cells]
    return "\n".join(out)


def markdown_table(rows: list[Row]) -> str:
    out = [
        "| scenario | metric | direct | bare | gateway | gateway vs | target | ok |",
        "|---|---|--:|--:|--:|---|---|---|",
    ]
    for r in rows:
        ok = {True: "yes", False: "**MISS**", None: ""}[r.ok]
        out.append(
            f"| {r.scenario} | {r.metric} | {r.direct} | {r.bare} | {r.gateway} | {r.versus} | {r.target} | {ok} |"
        )
    return "\n".join(out)


def rows_json(rows: list[Row]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
