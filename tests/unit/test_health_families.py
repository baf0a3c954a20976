"""The consumer health families (issue 14) in every sink, from a hand-built ``ClusterHealth``.

The snapshot is the Prometheus golden snapshot (billing/orders/0 lag 60 with member m-1,
billing/orders/1 caught up, idle/orders/0 lag 105 without members) plus an evaluation written
here: the expected lines and values below are derived from it by hand, not from any output.
"""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import replace

import pytest
from opentelemetry.metrics import Observation
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from klag_pipeline.health.model import (
    ClusterHealth,
    GroupHealth,
    GroupTopicHealth,
    PartitionHealth,
    Rates,
    Status,
)
from klag_pipeline.metrics_catalog import BY_NAME, CLUSTER_FAMILIES, CONSUMER_FAMILIES
from klag_pipeline.model import TopicPartition
from klag_pipeline.output import render_json, render_jsonl
from klag_pipeline.records import group_records, partition_records
from klag_pipeline.sinks.jsonl import snapshot_lines
from klag_pipeline.sinks.otlp.families import COUNTER_NAMES, observe
from klag_pipeline.sinks.prometheus import render_snapshots
from klag_pipeline.snapshot import ClusterSnapshot
from tests.unit.test_prometheus_sink import (
    PROMETHEUS_ACCEPT,
    golden_snapshot,
    make_sink,
    scrape,
)

ORDERS_0 = TopicPartition("orders", 0)
ORDERS_1 = TopicPartition("orders", 1)
AUDIT_0 = TopicPartition("audit", 0)  # evaluated, but its row was dropped (drop_abandoned)
LAST_REBALANCE = 1_700_000_000.5


def health() -> ClusterHealth:
    return ClusterHealth(
        window_seconds=300.0,
        partitions={
            # consumes 2.5/s, produced 1/s: lag 60 falls by 1.5/s, caught up in 60 / 1.5 = 40 s
            ("billing", ORDERS_0): PartitionHealth(
                Rates(2.5, 1.0, -1.5), 40.0, 0.0, Status.OK, "catching up"
            ),
            ("billing", ORDERS_1): PartitionHealth(
                Rates(0.0, 0.0, 0.0), 0.0, 120.0, Status.OK, "caught up"
            ),
            # nothing consumed, 1/s produced: lag 105 grows by 1/s, never caught up
            ("idle", ORDERS_0): PartitionHealth(
                Rates(0.0, 1.0, 1.0),
                math.inf,
                600.0,
                Status.STOPPED,
                "no members; lag grew from 45 to 105",
                estimated_lag_seconds=75.5,
            ),
            ("billing", AUDIT_0): PartitionHealth(
                Rates(0.0, 0.0, 0.0), 30.0, 900.0, Status.STALLED, "commit unmoved"
            ),
        },
        topics={
            ("billing", "orders"): GroupTopicHealth(2.5, -1.5, 0.0, False),
            ("billing", "audit"): GroupTopicHealth(0.0, None, 900.0, True),
            ("idle", "orders"): GroupTopicHealth(0.0, 1.0, 600.0, False),
        },
        groups={
            "billing": GroupHealth(
                Status.LAGGING, "catch-up above 30s", 2.5, -1.5, 40.0, 3, LAST_REBALANCE
            ),
            "idle": GroupHealth(
                Status.STOPPED, "no members; lag grew from 45 to 105", 0.0, 1.0, math.inf, 0, None
            ),
        },
        produce_rates={ORDERS_0: 1.0},  # orders/1: one observation only, rate unknown
        dropped_rows=1,
    )


def health_snapshot() -> ClusterSnapshot:
    return replace(golden_snapshot(), health=health())


B0 = (
    'client_id="app",cluster_name="prod",consumer_id="m-1",env="eu-1",group="billing",'
    'member_host="/10.0.0.1",partition="0",topic="orders"'
)
B1 = B0.replace('partition="0"', 'partition="1"')
I0 = (
    'client_id="",cluster_name="prod",consumer_id="",env="eu-1",group="idle",member_host="",'
    'partition="0",topic="orders"'
)
P0 = 'cluster_name="prod",env="eu-1",partition="0",topic="orders"'
GB = 'cluster_name="prod",env="eu-1",group="billing"'
GI = 'cluster_name="prod",env="eu-1",group="idle"'
GT_BA = 'cluster_name="prod",env="eu-1",group="billing",topic="audit"'
GT_BO = 'cluster_name="prod",env="eu-1",group="billing",topic="orders"'
GT_IO = 'cluster_name="prod",env="eu-1",group="idle",topic="orders"'

