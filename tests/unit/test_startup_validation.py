"""``check`` rejects what ``run`` rejects (issue 18, defect 6): names and values.

Each case goes through the command line and asserts exit code 2 and the ``dotted.path:
message`` lines; the ``run`` cases start the real ``klag-pipeline run`` process, which before
the fix started collecting with the bad value (a 1 ms poll interval: ~700 failed cycles a second).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.startup import (
    CLUSTER,
    assert_rejected,
    check,
    loopback,
    restored_logging,
    run_process,
    write,
)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield from restored_logging()


def test_a_nul_byte_in_a_cluster_name_fails_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, '[[clusters]]\nname = "prod\\u0000x"\nbootstrap_servers = "h:1"\n')

    code, lines = check(path, capsys)

    assert code == 2
    assert lines == [
        "clusters[0].name: must not contain control characters (found '\\x00' at position 4)"
    ]


def test_control_characters_in_labels_and_otlp_headers_are_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        '[exporter.otel.headers]\n"x-tenant" = "a\\r\\nInjected: 1"\n'
        + CLUSTER
        + '[clusters.labels]\nteam = "core\\nops"\n',
    )

    code, lines = check(path, capsys)

    assert code == 2
    assert_rejected(lines, "exporter.otel.headers.x-tenant", "control characters")
    assert_rejected(lines, "clusters[0].labels.team", "control characters")


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("poll_interval", '"1ms"', "must be between 100ms and 1d, got 1ms"),
        (
            "poll_interval",
            '"99999999999999999999999999w"',
            "must be between 100ms and 1d, got 99999999999999999999999999w",
        ),
        ("poll_interval", '"' + "9" * 400 + 's"', "must be between 100ms and 1d, got 9999"),
        ("staleness_threshold", '"30d"', "must be between 100ms and 7d, got 30d"),
    ],
)
def test_durations_out_of_range_fail_check_and_run(
    setting: str, value: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, f"[exporter]\n{setting} = {value}\n" + CLUSTER)

    code, lines = check(path, capsys)

    assert code == 2
    assert_rejected(lines, f"exporter.{setting}", message)


def test_a_1ms_poll_interval_fails_run_at_start_up(tmp_path: Path) -> None:
    path = write(tmp_path, loopback() + 'poll_interval = "1ms"\n' + CLUSTER)

    result = run_process(path)

    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.splitlines() == [
        "exporter.poll_interval: must be between 100ms and 1d, got 1ms"
    ]


def test_1e11_concurrent_fetches_fail_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        "[exporter.timestamp_sampling]\nmax_concurrent_fetches = 100000000000\n" + CLUSTER,
    )

    code, lines = check(path, capsys)

    assert code == 2
    assert lines == [
        "exporter.timestamp_sampling.max_concurrent_fetches: must be at least 1 and at most "
        "1000, got 100000000000"
    ]


def test_every_problem_is_listed_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Value problems, a bad cluster and file problems in one pass, each once."""
    ca = tmp_path / "ca.pem"
    path = write(
        tmp_path,
        '[exporter]\npoll_interval = "1ms"\n'
        f'[exporter.jsonl]\nenabled = true\npath = "{tmp_path}"\n'
        '[[clusters]]\nname = "a\\u0007"\nbootstrap_servers = "h:1"\n'
        '[clusters.consumer_properties]\n"security.protocol" = "SSL"\n'
        f'"ssl.ca.location" = "{ca}"\n',
    )

    code, lines = check(path, capsys)

    assert code == 2
    assert [line.split(": ")[0] for line in lines] == [
        "exporter.poll_interval",
        "clusters[0].name",
        'clusters[0].consumer_properties."ssl.ca.location"',
        "exporter.jsonl.path",
    ]
