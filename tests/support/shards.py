"""Sharded exporter processes for the tests: their settings file and their shutdown.

Shared by tests/sharding/test_replicas.py (the union and coverage guarantees) and
tests/deploy/test_sharded_prometheus.py (the dashboard and alerts across replicas). The processes
themselves are :class:`tests.leadership.test_processes.Replica`.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterable
from typing import Protocol

POLL = 1.0
SESSION = 6.0  # the broker's group.min.session.timeout.ms
HEARTBEAT = 1.0
BUCKETS = 64


def sharded_settings(
    port: int,
    bootstrap: str,
    *,
    cluster: str,
    prefix: str,
    identity: str | None,
    sampling: bool,
) -> str:
    """One replica's settings; ``identity`` None: the same exporter without sharding (the
    single-process reference). Groups and topics are those named ``<prefix>-…``."""
    sharding = (
        ""
        if identity is None
        else f"""
[exporter.sharding]
enabled = true
group_id = "{prefix}-shards"
buckets = {BUCKETS}
session_timeout = "{SESSION:g}s"
heartbeat_interval = "{HEARTBEAT:g}s"
identity = "{identity}"
"""
    )
    return f"""
[exporter]
poll_interval = "{POLL:g}s"
http_host = "127.0.0.1"
http_port = {port}

[exporter.timestamp_sampling]
enabled = {"true" if sampling else "false"}
{sharding}
[[clusters]]
name = "{cluster}"
bootstrap_servers = "{bootstrap}"
group_whitelist = ["^{prefix}-"]
topic_whitelist = ["^{prefix}-"]
"""


class Process(Protocol):
    @property
    def alive(self) -> bool: ...

    def signal(self, sig: signal.Signals) -> None: ...

    def wait(self, timeout: float) -> int: ...


def stop_all(replicas: Iterable[Process]) -> None:
    """SIGTERM every live replica, then wait for each (SIGKILL after 15 s)."""
    running = [r for r in replicas if r.alive]
    for replica in running:
        replica.signal(signal.SIGTERM)
    for replica in running:
        try:
            replica.wait(15)
        except subprocess.TimeoutExpired:
            replica.signal(signal.SIGKILL)
            replica.wait(5)
