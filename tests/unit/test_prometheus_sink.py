"""The Prometheus store: exact exposition of the compatibility families (SPEC §4) and its life."""

from __future__ import annotations

import asyncio
import gzip
import math
import zlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from klag_pipeline.model import GroupState
from klag_pipeline.pipeline.clock import FakeClock
from klag_pipeline.sinks.prometheus import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    PrometheusSink,
    escape_label_value,
    format_value,
    render_snapshots,
    wants_gzip,
    wants_openmetrics,
)
from klag_pipeline.snapshot import (
    ClusterSnapshot,
    ClusterWithdrawn,
    GroupSummary,
    PartitionOffsets,
    PartitionRow,
    SinkUpdate,
)
from klag_pipeline.status import StatusBoard
from klag_pipeline.telemetry.self_metrics import SelfMetrics

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def row(
    group: str,
    partition: int,
    *,
    topic: str = "orders",
    member: tuple[str, str, str] = ("", "", ""),
    committed: int = 50,
    low: int | None = 10,
    high: int = 110,
    lag_seconds: float | None = 0.0,
    compaction: bool = False,
) -> PartitionRow:
    lag = max(high - committed, 0)
    loss = low is not None and committed < low
    return PartitionRow(
        group=group,
        topic=topic,
        partition=partition,
        member_host=member[0],
        consumer_id=member[1],
        client_id=member[2],
        committed=committed,
        low=low,
        high=high,
        lag=lag,
        lag_seconds=lag_seconds,
        compaction_detected=compaction,
        data_loss_detected=loss,
        messages_lost=None if low is None else max(low - committed, 0),
        retention_margin=None if low is None else committed - low,
        lag_retention_ratio=None if low is None else ratio(committed, low, high),
    )


def ratio(committed: int, low: int, high: int) -> float:
    lag = max(high - committed, 0)
    if high == low:
        return math.inf if lag else 0.0
    return lag / (high - low) * 100


def summary(
    group: str,
    rows: Iterable[PartitionRow],
    *,
    state: GroupState = GroupState.STABLE,
    max_lag_seconds: float | None = None,
) -> GroupSummary:
    rows = list(rows)
    topics: dict[str, int] = {}
    for r in rows:
        topics[r.topic] = topics.get(r.topic, 0) + r.lag
    return GroupSummary(
        group=group,
        state=state,
        protocol_type="consumer",
        group_type="classic",
        member_count=len({r.consumer_id for r in rows if r.consumer_id}),
        max_lag=max((r.lag for r in rows), default=0),
        max_lag_seconds=max_lag_seconds,
        sum_lag=sum(r.lag for r in rows),
        topic_sum_lag=topics,
    )


def snapshot(
    cluster: str = "prod",
    rows: Iterable[PartitionRow] = (),
    groups: Iterable[GroupSummary] = (),
    partitions: Iterable[PartitionOffsets] = (),
    *,
    labels: dict[str, str] | None = None,
    sampling: bool = True,
    compaction: int = 0,
    data_loss: int = 0,
) -> ClusterSnapshot:
    return ClusterSnapshot(
        cluster=cluster,
        labels=labels or {},
        cycle=7,
        observed_at=1_700_000_000.5,
        started_at=1_700_000_000.25,
        duration_seconds=0.25,
        poll_time_ms=12.5,
        timestamp_sampling=sampling,
        partitions=tuple(partitions),
        groups=tuple(groups),
        rows=tuple(rows),
        compaction_detected_count=compaction,
        data_loss_partition_count=data_loss,
        error_count=0,
    )


def golden_snapshot() -> ClusterSnapshot:
    billing = [
        row("billing", 0, member=("/10.0.0.1", "m-1", "app"), lag_seconds=12.5),
        row("billing", 1, member=("/10.0.0.1", "m-1", "app"), committed=50, low=None, high=50),
    ]
    idle = [row("idle", 0, committed=5, lag_seconds=None)]
    return snapshot(
        rows=[*billing, *idle],
        groups=[
            summary("billing", billing, max_lag_seconds=12.5),
            summary("idle", idle, state=GroupState.EMPTY),
        ],
        partitions=[
            PartitionOffsets("orders", 0, 10, 110),
            PartitionOffsets("orders", 1, None, 50),
        ],
        labels={"env": "eu-1"},
        data_loss=1,
    )


