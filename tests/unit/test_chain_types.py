"""The stage chain is checked by mypy: a stage whose input is not the previous stage's output
is a type error at the wiring point. These tests run mypy (the same strict settings as
``make test``) on small programs that build the real collection chain."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from mypy import api

ROOT = Path(__file__).resolve().parents[2]

HEADER = """
from klag_pipeline.events import CycleStarted, GroupsDiscovered, OffsetsFetched
from klag_pipeline.kafka.port import ClusterClient
from klag_pipeline.pipeline.chain import Chain
from klag_pipeline.settings.schema import ClusterSettings, TimestampSamplingSettings
from klag_pipeline.snapshot import ClusterSnapshot
from klag_pipeline.stages.calculation import CalculationStage
from klag_pipeline.stages.committed_offsets import CommittedOffsetsStage
from klag_pipeline.stages.discovery import DiscoveryStage
from klag_pipeline.stages.timestamps import TimestampStage
from klag_pipeline.stages.watermarks import WatermarksStage

def build(client: ClusterClient, cluster: ClusterSettings) -> None:
"""


def mypy_errors(body: str, tmp_path: Path) -> list[str]:
    program = tmp_path / "chain_program.py"
    program.write_text(HEADER + textwrap.indent(textwrap.dedent(body), "    "))
    stdout, stderr, status = api.run(
        [
            "--strict",
            "--no-incremental",
            "--cache-dir=/dev/null",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            str(program),
        ]
    )
    assert status in (0, 1), stderr
    return [line for line in stdout.splitlines() if ": error:" in line]


@pytest.mark.timeout(180)
def test_the_collection_chain_in_pipeline_order_type_checks(tmp_path: Path) -> None:
    errors = mypy_errors(
        """
        chain: Chain[CycleStarted, ClusterSnapshot] = (
            Chain.of(DiscoveryStage(client, cluster))
            .then(CommittedOffsetsStage(client, cluster))
            .then(WatermarksStage(client))
            .then(TimestampStage(client, TimestampSamplingSettings()))
            .then(CalculationStage(cluster))
        )
        """,
        tmp_path,
    )
    assert errors == []


@pytest.mark.timeout(180)
def test_watermarks_before_committed_offsets_is_a_type_error(tmp_path: Path) -> None:
    # The order the design depends on (offsets before watermarks) is enforced by the types.
    errors = mypy_errors(
        """
        chain = (
            Chain.of(DiscoveryStage(client, cluster))
            .then(WatermarksStage(client))
            .then(CommittedOffsetsStage(client, cluster))
        )
        """,
        tmp_path,
    )
    assert len(errors) >= 1
    assert '"then"' in errors[0], errors
    assert "WatermarksStage" in errors[0], errors


@pytest.mark.timeout(180)
def test_a_chain_that_stops_early_is_not_a_snapshot_chain(tmp_path: Path) -> None:
    errors = mypy_errors(
        """
        chain: Chain[CycleStarted, ClusterSnapshot] = Chain.of(
            DiscoveryStage(client, cluster)
        ).then(CommittedOffsetsStage(client, cluster))
        """,
        tmp_path,
    )
    assert len(errors) == 1
    assert "CommittedOffsetsStage" in errors[0], errors
    assert "ClusterSnapshot" in errors[0], errors
