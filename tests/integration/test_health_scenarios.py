"""Consumer health on a real broker (issue 14): each scenario drives real aiokafka consumers and
producers into one state and reads the status the running exporter published for it.

Timings are short (poll 0.5 s, window 3 s, stalled/stopped/abandoned after 2 s, see
``health_support.HEALTH``) so time-based states are reached by real time passing, awaited with
a deadline. The drivers work in 100 ms ticks; every expected rate or time follows from the
records per tick the test chose, or from when the test stopped committing or closed a member.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import pytest
from aiokafka.structs import TopicPartition as AioTopicPartition

from klag_pipeline.health.model import Status
from klag_pipeline.model import GroupState, TopicPartition
from klag_pipeline.settings.schema import Settings
from klag_pipeline.snapshot import ClusterSnapshot
from tests.integration.health_support import (
    HEALTH,
    POLL,
    PacedProducer,
    between,
    driving,
    first_snapshot,
    group_health,
    health_config,
    paced_consumer,
    partition_health,
    row_of,
    summary_of,
)
from tests.integration.pipeline_support import cluster, exactly, running
from tests.support.kafka import KafkaTestClient, Rec
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka

CLUSTER = "health"


def status_is(group: str, tp: TopicPartition, status: Status) -> Callable[[ClusterSnapshot], bool]:
    def check(snapshot: ClusterSnapshot) -> bool:
        health = partition_health(snapshot, group, tp)
        return health is not None and health.status is status

    return check


async def one_partition(
    kafka: KafkaTestClient, unique: Callable[[str], str], **health: object
) -> tuple[str, str, TopicPartition, Settings]:
    """A fresh one-partition topic, a group name, its partition, and an exporter's settings
    watching only that group (with ``health`` overrides)."""
    topic, group = unique("t"), unique("g")
    await kafka.create_topic(topic, partitions=1)
    watched = cluster(CLUSTER, kafka.bootstrap, groups=[exactly(group)])
    return topic, group, TopicPartition(topic, 0), health_config(watched, **health)


async def test_steady_consumer_keeping_up_is_ok(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    """Producing 2 records a tick, consuming up to 10 a tick and committing each: the consumer
    is never more than a tick behind, so once known it stays OK (never LAGGING, STALLED...)."""
    topic, group, tp, config = await one_partition(kafka, unique)
    producer = PacedProducer(kafka, topic, per_tick=2)
    async with (
        running(config) as run,
        paced_consumer(kafka_bootstrap, group, topic, per_tick=10) as member,
        driving(producer.step, member.step),
    ):
        # From its first OK on (a consumer that joins late — the group coordinator of a fresh
        # broker may not be available yet — is rightly STALLED before it starts committing).
        known = await first_snapshot(
            run.recorder,
            CLUSTER,
            lambda s: (
                getattr(partition_health(s, group, tp), "status", Status.UNKNOWN) is Status.OK
            ),
            what="an OK status",
        )
        # Longer than stalled_after and the window: commit age and trend both had their say.
        end = known.observed_at + HEALTH.window + HEALTH.stalled_after
        await first_snapshot(run.recorder, CLUSTER, lambda _: True, after=end, what="the end")
    watched = between(run.recorder, CLUSTER, known.observed_at, end)
    judged = [partition_health(s, group, tp) for s in watched]
    statuses = [h.status for h in judged]  # type: ignore[union-attr]
    assert len(watched) >= 8
    # The reasons and the lags seen say whether a non-OK status was a stall of the drivers on
    # a loaded machine or a false alarm of the rules.
    assert set(statuses) == {Status.OK}, [
        (h.status.name, h.reason, getattr(row_of(s, group, tp), "lag", None))  # type: ignore[union-attr]
        for h, s in zip(judged, watched, strict=True)
    ]
    assert {group_health(s, group).status for s in watched} == {Status.OK}  # type: ignore[union-attr]


async def test_commit_only_consumer_slower_than_producer_is_lagging(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    """The slow consumer of the LAGGING scenario (6 records produced a tick, 2 consumed and
    committed), but assigning its partition itself and committing without joining the group,
    as Flink and Spark do: it consumes all the time, so it is LAGGING, not STOPPED."""
    topic, group, tp, config = await one_partition(kafka, unique)
    producer = PacedProducer(kafka, topic, per_tick=6)
    async with (
        running(config) as run,
        paced_consumer(kafka_bootstrap, group, topic, per_tick=2, join=False) as member,
        driving(producer.step, member.step),
    ):
        start = time.time()
        judged = await first_snapshot(
            run.recorder,
            CLUSTER,
            lambda s: (
                getattr(partition_health(s, group, tp), "status", Status.UNKNOWN)
                is not Status.UNKNOWN
            ),
            after=start + HEALTH.window,  # rates over a window of steady driving only
            what="a known status",
        )
        # It is committing: its last commit is far younger than stalled_after / stopped_after.
        assert member.last_commit_at >= judged.observed_at - HEALTH.stopped_after / 2
    health = partition_health(judged, group, tp)
    assert health is not None
    assert summary_of(judged, group).member_count == 0  # type: ignore[union-attr]
    assert health.commit_age_seconds < HEALTH.stalled_after
    assert (health.status, health.reason[:13]) == (Status.LAGGING, "lag grew from")


async def test_caught_up_group_on_idle_topic_stays_ok(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    """Burrow's false STALL: a member that consumed everything on a topic nobody produces to
    never commits again, yet it is OK (caught up) for longer than stalled_after."""
    topic, group, tp, config = await one_partition(kafka, unique)
    await kafka.produce(topic, [Rec(b"x")] * 10)
    async with (
        running(config) as run,
        kafka.classic_member(group, topic) as member,
    ):
        await member.wait_consumed(10)
        caught_up = await first_snapshot(
            run.recorder,
            CLUSTER,
            lambda s: (
                getattr(row_of(s, group, tp), "committed", None) == 10
                and getattr(partition_health(s, group, tp), "status", Status.UNKNOWN)
                is not Status.UNKNOWN
            ),  # two observations of it, the least any status needs
            what="commit at the end of the log, judged",
        )
        end = caught_up.observed_at + HEALTH.stalled_after + HEALTH.window
        last = await first_snapshot(run.recorder, CLUSTER, lambda _: True, after=end)
        watched = between(run.recorder, CLUSTER, caught_up.observed_at, end)
        assert summary_of(last, group).member_count == 1  # type: ignore[union-attr]  # still in
    assert len(watched) >= 8
    for snapshot in watched:
        health = partition_health(snapshot, group, tp)
        assert health is not None
        assert (health.status, health.reason, health.catch_up_seconds) == (
            Status.OK,
            "caught up",
            0.0,
        )
    assert partition_health(last, group, tp).commit_age_seconds >= HEALTH.stalled_after  # type: ignore[union-attr]


async def test_consumer_slower_than_producer_is_lagging(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    """6 records a tick produced, 2 consumed and committed: lag grows by 40 records/s, the
    consumer commits all the time (not STALLED), so LAGGING, and it never catches up."""
    topic, group, tp, config = await one_partition(kafka, unique)
    producer = PacedProducer(kafka, topic, per_tick=6)
    async with (
        running(config) as run,
        paced_consumer(kafka_bootstrap, group, topic, per_tick=2) as member,
        driving(producer.step, member.step),
    ):
        start = time.time()
        lagging = await first_snapshot(
            run.recorder,
            CLUSTER,
            status_is(group, tp, Status.LAGGING),
            after=start + HEALTH.window,  # rates over a window of steady driving only
            what="LAGGING",
        )
    health = partition_health(lagging, group, tp)
    assert health is not None
    assert health.reason.startswith("lag grew from")
    # Driven rates: produce 60/s, consume 20/s, lag velocity 40/s. A loaded 2-core machine
    # can delay ticks (the pacer catches up, but a 3 s window sees part of that): ±30 %.
    assert health.rates.produce == pytest.approx(60, rel=0.3)
    assert health.rates.consume == pytest.approx(20, rel=0.3)
    assert health.rates.lag_velocity == pytest.approx(40, rel=0.3)
    assert health.catch_up_seconds == math.inf
    assert group_health(lagging, group).status is Status.LAGGING  # type: ignore[union-attr]


async def test_catch_up_time_matches_the_measured_truth(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    """A backlog of 1,500 records, then 5 produced and 20 consumed a tick (gain 150/s, about
    10 s to catch up). Truth: the wall time of the first commit within one tick (5 records) of
    everything produced so far, the floor of lag a tick-paced consumer reaches (0.03 s of
    gain). Every estimate published once the window holds only steady driving, while
    at least 2 s remained, must predict that moment within 25 % of the remaining time + 0.75 s.

    Why that tolerance: the estimate is lag / (consume − produce) over the 3 s window. Commits
    are 20-record steps (±1 step over 600 is 3 %); a shared 2-core machine delays ticks and the
    pacer then bursts to keep the average, so a 3 s window can see a pace off by ~10–15 %; the
    truth itself is known to a tick (0.1 s) and the snapshot's observation to a cycle's
    duration. 25 % covers the rate error (which scales with the remaining time) with a margin;
    0.75 s covers the fixed parts.
    """
    topic, group, tp, config = await one_partition(kafka, unique)
    backlog = 1500
    await kafka.produce(topic, [Rec(b"x")] * backlog)
    producer = PacedProducer(kafka, topic, per_tick=5, acked=backlog)
    async with (
        running(config) as run,
        paced_consumer(kafka_bootstrap, group, topic, per_tick=20) as member,
    ):
        member.producer = producer
        start = time.time()
        async with driving(producer.step, member.step):
            truth = await wait_until(lambda: member.caught_up_at, within=30, message="caught up")
            # Every estimate made before the truth is published by now.
            await first_snapshot(run.recorder, CLUSTER, lambda _: True, after=truth)
    assert truth - start == pytest.approx(backlog / 150, rel=0.3)  # the drivers kept their pace
    judged = [
        s
        for s in between(run.recorder, CLUSTER, start + HEALTH.window + POLL, truth - 2.0)
        if getattr(row_of(s, group, tp), "lag", 0) > 0
    ]
    assert len(judged) >= 4, "too few estimates while catching up"
    for snapshot in judged:
        health = partition_health(snapshot, group, tp)
        assert health is not None
        assert health.status is Status.OK, health.reason  # gaining on the producer
        assert health.catch_up_seconds is not None
        remaining = truth - snapshot.observed_at
        assert health.catch_up_seconds == pytest.approx(remaining, abs=0.25 * remaining + 0.75)


async def test_member_that_stops_committing_is_stalled(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    """A member commits for a while, then stops committing while it stays in the group (its
    heartbeats go on) and production continues: STALLED once stalled_after has passed since
    its last commit, and not before."""
    topic, group, tp, config = await one_partition(kafka, unique)
    producer = PacedProducer(kafka, topic, per_tick=2)
    async with (
        running(config) as run,
        paced_consumer(kafka_bootstrap, group, topic, per_tick=10) as member,
        driving(producer.step, member.step),
    ):
        await first_snapshot(run.recorder, CLUSTER, status_is(group, tp, Status.OK), what="OK")
        member.committing = False
        stalled = await first_snapshot(
            run.recorder, CLUSTER, status_is(group, tp, Status.STALLED), what="STALLED"
        )
        assert member.consumer.assignment()  # still a member
    health = partition_health(stalled, group, tp)
    assert health is not None
    assert health.reason.startswith(f"committed offset {member.committed} unchanged for")
    assert summary_of(stalled, group).member_count == 1  # type: ignore[union-attr]
    # The exporter sees a commit after it happened, so the commit age it judges is never more
    # than the real one: STALLED cannot come earlier than stalled_after after the last commit.
    assert stalled.observed_at >= member.last_commit_at + HEALTH.stalled_after
    assert group_health(stalled, group).status is Status.STALLED  # type: ignore[union-attr]


async def test_group_that_caught_up_then_lost_its_members_is_stopped(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    """Burrow's false OK: a group reaches lag 0, then its only member leaves while production
    continues. Lag grows with nobody to consume it: STOPPED (not OK because it was caught up
    once in the window)."""
    topic, group, tp, config = await one_partition(kafka, unique)
    producer = PacedProducer(kafka, topic, per_tick=2)
    async with running(config) as run, driving(producer.step):
        async with (
            paced_consumer(kafka_bootstrap, group, topic, per_tick=10) as member,
            driving(member.step),
        ):
            await first_snapshot(run.recorder, CLUSTER, status_is(group, tp, Status.OK))
            # The member reads a tick's records a tick later: lag 0 needs a pause in production.
            producer.per_tick = 0
            caught_up = await first_snapshot(
                run.recorder,
                CLUSTER,
                lambda s: getattr(partition_health(s, group, tp), "reason", "") == "caught up",
                what="caught up",
            )
            assert partition_health(caught_up, group, tp).status is Status.OK  # type: ignore[union-attr]
        left = time.time()
        producer.per_tick = 2
        stopped = await first_snapshot(
            run.recorder, CLUSTER, status_is(group, tp, Status.STOPPED), after=left, what="STOPPED"
        )
    assert summary_of(stopped, group).member_count == 0  # type: ignore[union-attr]
    health = partition_health(stopped, group, tp)
    assert health is not None
    assert health.reason.startswith("no members;")
    assert group_health(stopped, group).status is Status.STOPPED  # type: ignore[union-attr]


async def test_offset_reset_to_an_earlier_position_is_rewound(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    """Committed 20, then reset to 5 (as ``kafka-consumer-groups --reset-offsets`` does):
    REWOUND while the backward step is within the window, then no longer."""
    topic, group, tp, config = await one_partition(kafka, unique)
    await kafka.produce(topic, [Rec(b"x")] * 30)
    await kafka.commit(group, {tp: 20})
    async with running(config) as run:
        await first_snapshot(
            run.recorder,
            CLUSTER,
            lambda s: getattr(row_of(s, group, tp), "committed", None) == 20,
            what="commit 20 seen",
        )
        await kafka.commit(group, {tp: 5})
        rewound = await first_snapshot(
            run.recorder, CLUSTER, status_is(group, tp, Status.REWOUND), what="REWOUND"
        )
        assert row_of(rewound, group, tp).committed == 5  # type: ignore[union-attr]
        # Once the observation of 20 has left the window, the step back is history.
        after = await first_snapshot(
            run.recorder,
            CLUSTER,
            lambda s: not status_is(group, tp, Status.REWOUND)(s),
            after=rewound.observed_at,
            what="REWOUND forgotten",
        )
    health = partition_health(rewound, group, tp)
    assert health is not None
    assert health.reason == "committed offset moved back from 20 to 5"
    assert group_health(rewound, group).status is Status.REWOUND  # type: ignore[union-attr]
    assert after.observed_at - rewound.observed_at <= HEALTH.window + POLL


async def test_topic_a_group_stopped_consuming_is_abandoned_and_dropped(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    """A group consumes topic A; it once committed on topic B (2 partitions) and no member is
    assigned B any more. After abandoned_after, (group, B) is abandoned and (group, A) is not;
    an exporter with drop_abandoned leaves B's rows out of its snapshots (and counts them)."""
    topic_a, topic_b, group = unique("a"), unique("b"), unique("g")
    await kafka.create_topic(topic_a, partitions=1)
    await kafka.create_topic(topic_b, partitions=2)
    await kafka.produce(topic_a, [Rec(b"x")] * 5)
    await kafka.produce(topic_b, [Rec(b"x", partition=p) for p in (0, 1) for _ in range(4)])
    old = {TopicPartition(topic_b, 0): 2, TopicPartition(topic_b, 1): 3}
    await kafka.commit(group, old)  # before any member: a plain commit, as a past consumer did
    settings_cluster = cluster(CLUSTER, kafka_bootstrap, groups=[exactly(group)])
    keep = health_config(settings_cluster)
    drop = health_config(
        cluster("health-drop", kafka_bootstrap, groups=[exactly(group)]), drop_abandoned=True
    )

    def abandoned(snapshot: ClusterSnapshot) -> bool:
        topic = None if snapshot.health is None else snapshot.health.topics.get((group, topic_b))
        return topic is not None and topic.abandoned

    async with (
        running(keep) as kept,
        running(drop) as dropping,
        kafka.classic_member(group, topic_a),
    ):
        stable = await first_snapshot(
            kept.recorder,
            CLUSTER,
            lambda s: (
                getattr(summary_of(s, group), "state", None) is GroupState.STABLE
                and row_of(s, group, TopicPartition(topic_a, 0)) is not None
            ),
            what="member on A committed",
        )
        flagged = await first_snapshot(kept.recorder, CLUSTER, abandoned, what="B abandoned")
        dropped = await first_snapshot(
            dropping.recorder,
            "health-drop",
            lambda s: s.health is not None and s.health.dropped_rows == 2,
            what="B's rows dropped",
        )
    assert flagged.health is not None
    assert not flagged.health.topics[(group, topic_a)].abandoned
    # B's commits never move: their age counts from the first sighting, before the member.
    first_seen = kept.recorder.snapshots(CLUSTER)[0].observed_at
    assert flagged.observed_at >= first_seen + HEALTH.abandoned_after
    assert stable.observed_at <= flagged.observed_at
    assert {r.topic for r in dropped.rows if r.group == group} == {topic_a}
    # Before it was abandoned the drop exporter did report B's rows.
    earlier = dropping.recorder.snapshots("health-drop")[0]
    assert {(r.topic, r.partition) for r in earlier.rows} >= {(topic_b, 0), (topic_b, 1)}


