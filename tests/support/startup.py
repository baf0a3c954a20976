"""Helpers for the start-up validation tests (issue 18, defect 6): settings files, ``check``
in-process, ``klag-pipeline run`` as a real process."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from klag_pipeline.cli import run_command

REPO = Path(__file__).resolve().parents[2]
# A closed loopback port: nothing here may need a broker, validation happens before any I/O.
CLUSTER = '[[clusters]]\nname = "local"\nbootstrap_servers = "127.0.0.1:9"\n'
LINE = re.compile(r'^[A-Za-z_"\[][^\s]*: \S.*$')
RUN_TIMEOUT = 30.0


def restored_logging() -> Iterator[None]:
    """For an autouse fixture: ``check`` configures process-wide logging; undo it afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text, encoding="utf-8")
    return path


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = run_command(["check", str(path)])
    out, err = capsys.readouterr()
    lines = err.splitlines()
    if code == 2:
        assert out == ""
        assert lines
        assert all(LINE.match(line) for line in lines), lines
    return code, lines


def loopback() -> str:
    """An ``[exporter]`` table that keeps ``run`` on loopback, should it start after all."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f'[exporter]\nhttp_host = "127.0.0.1"\nhttp_port = {port}\n'


def run_process(path: Path) -> subprocess.CompletedProcess[str]:
    """``klag-pipeline run``; a process that is still running after RUN_TIMEOUT accepted the
    settings, which the caller's exit-code assertion then reports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLAG_")}
    env["PYTHONPATH"] = str(REPO)
    process = subprocess.Popen(
        [sys.executable, "-m", "klag_pipeline", "run", str(path), "--log-format", "json"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def assert_rejected(lines: list[str], path: str, *fragments: str) -> None:
    matching = [line for line in lines if line.startswith(f"{path}: ")]
    assert matching, f"no line for {path}: {lines}"
    assert any(all(f in line for f in fragments) for line in matching), (fragments, matching)
