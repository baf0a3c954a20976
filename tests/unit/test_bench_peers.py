"""The compare benchmark's pure parts: reading each exporter's exposition into lag values, and
judging them against the scenario's truth (no Kafka, no exporter, no timing)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench.peers.build import PEERS, PeerUnavailable, ensure, parse_binaries
from bench.peers.exposition import (
    METRICS,
    family_samples,
    lag_series,
    parse_labels,
    time_lag_series,
)
from bench.peers.truth import expected_rows, offset_lag_accuracy, time_lag_accuracy
from bench.scenario import ScenarioPlan, plan, preset

KLAG_BODY = """\
# HELP kafka_consumergroup_group_lag Offset lag
# TYPE kafka_consumergroup_group_lag gauge
kafka_consumergroup_group_lag{cluster_name="c",group="g1",topic="t",partition="0",member_host=""} 7
kafka_consumergroup_group_lag{cluster_name="c",group="g1",topic="t",partition="1",member_host=""} 0
# TYPE kafka_consumergroup_group_lag_seconds gauge
kafka_consumergroup_group_lag_seconds{group="g1",topic="t",partition="0",data_loss="false"} 12.5
kafka_consumergroup_group_lag_sum{group="g1"} 7
"""

KMINION_BODY = """\
# TYPE kminion_kafka_consumer_group_topic_partition_lag gauge
kminion_kafka_consumer_group_topic_partition_lag{group_id="g1",partition_id="10",topic_name="t"} 14
kminion_kafka_consumer_group_topic_lag{group_id="g1",topic_name="t"} 147481
"""

KAFKA_EXPORTER_BODY = """\
# TYPE kafka_consumergroup_lag gauge
kafka_consumergroup_lag{consumergroup="g1",partition="3",topic="t"} 2.5e+06
kafka_consumergroup_lag_sum{consumergroup="g1",topic="t"} 2.5e+06
"""


def test_labels_with_escapes() -> None:
    parsed = parse_labels(r'a="x",b="y\"z",c="back\\slash",d="two\nlines",e=""')
    assert parsed == {"a": "x", "b": 'y"z', "c": "back\\slash", "d": "two\nlines", "e": ""}


def test_labels_refuse_an_unquoted_value() -> None:
    with pytest.raises(ValueError, match="quoted"):
        parse_labels("a=x")
    with pytest.raises(ValueError, match="unterminated"):
        parse_labels('a="x')


def test_family_is_matched_exactly_not_by_prefix() -> None:
    samples = family_samples(KLAG_BODY, "kafka_consumergroup_group_lag")
    assert [value for _, value in samples] == [7.0, 0.0]  # not _seconds, not _sum


def test_infinities_and_timestamps() -> None:
    body = 'x{a="1"} +Inf 1700000000000\nx{a="2"} -Inf\nx{a="3"} NaN\n'
    values = [v for _, v in family_samples(body, "x")]
    assert values[:2] == [math.inf, -math.inf]
    assert math.isnan(values[2])


@pytest.mark.parametrize(
    ("peer", "body", "expected"),
    [
        ("klag-exporter", KLAG_BODY, {("g1", "t", 0): 7.0, ("g1", "t", 1): 0.0}),
        ("kminion", KMINION_BODY, {("g1", "t", 10): 14.0}),
        ("kafka_exporter", KAFKA_EXPORTER_BODY, {("g1", "t", 3): 2_500_000.0}),
    ],
)
def test_each_peers_lag_in_its_own_names(
    peer: str, body: str, expected: dict[tuple[str, str, int], float]
) -> None:
    assert lag_series(body, peer) == expected


def test_time_lag_only_where_the_exporter_has_it() -> None:
    assert time_lag_series(KLAG_BODY, "klag-pipeline") == {("g1", "t", 0): 12.5}
    assert time_lag_series(KMINION_BODY, "kminion") is None
    assert METRICS["kafka_exporter"].time_lag is None


def test_a_series_without_the_partition_label_is_skipped() -> None:
    body = 'kafka_consumergroup_lag{consumergroup="g",topic="t"} 1\n'
    assert lag_series(body, "kafka_exporter") == {}


def _plan() -> ScenarioPlan:
    return plan(preset("small"), now_ms=1_000_000_000)


def test_offset_lag_accuracy_counts_exact_missing_and_foreign_rows() -> None:
    scenario = _plan()
    rows = expected_rows(scenario)
    assert len(rows) == scenario.truth()["rows"]
    reported = {key: float(scenario.high - committed) for key, committed in rows.items()}
    first, second = sorted(rows)[:2]
    del reported[first]
    reported[second] += 1
    reported[("someone-else", "t", 0)] = 3.0
    result = offset_lag_accuracy(scenario, reported)
    assert result == {
        "expected": len(rows),
        "present": len(rows) - 1,
        "exact": len(rows) - 2,
        "unexpected": 1,
    }


def test_time_lag_accuracy_window_is_one_poll_behind_the_scrape() -> None:
    scenario = _plan()
    rows = expected_rows(scenario)
    scraped_at = 1_000_000.0 + 30.0  # seconds; the plan's "now" was 1_000_000 s
    poll = 5.0
    reported: dict[tuple[str, str, int], float] = {}
    lagging = sorted(k for k, c in rows.items() if c < scenario.high)
    for key in lagging:
        timestamp = scenario.topic_index[key[1]].timestamp(rows[key]) / 1000
        reported[key] = scraped_at - timestamp - 3.0  # computed 3 s before the scrape: within
    late = lagging[0]
    reported[late] += 20.0  # 17 s too old: outside
    early = lagging[1]
    reported[early] -= poll  # 8 s behind with poll 5 + slack 2: outside
    caught_up = [k for k, c in rows.items() if c >= scenario.high]
    for key in caught_up[:-1]:
        reported[key] = 0.0
    result = time_lag_accuracy(scenario, reported, scraped_at, poll)
    assert result is not None
    assert result["lagging_rows"] == len(lagging) == result["present"]
    assert result["within_window"] == len(lagging) - 2
    assert result["error_seconds_median"] == -3.0
    assert result["error_seconds_max_abs"] == 17.0
    assert result["caught_up_zero"] == len(caught_up) - 1
    assert time_lag_accuracy(scenario, None, scraped_at, poll) is None


def test_binaries_given_on_the_command_line() -> None:
    assert parse_binaries(["kminion=/opt/kminion"]) == {"kminion": Path("/opt/kminion")}
    with pytest.raises(ValueError, match="NAME=PATH"):
        parse_binaries(["kminion"])
    with pytest.raises(ValueError, match="NAME=PATH"):
        parse_binaries(["burrow=/x"])


def test_a_go_peer_without_a_binary_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KLAG_PEERS_CACHE", str(tmp_path))
    with pytest.raises(PeerUnavailable, match="Go module proxy refuses"):
        ensure("kminion", log=lambda _: None)
    with pytest.raises(PeerUnavailable, match="no file at"):
        ensure("kafka_exporter", log=lambda _: None, given=tmp_path / "absent")
    made = tmp_path / f"kminion-{PEERS['kminion'].version}" / "kminion"
    made.parent.mkdir()
    made.write_bytes(b"")
    assert ensure("kminion", log=lambda _: None) == made