# (family, [(labels, value text)]) in catalog order; a None value leaves its series out.
PARTITION_LEVEL = [
    ("kafka_consumergroup_group_consume_rate", [(B0, "2.5"), (B1, "0"), (I0, "0")]),
    ("kafka_consumergroup_group_lag_velocity", [(B0, "-1.5"), (B1, "0"), (I0, "1")]),
    ("kafka_consumergroup_group_catch_up_seconds", [(B0, "40"), (B1, "0"), (I0, "+Inf")]),
    ("kafka_consumergroup_group_partition_status", [(B0, "0"), (B1, "0"), (I0, "4")]),
    ("kafka_consumergroup_group_estimated_lag_seconds", [(I0, "75.5")]),
]
OTHER_LEVELS = [
    ("kafka_partition_produce_rate", [(P0, "1")]),
    (
        "kafka_consumergroup_group_topic_sum_consume_rate",
        [(GT_BA, "0"), (GT_BO, "2.5"), (GT_IO, "0")],
    ),
    ("kafka_consumergroup_group_topic_sum_lag_velocity", [(GT_BO, "-1.5"), (GT_IO, "1")]),
    (
        "kafka_consumergroup_group_topic_commit_age_seconds",
        [(GT_BA, "900"), (GT_BO, "0"), (GT_IO, "600")],
    ),
    ("kafka_consumergroup_group_topic_abandoned", [(GT_BA, "1"), (GT_BO, "0"), (GT_IO, "0")]),
    ("kafka_consumergroup_group_status", [(GB, "1"), (GI, "4")]),
    ("kafka_consumergroup_group_sum_consume_rate", [(GB, "2.5"), (GI, "0")]),
    ("kafka_consumergroup_group_sum_lag_velocity", [(GB, "-1.5"), (GI, "1")]),
    ("kafka_consumergroup_group_max_catch_up_seconds", [(GB, "40"), (GI, "+Inf")]),
    ("kafka_consumergroup_group_last_rebalance_timestamp_seconds", [(GB, "1700000000.5")]),
    ("kafka_consumergroup_group_rebalances_total", [(GB, "3"), (GI, "0")]),
]


def expected_text(families: list[tuple[str, list[tuple[str, str]]]]) -> str:
    out = []
    for name, series in families:
        kind = BY_NAME[name].kind
        out.append(f"# HELP {name} {BY_NAME[name].help}\n# TYPE {name} {kind}\n")
        out.extend(f"{name}{{{labels}}} {value}\n" for labels, value in series)
    return "".join(out)


def test_every_consumer_family_is_in_the_expectations() -> None:
    names = [name for name, _ in (*PARTITION_LEVEL, *OTHER_LEVELS)]
    assert names == [f.name for f in CONSUMER_FAMILIES]


def test_partition_granularity_exact_lines() -> None:
    """After the compatibility families (unchanged by health), every health series; the row
    dropped as abandoned (billing/audit/0) has no GPM series, its group-topic keeps its own."""
    compat = render_snapshots([golden_snapshot()], "partition")
    text = render_snapshots([health_snapshot()], "partition")
    assert text == compat + expected_text([*PARTITION_LEVEL, *OTHER_LEVELS])


def test_topic_granularity_drops_the_partition_level_families() -> None:
    compat = render_snapshots([golden_snapshot()], "topic")
    text = render_snapshots([health_snapshot()], "topic")
    assert text == compat + expected_text(OTHER_LEVELS)


def test_without_health_no_health_family_at_all() -> None:
    text = render_snapshots([golden_snapshot()], "partition")
    for family in CONSUMER_FAMILIES:
        assert family.name.removesuffix("_total") not in text


