"""``python -m bench codecs`` — decode cost of real broker answers: our codecs against kio.

Issue 13 asked whether the ``kio`` package (Aiven; dataclasses generated from Kafka's message
JSON schemas) should replace the hand-written codecs in ``klag_pipeline.kafka.protocol``. This
measures both on the answers the ``large`` preset's cycle decodes, captured from a real broker:

* ``capture`` starts a single broker, builds the large preset's groups and topics (no records:
  none of these answers depends on them), and saves the body of each answer under
  ``bench/frames/<preset>/`` — the bytes Kafka sent, exactly as the transport hands them to a
  decoder (response header already parsed). The frames are large and not kept in git.
* ``measure`` decodes each frame N times with our codec and, when ``--kio-site`` names a
  directory where kio is installed (it is not a project dependency), with kio's reader; it
  writes median/min decode time and the tracemalloc peak of one decode to
  ``bench/results/codecs.json``.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import json
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bench.harness import BENCH_BROKER_PROPERTIES, RESULTS, load_average, machine_info
from bench.scenario import Scenario, plan, preset
from devtools.kafka_local import KafkaCluster
from klag_pipeline.kafka import protocol as p
from klag_pipeline.kafka.adapter.transport import Transport
from klag_pipeline.settings.schema import ClusterSettings, PerformanceSettings

FRAMES = Path(__file__).resolve().parent / "frames"


@dataclass(frozen=True, slots=True)
class Api:
    """One answer the cycle decodes: our decoder, and kio's entity for the same version."""

    name: str
    spec: p.ApiSpec
    decode: Callable[[int, bytes], object]
    kio_package: str
    kio_class: str


# fmt: off
APIS = (
    Api("ListGroups", p.LIST_GROUPS, p.decode_list_groups, "list_groups", "ListGroupsResponse"),
    Api("DescribeGroups", p.DESCRIBE_GROUPS, p.decode_describe_groups, "describe_groups",
        "DescribeGroupsResponse"),
    Api("OffsetFetch", p.OFFSET_FETCH, p.decode_offset_fetch, "offset_fetch",
        "OffsetFetchResponse"),
    Api("ListOffsets", p.LIST_OFFSETS, p.decode_list_offsets, "list_offsets",
        "ListOffsetsResponse"),
    Api("Metadata", p.METADATA, p.decode_metadata, "metadata", "MetadataResponse"),
)
# fmt: on


@dataclass(frozen=True, slots=True)
class _Raw:
    """What ``Transport.call`` needs from a "decoded" answer; the bytes are kept as they came."""

    body: bytes
    throttle_ms: int = 0
    error_code: int = 0


# -- capture ---------------------------------------------------------------------------------


async def _capture_from(bootstrap: str, preset_name: str, out: Path) -> dict[str, Any]:
    spec = preset(preset_name)
    scenario_plan = plan(spec, int(time.time() * 1000))
    timings: dict[str, float] = {}
    async with Scenario(bootstrap, scenario_plan) as scenario:
        for name, step in (
            ("create_topics", scenario.create_topics),
            ("commit", scenario.commit_all),
            ("empty_groups", scenario.create_empty_groups),
            ("live_members", scenario.start_live_members),
        ):
            began = time.monotonic()
            await step()
            timings[name] = round(time.monotonic() - began, 1)
            print(f"setup {name}: {timings[name]}s", file=sys.stderr)
        transport = Transport(
            ClusterSettings(name="bench", bootstrap_servers=(bootstrap,)),
            PerformanceSettings(kafka_timeout=60.0),
            None,
        )
        await transport.connect()
        try:
            node = transport.nodes()[0]

            async def grab(spec: p.ApiSpec, body: Callable[[int], bytes]) -> tuple[int, bytes]:
                version = await transport.choose(node, spec)
                assert version is not None, spec.name
                answer = await transport.call(node, spec, version, body(version), _Raw)
                return version, answer.body

            listed = await grab(p.LIST_GROUPS, p.encode_list_groups)
            groups = [g.group_id for g in p.decode_list_groups(*listed).groups]
            topics = sorted(t.name for t in scenario_plan.topics)
            partitions = {t: list(range(spec.partitions)) for t in topics}
            frames = {
                "ListGroups": listed,
                "DescribeGroups": await grab(
                    p.DESCRIBE_GROUPS, lambda v: p.encode_describe_groups(v, groups)
                ),
                "OffsetFetch": await grab(
                    p.OFFSET_FETCH, lambda v: p.encode_offset_fetch(v, groups)
                ),
                "ListOffsets": await grab(
                    p.LIST_OFFSETS, lambda v: p.encode_list_offsets(v, partitions, p.LATEST)
                ),
                "Metadata": await grab(p.METADATA, lambda v: p.encode_metadata(v, topics)),
            }
        finally:
            await transport.close()
    index: dict[str, Any] = {"preset": preset_name, "setup_seconds": timings, "frames": {}}
    for name, (version, body) in frames.items():
        index["frames"][name] = {
            "version": version,
            "bytes": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
        }
    _save(out, index, {name: body for name, (_, body) in frames.items()})
    return index


