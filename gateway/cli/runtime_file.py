"""The discovery file: `~/.config/agentspace/runtime.json`, `{"pid", "port", "startedAt"}`, as the original AgentSpace
gateway wrote it and its CLI reads it (check the pid is alive, then connect to ws://127.0.0.1:<port>/gateway).

`agentspace serve` writes it once it is listening and removes it when it exits; `agentspace chat` reads it when no
`--url` is given. A file whose pid is dead was left by a gateway that crashed: it is replaced. A file whose pid is
alive belongs to another running gateway and is left alone (this one then runs without a discovery file).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


@dataclass(frozen=True, slots=True)
class Runtime:
    pid: int
    port: int
    started_at: str
    host: str | None = None  # ours adds it; the original's file has none, which means 127.0.0.1

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host is None or self.host in WILDCARD_HOSTS else self.host
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"ws://{host}:{self.port}/gateway"


def pid_alive(pid: int) -> bool:
    """Signal 0 asks the kernel whether the process exists without touching it."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    except OSError:
        return False
    return True


def read(path: Path) -> Runtime | None:
    """The file's contents, or None when it is missing or unreadable."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    pid, port, host = raw.get("pid"), raw.get("port"), raw.get("host")
    if not isinstance(pid, int) or not isinstance(port, int) or isinstance(pid, bool) or isinstance(port, bool):
        return None
    return Runtime(pid, port, str(raw.get("startedAt", "")), host if isinstance(host, str) else None)


def discover(path: Path | None) -> Runtime | None:
    """The running gateway the file names, or None when there is no file or its process is gone."""
    if path is None:
        return None
    found = read(path)
    if found is None or not pid_alive(found.pid):
        return None
    return found


def claim(path: Path, port: int, host: str, now: datetime) -> bool:
    """Write the file for this process, unless another live gateway owns it. True when written."""
    current = read(path)
    if current is not None and current.pid != os.getpid() and pid_alive(current.pid):
        log.warning(
            "%s belongs to another running gateway (pid %d, port %d); not writing it", path, current.pid, current.port
        )
        return False
    if current is not None and current.pid != os.getpid():
        log.info("replacing %s left by pid %d, which is no longer running", path, current.pid)
    started = now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = {"pid": os.getpid(), "port": port, "startedAt": started, "host": host}
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # a reader sees the old file or the new one, never half of one
    log.info("discovery file %s written (pid %d, port %d)", path, os.getpid(), port)
    return True


def release(path: Path) -> None:
    """Remove the file if it is still this process's (a later gateway may have taken it over)."""
    current = read(path)
    if current is not None and current.pid == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
