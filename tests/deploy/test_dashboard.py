"""Static checks of the Grafana dashboard: structure, variables, and that every query names only
metric families the exporter really exports (the live test runs the queries against Prometheus).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from klag_pipeline.metrics_catalog import CLUSTER_FAMILIES, CONSUMER_FAMILIES, SELF_METRICS
from klag_pipeline.pipeline.clock import FakeClock
from klag_pipeline.sinks.prometheus import PrometheusSink
from klag_pipeline.status import StatusBoard
from klag_pipeline.telemetry.self_metrics import SelfMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "klag-pipeline.json"

# SPEC §4, spelled out here rather than taken from the code: the names are a compatibility
# contract with existing klag-exporter dashboards.
SPEC_FAMILIES = frozenset(
    {
        "kafka_partition_latest_offset",
        "kafka_partition_earliest_offset",
        "kafka_consumergroup_group_offset",
        "kafka_consumergroup_group_lag",
        "kafka_consumergroup_group_lag_seconds",
        "kafka_consumergroup_group_messages_lost",
        "kafka_consumergroup_group_retention_margin",
        "kafka_consumergroup_group_lag_retention_ratio",
        "kafka_consumergroup_group_max_lag",
        "kafka_consumergroup_group_max_lag_seconds",
        "kafka_consumergroup_group_sum_lag",
        "kafka_consumergroup_group_topic_sum_lag",
        "kafka_consumergroup_group_state",
        "kafka_consumergroup_poll_time_ms",
        "kafka_lag_exporter_scrape_duration_seconds",
        "kafka_lag_exporter_last_update_timestamp_seconds",
        "kafka_lag_exporter_up",
        "kafka_lag_exporter_compaction_detected_total",
        "kafka_lag_exporter_data_loss_partitions_total",
        # klag-pipeline's addition next to group_lag (issue 18): trailing transaction markers
        "kafka_consumergroup_group_consumable_lag",
    }
)
# Consumer health (issue 14, docs/health.md): the families the evaluation stage adds, kept apart
# from SPEC_FAMILIES (the klag-exporter compatibility contract).
CONSUMER_HEALTH_FAMILIES = frozenset(
    {
        # partition (the label set of kafka_consumergroup_group_lag)
        "kafka_consumergroup_group_consume_rate",
        "kafka_consumergroup_group_lag_velocity",
        "kafka_consumergroup_group_catch_up_seconds",
        "kafka_consumergroup_group_partition_status",
        "kafka_consumergroup_group_estimated_lag_seconds",
        # partition of a topic (the label set of kafka_partition_latest_offset)
        "kafka_partition_produce_rate",
        # group-topic (the label set of kafka_consumergroup_group_topic_sum_lag)
        "kafka_consumergroup_group_topic_sum_consume_rate",
        "kafka_consumergroup_group_topic_sum_lag_velocity",
        "kafka_consumergroup_group_topic_commit_age_seconds",
        "kafka_consumergroup_group_topic_abandoned",
        # group (the label set of kafka_consumergroup_group_max_lag)
        "kafka_consumergroup_group_status",
        "kafka_consumergroup_group_sum_consume_rate",
        "kafka_consumergroup_group_sum_lag_velocity",
        "kafka_consumergroup_group_max_catch_up_seconds",
        "kafka_consumergroup_group_rebalances_total",
        "kafka_consumergroup_group_last_rebalance_timestamp_seconds",
    }
)
STATUS_NAMES = {
    "-1": "UNKNOWN",
    "0": "OK",
    "1": "LAGGING",
    "2": "REWOUND",
    "3": "STALLED",
    "4": "STOPPED",
}
# The exporter's per-cluster health gauge (docs/metrics.md), rendered per scrape by the sink
# rather than kept in the self-metrics registry.
CLUSTER_UP = "klag_pipeline_cluster_up"
# Sharded mode's self-metrics (docs/scaling.md): exported only with [exporter.sharding] enabled.
SHARDING_PREFIX = "klag_pipeline_shard_"
# Cluster-level counts of which every sharded replica exports its own share: summed over the
# replicas (one value per scrape target first), never max-ed.
SHARE_FAMILIES = frozenset(
    {
        "kafka_lag_exporter_data_loss_partitions_total",
        "kafka_lag_exporter_compaction_detected_total",
    }
)
METRIC_NAME = re.compile(r"\b((?:kafka|klag_pipeline)_[a-z0-9_]+)\b")
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")
GRAFANA_BUILTINS = frozenset({"__rate_interval", "__interval", "__range"})


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text("utf-8"))
    return dashboard


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(panel title, refId, expr)`` of every query target of every panel."""
    return [
        (panel["title"], target["refId"], target["expr"])
        for panel in iter_panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]


def is_consumer_health_query(expr: str) -> bool:
    return bool(set(METRIC_NAME.findall(expr)) & CONSUMER_HEALTH_FAMILIES)