# Written by hand from SPEC §4: labels sorted by name with the custom label `env` in its place,
# integers without a decimal point, the unknown low watermark and the missing timestamp leave
# their series out, the member labels of the stopped group are empty strings.
GOLDEN = """\
# HELP kafka_partition_latest_offset Latest (high watermark) offset of a partition.
# TYPE kafka_partition_latest_offset gauge
kafka_partition_latest_offset{cluster_name="prod",env="eu-1",partition="0",topic="orders"} 110
kafka_partition_latest_offset{cluster_name="prod",env="eu-1",partition="1",topic="orders"} 50
# HELP kafka_partition_earliest_offset Earliest (low watermark) offset of a partition.
# TYPE kafka_partition_earliest_offset gauge
kafka_partition_earliest_offset{cluster_name="prod",env="eu-1",partition="0",topic="orders"} 10
# HELP kafka_consumergroup_group_offset Committed offset of a consumer group partition.
# TYPE kafka_consumergroup_group_offset gauge
kafka_consumergroup_group_offset{client_id="app",cluster_name="prod",consumer_id="m-1",env="eu-1",\
group="billing",member_host="/10.0.0.1",partition="0",topic="orders"} 50
kafka_consumergroup_group_offset{client_id="app",cluster_name="prod",consumer_id="m-1",env="eu-1",\
group="billing",member_host="/10.0.0.1",partition="1",topic="orders"} 50
kafka_consumergroup_group_offset{client_id="",cluster_name="prod",consumer_id="",env="eu-1",\
group="idle",member_host="",partition="0",topic="orders"} 5
# HELP kafka_consumergroup_group_lag Offset lag max(high watermark - committed, 0).
# TYPE kafka_consumergroup_group_lag gauge
kafka_consumergroup_group_lag{client_id="app",cluster_name="prod",consumer_id="m-1",env="eu-1",\
group="billing",member_host="/10.0.0.1",partition="0",topic="orders"} 60
kafka_consumergroup_group_lag{client_id="app",cluster_name="prod",consumer_id="m-1",env="eu-1",\
group="billing",member_host="/10.0.0.1",partition="1",topic="orders"} 0
kafka_consumergroup_group_lag{client_id="",cluster_name="prod",consumer_id="",env="eu-1",\
group="idle",member_host="",partition="0",topic="orders"} 105
# HELP kafka_consumergroup_group_lag_seconds Age in seconds of the record at the committed offset \
(0 when there is no lag).
# TYPE kafka_consumergroup_group_lag_seconds gauge
kafka_consumergroup_group_lag_seconds{client_id="app",cluster_name="prod",\
compaction_detected="false",consumer_id="m-1",data_loss_detected="false",env="eu-1",\
group="billing",member_host="/10.0.0.1",partition="0",topic="orders"} 12.5
kafka_consumergroup_group_lag_seconds{client_id="app",cluster_name="prod",\
compaction_detected="false",consumer_id="m-1",data_loss_detected="false",env="eu-1",\
group="billing",member_host="/10.0.0.1",partition="1",topic="orders"} 0
# HELP kafka_consumergroup_group_messages_lost Messages deleted by retention before the group \
read them, max(low - committed, 0).
# TYPE kafka_consumergroup_group_messages_lost gauge
kafka_consumergroup_group_messages_lost{client_id="app",cluster_name="prod",consumer_id="m-1",\
env="eu-1",group="billing",member_host="/10.0.0.1",partition="0",topic="orders"} 0
kafka_consumergroup_group_messages_lost{client_id="",cluster_name="prod",consumer_id="",\
env="eu-1",group="idle",member_host="",partition="0",topic="orders"} 5
# HELP kafka_consumergroup_group_retention_margin Committed offset minus low watermark; negative \
means data loss.
# TYPE kafka_consumergroup_group_retention_margin gauge
kafka_consumergroup_group_retention_margin{client_id="app",cluster_name="prod",consumer_id="m-1",\
env="eu-1",group="billing",member_host="/10.0.0.1",partition="0",topic="orders"} 40
kafka_consumergroup_group_retention_margin{client_id="",cluster_name="prod",consumer_id="",\
env="eu-1",group="idle",member_host="",partition="0",topic="orders"} -5
# HELP kafka_consumergroup_group_lag_retention_ratio Lag as a percentage of the retained window \
(above 100 means data loss).
# TYPE kafka_consumergroup_group_lag_retention_ratio gauge
kafka_consumergroup_group_lag_retention_ratio{client_id="app",cluster_name="prod",\
consumer_id="m-1",env="eu-1",group="billing",member_host="/10.0.0.1",partition="0",\
topic="orders"} 60
kafka_consumergroup_group_lag_retention_ratio{client_id="",cluster_name="prod",consumer_id="",\
env="eu-1",group="idle",member_host="",partition="0",topic="orders"} 105
# HELP kafka_consumergroup_group_max_lag Maximum partition offset lag of a consumer group.
# TYPE kafka_consumergroup_group_max_lag gauge
kafka_consumergroup_group_max_lag{cluster_name="prod",env="eu-1",group="billing"} 60
kafka_consumergroup_group_max_lag{cluster_name="prod",env="eu-1",group="idle"} 105
# HELP kafka_consumergroup_group_max_lag_seconds Maximum partition time lag in seconds of a \
consumer group.
# TYPE kafka_consumergroup_group_max_lag_seconds gauge
kafka_consumergroup_group_max_lag_seconds{cluster_name="prod",env="eu-1",group="billing"} 12.5
# HELP kafka_consumergroup_group_sum_lag Sum of partition offset lag of a consumer group.
# TYPE kafka_consumergroup_group_sum_lag gauge
kafka_consumergroup_group_sum_lag{cluster_name="prod",env="eu-1",group="billing"} 60
kafka_consumergroup_group_sum_lag{cluster_name="prod",env="eu-1",group="idle"} 105
# HELP kafka_consumergroup_group_topic_sum_lag Sum of partition offset lag of a consumer group \
per topic.
# TYPE kafka_consumergroup_group_topic_sum_lag gauge
kafka_consumergroup_group_topic_sum_lag{cluster_name="prod",env="eu-1",group="billing",\
topic="orders"} 60
kafka_consumergroup_group_topic_sum_lag{cluster_name="prod",env="eu-1",group="idle",\
topic="orders"} 105
# HELP kafka_consumergroup_group_state Group state: 0 Unknown, 1 PreparingRebalance, \
2 CompletingRebalance, 3 Stable, 4 Dead, 5 Empty, 6 Assigning, 7 Reconciling.
# TYPE kafka_consumergroup_group_state gauge
kafka_consumergroup_group_state{cluster_name="prod",env="eu-1",group="billing"} 3
kafka_consumergroup_group_state{cluster_name="prod",env="eu-1",group="idle"} 5
# HELP kafka_consumergroup_poll_time_ms Time spent in broker calls in the last cycle, in ms.
# TYPE kafka_consumergroup_poll_time_ms gauge
kafka_consumergroup_poll_time_ms{cluster_name="prod",env="eu-1"} 12.5
# HELP kafka_lag_exporter_scrape_duration_seconds Duration of the last collection cycle.
# TYPE kafka_lag_exporter_scrape_duration_seconds gauge
kafka_lag_exporter_scrape_duration_seconds{cluster_name="prod",env="eu-1"} 0.25
# HELP kafka_lag_exporter_last_update_timestamp_seconds Unix time of the last successful \
collection cycle.
# TYPE kafka_lag_exporter_last_update_timestamp_seconds gauge
kafka_lag_exporter_last_update_timestamp_seconds{cluster_name="prod",env="eu-1"} 1700000000.5
# HELP kafka_lag_exporter_compaction_detected_total Group partitions whose committed record was \
removed by compaction (current count).
# TYPE kafka_lag_exporter_compaction_detected_total gauge
kafka_lag_exporter_compaction_detected_total{cluster_name="prod",env="eu-1"} 0
# HELP kafka_lag_exporter_data_loss_partitions_total Group partitions whose committed offset is \
below the low watermark (current count).
# TYPE kafka_lag_exporter_data_loss_partitions_total gauge
kafka_lag_exporter_data_loss_partitions_total{cluster_name="prod",env="eu-1"} 1
"""


