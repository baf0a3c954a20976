"""The Dockerfile (hadolint, and the properties the deployment relies on), its build context
(the wheels built on the host) and the docker-compose demo stack. The image itself is built and
run with podman in test_image_live.py."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools import image as image_tools
from devtools import tools
from klag_pipeline.model import TopicPartition
from klag_pipeline.settings.loader import load_settings
from tests.support.kafka import KafkaTestClient

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yaml"


# -- Dockerfile ----------------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical]


def stages(parsed: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction in parsed:
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [str(tools.tool_path("hadolint")), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n", "utf-8")
    result = subprocess.run(
        [str(tools.tool_path("hadolint")), str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout


def test_dockerfile_installs_host_wheels_offline_non_root_and_healthchecked() -> None:
    parsed = instructions(DOCKERFILE.read_text("utf-8"))
    (runtime,) = stages(parsed)
    assert runtime[0][1] == "${BASE_IMAGE}"
    base = dict(a.split("=", 1) for i, a in parsed if i == "ARG" and a.startswith("BASE_IMAGE"))
    assert base["BASE_IMAGE"].startswith("python:3.11-slim")

    # Offline, from the wheels of the build context, bind-mounted so they never become a layer;
    # into a venv, so that the entrypoint is the same on any base's python3.
    (install,) = [a for i, a in runtime if i == "RUN" and "pip install" in a]
    assert "--mount=type=bind,source=dist/wheels,target=/wheels" in install
    assert "--no-index --find-links=/wheels" in install
    assert "python3 -m venv /opt/klag-pipeline" in install
    assert '"klag-pipeline==${VERSION}"' in install
    assert not any(i in ("COPY", "ADD") for i, _ in runtime)
    env = " ".join(a for i, a in runtime if i == "ENV")
    assert "PATH=/opt/klag-pipeline/bin:$PATH" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env

    final = dict(runtime)
    user = final["USER"].split(":")
    assert all(part.isdigit() and int(part) != 0 for part in user), final["USER"]
    assert final["ENTRYPOINT"] == '["klag-pipeline"]'
    assert final["CMD"] == '["run", "/etc/klag-pipeline/settings.toml"]'
    health = final["HEALTHCHECK"]
    assert '"python"' in health
    assert "/health" in health

    labels = " ".join(a for i, a in runtime if i == "LABEL")
    for key in ("title", "version", "source", "licenses", "revision"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    version_arg = [a for i, a in runtime if i == "ARG" and a.startswith("VERSION=")]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    assert version_arg == [f"VERSION={pyproject['project']['version']}"]


# -- build context -------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for piece in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
        parts.append(
            {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(piece, re.escape(piece))
        )
    return re.compile("".join(parts))


def context_files(root: Path = ROOT) -> list[Path]:
    """Files under ``root`` a ``docker build .`` would send, per .dockerignore (last match
    wins; a pattern matching a parent directory matches everything under it)."""
    rules = []
    for line in DOCKERIGNORE.read_text("utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((negated, _pattern_regex(line.lstrip("!"))))
    kept = []
    skip = {".git", ".venv", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if not path.is_file() or skip & set(relative.parts):
            continue
        prefixes = ["/".join(relative.parts[: n + 1]) for n in range(len(relative.parts))]
        excluded = False
        for negated, regex in rules:
            if any(regex.fullmatch(prefix) for prefix in prefixes):
                excluded = not negated
        if not excluded:
            kept.append(relative)
    return kept


def test_build_context_is_the_host_wheels_and_nothing_else(tmp_path: Path) -> None:
    # What `python -m devtools.image wheels dist/wheels` leaves in a checkout, plus what a
    # developer's checkout has anyway: only the wheels may reach the build.
    (tmp_path / "dist" / "wheels").mkdir(parents=True)
    for name in ("klag_pipeline-0.1.0-py3-none-any.whl", "aiokafka-0.14.0-cp311-abi3.whl"):
        (tmp_path / "dist" / "wheels" / name).write_bytes(b"")
    (tmp_path / "dist" / "klag_pipeline-0.1.0.tar.gz").write_bytes(b"")
    (tmp_path / "klag_pipeline").mkdir()
    (tmp_path / "klag_pipeline" / "cli.py").write_text("", "utf-8")
    (tmp_path / "settings.toml").write_text("", "utf-8")
    kept = {str(p) for p in context_files(tmp_path)}
    assert kept == {
        "dist/wheels/klag_pipeline-0.1.0-py3-none-any.whl",
        "dist/wheels/aiokafka-0.14.0-cp311-abi3.whl",
    }
    # The repository itself sends nothing but wheels (none unless built).
    assert all(p.startswith("dist/wheels/") for p in map(str, context_files()))


def test_host_wheels_hold_the_package_and_every_runtime_dependency(tmp_path: Path) -> None:
    wheels = image_tools.build_wheels(tmp_path / "wheels")
    names = {wheel.name.split("-")[0].lower() for wheel in wheels}
    (own,) = [w for w in wheels if w.name.startswith("klag_pipeline-")]
    with zipfile.ZipFile(own) as archive:
        members = archive.namelist()
        entry_points = next(n for n in members if n.endswith("entry_points.txt"))
        assert "klag-pipeline = klag_pipeline.cli:main" in archive.read(entry_points).decode()
        metadata = archive.read(next(n for n in members if n.endswith("METADATA"))).decode()
    assert "klag_pipeline/__main__.py" in members
    assert "klag_pipeline/py.typed" in members
    required = [
        line.split(":", 1)[1].strip()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert len(required) > 5
    for requirement in required:
        name = re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0]
        assert name.lower().replace("-", "_") in names, f"no wheel for {requirement}"
    # Byte-reproducible: the context hash of an unchanged checkout is unchanged.
    again = image_tools.build_wheels(tmp_path / "again")
    assert own.read_bytes() == next(w for w in again if w.name == own.name).read_bytes()


# -- docker-compose demo -------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text("utf-8"))
    return document


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts.append(((COMPOSE_DIR / source).resolve(), target))
    return mounts


def test_compose_references_only_existing_files() -> None:
    services = compose()["services"]
    assert {"kafka", "klag-pipeline", "prometheus", "grafana", "otel-collector", "workload"} <= set(
        services
    )
    checked = 0
    for name, service in services.items():
        assert service.get("image"), f"{name}: no image"
        if "build" in service:
            context = (COMPOSE_DIR / service["build"]["context"]).resolve()
            assert (context / service["build"]["dockerfile"]).is_file(), name
            checked += 1
        for source, _ in bind_mounts(service):
            assert source.is_file(), f"{name}: {source} does not exist"
            checked += 1
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
    assert checked >= 10


def test_compose_prometheus_config_and_rules_pass_promtool(tmp_path: Path) -> None:
    prometheus = compose()["services"]["prometheus"]
    # Lay the mounted files out as the container sees them, then let promtool check it all.
    etc = tmp_path / "etc" / "prometheus"
    etc.mkdir(parents=True)
    for source, target in bind_mounts(prometheus):
        assert target.startswith("/etc/prometheus/")
        shutil.copy(source, etc / Path(target).name)
    result = subprocess.run(
        [str(tools.tool_path("promtool")), "check", "config", str(etc / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 11 rules found" in result.stdout
    config = yaml.safe_load((etc / "prometheus.yml").read_text("utf-8"))
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "klag-pipeline"  # what the alerts' job selector expects
    assert job["static_configs"][0]["targets"] == ["klag-pipeline:8000"]


def test_compose_grafana_provisions_the_dashboard() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = dict((target, source) for source, target in bind_mounts(grafana))
    dashboard_target = next(t for t, s in mounts.items() if s.suffix == ".json")
    assert mounts[dashboard_target] == ROOT / "deploy" / "grafana" / "klag-pipeline.json"
    provider_file = next(s for t, s in mounts.items() if "provisioning/dashboards" in t)
    provider = yaml.safe_load(provider_file.read_text("utf-8"))["providers"][0]
    assert Path(dashboard_target).parent == Path(provider["options"]["path"])
    datasource_file = next(s for t, s in mounts.items() if "provisioning/datasources" in t)
    datasource = yaml.safe_load(datasource_file.read_text("utf-8"))["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"


def test_compose_exporter_settings_are_valid_and_point_at_the_stack() -> None:
    services = compose()["services"]
    exporter = services["klag-pipeline"]
    (settings_file,) = [s for s, t in bind_mounts(exporter) if t.endswith("settings.toml")]
    settings = load_settings(settings_file, {}).settings
    assert settings.clusters[0].bootstrap_servers == ("kafka:9092",)
    assert f"{settings.exporter.http_port}:{settings.exporter.http_port}" in exporter["ports"]
    assert settings.exporter.otel.enabled
    assert settings.exporter.otel.endpoint == "http://otel-collector:4317"
    (collector_config,) = [s for s, _ in bind_mounts(services["otel-collector"])]
    collector = yaml.safe_load(collector_config.read_text("utf-8"))
    assert collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    assert "otlp" in collector["service"]["pipelines"]["metrics"]["receivers"]
    assert exporter.get("read_only") is True


@pytest.mark.timeout(120)
async def test_compose_workload_runs_against_kafka(
    kafka: KafkaTestClient, kafka_bootstrap: str
) -> None:
    workload = COMPOSE_DIR / "workload.py"
    # The demo's own topics and groups; nothing else on the session broker uses these names.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(workload),
        "--bootstrap",
        kafka_bootstrap,
        "--duration",
        "4",
        "--rate",
        "50",
    )
    assert await process.wait() == 0
    produced = await kafka.watermarks("orders")
    assert sum(high for _, high in produced.values()) > 0
    assert await kafka.committed("audit-stopped") == {TopicPartition("audit", 0): 0}
    assert await kafka.committed("orders-fast")