async def test_a_member_joining_is_counted_as_a_rebalance(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    """A second consumer joins a stable group: one transition into rebalancing, so
    ``rebalances`` goes up by exactly one and ``last_rebalance_at`` falls between the join and
    the first snapshot showing both members settled."""
    topic, group = unique("t"), unique("g")
    await kafka.create_topic(topic, partitions=2)
    await kafka.produce(topic, [Rec(b"x", partition=p) for p in (0, 1) for _ in range(3)])
    config = health_config(cluster(CLUSTER, kafka_bootstrap, groups=[exactly(group)]))

    def settled(members: int) -> Callable[[ClusterSnapshot], bool]:
        def check(snapshot: ClusterSnapshot) -> bool:
            summary = summary_of(snapshot, group)
            return (
                summary is not None
                and summary.state is GroupState.STABLE
                and summary.member_count == members
                and group_health(snapshot, group) is not None
            )

        return check

    async with running(config) as run, kafka.classic_member(group, topic):
        before = await first_snapshot(run.recorder, CLUSTER, settled(1), what="one member")
        counted = group_health(before, group).rebalances  # type: ignore[union-attr]
        joined_at = time.time()
        async with kafka.classic_member(group, topic):
            after = await first_snapshot(
                run.recorder, CLUSTER, settled(2), after=joined_at, what="two members"
            )
    health = group_health(after, group)
    assert health is not None
    assert health.rebalances == counted + 1
    assert health.last_rebalance_at is not None
    assert joined_at <= health.last_rebalance_at <= after.observed_at


async def test_steady_consumer_keeping_up_passes_a_catch_up_threshold(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    """A member that keeps up with the producer at a constant distance (each tick: 2 records
    produced, then a commit 4 records short of everything produced, as a consumer that commits
    what it finished processing a batch earlier) with ``max_catch_up_seconds = 30``: its lag is
    4 records and never grows, so its group must stay OK."""
    topic, group, tp, config = await one_partition(kafka, unique, max_catch_up_seconds=30.0)
    behind = 4
    await kafka.produce(topic, [Rec(b"x")] * behind)
    producer = PacedProducer(kafka, topic, per_tick=2, acked=behind)
    async with (
        running(config) as run,
        paced_consumer(kafka_bootstrap, group, topic, per_tick=0) as member,
    ):

        async def step() -> None:
            await producer.step()
            partition = AioTopicPartition(topic, 0)
            await member.consumer.commit({partition: producer.acked - behind})

        async with driving(step):
            known = await first_snapshot(
                run.recorder, CLUSTER, status_is(group, tp, Status.OK), what="partition OK"
            )
            end = known.observed_at + HEALTH.window + HEALTH.stalled_after
            await first_snapshot(run.recorder, CLUSTER, lambda _: True, after=end, what="the end")
    watched = between(run.recorder, CLUSTER, known.observed_at, end)
    assert len(watched) >= 8
    judged = [(group_health(s, group), row_of(s, group, tp)) for s in watched]
    assert all(row is not None and behind <= row.lag <= behind + 2 for _, row in judged)
    not_ok = [
        (h.status, h.reason) for h, _ in judged if h is not None and h.status is not Status.OK
    ]
    assert not_ok == []
