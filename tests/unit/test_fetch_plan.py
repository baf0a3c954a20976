"""Fetch planning: batching per leader, rounds for several offsets, byte budgets, ordering."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from klag_pipeline.kafka.fetch_plan import (
    DEFAULT_PARTITION_BYTES,
    FetchPlan,
    PartitionFetch,
    partition_max_bytes,
    plan_fetches,
)
from klag_pipeline.model import TopicPartition

CAP = 262_144


def tp(topic: str, partition: int = 0) -> TopicPartition:
    return TopicPartition(topic, partition)


def layout(plan: FetchPlan) -> list[list[tuple[int, list[tuple[str, int, int]]]]]:
    """Rounds → requests → (leader, [(topic, partition, offset)]) for readable assertions."""
    return [
        [
            (request.leader, [(f.tp.topic, f.tp.partition, f.offset) for f in request.partitions])
            for request in round_
        ]
        for round_ in plan.rounds
    ]


def test_one_request_per_leader_in_one_round() -> None:
    plan = plan_fetches(
        {tp("a", 0): [10], tp("a", 1): [20], tp("b", 0): [30]},
        {tp("a", 0): 1, tp("a", 1): 2, tp("b", 0): 1},
        max_bytes_per_partition=CAP,
    )

    assert layout(plan) == [[(1, [("a", 0, 10), ("b", 0, 30)]), (2, [("a", 1, 20)])]]
    assert plan.leaderless == ()


def test_several_offsets_of_one_partition_go_to_later_rounds_deduplicated() -> None:
    plan = plan_fetches(
        {tp("a"): [30, 10, 20, 10], tp("b"): [5]},
        {tp("a"): 1, tp("b"): 1},
        max_bytes_per_partition=CAP,
    )

    assert layout(plan) == [
        [(1, [("a", 0, 10), ("b", 0, 5)])],
        [(1, [("a", 0, 20)])],
        [(1, [("a", 0, 30)])],
    ]


def test_partition_without_leader_is_not_planned() -> None:
    plan = plan_fetches(
        {tp("a"): [1], tp("b"): [2], tp("c"): [3]},
        {tp("a"): 1, tp("b"): -1},
        max_bytes_per_partition=CAP,
    )

    assert layout(plan) == [[(1, [("a", 0, 1)])]]
    assert plan.leaderless == (tp("b"), tp("c"))


def test_partition_budget_uses_the_learned_size_not_the_cap() -> None:
    assert partition_max_bytes(None, CAP) == DEFAULT_PARTITION_BYTES
    assert partition_max_bytes(100, CAP) == DEFAULT_PARTITION_BYTES
    assert partition_max_bytes(70_000, CAP) == 70_000
    assert partition_max_bytes(1_000_000, CAP) == CAP
    assert partition_max_bytes(None, 4_096) == 4_096

    plan = plan_fetches(
        {tp("a"): [1], tp("b"): [1]},
        {tp("a"): 1, tp("b"): 1},
        max_bytes_per_partition=CAP,
        learned_sizes={tp("b"): 70_000},
    )
    (request,) = plan.requests

    assert {f.tp.topic: f.max_bytes for f in request.partitions} == {
        "a": DEFAULT_PARTITION_BYTES,
        "b": 70_000,
    }
    assert request.max_bytes == DEFAULT_PARTITION_BYTES + 70_000


def test_partitions_that_came_back_empty_lead_their_own_request_with_the_cap() -> None:
    plan = plan_fetches(
        {tp("a"): [1], tp("b"): [1], tp("c"): [1], tp("d"): [1]},
        {tp("a"): 1, tp("b"): 1, tp("c"): 1, tp("d"): 1},
        max_bytes_per_partition=CAP,
        head_first=[tp("c"), tp("d")],
    )

    assert layout(plan) == [[(1, [("c", 0, 1)]), (1, [("d", 0, 1), ("a", 0, 1), ("b", 0, 1)])]]
    heads = [request.partitions[0] for request in plan.requests]
    assert heads == [PartitionFetch(tp("c"), 1, CAP), PartitionFetch(tp("d"), 1, CAP)]


def test_partitions_of_known_size_come_first() -> None:
    plan = plan_fetches(
        {tp("a"): [1], tp("b"): [1], tp("c"): [1]},
        {tp("a"): 1, tp("b"): 1, tp("c"): 1},
        max_bytes_per_partition=CAP,
        learned_sizes={tp("c"): 500},
    )

    assert layout(plan) == [[(1, [("c", 0, 1), ("a", 0, 1), ("b", 0, 1)])]]


def test_request_budget_splits_a_leader_into_several_requests() -> None:
    wanted = {tp("t", p): [0] for p in range(10)}
    plan = plan_fetches(
        wanted,
        dict.fromkeys(wanted, 1),
        max_bytes_per_partition=CAP,
        max_request_bytes=3 * DEFAULT_PARTITION_BYTES,
    )

    assert [len(request.partitions) for request in plan.requests] == [3, 3, 3, 1]
    assert all(request.max_bytes <= 3 * DEFAULT_PARTITION_BYTES for request in plan.requests)


def test_nothing_wanted_plans_nothing() -> None:
    assert plan_fetches({tp("a"): []}, {tp("a"): 1}, max_bytes_per_partition=CAP) == FetchPlan(
        (), ()
    )


@given(
    st.dictionaries(
        st.tuples(st.sampled_from("abc"), st.integers(0, 5)),
        st.lists(st.integers(0, 50), max_size=4),
        max_size=12,
    ),
    st.integers(1, 3),
)
def test_every_offset_read_exactly_once_and_no_partition_twice_per_request(
    raw: dict[tuple[str, int], list[int]], brokers: int
) -> None:
    wanted = {tp(topic, partition): offsets for (topic, partition), offsets in raw.items()}
    leaders = {key: hash(key) % brokers for key in wanted}

    plan = plan_fetches(wanted, leaders, max_bytes_per_partition=CAP, max_request_bytes=2 * CAP)

    planned = Counter((f.tp, f.offset) for r in plan.requests for f in r.partitions)
    assert planned == Counter({(key, o): 1 for key, offsets in wanted.items() for o in offsets})
    for request in plan.requests:
        assert len({f.tp for f in request.partitions}) == len(request.partitions)
        assert all(leaders[f.tp] == request.leader for f in request.partitions)
        assert request.max_bytes <= 2 * CAP
