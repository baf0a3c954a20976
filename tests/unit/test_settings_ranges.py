"""Every duration and count setting has a documented range, enforced with its dotted path."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from klag_pipeline.errors import ConfigError
from klag_pipeline.settings.durations import format_duration, parse_duration
from klag_pipeline.settings.loader import parse_settings
from klag_pipeline.settings.loader.ranges import COUNTS, DURATIONS

REPO = Path(__file__).resolve().parents[2]
CLUSTER = '[[clusters]]\nname = "local"\nbootstrap_servers = "127.0.0.1:9092"\n'


def problems_for(dotted: str, value: str) -> list[str]:
    """The problems reported on ``dotted`` when it is set to the TOML text ``value``."""
    table, _, key = dotted.rpartition(".")
    text = f"[{table}]\n{key} = {value}\n" + CLUSTER
    try:
        parse_settings(text, {})
    except ConfigError as exc:
        return [message for path, message in exc.problems if path == dotted]
    return []


def duration_text(seconds: float) -> str:
    return f'"{format_duration(seconds)}"'


@pytest.mark.parametrize("dotted", sorted(DURATIONS))
def test_durations_accept_their_bounds_and_reject_beyond(dotted: str) -> None:
    low, high = DURATIONS[dotted]
    for inside in (low, high):
        found = problems_for(dotted, duration_text(inside))
        assert not [p for p in found if "must be between" in p]
    expected = f"must be between {format_duration(low)} and {format_duration(high)}"
    outside = [high * 2, *([low / 2] if low > 0 else [])]
    for value in outside:
        assert any(expected in p for p in problems_for(dotted, duration_text(value))), value


@pytest.mark.parametrize("dotted", sorted(COUNTS))
def test_counts_accept_their_bounds_and_reject_beyond(dotted: str) -> None:
    low, high = COUNTS[dotted]
    for inside in (low, high):
        assert problems_for(dotted, str(inside)) == []
    expected = f"must be at least {low} and at most {high}"
    for value in (low - 1, high + 1, 10**30):
        assert any(expected in p for p in problems_for(dotted, str(value))), value


def test_small_rotate_bytes_are_rejected_but_zero_means_never() -> None:
    assert problems_for("exporter.jsonl.rotate_bytes", "0") == []
    assert problems_for("exporter.jsonl.rotate_bytes", "1023") == [
        "must be 0 (never rotate) or at least 1024, got 1023"
    ]


@pytest.mark.parametrize("value", ['"-5s"', '"0s"', "30", "1e400", "nan", '"1d 1s"'])
def test_poll_interval_rejects_negative_zero_unitless_and_too_long(value: str) -> None:
    assert problems_for("exporter.poll_interval", value)


def test_staleness_must_cover_the_poll_interval() -> None:
    found = problems_for("exporter.staleness_threshold", '"10s"')
    assert found == [
        "must be at least poll_interval (30s), or every cluster goes stale between two cycles"
    ]


def test_lease_timings_must_nest() -> None:
    text = (
        '[exporter.leadership]\nlease_duration = "5s"\nrenew_deadline = "5s"\n'
        'retry_period = "1s"\n' + CLUSTER
    )
    with pytest.raises(ConfigError) as info:
        parse_settings(text, {})
    assert [path for path, _ in info.value.problems] == ["exporter.leadership.renew_deadline"]


def test_every_range_is_documented() -> None:
    """docs/configuration.md lists each range on the setting's own line."""
    lines = (REPO / "docs" / "configuration.md").read_text("utf-8").splitlines()
    ranges = {
        **{k: (format_duration(lo), format_duration(hi)) for k, (lo, hi) in DURATIONS.items()},
        **{k: (str(lo), str(hi)) for k, (lo, hi) in COUNTS.items()},
    }
    for dotted, (low, high) in ranges.items():
        rows = [line for line in lines if line.startswith(f"| `{dotted}`")]
        assert len(rows) == 1, dotted
        assert f"{low} – {high}" in rows[0].replace(",", ""), (dotted, rows[0])


def test_durations_too_long_for_a_float_format_and_range_check_cleanly() -> None:
    assert parse_duration("9" * 400 + "s") == math.inf
    assert format_duration(math.inf) == "infs"
    assert format_duration(86400) == "1d"
    assert format_duration(2 * 86400 + 60) == "2d 1m"
    assert problems_for("exporter.poll_interval", '"' + "9" * 400 + 's"') == [
        "must be between 100ms and 1d, got " + "9" * 40 + "…"
    ]
