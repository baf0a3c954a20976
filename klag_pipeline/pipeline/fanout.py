"""Hands every snapshot to every sink, each through its own drop-oldest inbox."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from klag_pipeline.pipeline.channel import Channel, ChannelClosed, DroppingChannel
from klag_pipeline.snapshot import SinkUpdate


class FanOut:
    """Copies each update from one source channel into every sink inbox.

    Inboxes never block (they drop their oldest item when full), so a stalled sink costs only its
    own backlog: the other sinks and the source keep moving. An inbox its sink has already closed
    is skipped. When the source is closed and drained, every inbox is closed, which is how
    shutdown reaches the sinks.
    """

    def __init__(self, inboxes: Mapping[str, DroppingChannel[SinkUpdate]]) -> None:
        self._inboxes = MappingProxyType(dict(inboxes))
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
                for inbox in self._inboxes.values():
                    if inbox.closed:
                        continue
                    try:
                        inbox.send_nowait(update)
                    except ChannelClosed:
                        # Closed by its sink between the check and the send (an on_drop hook).
                        continue
        finally:
            for inbox in self._inboxes.values():
                inbox.close()
