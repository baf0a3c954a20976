"""What the exporter knows about its own collection loops: freshness, liveness, readiness.

Pure state (no I/O, no asyncio): the cluster loops report every cycle here, and the HTTP server,
the Prometheus sink (``kafka_lag_exporter_up``) and ``once`` read it. Ages are measured on the
monotonic clock so a wall-clock jump cannot make data look fresh or stale; wall time is kept only
for display.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


class StatusClock(Protocol):
    """The two clocks the board reads (a subset of :class:`klag_pipeline.pipeline.clock.Clock`)."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """One cluster's collection status at the moment :meth:`StatusBoard.snapshot` was called.

    ``age_seconds`` is the time since the last successful cycle (None before the first one).
    ``last_error`` is the one-line reason of the most recent failed cycle, cleared by a success.
    ``dead_error`` is set when the cluster's loop has died: nothing will collect it any more.
    """

    name: str
    last_success_at: float | None
    age_seconds: float | None
    last_error: str | None
    consecutive_failures: int
    cycles: int
    successes: int
    last_duration: float | None
    fresh: bool
    dead_error: str | None

    @property
    def state(self) -> str:
        """One word for humans: ``dead``, ``failing``, ``stale``, ``ok`` or ``pending``."""
        if self.dead_error is not None:
            return "dead"
        if self.consecutive_failures:
            return "failing"
        if self.last_success_at is None:
            return "pending"
        return "ok" if self.fresh else "stale"


@dataclass(slots=True)
class _ClusterState:
    last_attempt_mono: float | None = None
    last_success_mono: float | None = None
    last_success_wall: float | None = None
    last_data_mono: float | None = None  # a successful cycle, or a first cycle's early offsets
    last_error: str | None = None
    consecutive_failures: int = 0
    cycles: int = 0
    successes: int = 0
    last_duration: float | None = None
    dead_error: str | None = None


class StatusBoard:
    """Per-cluster cycle outcomes plus leadership, and the verdicts derived from them.

    * fresh: the cluster's last published data is at most ``staleness_threshold`` old: its last
      successful cycle, or before the first one the early publication of the first cycle's
      offsets (:meth:`offsets_published`, docs/pipeline.md "The first scrape");
    * ``up`` (SPEC ``kafka_lag_exporter_up``): every cluster is fresh; per cluster, the same
      verdict is ``klag_pipeline_cluster_up`` (:meth:`fresh_by_cluster`);
    * ``ready``: this instance leads and at least one cluster is fresh;
    * ``healthy``: every cluster loop is alive and has attempted a cycle within
      ``3 × poll_interval`` (counted from the board's creation until the first attempt).

    Cluster names passed to the methods must be among ``cluster_names``; an unknown name is a
    programming error and raises :class:`KeyError`.
    """

    def __init__(
        self,
        cluster_names: Sequence[str],
        *,
        staleness_threshold: float,
        poll_interval: float,
        clock: StatusClock,
        identity: str = "",
        is_leader: bool = True,
    ) -> None:
        if staleness_threshold <= 0 or poll_interval <= 0:
            raise ValueError("staleness_threshold and poll_interval must be > 0")
        if len(set(cluster_names)) != len(cluster_names):
            raise ValueError(f"duplicate cluster names: {list(cluster_names)}")
        self._staleness = staleness_threshold
        self._liveness_window = 3 * poll_interval
        self._clock = clock
        self._created_mono = clock.monotonic()
        self._clusters = {name: _ClusterState() for name in cluster_names}
        self.identity = identity
        self._is_leader = is_leader
        self.readiness: Callable[[], tuple[bool, str] | None] | None = None
        """A verdict that overrides ``ready`` while it returns one (sharded mode, unassigned)."""
        self.sharding: Callable[[], dict[str, object]] | None = None
        """Sharded mode's state for ``/leader`` (generation, members, owned buckets, problem)."""

    @property
    def cluster_names(self) -> tuple[str, ...]:
        return tuple(self._clusters)

    @property
    def is_leader(self) -> bool:
        return self._is_leader

    def set_leader(self, is_leader: bool) -> None:
        self._is_leader = is_leader

    def _state(self, cluster: str) -> _ClusterState:
        try:
            return self._clusters[cluster]
        except KeyError:
            raise KeyError(f"unknown cluster {cluster!r}") from None

    def cycle_attempted(self, cluster: str) -> None:
        """A cycle of ``cluster`` has started (proves the loop is alive)."""
        state = self._state(cluster)
        state.last_attempt_mono = self._clock.monotonic()
        state.cycles += 1

    def cycle_succeeded(self, cluster: str, duration_seconds: float) -> None:
        state = self._state(cluster)
        state.last_success_mono = self._clock.monotonic()
        state.last_success_wall = self._clock.time()
        state.last_data_mono = state.last_success_mono
        state.last_duration = duration_seconds
        state.last_error = None
        state.consecutive_failures = 0
        state.successes += 1

    def offsets_published(self, cluster: str) -> None:
        """The offsets of ``cluster``'s first cycle were published before the cycle finished:
        its series are in ``/metrics``, so it counts as fresh (``ready``, ``up``) and goes
        stale like any data. Not a cycle: successes, durations and errors are unchanged."""
        self._state(cluster).last_data_mono = self._clock.monotonic()

    def cycle_failed(self, cluster: str, error: str) -> None:
        """``error`` is a one-line, secret-free reason (shown on ``/`` and in ``once``)."""
        state = self._state(cluster)
        state.last_error = error
        state.consecutive_failures += 1

    def loop_died(self, cluster: str, error: str) -> None:
        """The cluster's loop ended for good; ``healthy`` reports it until the process restarts."""
        self._state(cluster).dead_error = error

    def is_fresh(self, cluster: str) -> bool:
        return self._fresh(self._state(cluster), self._clock.monotonic())

    def _fresh(self, state: _ClusterState, now: float) -> bool:
        return state.last_data_mono is not None and (now - state.last_data_mono <= self._staleness)

    def has_data(self, cluster: str) -> bool:
        """Whether ``cluster`` has published data: a successful cycle or early offsets."""
        return self._state(cluster).last_data_mono is not None

    def up(self) -> bool:
        now = self._clock.monotonic()
        return all(self._fresh(state, now) for state in self._clusters.values())

    def fresh_by_cluster(self) -> dict[str, bool]:
        """Every cluster's freshness at one instant, in configuration order (the per-cluster
        ``klag_pipeline_cluster_up``; False before a cluster's first successful cycle).

        Safe to call from another thread (the OTLP export thread): the set of clusters never
        changes after construction, and each verdict reads two floats."""
        now = self._clock.monotonic()
        return {name: self._fresh(state, now) for name, state in self._clusters.items()}

    def ready(self) -> tuple[bool, str]:
        """(True, "ok"), or False with "standby", "sharding: …", "no data yet" or
        "all clusters stale"."""
        if not self._is_leader:
            return False, "standby"
        if self.readiness is not None:
            verdict = self.readiness()
            if verdict is not None:
                return verdict
        now = self._clock.monotonic()
        states = self._clusters.values()
        if any(self._fresh(state, now) for state in states):
            return True, "ok"
        if all(state.last_data_mono is None for state in states):
            return False, "no data yet"
        return False, "all clusters stale"

    def healthy(self) -> tuple[bool, str]:
        """(True, "ok"), or False naming the first dead or silent cluster loop."""
        now = self._clock.monotonic()
        for name, state in self._clusters.items():
            if state.dead_error is not None:
                return False, f"cluster {name}: collection loop died: {state.dead_error}"
        for name, state in self._clusters.items():
            since = state.last_attempt_mono
            if since is None:
                since = self._created_mono
            silent = now - since
            if silent > self._liveness_window:
                return False, f"cluster {name}: no collection attempt for {silent:.0f}s"
        return True, "ok"

    def snapshot(self) -> tuple[ClusterStatus, ...]:
        """Every cluster's status, in configuration order."""
        now = self._clock.monotonic()
        return tuple(
            ClusterStatus(
                name=name,
                last_success_at=state.last_success_wall,
                age_seconds=(
                    None if state.last_success_mono is None else now - state.last_success_mono
                ),
                last_error=state.last_error,
                consecutive_failures=state.consecutive_failures,
                cycles=state.cycles,
                successes=state.successes,
                last_duration=state.last_duration,
                fresh=self._fresh(state, now),
                dead_error=state.dead_error,
            )
            for name, state in self._clusters.items()
        )
