"""Each exporter's lag series, read from its Prometheus text exposition (pure parsing).

The exporters name the same quantity differently; ``METRICS`` is the one table that maps them.
Only sample lines of the wanted family are parsed, so a 6 MB body costs one pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Key = tuple[str, str, int]
"""(group, topic, partition)"""


@dataclass(frozen=True, slots=True)
class MetricNames:
    lag: str
    """Per group-partition offset lag."""
    time_lag: str | None
    """Per group-partition time lag in seconds; None when the exporter has none."""
    group: str
    topic: str
    partition: str


_KLAG = MetricNames(
    "kafka_consumergroup_group_lag",
    "kafka_consumergroup_group_lag_seconds",
    "group",
    "topic",
    "partition",
)

METRICS: dict[str, MetricNames] = {
    "klag-pipeline": _KLAG,
    # klag-exporter (softwaremill) uses the same names as klag-pipeline.
    "klag-exporter": _KLAG,
    # KMinion exports offset lag only; time lag is left to PromQL.
    "kminion": MetricNames(
        "kminion_kafka_consumer_group_topic_partition_lag",
        None,
        "group_id",
        "topic_name",
        "partition_id",
    ),
    # kafka_exporter (danielqsj) exports offset lag only.
    "kafka_exporter": MetricNames(
        "kafka_consumergroup_lag", None, "consumergroup", "topic", "partition"
    ),
}


def parse_labels(text: str) -> dict[str, str]:
    """``a="x",b="y\\"z"`` → {"a": "x", "b": 'y"z'} (the exposition format's escapes:
    backslash, double quote, newline)."""
    labels: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " ,":
            i += 1
        if i >= n:
            break
        eq = text.index("=", i)
        name = text[i:eq].strip()
        if eq + 1 >= n or text[eq + 1] != '"':
            raise ValueError(f"label {name!r} has no quoted value")
        i = eq + 2
        value: list[str] = []
        while True:
            if i >= n:
                raise ValueError(f"label {name!r}: unterminated value")
            ch = text[i]
            if ch == "\\" and i + 1 < n:
                nxt = text[i + 1]
                value.append("\n" if nxt == "n" else nxt)
                i += 2
                continue
            if ch == '"':
                i += 1
                break
            value.append(ch)
            i += 1
        labels[name] = "".join(value)
    return labels


def parse_value(text: str) -> float:
    token = text.split()[0]
    if token in ("+Inf", "Inf"):
        return math.inf
    if token == "-Inf":
        return -math.inf
    return float(token)


def family_samples(body: str, family: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of ``family`` (exact name, with labels) in a text exposition."""
    out: list[tuple[dict[str, str], float]] = []
    prefix = family + "{"
    for line in body.splitlines():
        if not line.startswith(prefix):
            continue
        close = line.rindex("}")
        out.append((parse_labels(line[len(prefix) : close]), parse_value(line[close + 1 :])))
    return out


def series_by_partition(body: str, family: str, names: MetricNames) -> dict[Key, float]:
    """``family``'s samples keyed by (group, topic, partition) in the exporter's own label
    names. A key seen twice (e.g. once per member) keeps the first value."""
    values: dict[Key, float] = {}
    for labels, value in family_samples(body, family):
        try:
            key = (labels[names.group], labels[names.topic], int(labels[names.partition]))
        except (KeyError, ValueError):
            continue
        values.setdefault(key, value)
    return values


def lag_series(body: str, peer: str) -> dict[Key, float]:
    names = METRICS[peer]
    return series_by_partition(body, names.lag, names)


def time_lag_series(body: str, peer: str) -> dict[Key, float] | None:
    names = METRICS[peer]
    if names.time_lag is None:
        return None
    return series_by_partition(body, names.time_lag, names)
