"""`agentspace serve --workers N`: one listening socket, N gateway processes accepting on it.

The parent binds the port once and forks the workers, which inherit the socket: each is a whole gateway (its own
event loop, engine, SQLite threads, upstream client) and the kernel gives each new connection to whichever worker
accepts it first, an idle one more often than a busy one. Chosen over SO_REUSEPORT, where every worker binds the
port itself: no other process of the user can bind into the group, port 0 names one port for all, and a worker that
dies takes no queued connections with it (with SO_REUSEPORT the kernel resets the ones hashed to its socket).

What was per process is shared through the database and the kernel (docs/DEPLOY.md, "Several workers"): one stream
per session (file locks beside a SQLite database, advisory locks on PostgreSQL), idempotency (a unique index),
session snapshots (checked against the session's message count in the transaction that writes the turn), approvals
(rows a waiting turn polls), /metrics (gathered from every worker, gateway/server/workers.py). The parent writes
the discovery file once, naming its own pid.

Signals: SIGTERM or SIGINT to the parent is passed on as one SIGTERM to each worker, which ends its streams with
their terminal frames (as a single gateway does) and exits; the parent exits 0 once all have. Workers ignore SIGINT
(a Ctrl-C reaches the whole process group; the parent's SIGTERM is the one they act on) and get SIGTERM when the
parent dies, however it dies (Linux). A worker that dies after it was serving is replaced (its sessions' locks died
with it; the new one marks its unfinished replies interrupted at start-up); one that fails while starting stops the
gateway with exit 1, as does a worker dying again and again.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from gateway.server.logs import setup_logging
from gateway.settings import Settings

log = logging.getLogger("gateway")

STOP_GRACE_S = 30.0  # a worker's own shutdown is bounded (10 s for handlers); past this it is killed
RESTARTS_ALLOWED = 5  # in RESTART_WINDOW_S; more means something is wrong that a new process will not fix
RESTART_WINDOW_S = 60.0
_PR_SET_PDEATHSIG = 1


def worker_count(value: str) -> int:
    """`--workers`: a positive number, or `auto` for one per core this process may run on."""
    if value == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"--workers takes a number or 'auto', not {value!r}") from None
    if count < 1:
        raise ValueError(f"--workers must be at least 1, not {count}")
    return count


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        sock: socket.socket,
        count: int,
        make_app: Callable[[Settings], web.Application],
        prepare: Callable[[web.Application], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.sock = sock
        self.count = count
        self.make_app = make_app
        self.prepare = prepare  # after each worker's app has started (gateway.app.prepare_to_serve)
        self.children: dict[int, int] = {}  # pid -> worker number
        self.ready: set[int] = set()  # worker numbers serving now
        self.restarts: deque[float] = deque()
        self.stopping = False
        self.failed = False
        self.stop_deadline = 0.0

    def run(self) -> int:
        self.run_dir = Path(tempfile.mkdtemp(prefix="agentspace-workers-"))  # 0700
        self.sig_r, sig_w = os.pipe()
        self.ready_r, self.ready_w = os.pipe()
        for fd in (self.sig_r, sig_w, self.ready_r):
            os.set_blocking(fd, False)
        previous = signal.set_wakeup_fd(sig_w)
        handlers = {s: signal.signal(s, _noop) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)}
        try:
            for number in range(1, self.count + 1):
                self._start(number)
            while self.children:
                self._wait()
            return 1 if self.failed else 0
        finally:
            signal.set_wakeup_fd(previous)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            for fd in (self.sig_r, sig_w, self.ready_r, self.ready_w):
                os.close(fd)
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _wait(self) -> None:
        timeout = max(0.0, self.stop_deadline - time.monotonic()) if self.stopping else None
        readable, _, _ = select.select([self.sig_r, self.ready_r], [], [], timeout)
        if self.sig_r in readable:
            for number in _drain(self.sig_r):
                if number in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
                    log.info("stopping %d workers (%s)", len(self.children), signal.Signals(number).name)
                    self._stop()
        if self.ready_r in readable:
            for line in bytes(_drain(self.ready_r)).decode().split():
                self.ready.add(int(line))
                log.info("worker %s ready", line)
        self._reap()
        if self.stopping and self.children and time.monotonic() >= self.stop_deadline:
            log.error("workers %s did not stop in %.0f s; killing them", sorted(self.children.values()), STOP_GRACE_S)
            self._signal_all(signal.SIGKILL)

    def _stop(self, *, failed: bool = False) -> None:
        self.failed = self.failed or failed
        if not self.stopping:
            self.stopping = True
            self.stop_deadline = time.monotonic() + STOP_GRACE_S
            # The port closes once every worker has closed its copy too: new connections are refused, as by a
            # single gateway shutting down, rather than queued where no worker will accept them.
            self.sock.close()
            self._signal_all(signal.SIGTERM)

    def _signal_all(self, sig: int) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            number = self.children.pop(pid, None)
            if number is None:
                continue
            was_ready = number in self.ready
            self.ready.discard(number)
            how = _describe(status)
            if self.stopping:
                log.info("worker %d (pid %d) %s", number, pid, how)
            elif not was_ready:
                log.error("worker %d (pid %d) %s while starting; stopping the gateway", number, pid, how)
                self._stop(failed=True)
            elif self._may_restart():
                log.error("worker %d (pid %d) %s; starting another in its place", number, pid, how)
                self._start(number)
            else:
                log.error("worker %d (pid %d) %s, %d restarts in %.0f s; stopping", number, pid, how,
                          RESTARTS_ALLOWED, RESTART_WINDOW_S)  # fmt: skip
                self._stop(failed=True)

    def _may_restart(self) -> bool:
        now = time.monotonic()
        while self.restarts and now - self.restarts[0] > RESTART_WINDOW_S:
            self.restarts.popleft()
        self.restarts.append(now)
        return len(self.restarts) <= RESTARTS_ALLOWED

    def _start(self, number: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = self._worker(number, parent)
            except BaseException:
                log.exception("worker %d failed", number)
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = number
        log.info("worker %d started (pid %d)", number, pid)

    def _worker(self, number: int, parent: int) -> int:
        """In the forked child: never returns into the parent's code (the caller exits)."""
        signal.set_wakeup_fd(-1)
        os.close(self.sig_r)
        os.close(self.ready_r)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _die_with(parent)
        settings = self.settings.with_overrides(worker=number, workers=self.count, worker_dir=self.run_dir)
        setup_logging(settings.log_format, settings.log_level, worker=number)
        app = self.make_app(settings)
        ready_w = self.ready_w

        async def on_started(app: web.Application) -> None:
            import asyncio

            stopping = False

            def stop() -> None:
                nonlocal stopping
                if not stopping:  # a second SIGTERM must not cut the first one's shutdown short
                    stopping = True
                    raise web.GracefulExit()

            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, stop)
            loop.add_signal_handler(signal.SIGINT, lambda: None)
            os.write(ready_w, f"{number}\n".encode())

        app.on_startup.append(self.prepare)
        app.on_startup.append(on_started)  # after the app's own start-up (database, recovery, services)
        web.run_app(app, sock=self.sock, shutdown_timeout=10, print=None, access_log=None, handle_signals=False)
        return 0


def _noop(_signum: int, _frame: object) -> None:
    """The wakeup fd carries the signal to the loop; a Python handler must exist for it to be written."""


def _drain(fd: int) -> bytearray:
    data = bytearray()
    while True:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return data
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            raise
        if not chunk:
            return data
        data += chunk


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with {os.waitstatus_to_exitcode(status)}"


def _die_with(parent: int) -> None:
    """Linux: SIGTERM this worker when the parent dies (even by SIGKILL), so no worker outlives its gateway."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the line above took effect
        os._exit(0)