def samples(
    text: str, *, openmetrics: bool = False
) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Family name → [(labels, value)], via prometheus_client's own parsers."""
    parse = parse_openmetrics if openmetrics else parse_text
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in parse(text):
        assert family.type == "gauge" or family.name.startswith("klag_pipeline_"), family.name
        out.setdefault(family.name, []).extend((s.labels, s.value) for s in family.samples)
    return out


def make_sink(
    granularity: str = "partition", clusters: tuple[str, ...] = ("prod",)
) -> tuple[PrometheusSink, StatusBoard, FakeClock, SelfMetrics]:
    clock = FakeClock()
    status = StatusBoard(clusters, staleness_threshold=90.0, poll_interval=30.0, clock=clock)
    metrics = SelfMetrics()
    assert granularity in ("partition", "topic")
    sink = PrometheusSink("partition" if granularity == "partition" else "topic", status, metrics)
    return sink, status, clock, metrics


def scrape(sink: PrometheusSink, accept: str | None = None) -> str:
    body, _, encoding = sink.render(accept, None)
    assert encoding is None
    return body.decode()


def test_golden_exposition() -> None:
    assert render_snapshots([golden_snapshot()], "partition") == GOLDEN


def test_golden_is_valid_text_and_openmetrics() -> None:
    text = samples(GOLDEN)
    assert text == samples(GOLDEN + "# EOF\n", openmetrics=True)
    # The two `_total` gauges keep their full names as families in both parsers.
    assert text["kafka_lag_exporter_data_loss_partitions_total"] == [
        ({"cluster_name": "prod", "env": "eu-1"}, 1.0)
    ]
    assert text["kafka_lag_exporter_compaction_detected_total"][0][1] == 0.0


