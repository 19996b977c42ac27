"""/metrics under `agentspace serve --workers N`: one scrape sees every worker, each series labelled `worker`.

The kernel hands each connection to whichever worker accepts it, so a scrape lands on one worker, which alone knows
only its own counters. Each worker therefore also serves its own metrics, and nothing else, on a private Unix socket
in the run's folder (made 0700 by the supervisor: reaching it means being the gateway's user already, so it asks for
no token). The worker a scrape reaches renders its own series, fetches its siblings' over their sockets (all at
once, each bounded by a short timeout), and writes them out as one exposition: every family's HELP and TYPE once,
then its samples from every worker with `worker="<n>"` added. `agentspace_worker_up{worker}` says which workers
answered; a worker being restarted is 0 for that scrape rather than making the scrape fail. Sum over workers for
gateway-wide totals: `sum without (worker) (rate(agentspace_turns_total[5m]))`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from gateway.chat.metrics import CONTENT_TYPE, Metrics
from gateway.settings import Settings

log = logging.getLogger(__name__)

SIBLING_TIMEOUT_S = 2.0
_PATH = "/worker-metrics"


def socket_path(directory: Path, worker: int) -> Path:
    return directory / f"worker-{worker}.sock"


def worker_ctx_for(settings: Settings, metrics: Metrics) -> web.Application | None:
    """The private app a worker serves on its socket; None when this process is not one of several workers."""
    if settings.worker is None or settings.worker_dir is None:
        return None

    async def own(_request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    private = web.Application()
    private.router.add_get(_PATH, own)
    return private


@contextlib.asynccontextmanager
async def serving_private(settings: Settings, private: web.Application) -> AsyncIterator[None]:
    assert settings.worker is not None and settings.worker_dir is not None
    path = socket_path(settings.worker_dir, settings.worker)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by this worker's previous life (a restart)
    runner = web.AppRunner(private, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.UnixSite(runner, str(path)).start()
        yield
    finally:
        await runner.cleanup()


async def gather(settings: Settings, metrics: Metrics) -> bytes:
    """This worker's series and its siblings', labelled by worker, as one Prometheus exposition."""
    assert settings.worker is not None and settings.worker_dir is not None
    directory = settings.worker_dir
    others = [n for n in range(1, settings.workers + 1) if n != settings.worker]
    fetched = await asyncio.gather(*(_fetch(socket_path(directory, n)) for n in others))
    texts = {settings.worker: metrics.render().decode(), **dict(zip(others, fetched, strict=True))}
    return merge(texts).encode()


async def _fetch(path: Path) -> str | None:
    try:
        timeout = aiohttp.ClientTimeout(total=SIBLING_TIMEOUT_S)
        async with (
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path)), timeout=timeout) as http,
            http.get(f"http://localhost{_PATH}") as response,
        ):
            if response.status != 200:
                return None
            return await response.text()
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        log.debug("worker socket %s did not answer: %s", path, exc)
        return None


def merge(texts: dict[int, str | None]) -> str:
    """Expositions by worker (None: did not answer) as one: HELP/TYPE once per family, samples labelled."""
    heads: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for worker in sorted(texts):
        text = texts[worker]
        if text is None:
            continue
        family = ""
        for line in text.splitlines():
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                family = line.split(" ", 3)[2]
                head = heads.setdefault(family, [])
                if len(head) < 2 and line not in head:
                    head.append(line)
                samples.setdefault(family, [])
            elif line and not line.startswith("#"):
                samples.setdefault(family, []).append(_labelled(line, worker))
    out: list[str] = []
    for family, head in heads.items():
        out += head
        out += samples.get(family, [])
    out.append("# HELP agentspace_worker_up Whether the worker answered this scrape (1) or not (0)")
    out.append("# TYPE agentspace_worker_up gauge")
    out += [f'agentspace_worker_up{{worker="{w}"}} {0 if texts[w] is None else 1}' for w in sorted(texts)]
    return "\n".join(out) + "\n"


def _labelled(sample: str, worker: int) -> str:
    """`name{a="b"} 1` -> `name{worker="n",a="b"} 1`; `name 1` -> `name{worker="n"} 1`. Metric names hold neither
    a brace nor a space, so the first of them ends the name whatever the label values hold."""
    brace, space = sample.find("{"), sample.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        rest = sample[brace + 1 :]
        return f'{sample[: brace + 1]}worker="{worker}"{"" if rest.startswith("}") else ","}{rest}'
    return f'{sample[:space]}{{worker="{worker}"}}{sample[space:]}'
