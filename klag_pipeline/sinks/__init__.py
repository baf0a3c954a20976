"""Sinks: each consumes the same per-cycle snapshots from its own bounded, drop-oldest inbox."""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Protocol

from klag_pipeline.snapshot import SinkUpdate


class Sink(Protocol):
    """A destination for snapshots. ``run`` consumes until the inbox is closed and drained, then
    flushes (the runner bounds the flush with the shutdown deadline)."""

    name: str

    async def run(self, inbox: AsyncIterable[SinkUpdate]) -> None: ...