def test_label_values_are_escaped() -> None:
    nasty = 'a\\b"c\nd'
    rows = [row(nasty, 0, topic="t", member=("h", "c", 'cl"i'))]
    snap = snapshot(rows=rows, groups=[summary(nasty, rows)], labels={"team": "x\ny"})
    text = render_snapshots([snap], "partition")
    assert 'group="a\\\\b\\"c\\nd"' in text
    assert 'client_id="cl\\"i"' in text
    assert 'team="x\\ny"' in text
    for name in ("kafka_consumergroup_group_lag", "kafka_consumergroup_group_max_lag"):
        ((labels, _),) = samples(text)[name]
        assert labels["group"] == nasty
        assert labels["team"] == "x\ny"
    assert escape_label_value("plain") == "plain"


def test_custom_labels_on_every_cluster_series_and_sorted() -> None:
    text = render_snapshots([golden_snapshot()], "partition")
    labels_of = {"zeta": "1", "aa": "2", "env": "prod"}
    snap = replace(golden_snapshot(), labels=labels_of)
    text = render_snapshots([snap], "partition")
    for family, series in samples(text).items():
        for labels, _ in series:
            assert {k: labels[k] for k in labels_of} == labels_of, family
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        names = [pair.split("=", 1)[0] for pair in line[line.index("{") + 1 :].split('",')]
        assert names == sorted(names), line
        assert names[0] == "aa"


def test_custom_label_value_with_braces_is_not_a_format_field() -> None:
    snap = replace(golden_snapshot(), labels={"env": "{group}"})
    assert 'env="{group}"' in render_snapshots([snap], "partition")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (42, "42"),
        (42.0, "42"),
        (-5, "-5"),
        (0.25, "0.25"),
        (1e-07, "1e-07"),
        (1700000000.5, "1700000000.5"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
        (2.0**60, repr(2.0**60)),
    ],
)
def test_value_formatting(value: float, text: str) -> None:
    assert format_value(value) == text


def test_ratio_infinite_when_window_empty() -> None:
    r = row("g", 0, committed=90, low=100, high=100)
    text = render_snapshots([snapshot(rows=[r], groups=[summary("g", [r])])], "partition")
    assert text.count(" +Inf\n") == 1
    ((_, value),) = samples(text)["kafka_consumergroup_group_lag_retention_ratio"]
    assert value == math.inf
    ((_, om_value),) = samples(text + "# EOF\n", openmetrics=True)[
        "kafka_consumergroup_group_lag_retention_ratio"
    ]
    assert om_value == math.inf


GPM_FAMILIES = {
    "kafka_consumergroup_group_offset",
    "kafka_consumergroup_group_lag",
    "kafka_consumergroup_group_lag_seconds",
    "kafka_consumergroup_group_messages_lost",
    "kafka_consumergroup_group_retention_margin",
    "kafka_consumergroup_group_lag_retention_ratio",
}


def test_topic_granularity_drops_every_partition_member_family() -> None:
    partition = set(samples(render_snapshots([golden_snapshot()], "partition")))
    topic_text = render_snapshots([golden_snapshot()], "topic")
    topic = set(samples(topic_text))
    assert partition >= GPM_FAMILIES
    assert topic == partition - GPM_FAMILIES
    assert "member_host" not in topic_text
    assert "compaction_detected=" not in topic_text