def is_sharding_query(expr: str) -> bool:
    """Queries of the sharding self-metrics: they have data only from sharded replicas."""
    return any(name.startswith(SHARDING_PREFIX) for name in METRIC_NAME.findall(expr))


def concrete_query(expr: str, rate_interval: str) -> str:
    """The query Grafana would send with every variable at "All" (regex ``.*``)."""
    expr = expr.replace("$__rate_interval", rate_interval)
    return VARIABLE.sub(".*", expr)


def self_metric_families() -> set[str]:
    metrics = SelfMetrics()
    # Registered on first use: an exporter exposes them only in that mode.
    metrics.leadership("kafka")
    metrics.sharding()
    body = metrics.render(openmetrics=False).decode()
    families = {line.split()[2] for line in body.splitlines() if line.startswith("# TYPE ")}
    histograms = {line.split()[2] for line in body.splitlines() if line.endswith(" histogram")}
    exported = {f + "_total" for f in families if "_total" not in f}  # counters get _total
    exported |= {f"{h}_{suffix}" for h in histograms for suffix in ("bucket", "sum", "count")}
    return families | exported


def test_dashboard_structure() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "klag-pipeline"
    panels = list(iter_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel.get("description"), f"{panel['title']}: no description"
            assert panel["targets"], f"{panel['title']}: no query"
    rows = {p["title"] for p in panels if p["type"] == "row"}
    assert {
        "Overview",
        "Lag over time",
        "Partition drill-down",
        "Data-loss prevention",
        "Group states",
        "Consumer health",
        "Message rates",
        "Exporter health",
        "Sharding",
    } <= rows


def test_dashboard_variables_cover_every_reference() -> None:
    dashboard = load_dashboard()
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "cluster", "group", "topic"} <= defined
    used: set[str] = set()
    for _, _, expr in panel_queries(dashboard):
        used |= {a or b for a, b in VARIABLE.findall(expr)}
    for variable in dashboard["templating"]["list"]:
        query = variable.get("definition", "")
        used |= {a or b for a, b in VARIABLE.findall(query)}
    assert used - GRAFANA_BUILTINS <= defined
    for panel in iter_panels(dashboard["panels"]):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


@pytest.mark.parametrize(
    ("title", "ref", "expr"), panel_queries(load_dashboard()), ids=lambda v: str(v)[:40]
)
def test_queries_name_only_exported_families(title: str, ref: str, expr: str) -> None:
    names = set(METRIC_NAME.findall(expr))
    assert names, f"{title}/{ref}: no metric in {expr!r}"
    known = SPEC_FAMILIES | CONSUMER_HEALTH_FAMILIES | self_metric_families() | {CLUSTER_UP}
    assert names <= known, f"{title}/{ref}: unknown metric(s) {sorted(names - known)}"


def sink_families() -> set[str]:
    exported = (*CLUSTER_FAMILIES, *CONSUMER_FAMILIES)
    return {f.name for f in exported} | {"kafka_lag_exporter_up"}


def test_spec_families_are_what_the_sink_exports() -> None:
    # The dashboard and alerts are written against SPEC_FAMILIES and CONSUMER_HEALTH_FAMILIES:
    # the sink exports every SPEC family and nothing outside the two.
    assert sink_families() >= SPEC_FAMILIES
    assert sink_families() <= SPEC_FAMILIES | CONSUMER_HEALTH_FAMILIES


def test_health_families_are_what_the_sink_exports() -> None:
    # The health panels and alerts read exactly these names.
    assert sink_families() == SPEC_FAMILIES | CONSUMER_HEALTH_FAMILIES


def test_cluster_up_is_what_the_sink_exports() -> None:
    status = StatusBoard(["a"], staleness_threshold=9.0, poll_interval=3.0, clock=FakeClock())
    body, _, _ = PrometheusSink("partition", status, SelfMetrics()).render(None, None)
    assert f'\n{CLUSTER_UP}{{cluster_name="a"}} 0\n' in body.decode()


def test_cluster_health_is_shown_per_cluster_and_lists_every_cluster() -> None:
    dashboard = load_dashboard()
    exprs = [expr for _, _, expr in panel_queries(dashboard)]
    assert any(CLUSTER_UP in expr and "by (cluster_name)" in expr for expr in exprs)
    # The cluster picker lists clusters that never had data too (their series are absent).
    (cluster,) = [v for v in dashboard["templating"]["list"] if v["name"] == "cluster"]
    assert cluster["definition"] == f"label_values({CLUSTER_UP}, cluster_name)"


def test_dashboard_shows_every_spec_and_health_family() -> None:
    queries = panel_queries(load_dashboard())
    used = {name for _, _, expr in queries for name in METRIC_NAME.findall(expr)}
    missing = (SPEC_FAMILIES | CONSUMER_HEALTH_FAMILIES) - used
    assert not missing, f"no panel shows {sorted(missing)}"


