"""Group membership and state through the whole pipeline on the real broker: member labels that
follow members joining and leaving, the state codes of Empty, Stable, rebalancing and KIP-848
groups, and lag that never goes negative while producers and consumers race the exporter.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from klag_pipeline.commands.once import collect_once
from klag_pipeline.model import GroupState, TopicPartition
from klag_pipeline.settings.schema import Settings
from klag_pipeline.sinks.prometheus import render_snapshots
from klag_pipeline.snapshot import ClusterSnapshot, GroupSummary
from tests.integration.pipeline_support import (
    cluster,
    describe_members,
    exactly,
    key,
    labels_of,
    parse_exposition,
    raw_members,
    running,
    scrape,
    settings,
)
from tests.support.kafka import KafkaTestClient, Rec, wait_until

pytestmark = pytest.mark.kafka

CLUSTER = "groups"
NO_MEMBER = ("", "", "")


def summary_of(snapshot: ClusterSnapshot, group: str) -> GroupSummary:
    (summary,) = [s for s in snapshot.groups if s.group == group]
    return summary


def lag_series_members(
    series: dict[tuple[str, frozenset[tuple[str, str]]], float], group: str
) -> dict[int, tuple[tuple[str, str, str], float]]:
    """partition → ((member_host, consumer_id, client_id), lag) of ``group``'s lag series."""
    out: dict[int, tuple[tuple[str, str, str], float]] = {}
    for (name, label_set), value in series.items():
        labels = dict(label_set)
        if name == "kafka_consumergroup_group_lag" and labels["group"] == group:
            partition = int(labels["partition"])
            assert partition not in out, f"two lag series for partition {partition}"
            member = (labels["member_host"], labels["consumer_id"], labels["client_id"])
            out[partition] = (member, value)
    return out


