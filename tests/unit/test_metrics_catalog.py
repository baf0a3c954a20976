"""docs/metrics.md, docs/otlp.md and docs/jsonl.md against klag_pipeline/metrics_catalog.py, and
the sinks against the catalog (as the OpenTelemetry Collector checks its metadata files).

A family added to the catalog without a line in docs/metrics.md fails here, and so does a
documented family the catalog does not have, a changed type, label set or help text.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from klag_pipeline.metrics_catalog import (
    BY_NAME,
    CLUSTER_FAMILIES,
    CLUSTER_UP,
    CONSUMER_FAMILIES,
    FAMILIES,
    GPM,
    GT,
    HEALTH_FAMILIES,
    SELF_METRICS,
    UP,
    C,
    Family,
    G,
    LabelSet,
    P,
)
from klag_pipeline.records import cycle_record, group_record, group_records, partition_records
from klag_pipeline.settings.schema import Granularity
from klag_pipeline.sinks.otlp.families import family_descriptions, observe
from klag_pipeline.sinks.prometheus import render_snapshots
from klag_pipeline.snapshot import ClusterSnapshot
from tests.unit.test_health_families import health_snapshot
from tests.unit.test_prometheus_sink import golden_snapshot

DOCS = Path(__file__).resolve().parents[2] / "docs"
METRICS_MD = (DOCS / "metrics.md").read_text(encoding="utf-8")
NAMED_SETS = {s.key: s for s in (P, G, GT, GPM, C)}
REFERENCE_HEADING = "## Family reference"


def section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level."""
    level = heading.split(" ", 1)[0]
    start = text.index(heading + "\n") + len(heading) + 1
    ends = [
        m.start()
        for m in re.finditer(r"^(#+) ", text[start:], re.M)
        if len(m.group(1)) <= len(level)
    ]
    return text[start : start + ends[0]] if ends else text[start:]


def table(text: str) -> list[dict[str, str]]:
    """The rows of the first Markdown table in ``text``, as header → cell."""
    all_lines = text.splitlines()
    first = next(i for i, line in enumerate(all_lines) if line.startswith("|"))
    lines = []
    for line in all_lines[first:]:
        if not line.startswith("|"):
            break
        lines.append(line)
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [
        dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
        for line in lines[2:]
    ]


def metric(cell: str) -> str:
    match = re.fullmatch(r"`([a-z_]+)`", cell)
    assert match, f"not a single metric name: {cell!r}"
    return match.group(1)


def labels(cell: str) -> tuple[str, ...]:
    """The label names of a labels cell: set abbreviations (``GPM``), backticked names,
    ``none``; parenthesised remarks (label values, custom labels) are not labels."""
    text = re.sub(r"\([^)]*\)", "", cell)
    if text.strip() == "none":
        return ()
    names: list[str] = []
    for part in re.split(r"\s*\+\s*|,\s*", text.strip()):
        for token in re.findall(r"`([a-z_]+)`|\b([A-Z]+)\b", part):
            quoted, key = token
            names.extend(NAMED_SETS[key].names if key else (quoted,))
    return tuple(names)


def test_label_set_abbreviations_are_the_catalogs() -> None:
    """The abbreviations the tables use are defined at the top of the section as the catalog's."""
    defined = {}
    for key, extends, listed in re.findall(r"\*\*([A-Z]+)\*\* = (G \+ )?`([^`]+)`", METRICS_MD):
        names = tuple(re.split(r",\s*", listed.strip()))
        defined[key] = (*G.names, *names) if extends else names
    assert defined == {key: s.names for key, s in NAMED_SETS.items()}


def test_compatibility_table_matches_the_catalog() -> None:
    rows = table(section(METRICS_MD, "## Compatibility families"))
    documented = [metric(r["metric"]) for r in rows]
    assert documented == [f.name for f in (*CLUSTER_FAMILIES, UP)]
    for r in rows:
        family = BY_NAME[metric(r["metric"])]
        assert labels(r["labels"]) == family.labels.names, family.name
        kept = r["granularity `topic`"] == "kept"
        assert kept == ("topic" in family.granularities), family.name
    # The page says "All families are gauges" instead of a type column.
    assert "All families are gauges" in METRICS_MD
    assert {f.kind for f in (*CLUSTER_FAMILIES, UP)} == {"gauge"}


def test_consumer_health_table_matches_the_catalog() -> None:
    rows = table(section(METRICS_MD, "## Consumer health"))
    assert [metric(r["metric"]) for r in rows] == [f.name for f in CONSUMER_FAMILIES]
    for r in rows:
        family = BY_NAME[metric(r["metric"])]
        assert r["type"] == family.kind, family.name
        assert labels(r["labels"]) == family.labels.names, family.name
        kept = r["granularity `topic`"] == "kept"
        assert kept == ("topic" in family.granularities), family.name


def test_cluster_up_and_self_metrics_tables_match_the_catalog() -> None:
    health = table(section(METRICS_MD, "## Per-cluster health: `klag_pipeline_cluster_up`"))
    own = table(section(METRICS_MD, "## Self-metrics (`klag_pipeline_*`)"))
    assert [metric(r["metric"]) for r in health] == [CLUSTER_UP.name]
    assert [metric(r["metric"]) for r in own] == [f.name for f in SELF_METRICS]
    for r in (*health, *own):
        family = BY_NAME[metric(r["metric"])]
        assert r["type"] == family.kind, family.name
        assert labels(r["labels"]) == family.labels.names, family.name


