"""``klag-pipeline check`` and the command-line plumbing around it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from klag_pipeline import __version__
from klag_pipeline.cli import main
from klag_pipeline.errors import ConfigError, KafkaConnectionError
from klag_pipeline.settings.schema import Settings

REPO = Path(__file__).resolve().parents[2]
VALID = """
[exporter]
poll_interval = "15s"

[exporter.performance]
max_blocking_threads = 64

[[clusters]]
name = "prod"
bootstrap_servers = "kafka-1:9092,kafka-2:9092"
group_blacklist = ["^console-"]

[clusters.consumer_properties]
"security.protocol" = "SASL_SSL"
"sasl.username" = "alice"
"sasl.password" = "${KAFKA_PASSWORD}"

[clusters.labels]
environment = "prod"
"""
INVALID = """
[exporter]
poll_interval = 30
http_port = 0

[[clusters]]
name = "prod"
"""
INVALID_LINES = [
    "exporter.poll_interval: must be a duration with a unit such as '30s', got 30",
    "exporter.http_port: must be at least 1 and at most 65535, got 0",
    "clusters[0].bootstrap_servers: required",
]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """main() configures process-wide logging onto capsys' stream; undo it afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel(logging.NOTSET)  # quieted below debug
    structlog.reset_defaults()


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    code = caught.value.code
    assert isinstance(code, int)
    return code


def write(tmp_path: Path, text: str, name: str = "settings.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_check_valid_settings_prints_a_summary_and_exits_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKA_PASSWORD", "hunter2-secret")
    path = write(tmp_path, VALID)

    code = run(["check", path, "--log-format", "json"])

    out, err = capsys.readouterr()
    assert code == 0
    assert f"settings OK: {path}" in out
    assert "prod: kafka-1:9092,kafka-2:9092" in out
    assert "poll every 15s" in out
    assert "sasl.password=***" in out
    assert "sasl.username=alice" in out
    assert "environment=prod" in out
    assert "hunter2-secret" not in out + err


def test_check_logs_each_ignored_klag_exporter_key_as_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKA_PASSWORD", "x")

    assert run(["check", "-c", write(tmp_path, VALID), "--log-format", "json"]) == 0

    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["level"], e["event"], e["path"]) for e in events] == [
        ("warning", "setting_ignored", "exporter.performance.max_blocking_threads")
    ]


def test_check_invalid_settings_lists_every_problem_on_stderr_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(["check", write(tmp_path, INVALID)])

    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.splitlines() == INVALID_LINES


def test_check_unset_variable_exits_2_naming_variable_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KAFKA_PASSWORD", raising=False)
    path = write(tmp_path, VALID)

    line = VALID.splitlines().index('"sasl.password" = "${KAFKA_PASSWORD}"') + 1

    code = run(["check", path])

    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"{path}:{line}: environment variable KAFKA_PASSWORD is not set "
        "(write ${KAFKA_PASSWORD:-default} to give it a default)"
    ]


def test_check_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(["check", str(tmp_path / "nope.toml")])

    assert code == 2
    assert "cannot read the settings file" in capsys.readouterr().err


def test_settings_default_to_settings_toml_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KAFKA_PASSWORD", "x")
    write(tmp_path, VALID)

    assert run(["check"]) == 0
    assert "settings OK: ./settings.toml" in capsys.readouterr().out


def test_positional_and_flag_must_agree(tmp_path: Path) -> None:
    assert run(["check", "a.toml", "--config", "b.toml"]) == 2


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"klag-pipeline {__version__}"


def test_unknown_log_level_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["check", "-l", "verbose"]) == 2
    assert "invalid choice" in capsys.readouterr().err


# --- dispatch to the application (stand-ins for klag_pipeline.app and klag_pipeline.commands) -----


class FakeApp(types.ModuleType):
    """Records calls the way klag_pipeline.app (run) and klag_pipeline.commands.once / .check
    will receive them."""

    def __init__(self, result: Any = 0, error: BaseException | None = None) -> None:
        super().__init__("klag_pipeline.app")
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.result = result
        self.error = error

    def _record(self, name: str, *args: Any) -> Any:
        self.calls.append((name, args))
        if self.error is not None:
            raise self.error
        return self.result

    def run(self, settings: Settings) -> Any:
        return self._record("run", settings)

    async def once(self, settings: Settings, fmt: str, time_limit: float) -> Any:
        return self._record("once", settings, fmt, time_limit)

    def check_connect(self, settings: Settings, time_limit: float) -> Any:
        return self._record("check_connect", settings, time_limit)


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> FakeApp:
    fake = FakeApp()
    for module in (
        "klag_pipeline.app",
        "klag_pipeline.commands.once",
        "klag_pipeline.commands.check",
    ):
        monkeypatch.setitem(sys.modules, module, fake)
    return fake


