"""Bounded channels between pipeline stages.

:class:`Channel` applies backpressure: a full channel blocks the sender, so a slow stage slows the
one before it instead of letting work pile up. :class:`DroppingChannel` sits in front of a sink
and never blocks: when full it drops the oldest item, because the freshest snapshot is worth more
than an old one and one slow sink must not stall collection.

Both are single-event-loop objects (not thread-safe) and cancellation-safe: a send or receive
that is cancelled while waiting has not moved an item, and a wake-up it received is handed to the
next waiter so nobody is left blocked behind free space or a waiting item.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class ChannelClosed(Exception):
    """Sending to a closed channel, or receiving from one that is closed and drained."""


def _wake_first(waiters: deque[asyncio.Future[None]]) -> None:
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return


def _wake_all(waiters: deque[asyncio.Future[None]]) -> None:
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)


class Channel(Generic[T]):
    """A bounded FIFO between two tasks; ``send`` blocks while full (backpressure).

    ``close`` is idempotent: items already buffered are still delivered, then ``receive`` raises
    :class:`ChannelClosed` (and ``async for`` ends). Senders blocked at close time, and any later
    sender, get :class:`ChannelClosed`; their items are not delivered.
    """

    def __init__(self, capacity: int, name: str) -> None:
        if capacity < 1:
            raise ValueError(f"channel {name!r}: capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        self._name = name
        self._items: deque[T] = deque()
        self._closed = False
        self._receivers: deque[asyncio.Future[None]] = deque()
        self._senders: deque[asyncio.Future[None]] = deque()

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def name(self) -> str:
        return self._name

    @property
    def closed(self) -> bool:
        return self._closed

    def qsize(self) -> int:
        """Items buffered now (the queue depth self-metrics report)."""
        return len(self._items)

    def _full(self) -> bool:
        return len(self._items) >= self._capacity

    def _put(self, item: T) -> None:
        self._items.append(item)
        _wake_first(self._receivers)

    async def send(self, item: T) -> None:
        """Append ``item``, waiting while the channel is full. Raises :class:`ChannelClosed`."""
        if self._closed:
            raise ChannelClosed(self._name)
        while self._full():
            waiter = asyncio.get_running_loop().create_future()
            self._senders.append(waiter)
            try:
                await waiter
            except BaseException:
                waiter.cancel()
                if waiter in self._senders:
                    self._senders.remove(waiter)
                # We were woken for a free slot we will not use: pass the wake-up on.
                if not waiter.cancelled() and not self._full():
                    _wake_first(self._senders)
                raise
            if self._closed:
                raise ChannelClosed(self._name)
        self._put(item)

    async def receive(self) -> T:
        """Take the oldest item, waiting while empty. Raises :class:`ChannelClosed` once the
        channel is closed and drained."""
        while not self._items:
            if self._closed:
                raise ChannelClosed(self._name)
            waiter = asyncio.get_running_loop().create_future()
            self._receivers.append(waiter)
            try:
                await waiter
            except BaseException:
                waiter.cancel()
                if waiter in self._receivers:
                    self._receivers.remove(waiter)
                # We were woken for an item we will not take: pass the wake-up on.
                if not waiter.cancelled() and self._items:
                    _wake_first(self._receivers)
                raise
        item = self._items.popleft()
        _wake_first(self._senders)
        return item

    def close(self) -> None:
        """Stop accepting items; wake every blocked sender (they fail) and receiver (they drain
        what is left, then see the channel closed)."""
        if self._closed:
            return
        self._closed = True
        _wake_all(self._senders)
        _wake_all(self._receivers)

    def __aiter__(self) -> Channel[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except ChannelClosed:
            raise StopAsyncIteration from None

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self._name!r} {len(self._items)}/{self._capacity} {state}>"


class DroppingChannel(Channel[T]):
    """A sink's inbox: never blocks the sender; when full, the oldest item is dropped.

    ``on_drop`` is called with each dropped item (for the dropped-snapshots self-metric and a log
    on transition); ``dropped`` counts them over the channel's life.
    """

    def __init__(
        self,
        capacity: int,
        name: str,
        on_drop: Callable[[T], None] | None = None,
    ) -> None:
        super().__init__(capacity, name)
        self._on_drop = on_drop
        self._dropped = 0

    @property
    def dropped(self) -> int:
        return self._dropped

    def send_nowait(self, item: T) -> bool:
        """Append ``item`` at once; returns False when the oldest item had to be dropped for it.
        Raises :class:`ChannelClosed` when the channel is closed."""
        if self._closed:
            raise ChannelClosed(self._name)
        if not self._full():
            self._put(item)
            return True
        oldest = self._items.popleft()
        self._dropped += 1
        # The channel is consistent before the callback runs, whatever the callback does.
        self._put(item)
        if self._on_drop is not None:
            self._on_drop(oldest)
        return False

    async def send(self, item: T) -> None:
        """Same as :meth:`send_nowait`; never waits."""
        self.send_nowait(item)
