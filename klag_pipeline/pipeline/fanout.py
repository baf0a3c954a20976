"""Hands every snapshot to every sink, each through its own drop-oldest inbox."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from types import MappingProxyType

from klag_pipeline.pipeline.channel import Channel, ChannelClosed, DroppingChannel
from klag_pipeline.snapshot import ClusterSnapshot, SinkUpdate


class FanOut:
    """Copies each update from one source channel into every sink inbox.

    Inboxes never block (they drop their oldest item when full), so a stalled sink costs only its
    own backlog: the other sinks and the source keep moving. An inbox its sink has already closed
    is skipped. When the source is closed and drained, every inbox is closed, which is how
    shutdown reaches the sinks.

    A partial snapshot (the early publication of a cluster's first cycle, docs/pipeline.md) goes
    only to the inboxes named in ``partial_to``: a sink that records every snapshot as a cycle
    (JSON lines, OTLP, the snapshot store) gets each cycle once, complete.
    """

    def __init__(
        self,
        inboxes: Mapping[str, DroppingChannel[SinkUpdate]],
        *,
        partial_to: Collection[str] = (),
    ) -> None:
        self._inboxes = MappingProxyType(dict(inboxes))
        self._partial_to = frozenset(partial_to)
        self._forwarded = 0

    @property
    def inboxes(self) -> Mapping[str, DroppingChannel[SinkUpdate]]:
        return self._inboxes

    @property
    def forwarded(self) -> int:
        """Updates taken from the source so far."""
        return self._forwarded

    async def run(self, source: Channel[SinkUpdate]) -> None:
        try:
            async for update in source:
                self._forwarded += 1
                partial = isinstance(update, ClusterSnapshot) and update.partial
                for name, inbox in self._inboxes.items():
                    if inbox.closed or (partial and name not in self._partial_to):
                        continue
                    try:
                        inbox.send_nowait(update)
                    except ChannelClosed:
                        # Closed by its sink between the check and the send (an on_drop hook).
                        continue
        finally:
            for inbox in self._inboxes.values():
                inbox.close()