@pytest.fixture
def settings_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("KAFKA_PASSWORD", "x")
    return write(tmp_path, VALID)


def test_run_is_the_default_command_like_klag_exporter(app: FakeApp, settings_path: str) -> None:
    assert run(["--config", settings_path, "-l", "debug"]) == 0

    ((name, (settings,)),) = app.calls
    assert name == "run"
    assert settings.clusters[0].name == "prod"


def test_once_passes_the_format_and_awaits_a_coroutine(app: FakeApp, settings_path: str) -> None:
    app.result = 3

    assert run(["once", settings_path, "--format", "jsonl"]) == 3
    assert [(name, args[1:]) for name, args in app.calls] == [("once", ("jsonl", 30.0))]


def test_timeout_is_a_duration_passed_to_once_and_check(app: FakeApp, settings_path: str) -> None:
    assert run(["once", settings_path, "--timeout", "1m 30s"]) == 0
    assert run(["check", settings_path, "--connect", "--timeout", "250ms"]) == 0
    assert [(name, args[-1]) for name, args in app.calls] == [
        ("once", 90.0),
        ("check_connect", 0.25),
    ]


@pytest.mark.parametrize("value", ["30", "0s", "2h", "soon"])
def test_timeout_outside_its_range_or_without_a_unit_is_a_usage_error(
    app: FakeApp, settings_path: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["once", settings_path, "--timeout", value]) == 2
    assert "--timeout" in capsys.readouterr().err
    assert app.calls == []


def test_check_connect_runs_after_the_summary(
    app: FakeApp, settings_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app.result = 1

    assert run(["check", settings_path, "--connect"]) == 1
    assert [name for name, _ in app.calls] == ["check_connect"]
    assert "settings OK" in capsys.readouterr().out


def test_check_without_connect_never_touches_the_app(app: FakeApp, settings_path: str) -> None:
    assert run(["check", settings_path]) == 0
    assert app.calls == []


def test_klag_error_from_the_app_exits_1_without_traceback(
    app: FakeApp, settings_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app.error = KafkaConnectionError("broker down", broker="127.0.0.1:1")

    assert run(["run", settings_path, "--log-format", "json"]) == 1

    (event,) = [json.loads(line) for line in capsys.readouterr().err.splitlines()[1:]]
    assert event["event"] == "fatal_error"
    assert event["error"] == "KafkaConnectionError: broker down"
    assert "exception" not in event


def test_config_error_from_the_app_exits_2(
    app: FakeApp, settings_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app.error = ConfigError([("clusters[0]", "unsupported consumer property")])

    assert run(["run", settings_path]) == 2
    assert "clusters[0]: unsupported consumer property" in capsys.readouterr().err


def test_a_bug_in_the_app_exits_1_with_a_traceback(
    app: FakeApp, settings_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app.error = ZeroDivisionError("oops")

    assert run(["run", settings_path, "--log-format", "json"]) == 1

    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    bug = events[-1]
    assert bug["event"] == "unexpected_error"
    assert "Traceback" in bug["exception"]
    assert bug["error"] == "ZeroDivisionError: oops"


# --- a real process ----------------------------------------------------------------------------


def python_m(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "klag_pipeline", *args],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_python_m_check_reports_problems_without_a_traceback(tmp_path: Path) -> None:
    done = python_m("check", write(tmp_path, INVALID), env={})

    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == INVALID_LINES
    assert "Traceback" not in done.stderr


def test_python_m_check_accepts_valid_settings(tmp_path: Path) -> None:
    done = python_m("check", write(tmp_path, VALID), env={"KAFKA_PASSWORD": "p4ssw0rd-xyz"})

    assert done.returncode == 0, done.stderr
    assert "settings OK" in done.stdout
    assert "p4ssw0rd-xyz" not in done.stdout + done.stderr
    # Not a TTY, so the warning about the klag-exporter-only key is a JSON line.
    assert json.loads(done.stderr.splitlines()[0])["event"] == "setting_ignored"
