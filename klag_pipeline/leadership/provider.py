"""The leadership provider port and its errors; every provider imports this module only.

A :class:`LeadershipProvider` talks to one coordination backend (a Kubernetes Lease, or a Kafka
consumer group used for membership only); :class:`~klag_pipeline.leadership.elector.LeaderElector`
calls it once per round.
"""

from __future__ import annotations

from typing import Protocol

from klag_pipeline.errors import KlagError


class LeadershipError(KlagError):
    """A round could not reach the coordination backend or got an answer it cannot use."""


class NotLeader(KlagError):
    """A collection cycle was skipped because this instance is a standby (not a failure)."""


class LeadershipProvider(Protocol):
    """One coordination backend. Methods are called from one task, never concurrently."""

    @property
    def kind(self) -> str:
        """``kubernetes`` or ``kafka`` (a label on the leadership metrics)."""
        ...

    @property
    def identity(self) -> str:
        """This instance's name in the election (shown by ``/leader``)."""
        ...

    @property
    def holder(self) -> str | None:
        """The leader's identity as last observed, or None when unknown."""
        ...

    async def acquire_or_renew(self) -> bool:
        """One round: take leadership if it is free, renew it if held.

        Returns whether this instance leads. Raises :class:`LeadershipError` when the backend
        cannot be reached or refuses the request; must be safe to cancel (the next round starts
        from a clean state).
        """
        ...

    async def release(self) -> None:
        """Give leadership up (if held) so a standby takes over at once; best effort."""
        ...

    async def close(self) -> None:
        """Free connections. The provider is not used afterwards."""
        ...


class ProviderState:
    """What every provider keeps between rounds: its identity, whether it led at the last
    answer, and the holder it last saw (the port's ``identity`` and ``holder``)."""

    def __init__(self, identity: str) -> None:
        self._identity = identity
        self._leading = False
        self._holder: str | None = None

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def holder(self) -> str | None:
        return self._holder