def test_empty_health_adds_no_series() -> None:
    """Health evaluated but nothing known yet (a first cycle): no header without samples."""
    empty = ClusterHealth(300.0, {}, {}, {}, {})
    text = render_snapshots([replace(golden_snapshot(), health=empty)], "partition")
    assert text == render_snapshots([golden_snapshot()], "partition")


@pytest.mark.parametrize("openmetrics", [False, True])
def test_scrape_is_valid_in_both_formats(openmetrics: bool) -> None:
    sink, *_ = make_sink()
    sink.apply(health_snapshot())
    accept = PROMETHEUS_ACCEPT if openmetrics else None
    text = scrape(sink, accept)
    counter = "kafka_consumergroup_group_rebalances"
    if openmetrics:
        # OpenMetrics names the counter family without `_total`; the sample keeps it.
        assert f"# TYPE {counter} counter\n" in text
        assert f"# HELP {counter} " in text
        assert text.endswith("# EOF\n")
    else:
        assert f"# TYPE {counter}_total counter\n" in text
    parsed = samples_with_counter(text, openmetrics)
    # prometheus_client's parsers strip `_total` from a counter's family name in both formats.
    assert parsed[counter] == (
        "counter",
        [
            ({"cluster_name": "prod", "env": "eu-1", "group": "billing"}, 3.0),
            ({"cluster_name": "prod", "env": "eu-1", "group": "idle"}, 0.0),
        ],
    )
    catch_up = parsed["kafka_consumergroup_group_max_catch_up_seconds"]
    assert catch_up[0] == "gauge"
    assert [value for _, value in catch_up[1]] == [40.0, math.inf]
    assert parsed["kafka_consumergroup_group_lag"][0] == "gauge"


def samples_with_counter(
    text: str, openmetrics: bool
) -> dict[str, tuple[str, list[tuple[dict[str, str], float]]]]:
    parse = parse_om if openmetrics else parse_text
    return {
        family.name: (family.type, [(s.labels, s.value) for s in family.samples])
        for family in parse(text)
    }


def test_gzip_and_plain_scrapes_agree_in_both_formats() -> None:
    sink, *_ = make_sink()
    sink.apply(health_snapshot())
    for accept in (None, PROMETHEUS_ACCEPT):
        plain, _, _ = sink.render(accept, None)
        zipped, _, encoding = sink.render(accept, "gzip")
        assert encoding == "gzip"
        assert gzip.decompress(zipped) == plain


def test_both_formats_parse_to_the_same_health_series() -> None:
    sink, *_ = make_sink()
    sink.apply(health_snapshot())
    text = samples_with_counter(scrape(sink), False)
    om = samples_with_counter(scrape(sink, PROMETHEUS_ACCEPT), True)
    names = [f.name.removesuffix("_total") for f in CONSUMER_FAMILIES]
    assert [text[n] for n in names] == [om[n] for n in names]


# -- OTLP ----------------------------------------------------------------------------------------


def points(name: str) -> list[tuple[dict[str, str], float]]:
    observed: list[Observation] = observe(name, [health_snapshot()])
    return [(dict(o.attributes or {}), o.value) for o in observed]


def gpm(group: str, partition: int, member: tuple[str, str, str]) -> dict[str, str]:
    host, consumer, client = member
    return {
        "env": "eu-1",
        "cluster_name": "prod",
        "group": group,
        "topic": "orders",
        "partition": str(partition),
        "member_host": host,
        "consumer_id": consumer,
        "client_id": client,
    }


M1 = ("/10.0.0.1", "m-1", "app")
NOBODY = ("", "", "")


def test_otlp_partition_level_values_and_attributes() -> None:
    assert points("kafka_consumergroup_group_consume_rate") == [
        (gpm("billing", 0, M1), 2.5),
        (gpm("billing", 1, M1), 0.0),
        (gpm("idle", 0, NOBODY), 0.0),
    ]
    # +Inf cannot be carried by the SDK: idle's catch-up series is absent (docs/otlp.md).
    assert points("kafka_consumergroup_group_catch_up_seconds") == [
        (gpm("billing", 0, M1), 40.0),
        (gpm("billing", 1, M1), 0.0),
    ]
    status = points("kafka_consumergroup_group_partition_status")
    assert [v for _, v in status] == [0, 0, 4]
    assert all(type(v) is int for _, v in status)  # as_int, like the group state
    assert points("kafka_consumergroup_group_estimated_lag_seconds") == [
        (gpm("idle", 0, NOBODY), 75.5)
    ]


