"""Drive one stage between two channels, with the cycle deadline and failure isolation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TypeVar

from klag_pipeline.errors import KlagError
from klag_pipeline.events import CycleEvent
from klag_pipeline.pipeline.chain import Stage
from klag_pipeline.pipeline.channel import Channel
from klag_pipeline.snapshot import ClusterSnapshot

E = TypeVar("E", bound=CycleEvent | ClusterSnapshot)
R = TypeVar("R")

StageFailed = Callable[[str, int, str, KlagError], None]
"""(cluster, cycle, stage name, error) — the cycle is dropped; nothing more flows for it."""

Watch = Callable[[E, asyncio.Timeout], AbstractContextManager[object]]
"""(event, the stage's deadline scope) → a block within which the deadline may move back."""


def _unwatched(event: object, scope: asyncio.Timeout) -> AbstractContextManager[object]:
    return nullcontext()


async def run_stage(
    stage: Stage[E, R],
    inbox: Channel[E],
    outbox: Channel[R],
    *,
    deadline_of: Callable[[E], float],
    on_failure: StageFailed,
    watch: Watch[E] = _unwatched,
    close_outbox: bool = True,
) -> None:
    """Process every event of ``inbox`` into ``outbox`` until the inbox is closed and drained.

    ``deadline_of(event)`` is the event loop time by which the event's cycle must be done (a
    cycle never exceeds ``poll_interval``). An expected failure (a :class:`KlagError`, including
    the deadline passing) drops that cycle and is reported; any other exception is a bug and
    propagates so the process crashes loudly. ``watch(event, scope)`` may move the deadline
    back while the stage runs (broker pauses, klag_pipeline.pacing).
    """
    try:
        async for event in inbox:
            try:
                async with asyncio.timeout_at(deadline_of(event)) as scope:
                    with watch(event, scope):
                        result = await stage.process(event)
            except TimeoutError:
                on_failure(
                    event.cluster,
                    event.cycle,
                    stage.name,
                    CycleDeadlineExceeded(f"cycle exceeded poll_interval during {stage.name}"),
                )
                continue
            except KlagError as exc:
                on_failure(event.cluster, event.cycle, stage.name, exc)
                continue
            await outbox.send(result)
    finally:
        if close_outbox:
            outbox.close()


class CycleDeadlineExceeded(KlagError):
    """A cycle did not finish within poll_interval; it is abandoned, the next tick starts fresh."""
