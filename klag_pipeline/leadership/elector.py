"""The election loop (SPEC §8): provider answers in, ``on_elected`` / ``on_demoted`` out.

The :class:`LeaderElector` calls its provider every ``retry_period`` and turns its answers into
two transitions, ``on_elected`` and ``on_demoted``:

* a successful round that says "you lead" elects (or renews);
* a successful round that says "someone else leads" demotes at once;
* failed rounds keep the current role until ``renew_deadline`` has passed since the start of the
  last successful round, then demote. Backends hand leadership to another instance only after
  ``lease_duration`` without a renewal, and the loader enforces
  ``lease_duration > renew_deadline > retry_period``, so two instances never both lead for longer
  than the margin between them.

Timing is measured from when a round *started*, never when it answered: the backend saw the
renewal no earlier than that, which keeps the bound conservative. All waiting is on the injected
:class:`Clock`; the few tasks a wait needs live in a TaskGroup local to the call that made them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog

from klag_pipeline.leadership.provider import LeadershipError, LeadershipProvider
from klag_pipeline.pipeline.clock import Clock
from klag_pipeline.settings.schema import LeadershipSettings

log = structlog.get_logger("klag_pipeline.leadership")

T = TypeVar("T")

Transition = Callable[[], Awaitable[None]]


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
        escaped: Exception | None = None
        async with asyncio.TaskGroup() as group:
            attempt = group.create_task(_settled(self._provider.acquire_or_renew()))
            try:
                answered = await self._await_answer(attempt, stop, started)
            except Exception as exc:
                # Raised from the group's body it would come out inside an ExceptionGroup
                # (a transition callback's error must reach the caller unchanged).
                answered, escaped = False, exc
            finally:
                attempt.cancel()  # no-op once answered; the group waits for it either way
        if escaped is not None:
            raise escaped
        if not answered:
            return
        outcome = attempt.result()
        if isinstance(outcome, _Raised):
            if not isinstance(outcome.error, LeadershipError):
                raise outcome.error
            self._failed(outcome.error, started)
            await self._step_down_if_expired()
            return
        await self._succeeded(outcome, started)

    async def _await_answer(
        self, attempt: asyncio.Task[bool | _Raised], stop: asyncio.Event, started: float
    ) -> bool:
        """Wait for the round's answer; False when stopped or out of time (then abandon it)."""
        limit = started + self._round_timeout
        while not attempt.done():
            deadline = limit
            if self._leader:
                deadline = min(deadline, self._renewed_at + self._renew_deadline)
            await _first(self._clock, deadline, stop, attempt)
            if attempt.done():
                break
            if stop.is_set():
                return False
            if self._clock.monotonic() >= limit:
                self._failed(LeadershipError(f"no answer within {self._round_timeout:g}s"), started)
                return False
            # The round is still running but the renew deadline has passed: step down now
            # and let the round's answer (if it ever comes) re-elect.
            await self._step_down_if_expired()
        return True

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
            await _first(self._clock, wake, stop)
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


@dataclass(frozen=True, slots=True)
class _Raised:
    error: Exception


async def _settled(work: Awaitable[T]) -> T | _Raised:
    """``work``'s result or what it raised, as a value: a TaskGroup child that raised would
    cancel the group's body and come out wrapped in an ExceptionGroup."""
    try:
        return await work
    except Exception as exc:
        return _Raised(exc)


async def _first(
    clock: Clock, deadline: float, stop: asyncio.Event | None, *also: asyncio.Future[Any]
) -> None:
    """Return once ``deadline`` (on ``clock``) has come, ``stop`` is set or any of ``also`` is
    done, whichever is first. Leaves ``also`` running."""
    async with asyncio.TaskGroup() as group:
        waiters: list[asyncio.Task[Any]] = [group.create_task(clock.sleep_until(deadline))]
        if stop is not None:
            waiters.append(group.create_task(stop.wait()))
        await asyncio.wait([*waiters, *also], return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()


async def _bounded(work: Awaitable[None], clock: Clock, seconds: float) -> None:
    """Await ``work`` for at most ``seconds`` on ``clock``; raise LeadershipError after that."""
    async with asyncio.TaskGroup() as group:
        task = group.create_task(_settled(work))
        await _first(clock, clock.monotonic() + seconds, None, task)
        answered = task.done()
        task.cancel()
    if not answered:
        raise LeadershipError(f"no answer within {seconds:g}s")
    outcome = task.result()
    if isinstance(outcome, _Raised):
        raise outcome.error