def reference_table(families: tuple[Family, ...]) -> str:
    """The reference section as it must read: one row per catalog family."""
    lines = ["| metric | type | unit | help |", "|---|---|---|---|"]
    lines.extend(f"| `{f.name}` | {f.kind} | `{f.unit}` | {f.help} |" for f in families)
    return "\n".join(lines)


def test_family_reference_is_the_catalog() -> None:
    """Exact help text and unit of every family; on failure, paste the expected table."""
    documented = "\n".join(
        line for line in section(METRICS_MD, REFERENCE_HEADING).splitlines() if line.startswith("|")
    )
    expected = reference_table(FAMILIES)
    assert documented == expected, f"docs/metrics.md {REFERENCE_HEADING} should read:\n{expected}"


def test_every_family_named_in_the_docs_is_in_the_catalog() -> None:
    """No page documents (or mentions) a family the exporter does not have. A counter's samples
    (``_total`` is the family name here, ``_created``, histogram ``_bucket``…) count as it."""
    suffixes = ("_created", "_bucket", "_count", "_sum")
    for page in ("metrics.md", "otlp.md", "health.md", "high-availability.md"):
        text = (DOCS / page).read_text(encoding="utf-8")
        for name in set(re.findall(r"`((?:kafka|klag_pipeline)_[a-z_]+)", text)):
            base = next((name.removesuffix(s) for s in suffixes if name.endswith(s)), name)
            if name.endswith("_created"):
                base += "_total"
            assert name in BY_NAME or base in BY_NAME, f"{page}: `{name}` is not in the catalog"


def full_snapshot() -> ClusterSnapshot:
    """The golden snapshot with a value for every family (a consumable lag and the consumer
    health included)."""
    snap = health_snapshot()
    return replace(snap, rows=(snap.rows[0]._replace(consumable_lag=0), *snap.rows[1:]))


@pytest.mark.parametrize("granularity", ["partition", "topic"])
def test_both_sinks_export_exactly_the_catalog_families(granularity: Granularity) -> None:
    """A catalog entry neither sink can render would fail here (and at import, for Prometheus)."""
    snap = full_snapshot()
    text = render_snapshots([snap], granularity)
    rendered = re.findall(r"^# TYPE ([a-z_]+) ([a-z]+)$", text, re.M)
    expected = [
        f for f in (*CLUSTER_FAMILIES, *CONSUMER_FAMILIES) if granularity in f.granularities
    ]
    assert rendered == [(f.name, f.kind) for f in expected]
    descriptions = family_descriptions(granularity, with_up=True)
    assert dict(descriptions) == {f.name: f.help for f in (*expected, *HEALTH_FAMILIES)}
    assert all(observe(f.name, [snap]) for f in expected)


def test_without_health_only_the_compatibility_families() -> None:
    text = render_snapshots([golden_snapshot()], "partition")
    rendered = re.findall(r"^# TYPE ([a-z_]+) [a-z]+$", text, re.M)
    assert set(rendered) <= {f.name for f in CLUSTER_FAMILIES}


def test_otlp_attributes_are_the_catalog_label_sets() -> None:
    snap = replace(full_snapshot(), labels={})
    for family in (*CLUSTER_FAMILIES, *CONSUMER_FAMILIES):
        keys = {tuple(sorted(point.attributes or {})) for point in observe(family.name, [snap])}
        assert keys == {tuple(sorted(family.labels.names))}, family.name


def jsonl_table(record_type: str) -> set[str]:
    heading = f'### `"type": "{record_type}"`'
    start = JSONL_MD.index(heading)
    text = JSONL_MD[start : JSONL_MD.index("\n#", start + len(heading))]
    keys: set[str] = set()
    for r in table(text):
        keys.update(re.findall(r"`([a-z_]+)`", r["key"]))
    return keys


JSONL_MD = (DOCS / "jsonl.md").read_text(encoding="utf-8")


def test_jsonl_field_tables_match_the_records() -> None:
    snap = full_snapshot()
    assert snap.labels, "the snapshot must have custom labels for the `labels` key to appear"
    assert jsonl_table("partition") == set(partition_records(snap)[0])
    assert jsonl_table("group") == set(group_records(snap)[0])
    assert jsonl_table("cycle") == set(cycle_record(snap))
    without_health = partition_records(golden_snapshot())[0]
    assert set(without_health) == set(partition_records(snap)[0]), "the keys never vary"


def test_catalog_jsonl_keys_are_emitted() -> None:
    snap = full_snapshot()
    emitted = {
        "partition": set(partition_records(snap)[0]),
        "group": set(group_record(snap, snap.groups[0], {})),
        "cycle": set(cycle_record(snap)),
    }
    for family in (*CLUSTER_FAMILIES, *CONSUMER_FAMILIES):
        assert family.jsonl is not None, family.name
        assert family.jsonl.key in emitted[family.jsonl.record], family.name


def test_catalog_is_consistent() -> None:
    assert len(BY_NAME) == len(FAMILIES), "duplicate family names"
    for family in FAMILIES:
        assert family.kind != "counter" or family.name.endswith("_total"), family.name
        assert isinstance(family.labels, LabelSet)


def test_every_catalog_family_has_a_row_in_a_described_table() -> None:
    """Besides the reference: each family is in a table that says what its value means."""
    described = METRICS_MD[: METRICS_MD.index(REFERENCE_HEADING)]
    names: list[str] = []
    for start in re.finditer(r"^\| metric \|", described, re.M):
        names.extend(metric(r["metric"]) for r in table(described[start.start() :]))
    assert sorted(names) == sorted(f.name for f in FAMILIES)
