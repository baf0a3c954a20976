"""The real container image, built with podman from the repository's Dockerfile and run against
the session's Kafka broker.

The image is built once per session on a local debootstrap base (devtools/image.py), reused by
tag while the build context (Dockerfile, wheels, base image id) is unchanged. Every container
runs with ``--network host`` (no bridge networking here; everything binds loopback) and is
removed afterwards, also when the test fails.

- ``--version`` prints the one package version; the labels carry it too.
- The exporter in the image, read-only root filesystem and no tmpfs at all, exports the exact
  lag of a group whose committed offsets the test chose; its process runs as a non-root uid;
  SIGTERM stops it with exit status 0 within :data:`SHUTDOWN_BOUND_SECONDS`.
- The Helm chart's Deployment, rendered by the pinned helm, is run as the image: its container
  args, its ConfigMap mounted at its mount path, its emptyDir, its security context; its
  liveness and readiness probe paths answer 200 on the probes' port.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools import image as image_tools
from klag_pipeline.app import SHUTDOWN_TIMEOUT_SECONDS
from klag_pipeline.model import TopicPartition
from tests.deploy.test_helm import helm_template, one
from tests.deploy.test_prometheus_live import free_port
from tests.release import package_version
from tests.support.kafka import KafkaTestClient, Rec
from tests.support.waiting import wait_until

# A cold session makes the debootstrap base (minutes on two cores) and builds the image.
pytestmark = pytest.mark.timeout(1800)

SHUTDOWN_BOUND_SECONDS = SHUTDOWN_TIMEOUT_SECONDS + 5.0
"""SIGTERM to exit: the exporter's own shutdown deadline plus podman's stop round trip."""
STOP_GRACE_SECONDS = 60
"""podman stop escalates to SIGKILL only after this, well past the bound: a hang is measured."""
STARTUP_DEADLINE = 90.0
IN_CONTAINER_SETTINGS = "/etc/klag-pipeline"
NO_TIMER = ("--health-interval", "disable")
"""The image's HEALTHCHECK runs only when the test asks (podman's timer needs systemd)."""


@pytest.fixture(scope="session")
def built_image() -> image_tools.BuiltImage:
    return image_tools.build_image()


def podman_run(argv: Sequence[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*image_tools.PODMAN, *argv], capture_output=True, text=True, timeout=timeout, check=False
    )


@contextlib.contextmanager
def container(image: str, args: Sequence[str], options: Sequence[str] = ()) -> Iterator[str]:
    """A detached container of ``image`` (host network, the sandbox's rlimits), removed after."""
    name = f"klag-test-{secrets.token_hex(4)}"
    started = podman_run(
        [
            "run",
            "--detach",
            "--name",
            name,
            *image_tools.RUN_FLAGS,
            *NO_TIMER,
            *options,
            image,
            *args,
        ]
    )
    try:
        assert started.returncode == 0, started.stderr
        yield name
    finally:
        podman_run(["rm", "--force", "--time", "0", name])


def logs(name: str) -> str:
    result = podman_run(["logs", name])
    return f"--- container log ---\n{result.stdout[-4000:]}{result.stderr[-4000:]}"


def state(name: str) -> dict[str, Any]:
    result = podman_run(["inspect", "--format", "{{json .State}}", name])
    assert result.returncode == 0, result.stderr
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def process_ids(name: str) -> tuple[int, int]:
    """Real uid and gid of the container's main process, as the host kernel sees them."""
    pid = state(name)["Pid"]
    status = Path(f"/proc/{pid}/status").read_text("utf-8").splitlines()
    uid = next(line for line in status if line.startswith("Uid:")).split()[1]
    gid = next(line for line in status if line.startswith("Gid:")).split()[1]
    return int(uid), int(gid)


async def http_get(url: str) -> tuple[int, str]:
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response,
        ):
            return response.status, await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return 0, ""


def gauge_values(text: str, family: str, **labels: str) -> list[float]:
    return [
        sample.value
        for metric in text_string_to_metric_families(text)
        if metric.name == family
        for sample in metric.samples
        if sample.name == family and all(sample.labels.get(k) == v for k, v in labels.items())
    ]


def settings_toml(bootstrap: str, port: int, prefix: str) -> str:
    return (
        "[exporter]\n"
        'http_host = "127.0.0.1"\n'
        f"http_port = {port}\n"
        'poll_interval = "1s"\n'
        "\n[[clusters]]\n"
        'name = "image"\n'
        f'bootstrap_servers = "{bootstrap}"\n'
        f'group_whitelist = ["^{prefix}"]\n'
        f'topic_whitelist = ["^{prefix}"]\n'
    )


# -- the image -----------------------------------------------------------------------------------


