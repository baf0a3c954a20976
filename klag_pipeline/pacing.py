"""Broker pacing: time a broker paused the exporter does not count against the cycle deadline.

The cycle deadline (``poll_interval``) bounds the exporter's own slowness and a broker's silence.
A broker's ``throttle_time_ms`` (a client quota) is different: the broker paces its clients and
mutes the connection for that long (KIP-219), whoever sends the next request. Counted against the
deadline, a quota whose pauses add up to more than ``poll_interval`` in a cycle made *every*
cycle fail, and the exporter reported nothing for as long as it was throttled. Instead, the wall
time during which any broker of the cluster had paused the exporter moves the deadline of every
cycle in flight back, by at most ``cap`` (two poll intervals, docs/decisions.md): a throttled
cycle takes as long as the quota makes it, its missed ticks are skipped as always, and a broker
that stops answering, or a slow exporter, still fails the cycle on time.

Every throttled answer reaches :meth:`PauseBoard.paused` through :class:`PacedObserver`, the
cluster's request observer; the stage loop has the board move its running stage's deadline
(:meth:`PauseBoard.watching`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from klag_pipeline.kafka.port import RequestObserver


class PauseBoard:
    """One cluster's broker pauses, merged into disjoint wall-time intervals.

    :meth:`extension` is how much of them fell after a cycle's start (overlapping pauses of
    three brokers count once), at most ``cap``. Pauses older than ``horizon`` seconds are
    forgotten (no cycle in flight started that long ago)."""

    def __init__(self, cap: float, clock: Callable[[], float], *, horizon: float) -> None:
        self._cap = cap
        self._clock = clock
        self._horizon = horizon
        self._pauses: list[tuple[float, float]] = []
        self._watchers: set[Callable[[], None]] = set()

    def paused(self, seconds: float) -> None:
        """A broker asked for ``seconds`` of silence, from now; every watched deadline moves."""
        if seconds <= 0:
            return
        now = self._clock()
        start, end = now, now + seconds
        kept = []
        for s, e in self._pauses:
            if e < now - self._horizon:
                continue
            if e < start or s > end:
                kept.append((s, e))
            else:
                start, end = min(s, start), max(e, end)
        kept.append((start, end))
        kept.sort()
        self._pauses = kept
        for move in list(self._watchers):
            move()

    def extension(self, since: float) -> float:
        """Paused seconds from ``since`` on (announced pauses count in full), at most the cap."""
        total = sum(e - max(s, since) for s, e in self._pauses if e > since)
        return min(total, self._cap)

    @contextmanager
    def watching(self, move: Callable[[], None]) -> Iterator[None]:
        """Within the block, ``move()`` is called after every pause recorded."""
        self._watchers.add(move)
        try:
            yield
        finally:
            self._watchers.discard(move)


class PacedObserver:
    """A cluster's request observer that also tells the cluster's :class:`PauseBoard` of every
    throttled answer."""

    def __init__(self, inner: RequestObserver, board: PauseBoard) -> None:
        self._inner = inner
        self._board = board

    def on_request(self, api: str, broker: str, outcome: str, seconds: float) -> None:
        self._inner.on_request(api, broker, outcome, seconds)

    def on_throttle(self, api: str, broker: str, throttle_ms: int) -> None:
        self._inner.on_throttle(api, broker, throttle_ms)
        self._board.paused(throttle_ms / 1000)
