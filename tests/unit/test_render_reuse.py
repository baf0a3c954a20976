"""Rendering with the previous render's memory: the same text as rendering afresh, always."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from klag_pipeline.health.evaluator import Evaluator
from klag_pipeline.settings.schema import HealthSettings
from klag_pipeline.sinks.prometheus.deflate import text
from klag_pipeline.sinks.prometheus.render import (
    ClusterChunks,
    RenderMemory,
    assemble,
    assemble_counters,
    render_cluster,
)
from klag_pipeline.snapshot import ClusterSnapshot, PartitionOffsets
from tests.unit.test_prometheus_sink import row, snapshot, summary


def body(chunks: ClusterChunks) -> str:
    both = {"prod": chunks}
    return text((*assemble(both), *assemble_counters(both, False))).decode()


MEMBERS = (("", "", ""), ("/10.0.0.1", "m-1", "app"), ("/10.0.0.2", "m-2", "app"))
LAG_SECONDS = st.one_of(
    st.none(),
    st.sampled_from([0.0, 1.5, 12.5, 10**16, 1e16, float("inf")]),  # 10**16 == 1e16, spelt apart
)
ROW = st.tuples(
    st.integers(0, 3),  # committed step
    st.integers(0, 3),  # high step
    LAG_SECONDS,
    st.sampled_from(MEMBERS),
    st.booleans(),  # compaction detected
    st.booleans(),  # row present
)
CYCLE = st.lists(ROW, min_size=6, max_size=6)
Spec = list[tuple[int, int, float | None, tuple[str, str, str], bool, bool]]


def cycle_snapshot(cycle: int, spec: Spec) -> ClusterSnapshot:
    rows = [
        row(
            f"g{i // 3}",
            i % 3,
            committed=50 + committed,
            high=110 + high,
            lag_seconds=lag_seconds,
            member=member,
            compaction=compaction,
        )
        for i, (committed, high, lag_seconds, member, compaction, present) in enumerate(spec)
        if present
    ]
    groups = sorted({r.group for r in rows})
    base = snapshot(
        rows=rows,
        groups=[summary(g, [r for r in rows if r.group == g]) for g in groups],
        partitions=[PartitionOffsets("orders", p, 10, 110 + cycle) for p in range(3)],
        labels={"env": "eu-1"},
    )
    return dataclasses.replace(base, cycle=cycle, observed_at=base.observed_at + 10 * cycle)


@settings(max_examples=60, deadline=None)
@given(st.lists(CYCLE, min_size=2, max_size=5), st.booleans())
def test_rendering_with_memory_equals_rendering_afresh(cycles: list[Spec], health: bool) -> None:
    evaluator = Evaluator(HealthSettings(), 10.0)
    memory = RenderMemory()
    for n, spec in enumerate(cycles):
        current = cycle_snapshot(n, spec)
        if health:
            current = evaluator.evaluate(current)
        assert body(render_cluster(current, "partition", memory)) == body(
            render_cluster(current, "partition")
        )


def test_an_unchanged_snapshot_reuses_every_family() -> None:
    spec: Spec = [(1, 1, 12.5, MEMBERS[1], False, True)] * 6
    memory = RenderMemory()
    first = render_cluster(cycle_snapshot(1, spec), "partition", memory)
    assert memory.reused == 0
    again = render_cluster(cycle_snapshot(1, spec), "partition", memory)
    assert memory.reused == len(memory.families) > 10
    assert body(again) == body(first)


def test_a_changed_value_re_renders_only_its_families() -> None:
    spec: Spec = [(1, 1, 12.5, MEMBERS[1], False, True)] * 6
    memory = RenderMemory()
    render_cluster(cycle_snapshot(1, spec), "partition", memory)
    rendered = len(memory.families)
    changed: Spec = [(1, 1, 13.5, MEMBERS[1], False, True), *spec[1:]]
    chunks = render_cluster(cycle_snapshot(1, changed), "partition", memory)
    # lag_seconds, and the group's max_lag_seconds is not derived here (summary() leaves it).
    assert memory.reused == rendered - 1
    assert "kafka_consumergroup_group_lag_seconds{" in body(chunks)
    assert " 13.5\n" in body(chunks)


def test_equal_values_of_another_type_are_re_rendered() -> None:
    # 10**16 == 1e16, but an int prints as digits and a float beyond 2**53 as repr.
    as_int: Spec = [(1, 1, 10**16, MEMBERS[1], False, True)] * 6
    as_float: Spec = [(1, 1, 1e16, MEMBERS[1], False, True)] * 6
    memory = RenderMemory()
    assert " 10000000000000000\n" in body(
        render_cluster(cycle_snapshot(1, as_int), "partition", memory)
    )
    again = body(render_cluster(cycle_snapshot(1, as_float), "partition", memory))
    assert " 1e+16\n" in again
    assert " 10000000000000000\n" not in again
