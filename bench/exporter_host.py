"""Run the exporter exactly as ``klag-pipeline -l debug --log-format json run SETTINGS`` does,
plus an event-loop lag monitor on the same loop.

The monitor sleeps ``INTERVAL`` seconds in a loop and records how late each wake-up is: a late
wake-up means something held the loop (response decoding, rendering, a long synchronous call).
Once a second it appends one JSON line to ``--loop-lag-out``:
``{"t": <monotonic>, "samples": n, "max": s, "over_50ms": n, "over_100ms": n, "gc_max": s,
"gc_total": s}`` — the last two are the longest and the summed cyclic-GC pauses of the window
(from ``gc.callbacks``), so a late wake-up can be told apart from a collection.

The monitor itself costs ~100 wake-ups per second (well under 1 % of a core); the benchmark
report states that CPU figures include it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TextIO

from klag_pipeline.app import serve
from klag_pipeline.errors import ConfigError
from klag_pipeline.settings.loader import load_settings
from klag_pipeline.telemetry import runtime
from klag_pipeline.telemetry.logging import configure_logging

INTERVAL = 0.01
REPORT_EVERY = 1.0


class GcPauses:
    """Longest and total cyclic-GC pause since the last ``take`` (any thread)."""

    def __init__(self) -> None:
        self._began = 0.0
        self.longest = 0.0
        self.total = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            pause = time.perf_counter() - self._began
            self.longest = max(self.longest, pause)
            self.total += pause

    def take(self) -> tuple[float, float]:
        taken = (self.longest, self.total)
        self.longest = self.total = 0.0
        return taken


async def monitor_loop_lag(stop: asyncio.Event, out: TextIO) -> None:
    """Measure wake-up overshoot of ``asyncio.sleep(INTERVAL)`` until ``stop`` is set."""
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    window_start = time.monotonic()
    samples = over_50 = over_100 = 0
    worst = 0.0
    while not stop.is_set():
        before = time.monotonic()
        await asyncio.sleep(INTERVAL)
        now = time.monotonic()
        lag = max(0.0, now - before - INTERVAL)
        samples += 1
        worst = max(worst, lag)
        over_50 += lag > 0.05
        over_100 += lag > 0.1
        if now - window_start >= REPORT_EVERY:
            gc_max, gc_total = pauses.take()
            record = {
                "t": round(now, 4),
                "samples": samples,
                "max": round(worst, 5),
                "over_50ms": over_50,
                "over_100ms": over_100,
                "gc_max": round(gc_max, 5),
                "gc_total": round(gc_total, 5),
            }
            out.write(json.dumps(record) + "\n")
            out.flush()
            window_start = now
            samples = over_50 = over_100 = 0
            worst = 0.0


async def _main(settings_path: str, lag_path: Path) -> None:
    settings = load_settings(settings_path, os.environ).settings
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    with lag_path.open("a", encoding="utf-8") as out:
        async with asyncio.TaskGroup() as group:
            group.create_task(monitor_loop_lag(stop, out))
            group.create_task(serve(settings, stop=stop, settle=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.exporter_host")
    parser.add_argument("settings")
    parser.add_argument("--loop-lag-out", type=Path, required=True)
    args = parser.parse_args(argv)
    configure_logging("debug", "json")
    try:
        runtime.tune_process()  # what `klag-pipeline run` does before its event loop
        asyncio.run(_main(args.settings, args.loop_lag_out))
    except ConfigError as exc:
        for path, message in exc.problems:
            print(f"{path}: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