async def test_member_labels_follow_members_joining_and_leaving(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, group = unique("t"), unique("g")
    await kafka.create_topic(topic, partitions=2)
    await kafka.produce(topic, [Rec(b"x", partition=p) for p in (0, 0, 0, 0, 0, 1, 1, 1, 1, 1)])
    await kafka.commit(group, {TopicPartition(topic, 0): 1, TopicPartition(topic, 1): 2})
    expected_lag = {0: 4, 1: 3}
    client_id = unique("member")
    config = settings(
        cluster(CLUSTER, kafka_bootstrap, groups=[exactly(group)], topics=[exactly(topic)]),
        poll_interval=0.3,
    )
    async with running(config) as run:
        # No member: the lag series are there, member labels empty, state Empty.
        empty = await run.fresh_snapshot(CLUSTER)
        assert summary_of(empty, group).state == GroupState.EMPTY
        series = scrape(run.exporter)
        assert lag_series_members(series, group) == {
            p: (NO_MEMBER, lag) for p, lag in expected_lag.items()
        }
        assert (
            series[key("kafka_consumergroup_group_state", cluster_name=CLUSTER, group=group)] == 5
        )

        # A member joins (heartbeats only, commits nothing): the same series, now labelled.
        async with kafka.classic_member(
            group, topic, consume=False, options={"client_id": client_id}
        ) as member:
            assert member.assignment() == {TopicPartition(topic, 0), TopicPartition(topic, 1)}
            (truth,) = await describe_members(kafka_bootstrap, group)
            assert truth.client_id == client_id
            stable = await run.recorder.wait_snapshot(
                CLUSTER, lambda s: summary_of(s, group).state == GroupState.STABLE
            )
            await run.wait_rendered(stable)
            assert summary_of(stable, group).member_count == 1
            series = scrape(run.exporter)
            labelled = (truth.host, truth.consumer_id, client_id)
            assert lag_series_members(series, group) == {
                p: (labelled, lag) for p, lag in expected_lag.items()
            }
            state_key = key("kafka_consumergroup_group_state", cluster_name=CLUSTER, group=group)
            assert series[state_key] == 3
            # Every GPM family carries the member, none keeps an unlabelled twin.
            for family in ("kafka_consumergroup_group_offset", "kafka_consumergroup_group_lag"):
                members = {
                    (labels["member_host"], labels["consumer_id"], labels["client_id"])
                    for labels in labels_of(series, family)
                    if labels["group"] == group
                }
                assert members == {labelled}

        # The member left (LeaveGroup is answered before classic_member returns): the very
        # next cycle has the series back without member labels, and nothing of the old member.
        gone = await run.fresh_snapshot(CLUSTER)
        assert summary_of(gone, group).state == GroupState.EMPTY
        series = scrape(run.exporter)
        assert lag_series_members(series, group) == {
            p: (NO_MEMBER, lag) for p, lag in expected_lag.items()
        }
        assert not [k for k in series if ("consumer_id", truth.consumer_id) in k[1]]


async def group_cycle(config: Settings, group: str) -> tuple[ClusterSnapshot, GroupSummary]:
    snapshots, errors = await collect_once(config)
    assert errors == []
    (snapshot,) = snapshots
    return snapshot, summary_of(snapshot, group)


async def test_state_codes_of_empty_completing_stable_and_preparing_rebalance(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, group = unique("t"), unique("g")
    await kafka.create_topic(topic, partitions=2)
    await kafka.produce(topic, [Rec(b"x", partition=p) for p in (0, 0, 1)])
    await kafka.commit(group, {TopicPartition(topic, 0): 1, TopicPartition(topic, 1): 0})
    client_id = unique("raw")
    config = settings(
        cluster(CLUSTER, kafka_bootstrap, groups=[exactly(group)], topics=[exactly(topic)])
    )
    state_key = key("kafka_consumergroup_group_state", cluster_name=CLUSTER, group=group)

    def exported_state(snapshot: ClusterSnapshot) -> float:
        return parse_exposition(render_snapshots([snapshot], "partition"))[state_key]

    snapshot, summary = await group_cycle(config, group)
    assert (summary.state, exported_state(snapshot)) == (GroupState.EMPTY, 5)

    async with raw_members(kafka_bootstrap, group, [topic], 2, client_id=client_id) as (
        leader,
        newcomer,
    ):
        # Joined, not synced: the group waits in CompletingRebalance for the leader's
        # assignment (for the 60 s rebalance timeout).
        joined = await leader.join()
        assert joined.leader_id == leader.member_id
        snapshot, summary = await group_cycle(config, group)
        assert (summary.state, exported_state(snapshot)) == (GroupState.COMPLETING_REBALANCE, 2)
        assert summary.member_count == 1
        # Rebalancing: no assignment yet, so the lag series are there without member labels.
        assert {
            (r.partition, r.member_host, r.consumer_id, r.client_id) for r in snapshot.rows
        } == {
            (0, "", "", ""),
            (1, "", "", ""),
        }

        await leader.sync({leader.member_id: [TopicPartition(topic, 0), TopicPartition(topic, 1)]})
        snapshot, summary = await group_cycle(config, group)
        assert (summary.state, exported_state(snapshot)) == (GroupState.STABLE, 3)
        (truth,) = await describe_members(kafka_bootstrap, group)
        assert (truth.consumer_id, truth.client_id) == (leader.member_id, client_id)
        assert {
            (r.partition, r.member_host, r.consumer_id, r.client_id) for r in snapshot.rows
        } == {
            (0, truth.host, leader.member_id, client_id),
            (1, truth.host, leader.member_id, client_id),
        }

        # A second member joins; the first never re-joins, so the group stays in
        # PreparingRebalance (the newcomer's JoinGroup answer waits for the rebalance).
        newcomer.join_in_background()

        async def both_listed() -> bool:
            return (await group_cycle(config, group))[1].member_count == 2

        await wait_until(both_listed, within=20, message="the newcomer in the group")
        snapshot, summary = await group_cycle(config, group)
        assert (summary.state, exported_state(snapshot)) == (GroupState.PREPARING_REBALANCE, 1)
        assert {r.partition for r in snapshot.rows} == {0, 1}
        assert [r.lag for r in snapshot.rows] == [1, 1]  # high 2 and 1, committed 1 and 0


async def test_kip848_group_is_listed_described_with_its_member_and_stable(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, group = unique("t"), unique("g")
    client_id = unique("kip848")
    await kafka.create_topic(topic, partitions=2)
    await kafka.produce(topic, [Rec(b"x", partition=p) for p in (0, 0, 0, 1, 1)])
    config = settings(
        cluster(CLUSTER, kafka_bootstrap, groups=[exactly(group)], topics=[exactly(topic)])
    )
    async with kafka.console_consumer(
        topic, group, group_protocol="consumer", extra_props={"client.id": client_id}
    ):

        async def caught_up() -> bool:
            return await kafka.committed(group) == {
                TopicPartition(topic, 0): 3,
                TopicPartition(topic, 1): 2,
            }

        await wait_until(caught_up, within=60, message="the KIP-848 consumer's commits")
        (truth,) = await describe_members(kafka_bootstrap, group)
        assert truth.client_id == client_id

        async def stable() -> bool:
            return (await group_cycle(config, group))[1].state == GroupState.STABLE

        # A new consumer group reconciles its assignment for a moment before it is Stable.
        await wait_until(stable, within=20, message="the KIP-848 group Stable")
        snapshot, summary = await group_cycle(config, group)
        assert summary.group_type == "consumer"
        assert summary.member_count == 1
        assert {
            (r.partition, r.committed, r.lag, r.member_host, r.consumer_id, r.client_id)
            for r in snapshot.rows
        } == {
            (0, 3, 0, truth.host, truth.consumer_id, client_id),
            (1, 2, 0, truth.host, truth.consumer_id, client_id),
        }
        series = parse_exposition(render_snapshots([snapshot], "partition"))
        assert (
            series[key("kafka_consumergroup_group_state", cluster_name=CLUSTER, group=group)] == 3
        )
        assert (
            series[key("kafka_consumergroup_group_sum_lag", cluster_name=CLUSTER, group=group)] == 0
        )


async def test_lag_is_never_negative_while_producers_and_consumers_run(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, group = unique("t"), unique("g")
    await kafka.create_topic(topic, partitions=3)
    config = settings(
        cluster(CLUSTER, kafka_bootstrap, groups=[exactly(group)], topics=[exactly(topic)]),
        poll_interval=0.3,
        sampling=False,
    )
    produced = 0
    async with (
        running(config) as run,
        kafka.classic_member(group, topic, consume=True) as member,
    ):
        deadline = time.monotonic() + 5.0
        batch = 0
        while time.monotonic() < deadline and batch < 10_000:
            records = [Rec(b"v%d" % i, partition=i % 3) for i in range(30)]
            produced += len(await kafka.produce(topic, records))
            batch += 1
        await member.wait_consumed(produced, within=30)
        await run.fresh_snapshot(CLUSTER)

    snapshots = run.recorder.snapshots(CLUSTER)
    assert len(snapshots) >= 8, f"only {len(snapshots)} cycles in 5 s at a 0.3 s interval"
    rows = [row for snapshot in snapshots for row in snapshot.rows]
    assert rows, "the consumer never committed"
    for row in rows:
        assert row.committed <= row.high, row
        assert row.lag == row.high - row.committed >= 0
    # The race was real: cycles saw the group behind and its commits moving.
    assert any(row.lag > 0 for row in rows)
    assert len({row.committed for row in rows}) > 3
    final = parse_exposition(render_snapshots(snapshots[-1:], "partition"))
    for (name, _), value in final.items():
        if name.startswith("kafka_consumergroup_group_") and "lag" in name:
            assert value >= 0
