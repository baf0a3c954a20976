"""Group coordinators: batched FindCoordinator, and the one relocate-and-retry round that
DescribeGroups and OffsetFetch share when an answer says a group's coordinator moved.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TypeVar

from klag_pipeline.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from klag_pipeline.kafka.adapter.transport import Transport, chunked
from klag_pipeline.kafka.errors import error_name
from klag_pipeline.kafka.protocol import (
    FIND_COORDINATOR,
    decode_find_coordinator,
    encode_find_coordinator,
)
from klag_pipeline.model import Failure, ListedGroup

DESCRIBE_CHUNK = 10_000
"""Groups per DescribeGroups / ConsumerGroupDescribe / FindCoordinator request: one request per
coordinator up to 10,000 groups, so the request count does not grow with the number of groups
(issue 9). Answers above 64 KiB are decoded in a worker thread."""

_T = TypeVar("_T")


@dataclass
class Round:
    """Accumulates one call's results; ``retry`` holds groups whose coordinator moved."""

    stage: str
    failures: list[Failure] = field(default_factory=list)
    retry: list[ListedGroup] = field(default_factory=list)
    errors: list[KafkaError] = field(default_factory=list)
    answered: int = 0
    gone: set[str] = field(default_factory=set)

    def request_failed(self, node: int, exc: KafkaError, groups: Sequence[ListedGroup]) -> None:
        self.errors.append(exc)
        self.failures.append(Failure(self.stage, str(node), str(exc)))
        # A broken connection may mean the coordinator moved; a timeout would just cost
        # another full timeout on a retry, and an auth/protocol error would repeat.
        if isinstance(exc, KafkaConnectionError) and not isinstance(exc, KafkaTimeoutError):
            self.retry.extend(groups)


RoundRunner = Callable[[Sequence[ListedGroup], Round], Awaitable[None]]
"""Asks the coordinators of the given groups and records the outcome in the round."""


class Coordinators:
    def __init__(self, transport: Transport, semaphore: asyncio.Semaphore) -> None:
        self._t = transport
        self._sem = semaphore

    async def with_retry(
        self, stage: str, groups: Sequence[ListedGroup], run: RoundRunner
    ) -> Round:
        """``run`` for ``groups``, then once more for the groups whose coordinator moved, at
        their new coordinator (one batched FindCoordinator). The merged round holds every
        failure in order; raises the first request error when groups were asked and no request
        was answered."""
        first = Round(stage)
        await run(groups, first)
        merged = Round(stage, first.failures, [], list(first.errors), first.answered, first.gone)
        if first.retry:
            moved = await self._relocate(first.retry, merged.failures, stage)
            second = Round(stage)
            await run(moved, second)
            merged.failures += second.failures
            merged.errors += second.errors
            merged.answered += second.answered
            merged.gone |= second.gone
            merged.failures += _gave_up(second.retry, stage)
        if groups and merged.errors and not merged.answered:
            raise merged.errors[0]
        return merged

    async def _relocate(
        self, groups: Sequence[ListedGroup], failures: list[Failure], stage: str
    ) -> list[ListedGroup]:
        """The same groups with their current coordinator (one batched FindCoordinator)."""
        found = await self.find([g.group_id for g in groups], failures, stage)
        moved = []
        for group in groups:
            node = found.get(group.group_id)
            if node is None:
                continue
            moved.append(replace(group, coordinator=node))
        return moved

    async def find(
        self, group_ids: Sequence[str], failures: list[Failure], stage: str
    ) -> dict[str, int]:
        """group id → coordinator node; groups that cannot be located get a Failure."""
        found: dict[str, int] = {}
        unique = sorted(set(group_ids))
        last_error: KafkaError | None = None
        for node in self._t.nodes():
            try:
                version = await self._t.require(node, FIND_COORDINATOR)
                if version >= 4:
                    calls = [
                        self._t.call(
                            node,
                            FIND_COORDINATOR,
                            version,
                            encode_find_coordinator(version, chunk),
                            partial(decode_find_coordinator, version),
                        )
                        for chunk in chunked(unique, DESCRIBE_CHUNK)
                    ]
                else:
                    calls = [
                        self._bounded(
                            partial(
                                self._t.call,
                                node,
                                FIND_COORDINATOR,
                                version,
                                encode_find_coordinator(version, [key]),
                                partial(decode_find_coordinator, version, key=key),
                            )
                        )
                        for key in unique
                    ]
                responses = await asyncio.gather(*calls)
            except KafkaError as exc:
                last_error = exc
                continue
            for response in responses:
                for c in response.coordinators:
                    if c.error_code == 0 and c.node_id >= 0:
                        found[c.key] = c.node_id
                    else:
                        failures.append(
                            Failure(stage, c.key, f"FindCoordinator: {error_name(c.error_code)}")
                        )
            break
        else:
            reason = str(last_error) if last_error else "no broker answered"
            failures.extend(Failure(stage, g, f"FindCoordinator: {reason}") for g in unique)
        if any(node not in self._t.nodes() for node in found.values()):
            self._t.request_metadata_refresh()
        return found

    async def _bounded(self, call: Callable[[], Awaitable[_T]]) -> _T:
        async with self._sem:
            return await call()


def _gave_up(groups: Iterable[ListedGroup], stage: str) -> list[Failure]:
    return [Failure(stage, g.group_id, "coordinator moved twice; retry next cycle") for g in groups]
