"""How each exporter is started for a compare run: its command, environment and configuration,
written from code into the run's temporary directory.

Every exporter gets the same broker address (the counting proxy), the same group filter (the
scenario's prefix), the same poll interval where it has one, a loopback HTTP port, and its own
defaults for everything else.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import RunOptions, settings_toml
from bench.processes import REPO

CLUSTER = "bench"


@dataclass(frozen=True, slots=True)
class Contender:
    label: str
    """Column heading, e.g. "klag-exporter (message)"."""
    peer: str
    """Key of bench.peers.exposition.METRICS."""
    command: list[str]
    port: int
    version: str
    config: str
    """The configuration as written (or the flags), for the result file."""
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    polls: bool = True
    """False when the exporter collects on each scrape instead of on its own timer."""


def klag_pipeline(
    work: Path, bootstrap: str, port: int, options: RunOptions, prefix: str, version: str
) -> Contender:
    text = settings_toml(bootstrap, port, options, prefix)
    path = work / "klag-pipeline.toml"
    path.write_text(text)
    command = [sys.executable, "-m", "bench.exporter_host", str(path)]
    command += ["--loop-lag-out", str(work / "klag-pipeline-loop-lag.jsonl")]
    return Contender("klag-pipeline", "klag-pipeline", command, port, version, text, cwd=REPO)


def klag_exporter(
    work: Path, binary: Path, bootstrap: str, port: int, poll: float, prefix: str, mode: str
) -> Contender:
    text = f"""\
[exporter]
poll_interval = "{int(poll * 1000)}ms"
http_host = "127.0.0.1"
http_port = {port}
granularity = "partition"

[exporter.timestamp_sampling]
enabled = true
mode = "{mode}"

[[clusters]]
name = "{CLUSTER}"
bootstrap_servers = "{bootstrap}"
group_whitelist = ["^{prefix}-"]
"""
    path = work / f"klag-exporter-{mode}.toml"
    path.write_text(text)
    return Contender(
        f"klag-exporter ({mode})",
        "klag-exporter",
        [str(binary), "--config", str(path)],
        port,
        "",
        text,
    )


def kminion(work: Path, binary: Path, bootstrap: str, port: int, prefix: str) -> Contender:
    # KMinion has no poll interval: every /metrics request runs a collection.
    text = f"""\
logger:
  level: warn
kafka:
  brokers: [{json.dumps(bootstrap)}]
  clientId: kminion-bench
minion:
  consumerGroups:
    enabled: true
    scrapeMode: adminApi
    granularity: partition
    allowedGroups: ["/^{prefix}-.*/"]
exporter:
  host: 127.0.0.1
  port: {port}
"""
    path = work / "kminion.yaml"
    path.write_text(text)
    return Contender(
        "KMinion",
        "kminion",
        [str(binary)],
        port,
        "",
        text,
        env={"CONFIG_FILEPATH": str(path)},
        polls=False,
    )


def kafka_exporter(binary: Path, bootstrap: str, port: int, prefix: str) -> Contender:
    # kafka_exporter collects on each /metrics request too (concurrent scrapes share one
    # collection unless --concurrent.enable). --kafka.version: Kafka 4 dropped the request
    # versions that its default (2.0.0) makes sarama use.
    flags = [
        f"--kafka.server={bootstrap}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--group.filter=^{prefix}-.*",
        "--kafka.version=4.0.0",
    ]
    return Contender(
        "kafka_exporter",
        "kafka_exporter",
        [str(binary), *flags],
        port,
        "",
        " ".join(flags),
        polls=False,
    )
