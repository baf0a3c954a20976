"""The standby gate in front of a pipeline's first stage."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from klag_pipeline.leadership.provider import NotLeader
from klag_pipeline.pipeline.chain import Stage

In = TypeVar("In")
Out = TypeVar("Out")


class StandbyGate(Generic[In, Out]):
    """Wraps a pipeline's first stage: while this instance is a standby, cycles stop here.

    A skipped cycle raises :class:`NotLeader` (the pipeline drops it without counting a failure)
    and is reported to ``on_skipped``, so ``/health`` still sees a live loop on a standby.
    """

    def __init__(
        self,
        stage: Stage[In, Out],
        is_leader: Callable[[], bool],
        on_skipped: Callable[[], None],
    ) -> None:
        self.stage = stage
        self.name = stage.name
        self._is_leader = is_leader
        self._on_skipped = on_skipped

    async def process(self, event: In) -> Out:
        if not self._is_leader():
            self._on_skipped()
            raise NotLeader("standby: collection runs on the leader only")
        return await self.stage.process(event)