def test_missing_time_lag_leaves_no_series() -> None:
    lagging = [row("g", 0, lag_seconds=None), row("g", 1, lag_seconds=3.5)]
    snap = snapshot(rows=lagging, groups=[summary("g", lagging, max_lag_seconds=None)])
    series = samples(render_snapshots([snap], "partition"))
    assert [
        labels["partition"] for labels, _ in series["kafka_consumergroup_group_lag_seconds"]
    ] == ["1"]
    assert "kafka_consumergroup_group_max_lag_seconds" not in series


def test_sampling_off_removes_time_lag_families() -> None:
    snap = replace(golden_snapshot(), timestamp_sampling=False)
    text = render_snapshots([snap], "partition")
    assert "lag_seconds" not in text


def test_flags_on_lag_seconds() -> None:
    flagged = [row("g", 0, committed=5, lag_seconds=9.0, compaction=True)]
    snap = snapshot(rows=flagged, groups=[summary("g", flagged)])
    ((labels, value),) = samples(render_snapshots([snap], "partition"))[
        "kafka_consumergroup_group_lag_seconds"
    ]
    assert (labels["compaction_detected"], labels["data_loss_detected"], value) == (
        "true",
        "true",
        9.0,
    )


def test_help_and_type_once_with_clusters_grouped() -> None:
    sink, *_ = make_sink(clusters=("prod", "dr"))
    sink.apply(golden_snapshot())
    sink.apply(replace(golden_snapshot(), cluster="dr", labels={"env": "us-1"}))
    text = scrape(sink)
    assert text.count("# TYPE kafka_consumergroup_group_lag gauge\n") == 1
    lag_lines = [
        line for line in text.splitlines() if line.startswith("kafka_consumergroup_group_lag{")
    ]
    assert len(lag_lines) == 6
    # Grouped under one header, clusters in name order.
    assert all('cluster_name="dr"' in line for line in lag_lines[:3])
    assert all('cluster_name="prod"' in line for line in lag_lines[3:])
    assert sink.clusters == ("dr", "prod")
    samples(text)  # the whole document, self-metrics included, parses


def test_before_any_snapshot_only_exporter_level_families() -> None:
    sink, *_ = make_sink()
    families = samples(scrape(sink))
    assert families["kafka_lag_exporter_up"] == [({}, 0.0)]
    assert not [
        name for name in families if name.startswith("kafka_") and name != "kafka_lag_exporter_up"
    ]
    assert any(name.startswith("klag_pipeline_") for name in families)


def test_up_follows_the_status_board() -> None:
    sink, status, clock, _ = make_sink()
    status.cycle_attempted("prod")
    status.cycle_succeeded("prod", 0.2)
    assert samples(scrape(sink))["kafka_lag_exporter_up"] == [({}, 1.0)]
    clock.advance(91)
    assert samples(scrape(sink))["kafka_lag_exporter_up"] == [({}, 0.0)]


def test_cluster_up_per_cluster_from_the_start_with_custom_labels() -> None:
    clock = FakeClock()
    status = StatusBoard(("prod", "dr"), staleness_threshold=90.0, poll_interval=30.0, clock=clock)
    sink = PrometheusSink(
        "partition",
        status,
        SelfMetrics(),
        cluster_labels={"prod": {"env": "eu-1", "team": 'a"b'}, "dr": {}},
    )
    prod = {"cluster_name": "prod", "env": "eu-1", "team": 'a"b'}
    dr = {"cluster_name": "dr"}

    def health() -> tuple[float, list[tuple[dict[str, str], float]]]:
        families = samples(scrape(sink))
        ((labels, up),) = families["kafka_lag_exporter_up"]
        assert labels == {}
        return up, families["klag_pipeline_cluster_up"]

    # Before any cycle: both clusters are there, and down (clusters in name order).
    assert health() == (0.0, [(dr, 0.0), (prod, 0.0)])
    status.cycle_attempted("prod")
    status.cycle_succeeded("prod", 0.2)
    assert health() == (0.0, [(dr, 0.0), (prod, 1.0)])
    clock.advance(60)
    status.cycle_attempted("dr")
    status.cycle_succeeded("dr", 0.2)
    assert health() == (1.0, [(dr, 1.0), (prod, 1.0)])
    # prod's last success is now 91 s old, dr's 31 s: only prod is down.
    clock.advance(31)
    assert health() == (0.0, [(dr, 1.0), (prod, 0.0)])
    # The same in OpenMetrics, and the gzip body carries it too.
    body, _, _ = sink.render(PROMETHEUS_ACCEPT, None)
    om = samples(body.decode(), openmetrics=True)
    assert om["klag_pipeline_cluster_up"] == [(dr, 1.0), (prod, 0.0)]
    gz, _, encoding = sink.render(None, "gzip")
    assert encoding == "gzip"
    assert samples(gzip.decompress(gz).decode())["klag_pipeline_cluster_up"] == [
        (dr, 1.0),
        (prod, 0.0),
    ]


