"""Logging: JSON lines off a TTY, levels down to trace, stdlib routed, secrets scrubbed."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog

from klag_pipeline.telemetry.logging import TRACE, configure_logging, redact_in_logs


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel(logging.NOTSET)  # quieted below debug
    structlog.reset_defaults()
    redact_in_logs(())


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_timestamp_level_and_event() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)

    structlog.get_logger().info("cycle_completed", cluster="prod", groups=3)

    (event,) = lines(stream)
    assert list(event)[:3] == ["timestamp", "level", "event"]
    assert (event["level"], event["event"], event["cluster"], event["groups"]) == (
        "info",
        "cycle_completed",
        "prod",
        3,
    )
    stamp = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    offset = stamp.utcoffset()
    assert offset is not None
    assert offset.total_seconds() == 0
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60


@pytest.mark.parametrize(
    ("level", "shown"),
    [
        ("trace", ["trace", "debug", "info", "warning", "error"]),
        ("debug", ["debug", "info", "warning", "error"]),
        ("info", ["info", "warning", "error"]),
        ("warning", ["warning", "error"]),
        ("error", ["error"]),
    ],
)
def test_level_filters(level: str, shown: list[str]) -> None:
    stream = io.StringIO()
    configure_logging(level, "json", stream)
    log = structlog.get_logger()

    log.trace("e")
    log.debug("e")
    log.info("e")
    log.warning("e")
    log.error("e")

    assert [e["level"] for e in lines(stream)] == shown


def test_trace_is_below_debug_and_reachable_through_log() -> None:
    stream = io.StringIO()
    configure_logging("trace", "json", stream)

    structlog.get_logger().log(TRACE, "request_sent", api="Fetch")

    assert TRACE < logging.DEBUG
    assert lines(stream)[0]["level"] == "trace"


def test_error_field_renders_the_exception_and_exc_info_adds_a_traceback() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    log = structlog.get_logger()

    try:
        raise TimeoutError("fetch timed out")
    except TimeoutError as exc:
        log.warning("fetch_failed", error=exc)
        log.exception("bug")

    failed, bug = lines(stream)
    assert failed["error"] == "TimeoutError: fetch timed out"
    assert "exception" not in failed
    assert bug["error"] == "TimeoutError: fetch timed out"
    assert "Traceback" in bug["exception"]


def test_stdlib_logs_share_the_output_but_only_from_warning() -> None:
    stream = io.StringIO()
    configure_logging("debug", "json", stream)
    noisy = logging.getLogger("aiokafka.conn")

    noisy.debug("connecting")
    noisy.info("connected")
    noisy.warning("connection to %s lost", "127.0.0.1:1")

    (event,) = lines(stream)
    assert (event["level"], event["event"], event["logger"]) == (
        "warning",
        "connection to 127.0.0.1:1 lost",
        "aiokafka.conn",
    )
    assert "timestamp" in event


@pytest.mark.parametrize(("level", "shown"), [("info", False), ("warning", False), ("debug", True)])
def test_aiokafka_is_silent_below_debug(level: str, shown: bool) -> None:
    """Its per-cycle connection errors while a broker is down are folded into the exporter's own
    cluster_cycle_failed / cluster_recovered lines (issue 18, defect 7)."""
    stream = io.StringIO()
    configure_logging(level, "json", stream)

    logging.getLogger("aiokafka.conn").error("Unable connect to node with id 1")
    logging.getLogger("aiokafka").warning("Unable to update metadata from [1]")
    logging.getLogger("aiohttp.server").error("still shown")

    events = [e["event"] for e in lines(stream)]
    quiet = ["Unable connect to node with id 1", "Unable to update metadata from [1]"]
    assert events == ([*quiet, "still shown"] if shown else ["still shown"])


def test_format_defaults_to_json_off_a_tty_and_console_on_one() -> None:
    plain, tty = io.StringIO(), TtyStream()

    configure_logging("info", None, plain)
    structlog.get_logger().info("started", port=8000)
    configure_logging("info", None, tty)
    structlog.get_logger().info("started", port=8000)

    assert json.loads(plain.getvalue())["event"] == "started"
    assert "started" in tty.getvalue()
    with pytest.raises(json.JSONDecodeError):
        json.loads(tty.getvalue())


def test_console_format_can_be_forced_off_a_tty() -> None:
    stream = io.StringIO()
    configure_logging("info", "console", stream)

    structlog.get_logger().info("started", port=8000)

    assert "started" in stream.getvalue()
    assert "port=8000" in stream.getvalue()


def test_default_stream_is_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")

    structlog.get_logger().info("hello")

    out, err = capsys.readouterr()
    assert out == ""
    assert json.loads(err)["event"] == "hello"


def test_registered_secrets_are_scrubbed_from_every_field() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    redact_in_logs(["hunter2-pass"])

    structlog.get_logger().error(
        "auth_failed", error=PermissionError("bad password hunter2-pass"), detail=["hunter2-pass"]
    )
    logging.getLogger("aiohttp.client").warning("sasl hunter2-pass rejected")

    text = stream.getvalue()
    assert "hunter2-pass" not in text
    first, second = lines(stream)
    assert first["error"] == "PermissionError: bad password ***"
    assert second["event"] == "sasl *** rejected"


@pytest.mark.parametrize(("level", "fmt"), [("verbose", "json"), ("info", "xml")])
def test_bad_level_or_format_is_refused(level: str, fmt: str) -> None:
    with pytest.raises(ValueError, match="unknown log"):
        configure_logging(level, fmt, io.StringIO())