def _save(out: Path, index: dict[str, Any], bodies: dict[str, bytes]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, body in bodies.items():
        (out / f"{name}.bin").write_bytes(body)
    (out / "index.json").write_text(json.dumps(index, indent=2) + "\n")


def capture(preset_name: str = "large") -> Path:
    out = FRAMES / preset_name
    cluster = KafkaCluster(1, extra_broker_properties=BENCH_BROKER_PROPERTIES)
    cluster.start()
    try:
        asyncio.run(_capture_from(cluster.bootstrap, preset_name, out))
    finally:
        cluster.stop()
    return out


# -- measure ---------------------------------------------------------------------------------


def _timing(decode: Callable[[], object], runs: int) -> dict[str, float]:
    decode()  # warm: imports, reader construction, caches
    seconds = []
    for _ in range(runs):
        began = time.perf_counter()
        decode()
        seconds.append(time.perf_counter() - began)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = decode()
        retained, peak = tracemalloc.get_traced_memory()
        del result
    finally:
        tracemalloc.stop()
    return {
        "median_ms": round(statistics.median(seconds) * 1000, 3),
        "min_ms": round(min(seconds) * 1000, 3),
        "tracemalloc_peak_kib": round(peak / 1024, 1),
        "tracemalloc_retained_kib": round(retained / 1024, 1),
    }


def _kio_reader(api: Api, version: int) -> Callable[[bytes], object]:
    # kio is no project dependency: importable only from --kio-site, hence no static import.
    entity_reader = importlib.import_module("kio.serial").entity_reader
    module = importlib.import_module(f"kio.schema.{api.kio_package}.v{version}.response")
    reader = entity_reader(getattr(module, api.kio_class))

    def read(body: bytes) -> object:
        value, size = reader(body, 0)
        if size != len(body):
            raise ValueError(f"kio read {size} of {len(body)} bytes")
        return value

    return read


def measure(frames: Path, runs: int, kio_site: Path | None) -> dict[str, Any]:
    if kio_site is not None:
        sys.path.append(str(kio_site))  # after our own venv: its packages win
    index = json.loads((frames / "index.json").read_text())
    result: dict[str, Any] = {
        "command": " ".join(["python", "-m", "bench", *sys.argv[1:]]),
        "machine": machine_info(),
        "load_average_before": load_average(),
        "frames": index,
        "runs": runs,
        "apis": {},
    }
    if kio_site is not None:
        kio = importlib.import_module("kio")
        result["kio_version"] = getattr(kio, "__version__", "?")
    for api in APIS:
        meta = index["frames"][api.name]
        body = (frames / f"{api.name}.bin").read_bytes()
        version = int(meta["version"])
        row: dict[str, Any] = {"version": version, "bytes": len(body)}
        row["ours"] = _timing(partial(api.decode, version, body), runs)
        if kio_site is not None:
            row["kio"] = _timing(partial(_kio_reader(api, version), body), runs)
        result["apis"][api.name] = row
        print(f"{api.name} v{version} {len(body)} B: {json.dumps(row)}", file=sys.stderr)
    result["load_average_after"] = load_average()
    return result


def main(args: Any) -> int:
    frames = FRAMES / args.preset
    if args.capture or not (frames / "index.json").exists():
        capture(args.preset)
    result = measure(frames, args.runs, args.kio_site)
    out = RESULTS / "codecs.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0