def test_image_size_is_recorded(built_image: image_tools.BuiltImage, tmp_path: Path) -> None:
    report = {
        "tag": built_image.tag,
        "context_hash": built_image.context_hash,
        "size_bytes": built_image.size_bytes,
        "size_mb": round(built_image.size_bytes / 1e6, 1),
        "built_in_this_session": built_image.built,
        "build_or_reuse_seconds": round(built_image.seconds, 1),
    }
    path = tmp_path / "image-size.json"
    path.write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    print(f"image size: {report['size_mb']} MB ({built_image.tag}), written to {path}")
    assert built_image.size_bytes > 0
    assert built_image.tag.endswith(built_image.context_hash[:16])


def test_version_flag_and_labels_carry_the_package_version(
    built_image: image_tools.BuiltImage,
) -> None:
    version = package_version()
    result = podman_run(
        ["run", "--rm", *image_tools.RUN_FLAGS, "--read-only", built_image.tag, "--version"]
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["klag-pipeline", version], result.stdout
    inspected = podman_run(["image", "inspect", "--format", "{{json .Config}}", built_image.tag])
    config = json.loads(inspected.stdout)
    assert config["Labels"]["org.opencontainers.image.version"] == version
    assert config["Entrypoint"] == ["klag-pipeline"]
    assert config["User"] == "10001:10001"


def test_the_cached_tag_is_reused(built_image: image_tools.BuiltImage) -> None:
    again = image_tools.build_image()
    assert not again.built
    assert (again.tag, again.image_id) == (built_image.tag, built_image.image_id)


async def test_exporter_image_exports_exact_lag_read_only_and_stops_on_sigterm(
    built_image: image_tools.BuiltImage,
    kafka: KafkaTestClient,
    kafka_bootstrap: str,
    unique: Any,
    tmp_path: Path,
) -> None:
    prefix = unique("image")
    topic, group = f"{prefix}-orders", f"{prefix}-billing"
    await kafka.create_topic(topic, partitions=2)
    await kafka.produce(topic, [Rec(b"x", 0) for _ in range(10)])
    await kafka.produce(topic, [Rec(b"y", 1) for _ in range(7)])
    await kafka.commit(group, {TopicPartition(topic, 0): 4, TopicPartition(topic, 1): 7})

    port = free_port()
    settings_dir = tmp_path / "settings"
    settings_dir.mkdir()
    (settings_dir / "settings.toml").write_text(
        settings_toml(kafka_bootstrap, port, prefix), "utf-8"
    )
    options = [
        "--read-only",
        "--read-only-tmpfs=false",  # not even /tmp: the exporter writes nothing
        # The HEALTHCHECK probes this port (docs/deployment.md): set beside a non-default
        # http_port. The exporter reads the same variable; both say the same port.
        "--env",
        f"KLAG_EXPORTER__HTTP_PORT={port}",
        "--volume",
        f"{settings_dir}:{IN_CONTAINER_SETTINGS}:ro",
    ]
    # No arguments: the image's default command runs the mounted settings file.
    with container(built_image.tag, [], options) as name:
        lag_labels = {"cluster_name": "image", "group": group, "topic": topic}

        async def both_partitions() -> tuple[list[float], list[float]] | None:
            status, body = await http_get(f"http://127.0.0.1:{port}/metrics")
            if status != 200:
                return None
            lag0 = gauge_values(body, "kafka_consumergroup_group_lag", **lag_labels, partition="0")
            lag1 = gauge_values(body, "kafka_consumergroup_group_lag", **lag_labels, partition="1")
            return (lag0, lag1) if lag0 and lag1 else None

        lag0, lag1 = await wait_until(
            both_partitions,
            within=STARTUP_DEADLINE,
            interval=0.5,
            message="the lag series of both partitions on /metrics",
            details=lambda: logs(name),
        )
        assert (lag0, lag1) == ([6.0], [0.0])

        uid, gid = process_ids(name)
        assert uid != 0
        assert (uid, gid) == (10001, 10001)

        health = podman_run(["healthcheck", "run", name])
        assert health.returncode == 0, health.stdout + health.stderr + logs(name)

        started = time.monotonic()
        stopped = podman_run(["stop", "--time", str(STOP_GRACE_SECONDS), name], timeout=120)
        elapsed = time.monotonic() - started
        assert stopped.returncode == 0, stopped.stderr
        final = state(name)
        assert final["Status"] == "exited"
        assert final["ExitCode"] == 0, logs(name)
        print(f"SIGTERM to exit: {elapsed:.2f}s (bound {SHUTDOWN_BOUND_SECONDS:g}s)")
        assert elapsed < SHUTDOWN_BOUND_SECONDS, f"stopped after {elapsed:.1f}s\n{logs(name)}"


# -- the Helm chart's Deployment, run as the image -----------------------------------------------


def pod_options(
    deployment: dict[str, Any], configmap: dict[str, Any], files: Path
) -> tuple[list[str], list[str], int]:
    """``podman run`` options and arguments that lay the pod out as the Deployment does, and the
    container port the probes' named port resolves to."""
    pod = deployment["spec"]["template"]["spec"]
    (spec,) = pod["containers"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    options: list[str] = []
    for mount in spec["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            assert volume["configMap"]["name"] == configmap["metadata"]["name"]
            directory = files / mount["name"]
            directory.mkdir()
            for key, text in configmap["data"].items():
                (directory / key).write_text(text, "utf-8")
            mode = "ro" if mount.get("readOnly") else "rw"
            options += ["--volume", f"{directory}:{mount['mountPath']}:{mode}"]
        elif "emptyDir" in volume:
            options += ["--tmpfs", f"{mount['mountPath']}:rw,size=64m"]
        else:
            raise AssertionError(f"no stand-in for volume {volume}")
    security = {**pod.get("securityContext", {}), **spec.get("securityContext", {})}
    if security.get("readOnlyRootFilesystem"):
        options += ["--read-only", "--read-only-tmpfs=false"]
    if "runAsUser" in security:
        options += ["--user", f"{security['runAsUser']}:{security.get('runAsGroup', 0)}"]
    for capability in security.get("capabilities", {}).get("drop", []):
        options += ["--cap-drop", capability]
    if security.get("allowPrivilegeEscalation") is False:
        options += ["--security-opt", "no-new-privileges"]
    for variable in spec.get("env", []):
        if "value" in variable:
            options += ["--env", f"{variable['name']}={variable['value']}"]
        elif "fieldRef" in variable.get("valueFrom", {}):
            options += ["--env", f"{variable['name']}=stand-in-{variable['name'].lower()}"]
    ports = {port["name"]: port["containerPort"] for port in spec["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert spec[probe]["httpGet"]["port"] in ports
    (port,) = {
        ports[spec[probe]["httpGet"]["port"]] for probe in ("livenessProbe", "readinessProbe")
    }
    return options, list(spec["args"]), port


async def test_helm_deployment_args_mounts_and_probes_work_with_the_image(
    built_image: image_tools.BuiltImage,
    kafka: KafkaTestClient,
    kafka_bootstrap: str,
    unique: Any,
    tmp_path: Path,
) -> None:
    prefix = unique("chart")
    topic, group = f"{prefix}-orders", f"{prefix}-billing"
    await kafka.create_topic(topic)
    await kafka.produce(topic, [Rec(b"x", 0) for _ in range(3)])
    await kafka.commit(group, {TopicPartition(topic, 0): 1})

    port = free_port()
    values = {
        "settings": {
            # Loopback and a free port: the container shares the host's network here.
            "exporter": {"http_host": "127.0.0.1", "http_port": port, "poll_interval": "1s"},
            "clusters": [
                {
                    "name": "chart",
                    "bootstrap_servers": kafka_bootstrap,
                    "group_whitelist": [f"^{prefix}"],
                    "topic_whitelist": [f"^{prefix}"],
                }
            ],
        }
    }
    documents = helm_template(extra_values=values, tmp_path=tmp_path)
    deployment, configmap = one(documents, "Deployment"), one(documents, "ConfigMap")
    files = tmp_path / "volumes"
    files.mkdir()
    options, args, probe_port = pod_options(deployment, configmap, files)
    assert probe_port == port
    assert args[:2] == ["run", f"{IN_CONTAINER_SETTINGS}/settings.toml"]
    (spec,) = deployment["spec"]["template"]["spec"]["containers"]
    paths = [spec[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")]
    assert paths == ["/health", "/ready"]

    with container(built_image.tag, args, options) as name:
        for path in paths:

            async def answers_200(path: str = path) -> int | None:
                status, _ = await http_get(f"http://127.0.0.1:{probe_port}{path}")
                return status if status == 200 else None

            await wait_until(
                answers_200,
                within=STARTUP_DEADLINE,
                interval=0.5,
                message=f"the chart's probe {path} answering 200",
                details=lambda: logs(name),
            )
        status, body = await http_get(f"http://127.0.0.1:{probe_port}/metrics")
        assert status == 200
        lag = {"cluster_name": "chart", "group": group, "topic": topic, "partition": "0"}
        assert gauge_values(body, "kafka_consumergroup_group_lag", **lag) == [2.0]
        assert state(name)["Running"]
        # The chart's --log-format json reached the exporter: its log lines are JSON objects.
        lines = [line for line in podman_run(["logs", name]).stderr.splitlines() if line.strip()]
        assert lines
        assert all(line.startswith("{") for line in lines), lines[:5]
