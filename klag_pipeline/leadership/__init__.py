"""Active-passive high availability (SPEC §8): the provider port and the election loop.

A :class:`LeadershipProvider` talks to one coordination backend (a Kubernetes Lease, or a Kafka
consumer group used for membership only). The :class:`LeaderElector` calls it every
``retry_period`` and turns its answers into two transitions, ``on_elected`` and ``on_demoted``:

* a successful round that says "you lead" elects (or renews);
* a successful round that says "someone else leads" demotes at once;
* failed rounds keep the current role until ``renew_deadline`` has passed since the start of the
  last successful round, then demote. Backends hand leadership to another instance only after
  ``lease_duration`` without a renewal, and the loader enforces
  ``lease_duration > renew_deadline > retry_period``, so two instances never both lead for longer
  than the margin between them.

Timing is measured from when a round *started*, never when it answered: the backend saw the
renewal no earlier than that, which keeps the bound conservative.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import structlog

from klag_pipeline.errors import KlagError
from klag_pipeline.pipeline.clock import Clock
from klag_pipeline.settings.schema import LeadershipSettings, Settings

log = structlog.get_logger("klag_pipeline.leadership")

Transition = Callable[[], Awaitable[None]]


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


class LeadershipObserver(Protocol):
    """Where the election loop reports its role and failed rounds (the self-metrics)."""

    def role(self, leader: bool) -> None: ...

    def error(self) -> None: ...


class LeaderElector:
    """Runs election rounds until stopped; calls ``on_elected`` / ``on_demoted`` on transitions.

    On stop it demotes (if leading), releases leadership within ``release_timeout`` and closes
    the provider. A round that runs longer than ``round_timeout`` (default: twice the lease) is
    cancelled and counted as a failure, so a hung backend cannot freeze the loop.
    """

    def __init__(
        self,
        provider: LeadershipProvider,
        settings: LeadershipSettings,
        *,
        clock: Clock,
        on_elected: Transition,
        on_demoted: Transition,
        metrics: LeadershipObserver | None = None,
        release_timeout: float = 5.0,
        round_timeout: float | None = None,
    ) -> None:
        if not settings.lease_duration > settings.renew_deadline > settings.retry_period > 0:
            raise ValueError("need lease_duration > renew_deadline > retry_period > 0")
        self._provider = provider
        self._renew_deadline = settings.renew_deadline
        self._retry_period = settings.retry_period
        self._clock = clock
        self._on_elected = on_elected
        self._on_demoted = on_demoted
        self._metrics = metrics
        self._release_timeout = release_timeout
        self._round_timeout = round_timeout or 2 * settings.lease_duration
        self._leader = False
        self._renewed_at = 0.0
        self._failing = False
        self.rounds = 0
        """Rounds finished so far (answered, failed or timed out)."""

    @property
    def is_leader(self) -> bool:
        return self._leader

    @property
    def provider(self) -> LeadershipProvider:
        return self._provider

    async def run(self, stop: asyncio.Event) -> None:
        """Elect, renew and step down until ``stop`` is set; then release and close."""
        log.info(
            "leadership_started",
            provider=self._provider.kind,
            identity=self._provider.identity,
            renew_deadline=self._renew_deadline,
            retry_period=self._retry_period,
        )
        try:
            while not stop.is_set():
                started = self._clock.monotonic()
                await self._round(stop, started)
                self.rounds += 1
                await self._pause(stop, started + self._retry_period)
        finally:
            await self._shutdown()

    # -- one round ------------------------------------------------------------------------------

    async def _round(self, stop: asyncio.Event, started: float) -> None:
        attempt = asyncio.ensure_future(self._provider.acquire_or_renew())
        stopped = asyncio.ensure_future(stop.wait())
        limit = started + self._round_timeout
        try:
            while not attempt.done():
                deadline = limit
                if self._leader:
                    deadline = min(deadline, self._renewed_at + self._renew_deadline)
                timer = asyncio.ensure_future(self._clock.sleep_until(deadline))
                try:
                    await asyncio.wait(
                        {attempt, stopped, timer}, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    await _reap(timer)
                if attempt.done():
                    break
                if stopped.done():
                    return
                if self._clock.monotonic() >= limit:
                    self._failed(
                        LeadershipError(f"no answer within {self._round_timeout:g}s"), started
                    )
                    return
                # The round is still running but the renew deadline has passed: step down now
                # and let the round's answer (if it ever comes) re-elect.
                await self._step_down_if_expired()
            try:
                leading = attempt.result()
            except LeadershipError as exc:
                self._failed(exc, started)
                await self._step_down_if_expired()
                return
            await self._succeeded(leading, started)
        finally:
            await _reap(attempt)
            await _reap(stopped)

    async def _succeeded(self, leading: bool, started: float) -> None:
        if self._failing:
            self._failing = False
            log.info("leadership_backend_recovered", provider=self._provider.kind)
        if not leading:
            if self._leader:
                await self._demote("another instance holds leadership", warn=True)
            return
        if self._clock.monotonic() - started >= self._renew_deadline:
            # The answer came too late to be trusted: by now another instance may have taken
            # over. The next round asks again.
            await self._step_down_if_expired()
            return
        self._renewed_at = started
        if not self._leader:
            await self._promote()

    def _failed(self, error: BaseException, started: float) -> None:
        if self._metrics is not None:
            self._metrics.error()
        if not self._failing:
            self._failing = True
            log.warning(
                "leadership_backend_failed",
                provider=self._provider.kind,
                error=str(error),
                leader=self._leader,
            )
        else:
            log.debug("leadership_backend_failed", provider=self._provider.kind, error=str(error))

    async def _step_down_if_expired(self) -> None:
        if self._leader and self._clock.monotonic() >= self._renewed_at + self._renew_deadline:
            await self._demote(
                f"could not renew within renew_deadline ({self._renew_deadline:g}s)", warn=True
            )

    async def _pause(self, stop: asyncio.Event, until: float) -> None:
        """Wait for the next round; step down on the way if the renew deadline passes."""
        while not stop.is_set() and self._clock.monotonic() < until:
            wake = until
            if self._leader:
                wake = min(wake, self._renewed_at + self._renew_deadline)
            await _wait_event_until(stop, self._clock, wake)
            await self._step_down_if_expired()

    # -- transitions ----------------------------------------------------------------------------

    async def _promote(self) -> None:
        self._leader = True
        if self._metrics is not None:
            self._metrics.role(True)
        log.info(
            "leadership_acquired", provider=self._provider.kind, identity=self._provider.identity
        )
        await self._on_elected()

    async def _demote(self, reason: str, *, warn: bool) -> None:
        self._leader = False
        if self._metrics is not None:
            self._metrics.role(False)
        (log.warning if warn else log.info)(
            "leadership_lost",
            provider=self._provider.kind,
            reason=reason,
            holder=self._provider.holder,
        )
        await self._on_demoted()

    async def _shutdown(self) -> None:
        if self._leader:
            await self._demote("shutting down", warn=False)
        try:
            await _bounded(self._provider.release(), self._clock, self._release_timeout)
        except LeadershipError as exc:
            log.warning("leadership_release_failed", provider=self._provider.kind, error=str(exc))
        finally:
            await self._provider.close()
        log.info("leadership_released", provider=self._provider.kind)


async def _reap(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` if it still runs and wait until it has finished."""
    if not task.done():
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _wait_event_until(event: asyncio.Event, clock: Clock, deadline: float) -> None:
    waiter = asyncio.ensure_future(event.wait())
    timer = asyncio.ensure_future(clock.sleep_until(deadline))
    try:
        await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await _reap(waiter)
        await _reap(timer)


