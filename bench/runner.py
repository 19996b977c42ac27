"""Runs a plan: brings up the processes each scenario needs, drives the load generator, collects results.

Full runs give every scenario fresh processes (a fresh database, a fresh heap for the memory figure); `--quick`
starts one set and runs everything on it, which is what makes it take seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import profile

from .procs import (
    Proc,
    UpstreamConfig,
    cpu_seconds,
    fake_url,
    spawn,
    start_bare,
    start_fake,
    start_gateway,
    stopped_on_failure,
    tree_cpu_seconds,
)
from .scenarios import HistoryScenario, IdleScenario, Plan, QueryScenario, StreamScenario

LOAD_REPLY_GRACE_S = 180.0
SEED_TIMEOUT_S = 1800.0


class LoadGen:
    """The load generator process, driven one JSON command at a time."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, log_dir: Path) -> LoadGen:
        proc = await spawn(
            "loadgen",
            [sys.executable, "-m", "bench.load"],
            log_dir,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def run(self, cmd: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        p = self.proc.proc
        assert p.stdin is not None and p.stdout is not None
        self.proc.check_alive()
        p.stdin.write((json.dumps(cmd) + "\n").encode())
        await p.stdin.drain()
        try:
            line = await asyncio.wait_for(p.stdout.readline(), timeout_s)
        except TimeoutError:
            raise RuntimeError(f"the load generator did not answer within {timeout_s:.0f} s") from None
        if not line:
            raise RuntimeError(f"the load generator exited:\n{self.proc.log_tail()}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise RuntimeError(f"load generator: {reply['error']}\n{self.proc.log_tail()}")
        result: dict[str, Any] = reply["result"]
        return result

    async def stop(self) -> None:
        p = self.proc.proc
        if p.stdin is not None and not p.stdin.is_closing():
            p.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(p.wait(), 10)
        await self.proc.stop()


@contextlib.asynccontextmanager
async def scratch_database(server_url: str | None, home: Path, serial: int) -> AsyncIterator[str]:
    """SQLite: a file in the stack's own home. PostgreSQL: a database created on that server and dropped after."""
    if server_url is None:
        yield f"sqlite+aiosqlite:///{home / 'gateway.db'}"  # the gateway's own default for this home
        return
    # Imported here: the orchestrator stays light (it starts fast and leaves the CPU to the processes it measures).
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    url = make_url(server_url)
    name = f"agentspace_bench_{os.getpid()}_{serial}"
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def in_scratch(
    prefix: str, server_url: str | None, measure: Callable[[Path, Path, str], Awaitable[None]]
) -> None:
    """`measure(work, home, db_url)` in a fresh folder (a gateway home inside it) and a database of its own: on
    PostgreSQL one created on `server_url` and dropped after, never the database the URL names, which may hold
    someone's data (the one-scenario tools: cpu_profile, phases)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    home = work / "home"
    home.mkdir()
    async with scratch_database(server_url, home, 0) as db_url:
        await measure(work, home, db_url)


@dataclass
class Stack:
    fake: Proc | None
    bare: Proc | None
    gateway: Proc | None

    async def stop(self) -> None:
        for p in (self.gateway, self.bare, self.fake):
            if p is not None:
                await p.stop()

    def check_alive(self) -> None:
        for p in (self.gateway, self.bare, self.fake):
            if p is not None:
                p.check_alive()


class Runner:
    def __init__(
        self, plan: Plan, db_url: str | None, work: Path, log: Callable[[str], None], profile_dir: Path | None = None
    ) -> None:
        self.plan = plan
        self.profile_dir = profile_dir
        self.log = log
        self.db_url = db_url
        self.work = work
        self._serial = 0

    def _dir(self, label: str) -> Path:
        self._serial += 1
        path = self.work / f"{self._serial:02d}-{label}"
        path.mkdir(parents=True)
        return path

    @contextlib.asynccontextmanager
    async def stack(
        self,
        label: str,
        upstream: UpstreamConfig | None,
        bare: bool,
        query: QueryScenario | None = None,
        history: tuple[int, ...] = (),
    ) -> AsyncIterator[tuple[Stack, dict[str, Any] | None]]:
        """Fake upstream (if any), bare relay (if asked) and a gateway on a fresh, optionally seeded, database."""
        folder = self._dir(label)
        home = folder / "home"
        home.mkdir()
        async with scratch_database(self.db_url, home, self._serial) as db_url:
            stack = Stack(None, None, None)
            # Everything that can start at once does: the seed must finish before the gateway opens the database.
            upstream_url = fake_url() if upstream is not None else "http://127.0.0.1:9"
            tasks: list[asyncio.Task[Any]] = []
            try:
                seeding = None
                if query is not None or history:
                    seeding = asyncio.create_task(seed(db_url, home, query, folder, history))
                fake_task = asyncio.create_task(start_fake(upstream, upstream_url, folder)) if upstream else None
                bare_task = asyncio.create_task(start_bare(upstream_url, folder)) if bare else None
                tasks = [t for t in (seeding, fake_task, bare_task) if t is not None]
                seeded = await seeding if seeding is not None else None
                gateway_db = None if self.db_url is None else db_url
                stack.gateway = await start_gateway(home, upstream_url, gateway_db, folder, workers=self.plan.workers)
                stack.fake = await fake_task if fake_task is not None else None
                stack.bare = await bare_task if bare_task is not None else None
                yield stack, seeded
            finally:
                # A start that failed must not leave its siblings running.
                for task in tasks:
                    if not task.done():
                        task.cancel()
                for result in await asyncio.gather(*tasks, return_exceptions=True):
                    if isinstance(result, Proc) and result not in (stack.fake, stack.bare, stack.gateway):
                        await result.stop()
                await stack.stop()


async def seed(
    db_url: str, home: Path, q: QueryScenario | None, log_dir: Path, history: tuple[int, ...] = ()
) -> dict[str, Any]:
    """`python -m bench.seed` in its own process; its last output is the JSON of what it made."""
    sessions, usage, messages = (q.sessions, q.usage_rows, q.long_session_messages) if q is not None else (0, 0, 0)
    argv = [sys.executable, "-m", "bench.seed", "--db-url", db_url, "--home", str(home), "--sessions", str(sessions)]
    argv += ["--usage", str(usage), "--messages", str(messages), "--history", ",".join(map(str, history))]
    p = await spawn("seed", argv, log_dir, stdout=asyncio.subprocess.PIPE)
    async with stopped_on_failure(p):
        out, _ = await asyncio.wait_for(p.proc.communicate(), SEED_TIMEOUT_S)
    if p.proc.returncode != 0:
        raise RuntimeError(f"seeding failed:\n{p.log_tail()}")
    seeded: dict[str, Any] = json.loads(out)
    return seeded


async def run_stream(
    load: LoadGen, stack: Stack, sc: StreamScenario, log: Callable[[str], None], profile_dir: Path | None = None
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for target in sc.targets:
        log(f"bench:   {sc.name} -> {target}")
        proc = {"direct": stack.fake, "bare": stack.bare, "gateway": stack.gateway, "http": stack.gateway}[target]
        assert proc is not None
        # The HTTP API is on the gateway's port: its SDK client takes the base URL, as it would the API's.
        url = proc.url.replace("ws://", "http://").removesuffix("/gateway") if target == "http" else proc.url
        cmd = {
            "op": "stream",
            "target": target,
            "url": url,
            "clients": sc.clients,
            "warmup_s": sc.warmup_s,
            "duration_s": sc.duration_s,
            "turns_per_session": sc.turns_per_session,
            "stall_s": sc.stall_s,
        }
        spy = None
        if profile_dir is not None and target != "direct":
            spy = await profile.start(proc.pid, profile_dir / f"{sc.key}-{target}.raw", profile_dir)
        # CPU each process spent on the whole run (warm-up included), so a rate can be read as "where the cores went".
        measured = {"relay": proc if target != "direct" else None, "upstream": stack.fake, "load": load.proc}
        cpu_before = {k: cpu_seconds(p.pid) for k, p in measured.items() if p is not None}
        # A gateway with --workers is a parent and its workers: "relay" is all of them, each also listed.
        relay_before = tree_cpu_seconds(proc.pid) if target != "direct" else {}
        try:
            results[target] = await load.run(cmd, sc.warmup_s + sc.duration_s + LOAD_REPLY_GRACE_S)
            cpu = {k: round(cpu_seconds(p.pid) - cpu_before[k], 2) for k, p in measured.items() if p is not None}
            if relay_before:
                after = tree_cpu_seconds(proc.pid)
                each = {pid: round(after[pid] - relay_before.get(pid, 0.0), 2) for pid in after}
                cpu["relay"] = round(sum(each.values()), 2)
                if len(each) > 1:
                    results[target]["cpu_relay_processes_s"] = each
            results[target]["cpu_s"] = cpu
        finally:
            if spy is not None:
                await profile.stop(spy)
        if spy is not None and profile_dir is not None:
            raw = profile_dir / f"{sc.key}-{target}.raw"
            summary = profile.summarize(raw)
            (profile_dir / f"{sc.key}-{target}.txt").write_text(summary + "\n")
            log(f"bench:   profile of the {target} relay: {raw} (summary beside it)")
        stack.check_alive()
    return {"kind": sc.kind, "name": sc.name, "config": asdict(sc), "results": results}


async def run_idle(load: LoadGen, stack: Stack, sc: IdleScenario) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for target, proc in (("bare", stack.bare), ("gateway", stack.gateway)):
        assert proc is not None
        cmd = {
            "op": "idle",
            "url": proc.url,
            "pid": proc.pid,
            "connections": sc.connections,
            "streaming": sc.streaming,
            "settle_s": sc.settle_s,
        }
        results[target] = await load.run(cmd, 2 * LOAD_REPLY_GRACE_S)
        stack.check_alive()
    return {"kind": "idle", "name": sc.name, "config": asdict(sc), "results": results}


def query_requests(seeded: dict[str, Any]) -> list[dict[str, Any]]:
    month_ago = (datetime.now(UTC) - timedelta(days=30)).date().isoformat()
    agent = seeded["agents"][min(2, len(seeded["agents"]) - 1)]
    reqs: list[dict[str, Any]] = [
        {"name": "usage.query all time", "frame": {"type": "usage.query"}},
        {"name": "usage.query 30 days by day", "frame": {"type": "usage.query", "since": month_ago, "groupBy": "day"}},
        {
            "name": "usage.query one agent by model",
            "frame": {"type": "usage.query", "agentId": agent, "groupBy": "model"},
        },
        {"name": "session.list first page", "frame": {"type": "session.list", "limit": 50}},
        {"name": "session.list one agent", "frame": {"type": "session.list", "agentId": agent, "limit": 50}},
    ]
    if seeded["sample_session_id"] is not None:
        frame = {"type": "usage.query", "sessionId": seeded["sample_session_id"]}
        reqs.insert(3, {"name": "usage.query one session", "frame": frame})
    if seeded["long_session_id"] is not None:
        n = seeded["long_session_messages"]
        frame = {"type": "context.inspect", "sessionId": seeded["long_session_id"]}
        reqs.append({"name": f"context.inspect {n} messages", "frame": frame})
        draft = {**frame, "content": "A draft of the next question."}
        reqs.append({"name": f"context.inspect {n} messages + draft", "frame": draft})
    return reqs


async def run_history(load: LoadGen, stack: Stack, sc: HistoryScenario, log: Callable[[str], None]) -> dict[str, Any]:
    """Each length in turn, direct then gateway; the gateway's sessions were seeded before it started."""
    assert stack.fake is not None and stack.gateway is not None
    results: dict[str, Any] = {}
    for n in sc.sizes:
        for target, proc in (("direct", stack.fake), ("gateway", stack.gateway)):
            log(f"bench:   history {n} -> {target}")
            # Direct: the CPU is this load generator's (the SDK building each request); gateway: the gateway's.
            pid = load.proc.pid if target == "direct" else proc.pid
            cmd = {"op": "history", "target": target, "url": proc.url, "messages": n, "turns": sc.turns}
            cmd |= {"warmup": sc.warmup, "pid": pid}
            results[f"{target}-{n}"] = await load.run(cmd, LOAD_REPLY_GRACE_S + sc.turns * 10)
            stack.check_alive()
    return {"kind": "history", "name": sc.name, "config": asdict(sc), "results": results}


async def run_queries(load: LoadGen, stack: Stack, sc: QueryScenario, seeded: dict[str, Any]) -> dict[str, Any]:
    assert stack.gateway is not None
    cmd = {
        "op": "query",
        "url": stack.gateway.url,
        "requests": query_requests(seeded),
        "runs": sc.runs,
        "warmup": sc.warmup,
    }
    result = await load.run(cmd, 4 * LOAD_REPLY_GRACE_S)
    return {"kind": "queries", "name": sc.name, "config": asdict(sc), "seeded": seeded, "results": result}


async def run_plan(
    plan: Plan, db_url: str | None, log: Callable[[str], None], profile_dir: Path | None = None
) -> dict[str, Any]:
    """Every scenario of the plan, in order; returns {scenario key: result}."""
    out: dict[str, Any] = {}
    work = Path(tempfile.mkdtemp(prefix="agentspace-bench-"))
    runner = Runner(plan, db_url, work, log, profile_dir)
    load = await LoadGen.start(work)
    try:
        if plan.quick:
            await _run_shared(runner, load, plan, out)
        else:
            await _run_fresh(runner, load, plan, out)
    except BaseException:
        log(f"bench: failed; the processes' logs are in {work}")
        raise
    finally:
        await load.stop()
    shutil.rmtree(work, ignore_errors=True)
    return out


async def _run_fresh(runner: Runner, load: LoadGen, plan: Plan, out: dict[str, Any]) -> None:
    log = runner.log
    for sc in plan.streams:
        log(f"bench: {sc.name} ({sc.upstream.words} words, {sc.upstream.delay_ms} ms apart) ...")
        async with runner.stack(sc.key, sc.upstream, bare="bare" in sc.targets) as (stack, _):
            out[sc.key] = await run_stream(load, stack, sc, log, runner.profile_dir)
    if plan.idle is not None:
        log(f"bench: {plan.idle.name} connections, then {plan.idle.streaming} streaming ...")
        async with runner.stack("idle", plan.idle.upstream, bare=True) as (stack, _):
            out["idle"] = await run_idle(load, stack, plan.idle)
    if plan.queries is not None:
        q = plan.queries
        log(f"bench: seeding {q.usage_rows} usage rows, {q.sessions} sessions, {q.long_session_messages} messages ...")
        async with runner.stack("queries", None, bare=False, query=q) as (stack, seeded):
            assert seeded is not None
            log(f"bench: seeded in {seeded['seconds']} s; queries ...")
            out["queries"] = await run_queries(load, stack, q, seeded)
    if plan.history is not None:
        h = plan.history
        log(f"bench: history ({', '.join(map(str, h.sizes))} earlier messages, {h.turns} turns each) ...")
        async with runner.stack("history", h.upstream, bare=False, history=h.sizes) as (stack, _):
            out["history"] = await run_history(load, stack, h, log)


async def _run_shared(runner: Runner, load: LoadGen, plan: Plan, out: dict[str, Any]) -> None:
    log = runner.log
    upstreams = [s.upstream for s in plan.streams] + [x.upstream for x in (plan.idle, plan.history) if x is not None]
    upstream = upstreams[0] if upstreams else None
    sizes = plan.history.sizes if plan.history is not None else ()
    async with runner.stack("shared", upstream, bare=True, query=plan.queries, history=sizes) as (stack, seeded):
        log("bench: processes up")
        for sc in plan.streams:
            log(f"bench: {sc.name} ...")
            out[sc.key] = await run_stream(load, stack, sc, log, runner.profile_dir)
        if plan.idle is not None:
            log(f"bench: {plan.idle.name} ...")
            out["idle"] = await run_idle(load, stack, plan.idle)
        if plan.queries is not None and seeded is not None:
            log("bench: queries ...")
            out["queries"] = await run_queries(load, stack, plan.queries, seeded)
        if plan.history is not None:
            log("bench: history ...")
            out["history"] = await run_history(load, stack, plan.history, log)