def test_otlp_other_levels() -> None:
    base = {"env": "eu-1", "cluster_name": "prod"}
    assert points("kafka_partition_produce_rate") == [
        ({**base, "topic": "orders", "partition": "0"}, 1.0)
    ]
    abandoned = points("kafka_consumergroup_group_topic_abandoned")
    assert abandoned == [
        ({**base, "group": "billing", "topic": "audit"}, 1),
        ({**base, "group": "billing", "topic": "orders"}, 0),
        ({**base, "group": "idle", "topic": "orders"}, 0),
    ]
    assert all(type(v) is int for _, v in abandoned)
    assert points("kafka_consumergroup_group_rebalances_total") == [
        ({**base, "group": "billing"}, 3),
        ({**base, "group": "idle"}, 0),
    ]
    assert points("kafka_consumergroup_group_last_rebalance_timestamp_seconds") == [
        ({**base, "group": "billing"}, LAST_REBALANCE)
    ]
    assert points("kafka_consumergroup_group_max_catch_up_seconds") == [
        ({**base, "group": "billing"}, 40.0)
    ]
    assert {"kafka_consumergroup_group_rebalances_total"} == COUNTER_NAMES


def test_otlp_without_health_observes_nothing() -> None:
    for family in CONSUMER_FAMILIES:
        assert observe(family.name, [golden_snapshot()]) == [], family.name
    for family in CLUSTER_FAMILIES:
        assert observe(family.name, [golden_snapshot()]) == observe(
            family.name, [health_snapshot()]
        ), family.name


# -- JSON lines ----------------------------------------------------------------------------------


def test_partition_records_carry_the_health() -> None:
    records = partition_records(health_snapshot())
    keys = (
        "produce_rate",
        "consume_rate",
        "lag_velocity",
        "catch_up_seconds",
        "status",
        "status_code",
        "status_reason",
        "estimated_lag_seconds",
    )
    assert [tuple(r[k] for k in keys) for r in records] == [
        (1.0, 2.5, -1.5, 40.0, "ok", 0, "catching up", None),
        (None, 0.0, 0.0, 0.0, "ok", 0, "caught up", None),
        (1.0, 0.0, 1.0, "+Inf", "stopped", 4, "no members; lag grew from 45 to 105", 75.5),
    ]
    assert {r["schema_version"] for r in records} == {2}


def test_group_records_carry_the_health() -> None:
    billing, idle = group_records(health_snapshot())
    assert billing["group"] == "billing"
    assert (billing["status"], billing["status_code"], billing["status_reason"]) == (
        "lagging",
        1,
        "catch-up above 30s",
    )
    assert (billing["consume_rate"], billing["lag_velocity"]) == (2.5, -1.5)
    assert (billing["max_catch_up_seconds"], billing["rebalances"]) == (40.0, 3)
    assert billing["last_rebalance_at"] == "2023-11-14T22:13:20.500Z"
    assert billing["topic_sum_consume_rate"] == {"audit": 0.0, "orders": 2.5}
    assert billing["topic_sum_lag_velocity"] == {"audit": None, "orders": -1.5}
    assert billing["topic_commit_age_seconds"] == {"audit": 900.0, "orders": 0.0}
    assert billing["abandoned_topics"] == ["audit"]
    assert (idle["status"], idle["max_catch_up_seconds"], idle["last_rebalance_at"]) == (
        "stopped",
        "+Inf",
        None,
    )
    assert idle["abandoned_topics"] == []


def test_sink_lines_and_once_jsonl_are_the_same_records() -> None:
    snap = health_snapshot()
    lines = snapshot_lines(snap, only_lagging=False).decode()
    assert lines == render_jsonl([snap])
    records = [json.loads(line) for line in lines.splitlines()]
    assert [r["type"] for r in records] == ["partition"] * 3 + ["group"] * 2 + ["cycle"]
    document = json.loads(render_json([snap]))["clusters"][0]
    assert document["groups"] == records[3:5]
    assert document["partitions"] == records[:3]
