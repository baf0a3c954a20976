"""Concurrent ``/metrics`` scrapers in their own process, so the measuring client never shares
an event loop with the harness (or with the exporter).

``python -m bench.scrape URL --concurrency 20 --duration 10 --out scrapes.json`` runs
``concurrency`` keep-alive clients until ``duration`` has passed, asking like Prometheus does
(OpenMetrics preferred, gzip). Without ``--period`` each client scrapes back to back
(saturation: latency ≈ concurrency × service time); with ``--period P`` all clients fire
together at every multiple of P (bursts of ``concurrency`` simultaneous scrapes, the literal
"20 concurrent scrapers"), then wait for the next boundary. Bodies are read in full but
not decompressed: the latency is the server's answer plus the transfer, not client-side work.
Output: ``[[start_monotonic, seconds, body_bytes, status], ...]``; ``time.monotonic`` is the
system-wide CLOCK_MONOTONIC on Linux, comparable with the exporter's cycle times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.1"
)


async def scrape(
    url: str, concurrency: int, duration: float, *, gzip: bool = True, period: float = 0.0
) -> list[tuple[float, float, int, int]]:
    headers = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip" if gzip else "identity"}
    results: list[tuple[float, float, int, int]] = []
    deadline = time.monotonic() + duration
    timeout = aiohttp.ClientTimeout(total=max(duration, 1.0) + 30)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, auto_decompress=False, timeout=timeout
    ) as session:

        async def worker() -> None:
            while time.monotonic() < deadline:
                if period > 0:
                    now = time.monotonic()
                    await asyncio.sleep(period - now % period)
                began = time.monotonic()
                async with session.get(url, headers=headers) as response:
                    body = await response.read()
                results.append(
                    (round(began, 6), time.monotonic() - began, len(body), response.status)
                )

        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scrape")
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--identity", action="store_true", help="ask for no compression")
    parser.add_argument("--period", type=float, default=0.0, help="burst every PERIOD seconds")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    results = asyncio.run(
        scrape(
            args.url, args.concurrency, args.duration, gzip=not args.identity, period=args.period
        )
    )
    args.out.write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