def test_cluster_series_keep_braces_in_label_values() -> None:
    sink, *_ = make_sink(clusters=("a{b}",))
    sink.apply(replace(golden_snapshot(), cluster="a{b}", labels={"env": "{eu}"}))
    families = samples(scrape(sink))
    for name in ("kafka_lag_exporter_scrape_duration_seconds", "kafka_partition_latest_offset"):
        assert {(labels["cluster_name"], labels["env"]) for labels, _ in families[name]} == {
            ("a{b}", "{eu}")
        }, name


def test_second_snapshot_replaces_the_first() -> None:
    sink, *_ = make_sink()
    first = [
        row("g", 0, member=("/h1", "m-1", "c1")),
        row("g", 1, member=("/h2", "m-2", "c2")),
        row("gone", 0),
    ]
    sink.apply(snapshot(rows=first, groups=[summary("g", first[:2]), summary("gone", first[2:])]))
    assert 'consumer_id="m-2"' in scrape(sink)
    second = [row("g", 0, member=("/h1", "m-1", "c1")), row("g", 1, member=("/h1", "m-1", "c1"))]
    sink.apply(snapshot(rows=second, groups=[summary("g", second)]))
    text = scrape(sink)
    assert 'consumer_id="m-2"' not in text
    assert 'group="gone"' not in text
    assert len(samples(text)["kafka_consumergroup_group_lag"]) == 2


def test_withdrawal_removes_only_that_cluster() -> None:
    sink, *_ = make_sink(clusters=("prod", "dr"))
    sink.apply(golden_snapshot())
    sink.apply(replace(golden_snapshot(), cluster="dr"))
    sink.apply(ClusterWithdrawn("prod", "stale"))
    families = samples(scrape(sink))
    series_clusters = {
        labels["cluster_name"]
        for name, points in families.items()
        if name.startswith("kafka_")
        for labels, _ in points
        if "cluster_name" in labels
    }
    assert series_clusters == {"dr"}
    sink.apply(ClusterWithdrawn("dr", "leadership lost"))
    sink.apply(ClusterWithdrawn("dr", "again"))  # withdrawing an absent cluster is harmless
    families = samples(scrape(sink))
    assert not [name for name in families if name.startswith("kafka_") and families[name][0][0]]
    # The per-cluster health gauge stays: a withdrawn cluster is exactly one that is down.
    assert families["klag_pipeline_cluster_up"] == [
        ({"cluster_name": "dr"}, 0.0),
        ({"cluster_name": "prod"}, 0.0),
    ]
    assert sink.applied == 5


