"""``python -m build`` makes an sdist and a wheel that contain what they should, and the wheel
installs into a fresh virtualenv whose ``klag-pipeline --version`` prints the package version.

The fresh install pulls the runtime dependencies from the package index like a user's
``pip install`` would (pip's cache keeps repeat runs quick).
"""

from __future__ import annotations

import email.parser
import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from tests.release import REPO_ROOT, package_version

BUILD_TIMEOUT_SECONDS = 240
INSTALL_TIMEOUT_SECONDS = 240

_FORBIDDEN_PARTS = frozenset(
    {
        "tests",
        ".git",
        ".github",
        ".venv",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".hypothesis",
        "build",
        "dist",
        "kafka-data",
        "bench",
    }
)
_FORBIDDEN_SUFFIXES = frozenset({".pyc", ".pyo", ".pem", ".key", ".jks", ".keytab", ".tmp"})


@dataclass(frozen=True)
class Dist:
    sdist: Path
    wheel: Path


def _clean_env() -> dict[str, str]:
    # Nothing from the development virtualenv may leak into the build or the fresh install.
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(argv: list[str], *, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(
        argv,
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert completed.returncode == 0, (
        f"`{' '.join(argv)}` exited {completed.returncode}\n{completed.stdout}\n{completed.stderr}"
    )
    return completed


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    outdir = tmp_path_factory.mktemp("dist")
    _run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(outdir), "."],
        cwd=REPO_ROOT,
        timeout=BUILD_TIMEOUT_SECONDS,
    )
    sdists = sorted(outdir.glob("*.tar.gz"))
    wheels = sorted(outdir.glob("*.whl"))
    assert len(sdists) == 1, sdists
    assert len(wheels) == 1, wheels
    return Dist(sdist=sdists[0], wheel=wheels[0])


def _sdist_members(sdist: Path) -> list[PurePosixPath]:
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    top = f"klag_pipeline-{package_version()}"
    assert all(name == top or name.startswith(f"{top}/") for name in names), names
    return [PurePosixPath(name).relative_to(top) for name in names if name != top]


def _unwanted(members: list[PurePosixPath]) -> list[str]:
    return sorted(
        str(member)
        for member in members
        if _FORBIDDEN_PARTS & set(member.parts) or member.suffix in _FORBIDDEN_SUFFIXES
    )


def test_artifacts_are_named_for_the_package_version(dist: Dist) -> None:
    version = package_version()
    assert dist.sdist.name == f"klag_pipeline-{version}.tar.gz"
    assert dist.wheel.name == f"klag_pipeline-{version}-py3-none-any.whl"


def test_sdist_has_license_readme_and_sources(dist: Dist) -> None:
    members = {str(m) for m in _sdist_members(dist.sdist)}
    expected = {
        "LICENSE",
        "README.md",
        "CHANGELOG.md",
        "pyproject.toml",
        "PKG-INFO",
        "klag_pipeline/__init__.py",
        "klag_pipeline/__main__.py",
        "klag_pipeline/cli.py",
        "klag_pipeline/py.typed",
    }
    assert expected <= members, sorted(expected - members)


def test_sdist_has_no_tests_caches_or_local_state(dist: Dist) -> None:
    assert _unwanted(_sdist_members(dist.sdist)) == []


def test_the_unwanted_filter_catches_what_it_should() -> None:
    members = [
        PurePosixPath(p)
        for p in (
            "klag_pipeline/lag.py",
            "tests/unit/test_lag.py",
            "klag_pipeline/__pycache__/lag.cpython-311.pyc",
            ".venv/bin/python",
            "config/tls/client.pem",
            ".hypothesis/examples/x",
        )
    ]
    assert _unwanted(members) == [
        ".hypothesis/examples/x",
        ".venv/bin/python",
        "config/tls/client.pem",
        "klag_pipeline/__pycache__/lag.cpython-311.pyc",
        "tests/unit/test_lag.py",
    ]


def test_wheel_holds_only_the_package_and_its_metadata(dist: Dist) -> None:
    version = package_version()
    info = f"klag_pipeline-{version}.dist-info"
    with zipfile.ZipFile(dist.wheel) as archive:
        names = archive.namelist()
        metadata = email.parser.Parser().parsestr(archive.read(f"{info}/METADATA").decode())
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    members = [PurePosixPath(n) for n in names]
    assert {m.parts[0] for m in members} == {"klag_pipeline", info}
    assert _unwanted(members) == []
    assert "klag_pipeline/py.typed" in names
    assert f"{info}/licenses/LICENSE" in names
    assert metadata["Name"] == "klag-pipeline"
    assert metadata["Version"] == version
    assert metadata["License-Expression"] == "Apache-2.0"
    assert "klag-pipeline = klag_pipeline.cli:main" in entry_points


def test_wheel_installs_into_a_fresh_venv_and_reports_its_version(
    dist: Dist, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, timeout=120)
    _run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(dist.wheel)],
        cwd=tmp_path,
        timeout=INSTALL_TIMEOUT_SECONDS,
    )
    # Run outside the repository so that only the installed copy can be imported.
    located = _run(
        [str(venv / "bin" / "python"), "-c", "import klag_pipeline; print(klag_pipeline.__file__)"],
        cwd=tmp_path,
        timeout=60,
    )
    assert Path(located.stdout.strip()).is_relative_to(venv)
    completed = _run([str(venv / "bin" / "klag-pipeline"), "--version"], cwd=tmp_path, timeout=60)
    assert package_version() in completed.stdout.split(), completed.stdout
