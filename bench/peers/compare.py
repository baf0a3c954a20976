"""``python -m bench compare``: one broker, one scenario, one counting proxy; klag-pipeline and
then each available peer, one after another, measured the same way (bench/peers/run.py).

Result: ``bench/results/compare-<preset>.json`` — the machine and its load average before and
after each exporter, the scenario's truth, every exporter's command, configuration, version and
figures, and the reasons any requested peer could not run.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench.harness import RunOptions, load_average, proxied_cluster, result_header
from bench.peers import contenders
from bench.peers.build import PEERS, resolve
from bench.peers.exposition import METRICS
from bench.peers.run import measure
from bench.processes import free_port
from bench.scenario import Scenario, ScenarioSpec, plan
from klag_pipeline import __version__

KLAG_EXPORTER_MODES = ("message", "rate")
"""klag-exporter's two time-lag modes, one run each."""


def _contenders(
    names: Sequence[str],
    binaries: dict[str, Path],
    work: Path,
    bootstrap: str,
    options: RunOptions,
    prefix: str,
) -> list[contenders.Contender]:
    poll = options.poll_interval
    out = [contenders.klag_pipeline(work, bootstrap, free_port(), options, prefix, __version__)]
    for name in names:
        if name not in binaries:
            continue
        binary, version = binaries[name], PEERS[name].version
        if name == "klag-exporter":
            made = [
                contenders.klag_exporter(work, binary, bootstrap, free_port(), poll, prefix, mode)
                for mode in KLAG_EXPORTER_MODES
            ]
        elif name == "kminion":
            made = [contenders.kminion(work, binary, bootstrap, free_port(), prefix)]
        else:
            made = [contenders.kafka_exporter(binary, bootstrap, free_port(), prefix)]
        out += [replace(c, version=version) for c in made]
    return out


async def run_compare(
    spec: ScenarioSpec,
    options: RunOptions,
    names: Sequence[str],
    given: dict[str, Path],
    cycles: int,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    binaries, missing = resolve(names, given, log)
    result = result_header(spec, options) | {
        "kind": "compare",
        "cycle_definition": (
            "one poll interval: /metrics scraped once per interval, proxy counters and /proc "
            "read at each interval boundary"
        ),
        "cycles": cycles,
        "metric_names": {peer: asdict(names_) for peer, names_ in METRICS.items()},
        "toolchains": toolchains(),
        "peers_requested": list(names),
        "peers_unavailable": missing,
        "peer_builds": {
            name: {"version": PEERS[name].version, "source": PEERS[name].source, "binary": str(p)}
            for name, p in binaries.items()
        },
        "contenders": [],
    }
    with tempfile.TemporaryDirectory(prefix="klag-bench-compare-") as workdir:
        work = Path(workdir)
        async with proxied_cluster() as (cluster, proxy):
            scenario_plan = plan(spec, int(time.time() * 1000))
            result["truth"] = scenario_plan.truth()
            log(f"scenario {spec.name}: {json.dumps(result['truth'])}")
            async with Scenario(cluster.bootstrap, scenario_plan) as scenario:
                result["setup_seconds"] = await scenario.setup(log)
                for contender in _contenders(
                    names, binaries, work, proxy.address, options, spec.prefix
                ):
                    before = load_average()
                    try:
                        measured = await measure(
                            contender, proxy, scenario_plan, options.poll_interval, cycles,
                            work, log,
                        )  # fmt: skip
                    except RuntimeError as error:
                        log(f"{contender.label} failed: {error}")
                        measured = {"label": contender.label, "error": str(error)}
                    measured["load_average_before"] = before
                    measured["load_average_after"] = load_average()
                    result["contenders"].append(measured)
    result["load_average_after"] = load_average()
    return result


def toolchains() -> dict[str, str]:
    """What built the peers (``go version``, ``rustc --version``), as far as this machine says."""
    found: dict[str, str] = {}
    for name, command in (("go", ["go", "version"]), ("rustc", ["rustc", "--version"])):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        found[name] = done.stdout.strip()
    return found
