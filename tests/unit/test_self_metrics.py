"""SelfMetrics: every klag_pipeline_* series, a private registry, valid exposition."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from klag_pipeline.kafka.port import RequestObserver
from klag_pipeline.telemetry.self_metrics import SelfMetrics


def values(metrics: SelfMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) → value, parsed from the text exposition."""
    out = {}
    for family in parse_text(metrics.render(openmetrics=False).decode()):
        assert family.name.startswith("klag_pipeline_"), family.name
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_counters_by_label() -> None:
    metrics = SelfMetrics()
    metrics.stage_failed("prod", "discovery")
    metrics.stage_failed("prod", "discovery")
    metrics.cycle_finished("prod", "ok")
    metrics.partial_failures("prod", "watermarks", 3)
    metrics.partial_failures("prod", "watermarks", 0)
    metrics.ticks_skipped("prod", 2)
    metrics.snapshot_dropped("otlp")
    metrics.sink_error("jsonl")
    metrics.cache_lookup(hit=True)
    metrics.cache_lookup(hit=True)
    metrics.cache_lookup(hit=False)
    got = values(metrics)
    assert (
        got[
            ("klag_pipeline_stage_errors_total", (("cluster_name", "prod"), ("stage", "discovery")))
        ]
        == 2
    )
    assert got[("klag_pipeline_cycles_total", (("cluster_name", "prod"), ("outcome", "ok")))] == 1
    assert (
        got[
            (
                "klag_pipeline_partial_failures_total",
                (("cluster_name", "prod"), ("stage", "watermarks")),
            )
        ]
        == 3
    )
    assert got[("klag_pipeline_ticks_skipped_total", (("cluster_name", "prod"),))] == 2
    assert got[("klag_pipeline_sink_dropped_snapshots_total", (("sink", "otlp"),))] == 1
    assert got[("klag_pipeline_sink_errors_total", (("sink", "jsonl"),))] == 1
    assert got[("klag_pipeline_timestamp_cache_hits_total", ())] == 2
    assert got[("klag_pipeline_timestamp_cache_misses_total", ())] == 1


def test_request_observer_labels_requests_with_their_cluster() -> None:
    metrics = SelfMetrics()
    observer: RequestObserver = metrics.for_cluster("prod")
    other: RequestObserver = metrics.for_cluster("staging")
    observer.on_request("ListGroups", "1", "ok", 0.003)
    observer.on_request("ListGroups", "1", "ok", 0.2)
    other.on_request("ListGroups", "1", "ok", 0.01)
    observer.on_request("OffsetFetch", "2", "timeout", 30.0)
    observer.on_throttle("Fetch", "1", 250)
    observer.on_throttle("Fetch", "1", 0)
    got = values(metrics)
    requests = "klag_pipeline_kafka_requests_total"
    prod = ("cluster_name", "prod")
    assert got[(requests, ((("api", "ListGroups"), ("broker", "1"), prod, ("outcome", "ok"))))] == 2
    staging = (
        ("api", "ListGroups"),
        ("broker", "1"),
        ("cluster_name", "staging"),
        ("outcome", "ok"),
    )
    assert got[(requests, staging)] == 1
    timeout = (("api", "OffsetFetch"), ("broker", "2"), prod, ("outcome", "timeout"))
    assert got[(requests, timeout)] == 1
    duration = "klag_pipeline_kafka_request_duration_seconds"
    assert got[(f"{duration}_count", (("api", "ListGroups"),))] == 3
    assert got[(f"{duration}_sum", (("api", "ListGroups"),))] == pytest.approx(0.213)
    assert got[(f"{duration}_bucket", (("api", "ListGroups"), ("le", "0.005")))] == 1
    assert got[(f"{duration}_bucket", (("api", "OffsetFetch"), ("le", "30.0")))] == 1
    throttle = (("api", "Fetch"), ("broker", "1"), prod)
    assert got[("klag_pipeline_kafka_throttled_responses_total", throttle)] == 1
    assert got[("klag_pipeline_kafka_throttle_seconds_total", throttle)] == 0.25