def test_openmetrics_negotiation_and_single_eof() -> None:
    sink, *_ = make_sink()
    sink.apply(golden_snapshot())
    body, content_type, _ = sink.render(PROMETHEUS_ACCEPT, None)
    text = body.decode()
    assert content_type == OPENMETRICS_CONTENT_TYPE
    assert "\nkafka_lag_exporter_up 0\n" in text
    assert text.count("# EOF") == 1
    assert text.endswith("# EOF\n")
    om = samples(text, openmetrics=True)
    assert om["kafka_consumergroup_group_lag"] == samples(GOLDEN)["kafka_consumergroup_group_lag"]
    _, plain_type, _ = sink.render("text/plain;version=0.0.4", None)
    assert plain_type == TEXT_CONTENT_TYPE
    assert "# EOF" not in scrape(sink)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, False),
        ("", False),
        ("text/plain", False),
        ("*/*", False),
        (PROMETHEUS_ACCEPT, True),
        ("application/openmetrics-text", True),
        ("application/openmetrics-text;q=0.2, text/plain;q=0.9", False),
        ("application/openmetrics-text;q=0", False),
        ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,*/*;q=0.1", True),
    ],
)
def test_accept_negotiation(accept: str | None, expected: bool) -> None:
    assert wants_openmetrics(accept) is expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, False),
        ("identity", False),
        ("gzip", True),
        ("deflate, gzip;q=0.5", True),
        ("gzip;q=0", False),
        ("br, *", True),
        ("gzip;q=0, *", False),
        ("x-gzip", True),
    ],
)
def test_gzip_negotiation(header: str | None, expected: bool) -> None:
    assert wants_gzip(header) is expected


def test_gzip_body_is_one_complete_member_equal_to_the_plain_body() -> None:
    sink, *_ = make_sink()
    sink.apply(golden_snapshot())
    for accept in (None, PROMETHEUS_ACCEPT):
        plain, _, _ = sink.render(accept, None)
        compressed, _, encoding = sink.render(accept, "gzip")
        assert encoding == "gzip"
        # One gzip member (not concatenated members), which every client decodes.
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        assert inflater.decompress(compressed) == plain
        assert inflater.eof
        assert inflater.unused_data == b""
        assert gzip.decompress(compressed) == plain
    # The cached segments are reused, never consumed: scrapes stay repeatable.
    assert gzip.decompress(sink.render(None, "gzip")[0]) == sink.render(None, None)[0]


def test_content_length_is_the_length_of_the_parts_written() -> None:
    sink, *_ = make_sink(clusters=("prod", "dr"))
    sink.apply(golden_snapshot())
    sink.apply(replace(golden_snapshot(), cluster="dr"))
    for accept in (None, PROMETHEUS_ACCEPT):
        for encoding in (None, "gzip"):
            body, _, _ = sink.render_parts(accept, encoding)
            written = b"".join(body.parts)
            assert body.length == len(written) > 0


def test_gzipped_scrapes_are_reused_until_anything_in_them_changes() -> None:
    sink, _, _, metrics = make_sink()
    sink.apply(golden_snapshot())
    first = sink.render(None, "gzip")[0]
    assert sink.render(None, "gzip")[0] is first  # no change: the same bytes, not re-compressed

    def fresh() -> bytes:
        body = sink.render(None, "gzip")[0]
        assert gzip.decompress(body) == sink.render(None, None)[0]
        return body

    metrics.stage_failed("prod", "discovery")  # the self-metrics changed
    second = fresh()
    assert second != first
    depth = [0]
    metrics.register_queue("inbox", lambda: depth[0])
    third = fresh()
    depth[0] = 3  # a queue depth, read per scrape
    fourth = fresh()
    assert len({first, second, third, fourth}) == 4
    sink.apply(golden_snapshot())  # a new exposition, even with equal content
    assert sink.render(None, "gzip")[0] is not fourth
    assert gzip.decompress(fresh()) == sink.render(None, None)[0]


async def test_run_consumes_the_inbox_until_it_ends() -> None:
    sink, *_ = make_sink(clusters=("prod", "dr"))

    async def inbox() -> AsyncIterator[SinkUpdate]:
        yield golden_snapshot()
        yield replace(golden_snapshot(), cluster="dr")
        yield ClusterWithdrawn("prod", "stale")

    async with asyncio.timeout(10):
        await sink.run(inbox())
    assert sink.clusters == ("dr",)
    assert sink.applied == 3


def test_a_partial_snapshot_leaves_out_what_only_a_finished_cycle_knows() -> None:
    """The early publication of a first cycle (docs/pipeline.md, "The first scrape"): every
    offset family as the complete snapshot has it; no time lag and no cycle figures (absent,
    not 0)."""
    complete = golden_snapshot()
    partial = replace(complete, timestamp_sampling=False, partial=True)
    full = samples(render_snapshots([complete], "partition"))
    early = samples(render_snapshots([partial], "partition"))
    left_out = {
        "kafka_consumergroup_group_lag_seconds",
        "kafka_consumergroup_group_max_lag_seconds",
        "kafka_consumergroup_poll_time_ms",
        "kafka_lag_exporter_scrape_duration_seconds",
        "kafka_lag_exporter_compaction_detected_total",
    }
    assert left_out <= set(full)
    assert set(early) == set(full) - left_out
    for family, series in early.items():
        assert series == full[family], family