def value_mapping(mappings: list[dict[str, Any]]) -> dict[str, str]:
    """``{value: text}`` of a field's value mappings."""
    return {
        value: result["text"]
        for mapping in mappings
        if mapping["type"] == "value"
        for value, result in mapping["options"].items()
    }


def field_mappings(panel: dict[str, Any], field: str | None) -> dict[str, str]:
    """The value mappings of ``field`` (an override by name), or of the defaults for None."""
    config = panel["fieldConfig"]
    if field is None:
        return value_mapping(config["defaults"].get("mappings", []))
    (override,) = [o for o in config["overrides"] if o["matcher"]["options"] == field]
    (mappings,) = [p["value"] for p in override["properties"] if p["id"] == "mappings"]
    return value_mapping(mappings)


def health_panels() -> dict[str, dict[str, Any]]:
    panels = iter_panels(load_dashboard()["panels"])
    return {
        p["title"]: p
        for p in panels
        if any(is_consumer_health_query(t["expr"]) for t in p.get("targets", []))
    }


def test_status_is_shown_by_name() -> None:
    # Every exported code (docs/health.md) has its name wherever a status is shown.
    panels = health_panels()
    assert field_mappings(panels["Group health"], "status") == STATUS_NAMES
    assert field_mappings(panels["Partition health"], "status") == STATUS_NAMES
    assert field_mappings(panels["Group status"], None) == STATUS_NAMES
    assert field_mappings(panels["Group-topic health"], "abandoned") == {
        "0": "no",
        "1": "ABANDONED",
    }


def test_infinite_catch_up_time_is_shown_as_never() -> None:
    # Grafana's Prometheus data source parses "+Inf" to Infinity; mappings match String(value).
    panels = health_panels()
    never = {"Infinity": "never"}
    assert field_mappings(panels["Group health"], "catch-up time") == never
    assert field_mappings(panels["Partition health"], "catch-up time") == never
    assert field_mappings(panels["Catch-up time"], None) == never


def test_health_panels_show_status_rates_and_catch_up_time() -> None:
    exprs = {
        title: " ".join(t["expr"] for t in panel["targets"])
        for title, panel in health_panels().items()
    }
    assert "kafka_consumergroup_group_status" in exprs["Group status"]
    rates = exprs["Consume rate vs produce rate"]
    assert "consume_rate" in rates
    assert "kafka_partition_produce_rate" in rates
    assert "lag_velocity" in exprs["Lag velocity"]
    assert "kafka_consumergroup_group_max_catch_up_seconds" in exprs["Catch-up time"]
    # The renamed table columns are the refIds the queries really have.
    for panel in health_panels().values():
        refs = {t["refId"] for t in panel["targets"]}
        for transformation in panel.get("transformations", []):
            if renamed := transformation["options"].get("renameByName"):
                assert {name.removeprefix("Value #") for name in renamed} == refs, panel["title"]


# -- correct across sharded replicas (docs/deployment.md, "Sharded mode") ------------------------

GROUP_LEVEL = re.compile(r"\b(?:max|min) by \((?:cluster_name, )?(?:group|topic)\b")


def test_group_and_partition_series_are_deduplicated_across_replicas() -> None:
    # A group (or partition) exported by two replicas for a moment during a rebalance must not be
    # counted twice: every query of a consumer or partition family either collapses the replicas
    # with max/min by (...) over the series' identifying labels, or sums per-series rates (each
    # replica's series covers only the time it exported the group).
    consumer = {f.name for f in CONSUMER_FAMILIES} | {
        "kafka_partition_latest_offset",
        "kafka_partition_earliest_offset",
        "kafka_partition_produce_rate",
    }
    for title, ref, expr in panel_queries(load_dashboard()):
        names = set(METRIC_NAME.findall(expr))
        if not names & consumer:
            continue
        deduplicated = bool(GROUP_LEVEL.search(expr)) or expr.startswith("max(")
        per_series_rate = "(rate(" in expr
        assert deduplicated or per_series_rate, f"{title}/{ref}: {expr}"


def test_cluster_counts_sum_the_replicas_shares() -> None:
    queries = [(t, r, e) for t, r, e in panel_queries(load_dashboard())]
    using = [(t, r, e) for t, r, e in queries if set(METRIC_NAME.findall(e)) & SHARE_FAMILIES]
    assert len(using) >= 3
    for title, ref, expr in using:
        for name in set(METRIC_NAME.findall(expr)) & SHARE_FAMILIES:
            share = f"sum by (cluster_name) (max by (cluster_name, instance) ({name}{{"
            assert share in expr, f"{title}/{ref}: {expr}"


def test_sharding_row_shows_every_sharding_family() -> None:
    queries = panel_queries(load_dashboard())
    used = {name for _, _, expr in queries for name in METRIC_NAME.findall(expr)}
    sharding = {f.name for f in SELF_METRICS if f.name.startswith(SHARDING_PREFIX)}
    assert len(sharding) == 5
    assert sharding <= used
