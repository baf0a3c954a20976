"""Plan the Fetch requests that read timestamps at committed offsets: batched per leader.

Pure: no I/O. The broker facts this relies on (PROTOCOL.md, "Reading the timestamp at a
committed offset"): one partition may appear at most once per Fetch; a partition whose first
batch is larger than its ``max_bytes`` comes back empty, except the first partition of a request,
which always gets its whole first batch; partitions are served in request order until the
request's ``max_bytes`` is used up.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from klag_pipeline.model import TopicPartition

DEFAULT_PARTITION_BYTES = 16 * 1024
"""Bytes asked per partition while its batch size is unknown: a typical producer batch fits,
and most of a 256 KiB cap is not spent on partitions whose record sits in a small batch."""

DEFAULT_REQUEST_BYTES = 8 * 1024 * 1024
"""Response budget of one Fetch request. Keeps the decode of one response short (it runs on the
event loop) and far below the broker's fetch.max.bytes (55 MiB by default)."""


@dataclass(frozen=True, slots=True)
class PartitionFetch:
    """Read ``tp`` from ``offset``, at most ``max_bytes`` (the head partition may get more)."""

    tp: TopicPartition
    offset: int
    max_bytes: int


@dataclass(frozen=True, slots=True)
class FetchRequestPlan:
    """One Fetch request to ``leader``; ``partitions`` in request order, each at most once."""

    leader: int
    partitions: tuple[PartitionFetch, ...]

    @property
    def max_bytes(self) -> int:
        """Response budget: the sum of the partitions' budgets, so none is starved by design."""
        return sum(fetch.max_bytes for fetch in self.partitions)


@dataclass(frozen=True, slots=True)
class FetchPlan:
    """Requests grouped in rounds: a partition with several offsets appears once per round.

    Requests of one round are independent of each other (and, as Fetch requests carry no
    session, of other rounds). ``leaderless`` partitions have no known leader: not planned.
    """

    rounds: tuple[tuple[FetchRequestPlan, ...], ...]
    leaderless: tuple[TopicPartition, ...]

    @property
    def requests(self) -> tuple[FetchRequestPlan, ...]:
        return tuple(request for round_ in self.rounds for request in round_)


def partition_max_bytes(learned_size: int | None, cap: int) -> int:
    """Budget for one partition: the learned batch size (at least the default), never the cap
    unless needed, never above it."""
    return min(cap, max(learned_size or 0, DEFAULT_PARTITION_BYTES))


def plan_fetches(
    wanted: Mapping[TopicPartition, Collection[int]],
    leaders: Mapping[TopicPartition, int],
    *,
    max_bytes_per_partition: int,
    learned_sizes: Mapping[TopicPartition, int] | None = None,
    head_first: Collection[TopicPartition] = (),
    max_request_bytes: int = DEFAULT_REQUEST_BYTES,
) -> FetchPlan:
    """Batch the reads of ``wanted`` (offsets per partition) into Fetch requests per leader.

    ``head_first``: partitions that came back empty without telling their batch size; each is
    put first in a request of its own (so it gets its whole first batch) with the full cap.
    Other partitions are ordered with those of a known batch size first: a head partition that
    fits its budget cannot overshoot it. A request holds at most ``max_request_bytes`` of
    partition budgets, except that a single partition always gets a request.
    """
    sizes = learned_sizes or {}
    heads = set(head_first)
    by_leader: dict[int, dict[TopicPartition, list[int]]] = defaultdict(dict)
    leaderless: list[TopicPartition] = []
    for tp in sorted(wanted):
        offsets = sorted(set(wanted[tp]))
        if not offsets:
            continue
        leader = leaders.get(tp)
        if leader is None or leader < 0:
            leaderless.append(tp)
            continue
        by_leader[leader][tp] = offsets

    depth = max((len(o) for parts in by_leader.values() for o in parts.values()), default=0)
    rounds: list[tuple[FetchRequestPlan, ...]] = []
    for index in range(depth):
        requests: list[FetchRequestPlan] = []
        for leader in sorted(by_leader):
            fetches = [
                PartitionFetch(
                    tp,
                    offsets[index],
                    max_bytes_per_partition
                    if tp in heads
                    else partition_max_bytes(sizes.get(tp), max_bytes_per_partition),
                )
                for tp, offsets in by_leader[leader].items()
                if index < len(offsets)
            ]
            requests.extend(_requests_for(leader, fetches, heads, sizes, max_request_bytes))
        rounds.append(tuple(requests))
    return FetchPlan(rounds=tuple(rounds), leaderless=tuple(leaderless))


def _requests_for(
    leader: int,
    fetches: Sequence[PartitionFetch],
    heads: Collection[TopicPartition],
    sizes: Mapping[TopicPartition, int],
    max_request_bytes: int,
) -> list[FetchRequestPlan]:
    head_fetches = [fetch for fetch in fetches if fetch.tp in heads]
    rest = sorted(
        (fetch for fetch in fetches if fetch.tp not in heads),
        key=lambda fetch: (fetch.tp not in sizes, fetch.tp),
    )
    chunks: list[list[PartitionFetch]] = [[fetch] for fetch in head_fetches]
    budget = sum(fetch.max_bytes for fetch in chunks[-1]) if chunks else 0
    if not chunks:
        chunks.append([])
    for fetch in rest:
        if chunks[-1] and budget + fetch.max_bytes > max_request_bytes:
            chunks.append([])
            budget = 0
        chunks[-1].append(fetch)
        budget += fetch.max_bytes
    return [FetchRequestPlan(leader, tuple(chunk)) for chunk in chunks if chunk]


__all__ = [
    "DEFAULT_PARTITION_BYTES",
    "DEFAULT_REQUEST_BYTES",
    "FetchPlan",
    "FetchRequestPlan",
    "PartitionFetch",
    "partition_max_bytes",
    "plan_fetches",
]
