"""A real kube-apiserver, etcd and kubectl for the tests, built from source once per machine.

No prebuilt Kubernetes or etcd binary is downloadable here, but the Go module proxy serves
``k8s.io/kubernetes`` and etcd. A small wrapper module under the cache requires
``k8s.io/kubernetes`` at :data:`KUBERNETES_VERSION` and points every staging module
(``k8s.io/api``, ``k8s.io/apiserver``, …: the ``replace`` block of kubernetes' own go.mod) at
the same release's tag. One ``go build`` then makes

- ``kube-apiserver`` and ``kubectl`` (``k8s.io/kubernetes/cmd/...``), and
- ``etcd``: etcd's own ``etcdmain.Main`` in a two-line main, at the etcd version kubernetes pins
  in its go.mod (:data:`ETCD_VERSION`; the release's supported etcd, checked after resolution).

A second small module builds controller-gen and generates the Prometheus Operator's
ServiceMonitor and PrometheusRule CRDs from its Go API types, the way that project generates its
own (no CRD manifest is downloadable here), so the chart's objects of those kinds can be sent to
the API server too.

Everything lands under ``$KLAG_KUBE_DIR`` (default ``~/.cache/klag-pipeline/kube/<version>``):
``bin/`` holds the binaries, ``crds/`` the CRDs, ``src/`` and ``crdgen/`` the wrapper modules,
``stamp`` the spec they were built for.
A second run costs a few ``stat`` calls. Each step prints its name and duration.

Measured on this project's 2-core machine (``go build -p 2``, ``GOFLAGS=-trimpath``): see
docs/high-availability.md ("Tested against a real API server").

    python -m devtools.kube install           # build what is missing, print what is where
    python -m devtools.kube path kube-apiserver
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from devtools import user_cache

KUBERNETES_VERSION = "v1.37.2"
"""Newest served release, the same minor as the newest schemas and helm's default kube version
(devtools.tools): the chart is checked against what it is rendered for."""
ETCD_VERSION = "v3.7.0"
"""The etcd server module k8s.io/kubernetes v1.37.2 requires (its go.mod): the tested pair."""
PROMETHEUS_OPERATOR_VERSION = "v0.95.2"
"""github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring: the Go types the
Prometheus Operator generates its CRDs from; the newest served."""
CONTROLLER_TOOLS_VERSION = "v0.23.0"
"""controller-gen, which the Prometheus Operator generates its CRDs with; the newest served."""
CRDS = ("servicemonitors", "podmonitors", "prometheusrules")
"""The CRDs the chart renders objects of (monitoring-values; PodMonitor: sharding-values)."""
BINARIES = ("kube-apiserver", "kubectl", "etcd")
PACKAGES = ("k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kubectl", "./etcd")
GO_BUILD_PARALLELISM = "2"
"""Two cores; at -p 2 the cold build peaks well under 4 GiB (numbers in the docs)."""
_MINOR = KUBERNETES_VERSION.split(".")[1]
LDFLAGS = "-s -w " + " ".join(
    f"-X {package}.{name}={value}"
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
    for name, value in (
        ("gitVersion", KUBERNETES_VERSION),
        ("gitMajor", "1"),
        ("gitMinor", _MINOR),
        ("gitTreeState", "clean"),
    )
)
"""No symbol tables (as kubernetes' release builds), and the version kubernetes' own build stamps
(hack/lib/version.sh): without it /version and ``kubectl version`` say v0.0.0-master. Link-time
only, so it does not change the compile cache."""
RESOLVE_TIMEOUT_SECONDS = 900.0
BUILD_TIMEOUT_SECONDS = 3600.0

_ETCD_MAIN = """\
// Command etcd is etcd's own main (server/etcdmain), built in this module so that it is the
// etcd version kube-apiserver is built against.
package main

import (
\t"os"

\t"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
\tetcdmain.Main(os.Args)
}
"""

_TOOLS_GO = """\
//go:build tools

// Package tools keeps the commands this module builds in its go.mod and go.sum.
package tools

import (
\t_ "k8s.io/kubernetes/cmd/kube-apiserver"
\t_ "k8s.io/kubernetes/cmd/kubectl"
)
"""


class KubeBuildError(RuntimeError):
    """The binaries could not be built or are not built."""


def kube_dir() -> Path:
    """``$KLAG_KUBE_DIR`` or ``~/.cache/klag-pipeline/kube/<KUBERNETES_VERSION>``."""
    return user_cache("KLAG_KUBE_DIR", f"kube/{KUBERNETES_VERSION}")


def binary(name: str) -> Path:
    """Path of a built binary; :class:`KubeBuildError` naming the build command if missing."""
    path = kube_dir() / "bin" / name
    if not (_is_current() and path.is_file() and os.access(path, os.X_OK)):
        raise KubeBuildError(
            f"{name} {KUBERNETES_VERSION} is not built in {path.parent}: "
            "run `make tools` (python -m devtools.kube install)"
        )
    return path


def staging_version(kubernetes: str = KUBERNETES_VERSION) -> str:
    """``v1.37.2`` → ``v0.37.2``: the tag of the staging modules of that release."""
    match = re.fullmatch(r"v1\.(\d+)\.(\d+)", kubernetes)
    if match is None:
        raise KubeBuildError(f"not a Kubernetes release version: {kubernetes}")
    return f"v0.{match[1]}.{match[2]}"


def _spec() -> str:
    return (
        f"kubernetes={KUBERNETES_VERSION} etcd={ETCD_VERSION} {' '.join(BINARIES)} {LDFLAGS} "
        f"crds={PROMETHEUS_OPERATOR_VERSION}/{CONTROLLER_TOOLS_VERSION}/{','.join(CRDS)}"
    )


def crd_file(plural: str) -> Path:
    """A generated Prometheus Operator CRD (``servicemonitors``, ``prometheusrules``)."""
    path = kube_dir() / "crds" / f"monitoring.coreos.com_{plural}.yaml"
    if not (_is_current() and path.is_file()):
        raise KubeBuildError(f"{path} is not generated: run `make tools`")
    return path


def _is_current() -> bool:
    try:
        return (kube_dir() / "stamp").read_text(encoding="utf-8").strip() == _spec()
    except FileNotFoundError:
        return False


def _go() -> str:
    found = shutil.which("go") or (
        "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
    )
    if found is None:
        raise KubeBuildError("`go` not found on PATH (nor /usr/local/go/bin/go)")
    return found


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    # The toolchain on the machine, never a downloaded one: kubernetes needs go >= its go line.
    env.setdefault("GOTOOLCHAIN", "local")
    env["GOFLAGS"] = (env.get("GOFLAGS", "") + " -trimpath -mod=mod").strip()
    env["CGO_ENABLED"] = "0"
    return env


def _run(argv: Sequence[str], cwd: Path, timeout: float) -> str:
    try:
        completed = subprocess.run(
            list(argv),
            cwd=cwd,
            env=_go_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise KubeBuildError(f"`{' '.join(argv)}` did not finish within {timeout:.0f}s") from exc
    if completed.returncode != 0:
        output = (completed.stderr or completed.stdout).strip()[-4000:]
        raise KubeBuildError(f"`{' '.join(argv)}` failed (exit {completed.returncode}):\n{output}")
    return completed.stdout


def _step(number: int, total: int, what: str) -> float:
    print(f"kube [{number}/{total}] {what} ...", flush=True)
    return time.monotonic()


def _done(number: int, total: int, began: float) -> None:
    print(f"kube [{number}/{total}] done in {time.monotonic() - began:.1f}s", flush=True)


def _staging_modules(go: str, src: Path) -> list[str]:
    """The ``k8s.io/*`` modules that kubernetes' go.mod replaces with its staging directories."""
    info = json.loads(
        _run(
            [go, "mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"],
            src,
            RESOLVE_TIMEOUT_SECONDS,
        )
    )
    text = Path(info["GoMod"]).read_text(encoding="utf-8")
    modules = sorted(set(re.findall(r"^\s+(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", text, re.M)))
    if "k8s.io/apiserver" not in modules:
        raise KubeBuildError(f"no staging replace block in {info['GoMod']}")
    return modules


def _write_module(go: str, src: Path) -> None:
    src.mkdir(parents=True, exist_ok=True)
    (src / "etcd").mkdir(exist_ok=True)
    (src / "etcd" / "main.go").write_text(_ETCD_MAIN, encoding="utf-8")
    (src / "tools.go").write_text(_TOOLS_GO, encoding="utf-8")
    (src / "go.mod").write_text("module klagkube\n\ngo 1.26.0\n", encoding="utf-8")
    staging = staging_version()
    replaces = "".join(f"\t{m} => {m} {staging}\n" for m in _staging_modules(go, src))
    (src / "go.mod").write_text(
        "// Generated by devtools/kube.py: kube-apiserver, kubectl and etcd of one release.\n"
        f"module klagkube\n\ngo 1.26.0\n\nrequire k8s.io/kubernetes {KUBERNETES_VERSION}\n\n"
        f"replace (\n{replaces})\n",
        encoding="utf-8",
    )
    (src / "go.sum").unlink(missing_ok=True)


_CRDGEN_TOOLS_GO = """\
//go:build tools

// Package tools keeps controller-gen and the Prometheus Operator's API types in go.mod.
package tools

import (
\t_ "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
\t_ "sigs.k8s.io/controller-tools/cmd/controller-gen"
)
"""
_MONITORING = "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring"


def _generate_crds(go: str, root: Path) -> None:
    """The Prometheus Operator's CRDs, generated as it generates them: controller-gen over its
    ``monitoring/v1`` Go types (no manifest is downloadable here; the types are a Go module)."""
    src = root / "crdgen"
    src.mkdir(parents=True, exist_ok=True)
    (src / "tools.go").write_text(_CRDGEN_TOOLS_GO, encoding="utf-8")
    (src / "go.mod").write_text(
        "// Generated by devtools/kube.py: the Prometheus Operator CRDs.\n"
        "module klagcrdgen\n\ngo 1.26.0\n\nrequire (\n"
        f"\t{_MONITORING} {PROMETHEUS_OPERATOR_VERSION}\n"
        f"\tsigs.k8s.io/controller-tools {CONTROLLER_TOOLS_VERSION}\n)\n",
        encoding="utf-8",
    )
    (src / "go.sum").unlink(missing_ok=True)
    _run([go, "mod", "tidy"], src, RESOLVE_TIMEOUT_SECONDS)
    generator = src / "controller-gen"
    _run(
        [
            go,
            "build",
            "-p",
            GO_BUILD_PARALLELISM,
            "-o",
            str(generator),
            "sigs.k8s.io/controller-tools/cmd/controller-gen",
        ],
        src,
        BUILD_TIMEOUT_SECONDS,
    )
    out = root / "crds"
    shutil.rmtree(out, ignore_errors=True)
    _run(
        [str(generator), "crd:crdVersions=v1", f"paths={_MONITORING}/v1", f"output:crd:dir={out}"],
        src,
        RESOLVE_TIMEOUT_SECONDS,
    )
    for plural in CRDS:
        if not (out / f"monitoring.coreos.com_{plural}.yaml").is_file():
            raise KubeBuildError(f"controller-gen made no {plural} CRD in {out}")


def _resolved_etcd(go: str, src: Path) -> str:
    return _run(
        [go, "list", "-m", "-f", "{{.Version}}", "go.etcd.io/etcd/server/v3"],
        src,
        RESOLVE_TIMEOUT_SECONDS,
    ).strip()


def install(force: bool = False) -> bool:
    """Build the binaries unless the stamp says they are there; True when it built."""
    root = kube_dir()
    if not force and _is_current() and all((root / "bin" / b).is_file() for b in BINARIES):
        print(f"kube: kube-apiserver, kubectl, etcd {KUBERNETES_VERSION} and CRDs cached in {root}")
        return False
    go = _go()
    src, out = root / "src", root / "bin"
    total, began_all = 4, time.monotonic()
    began = _step(
        1,
        total,
        f"resolving k8s.io/kubernetes {KUBERNETES_VERSION} and its staging "
        f"modules at {staging_version()} (go mod tidy)",
    )
    _write_module(go, src)
    _run([go, "mod", "tidy"], src, RESOLVE_TIMEOUT_SECONDS)
    etcd = _resolved_etcd(go, src)
    if etcd != ETCD_VERSION:
        raise KubeBuildError(
            f"k8s.io/kubernetes {KUBERNETES_VERSION} resolved etcd {etcd}, "
            f"expected {ETCD_VERSION}: update ETCD_VERSION after checking it"
        )
    _done(1, total, began)
    began = _step(
        2,
        total,
        f"building {', '.join(BINARIES)} (go build -p {GO_BUILD_PARALLELISM};"
        " about 10-15 minutes on two cold cores, seconds when Go's build cache is warm)",
    )
    out.mkdir(parents=True, exist_ok=True)
    (root / "stamp").unlink(missing_ok=True)
    _run(
        [
            go,
            "build",
            "-p",
            GO_BUILD_PARALLELISM,
            "-ldflags",
            LDFLAGS,
            "-o",
            str(out) + os.sep,
            *PACKAGES,
        ],
        src,
        BUILD_TIMEOUT_SECONDS,
    )
    _done(2, total, began)
    began = _step(3, total, "checking the binaries' versions")
    for name, argv in (
        ("kube-apiserver", ["--version"]),
        ("kubectl", ["version", "--client"]),
        ("etcd", ["--version"]),
    ):
        printed = _run([str(out / name), *argv], root, 60.0)
        expected = ETCD_VERSION.lstrip("v") if name == "etcd" else KUBERNETES_VERSION
        if expected not in printed:
            raise KubeBuildError(f"{name} printed {printed.strip()!r}, expected {expected}")
        print(f"  {name}: {printed.strip().splitlines()[0]}", flush=True)
    _done(3, total, began)
    began = _step(
        4,
        total,
        f"generating the {' and '.join(CRDS)} CRDs of the Prometheus Operator "
        f"{PROMETHEUS_OPERATOR_VERSION} (controller-gen {CONTROLLER_TOOLS_VERSION})",
    )
    _generate_crds(go, root)
    _done(4, total, began)
    (root / "stamp").write_text(_spec() + "\n", encoding="utf-8")
    print(f"kube: built in {time.monotonic() - began_all:.0f}s into {out}", flush=True)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.kube",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    install_cmd = commands.add_parser("install", help="build the binaries unless cached")
    install_cmd.add_argument("--force", action="store_true", help="build even when cached")
    path_cmd = commands.add_parser("path", help="print a binary's path (exit 1 if not built)")
    path_cmd.add_argument("name", choices=BINARIES)
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            install(force=args.force)
        else:
            print(binary(args.name))
    except KubeBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