def test_queue_depth_is_read_at_scrape_time() -> None:
    metrics = SelfMetrics()
    depth = [3]
    metrics.register_queue("sink.prometheus", lambda: depth[0])
    key = ("klag_pipeline_queue_depth", (("queue", "sink.prometheus"),))
    assert values(metrics)[key] == 3
    depth[0] = 7
    assert values(metrics)[key] == 7
    with pytest.raises(ValueError, match="already registered"):
        metrics.register_queue("sink.prometheus", lambda: 0)


def test_private_registry() -> None:
    first, second = SelfMetrics(), SelfMetrics()
    first.snapshot_dropped("otlp")
    assert ("klag_pipeline_sink_dropped_snapshots_total", (("sink", "otlp"),)) not in values(second)
    assert not [m.name for m in REGISTRY.collect() if m.name.startswith("klag_pipeline")]


def test_openmetrics_rendering_is_complete_and_valid() -> None:
    metrics = SelfMetrics()
    metrics.on_request("Metadata", "1", "ok", 0.01)
    metrics.register_queue("snapshots", lambda: 1)
    text = metrics.render(openmetrics=True).decode()
    assert text.endswith("# EOF\n")
    families = {family.name: family.type for family in parse_openmetrics(text)}
    assert families["klag_pipeline_kafka_requests"] == "counter"
    assert families["klag_pipeline_kafka_request_duration_seconds"] == "histogram"
    assert families["klag_pipeline_queue_depth"] == "gauge"


@pytest.mark.parametrize("openmetrics", [False, True])
def test_cached_rendering_follows_every_change(openmetrics: bool) -> None:
    # The counters' exposition is cached between changes (scrape cost); no change may be missed.
    metrics = SelfMetrics()
    depth = [1]
    metrics.register_queue("snapshots", lambda: depth[0])
    first = metrics.render(openmetrics)
    assert metrics.render(openmetrics) == first
    changes = [
        lambda: metrics.on_request("Fetch", "1", "ok", 0.01),
        lambda: metrics.on_throttle("Fetch", "1", 5),
        lambda: metrics.stage_failed("c", "discovery"),
        lambda: metrics.cycle_finished("c", "ok"),
        lambda: metrics.partial_failures("c", "watermarks", 1),
        lambda: metrics.ticks_skipped("c", 1),
        lambda: metrics.snapshot_dropped("otlp"),
        lambda: metrics.sink_error("jsonl"),
        lambda: metrics.cache_lookup(hit=False),
        lambda: depth.__setitem__(0, depth[0] + 1),
    ]
    previous = first
    for change in changes:
        change()
        body = metrics.render(openmetrics)
        assert body != previous
        assert body.count(b"# EOF") == (1 if openmetrics else 0)
        previous = body


def test_leadership_metrics_only_with_election_and_each_change_reaches_the_exposition() -> None:
    metrics = SelfMetrics()
    assert not any(name.startswith("klag_pipeline_leader") for name, _ in values(metrics))
    observer = metrics.leadership("kafka")
    assert metrics.leadership("kafka") is observer
    provider = (("provider", "kafka"),)
    # Rendered (and cached) before every change: each change must show in the next render.
    assert values(metrics)[("klag_pipeline_leader", provider)] == 0
    observer.role(True)
    got = values(metrics)
    assert got[("klag_pipeline_leader", provider)] == 1
    transitions = "klag_pipeline_leadership_transitions_total"
    assert got[(transitions, (*provider, ("role", "leader")))] == 1
    observer.error()
    observer.role(False)
    got = values(metrics)
    assert got[("klag_pipeline_leader", provider)] == 0
    assert got[("klag_pipeline_leadership_errors_total", provider)] == 1
    assert (
        got[("klag_pipeline_leadership_transitions_total", (*provider, ("role", "standby")))] == 1
    )


def test_queue_names_from_cluster_names_are_escaped() -> None:
    # Channel names embed the cluster's name, which the settings do not restrict.
    metrics = SelfMetrics()
    name = 'prod "eu"\\west\nb.ticks'
    metrics.register_queue(name, lambda: 4)
    for openmetrics in (False, True):
        text = metrics.render(openmetrics).decode()
        parse = parse_openmetrics if openmetrics else parse_text
        (family,) = [f for f in parse(text) if f.name == "klag_pipeline_queue_depth"]
        assert [(s.labels, s.value) for s in family.samples] == [({"queue": name}, 4)]
