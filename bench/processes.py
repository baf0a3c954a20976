"""Child processes of a benchmark run (proxy, exporter, scrapers) and what /proc says about them.

Every child is started in its own process group and stopped by its pid (SIGTERM, then SIGKILL
after a deadline); nothing here signals a process it did not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A loopback port that was free a moment ago (bind, read, release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class ProcSample:
    """One look at a process: CPU seconds so far, current and peak RSS, open descriptors."""

    monotonic: float
    cpu_seconds: float
    rss_bytes: int
    peak_rss_bytes: int
    open_fds: int


def sample_process(pid: int) -> ProcSample:
    now = time.monotonic()
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the parenthesised command name (which may contain spaces): utime is field
    # 14 and stime field 15 of the whole line, i.e. indexes 11 and 12 after the ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        status[key] = value.strip()
    rss = int(status["VmRSS"].split()[0]) * 1024
    peak = int(status["VmHWM"].split()[0]) * 1024
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return ProcSample(now, cpu, rss, peak, fds)


class Child:
    """A started child process; ``stop`` is idempotent."""

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.process = process
        self.name = name

    @property
    def pid(self) -> int:
        return self.process.pid

    async def stop(self, grace: float = 20.0) -> int:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace):
                    await self.process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        assert self.process.returncode is not None
        return self.process.returncode


async def start_child(
    name: str, *args: str, stderr: Any = asyncio.subprocess.DEVNULL, **kwargs: Any
) -> Child:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        start_new_session=True,
        **kwargs,
    )
    return Child(process, name)


@contextlib.asynccontextmanager
async def counting_proxy(listen_port: int, upstream: str) -> AsyncIterator[ProxyHandle]:
    """The request-counting proxy (``bench.proxy``) as a child process."""
    child = await start_child(
        "proxy", "-m", "bench.proxy", "--listen", f"127.0.0.1:{listen_port}", "--upstream", upstream
    )
    try:
        assert child.process.stdout is not None
        async with asyncio.timeout(30):
            line = await child.process.stdout.readline()
        if not line:
            raise RuntimeError(f"proxy exited with {await child.process.wait()} before ready")
        ready = json.loads(line)
        async with aiohttp.ClientSession() as session:
            yield ProxyHandle(child, ready["listen"], f"http://{ready['control']}/stats", session)
    finally:
        await child.stop()


@dataclass
class ProxyHandle:
    child: Child
    address: str
    stats_url: str
    session: aiohttp.ClientSession

    async def stats(self) -> dict[str, Any]:
        async with asyncio.timeout(10), self.session.get(self.stats_url) as response:
            data: dict[str, Any] = await response.json()
            return data


def api_totals(snapshot: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Proxy snapshot → api name → {requests, request_bytes, response_bytes, ...} (versions
    summed)."""
    totals: dict[str, dict[str, int]] = {}
    for entry in snapshot["apis"]:
        into = totals.setdefault(
            entry["api"], {"requests": 0, "request_bytes": 0, "responses": 0, "response_bytes": 0}
        )
        for key in into:
            into[key] += entry[key]
    return totals


def api_versions(snapshot: dict[str, Any]) -> dict[str, list[int]]:
    versions: dict[str, list[int]] = {}
    for entry in snapshot["apis"]:
        versions.setdefault(entry["api"], []).append(entry["version"])
    return versions


def subtract(
    later: dict[str, dict[str, int]], earlier: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    delta: dict[str, dict[str, int]] = {}
    for api, counts in later.items():
        before = earlier.get(api, {})
        diff = {k: v - before.get(k, 0) for k, v in counts.items()}
        if any(diff.values()):
            delta[api] = diff
    return delta