async def _bounded(work: Awaitable[None], clock: Clock, seconds: float) -> None:
    """Await ``work`` for at most ``seconds`` on ``clock``; raise LeadershipError after that."""
    task = asyncio.ensure_future(work)
    timer = asyncio.ensure_future(clock.sleep_until(clock.monotonic() + seconds))
    try:
        await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            raise LeadershipError(f"no answer within {seconds:g}s")
        task.result()
    finally:
        await _reap(task)
        await _reap(timer)


class StandbyGate:
    """Wraps a pipeline's first stage: while this instance is a standby, cycles stop here.

    A skipped cycle raises :class:`NotLeader` (the pipeline drops it without counting a failure)
    and is reported to ``on_skipped``, so ``/health`` still sees a live loop on a standby.
    """

    def __init__(
        self, stage: Any, is_leader: Callable[[], bool], on_skipped: Callable[[], None]
    ) -> None:
        self.stage = stage
        self.name: str = stage.name
        self._is_leader = is_leader
        self._on_skipped = on_skipped

    async def process(self, event: Any) -> Any:
        if not self._is_leader():
            self._on_skipped()
            raise NotLeader("standby: collection runs on the leader only")
        return await self.stage.process(event)


def resolve_identity(settings: LeadershipSettings, env: Mapping[str, str] = os.environ) -> str:
    """``identity`` if configured, else ``POD_NAME``, ``HOSTNAME``, or a random name.

    Two instances with the same identity would both believe they hold a Kubernetes Lease: set
    ``identity`` when several instances share a host name.
    """
    for candidate in (settings.identity, env.get("POD_NAME"), env.get("HOSTNAME")):
        if candidate:
            return candidate
    return f"klag-pipeline-{secrets.token_hex(4)}"


def build_provider(settings: Settings, identity: str) -> LeadershipProvider:
    """The provider ``[exporter.leadership] provider`` names, configured but not connected."""
    leadership = settings.exporter.leadership
    if leadership.provider == "kafka":
        from klag_pipeline.leadership.kafka import KafkaGroupProvider

        name = leadership.cluster or settings.clusters[0].name
        cluster = next(c for c in settings.clusters if c.name == name)
        return KafkaGroupProvider(
            cluster, leadership, identity, performance=settings.exporter.performance
        )
    from klag_pipeline.leadership.kubernetes import KubernetesLeaseProvider

    return KubernetesLeaseProvider(leadership, identity)
