"""One version everywhere: pyproject.toml, the changelog, the Helm chart, the image, the CLI.

The checks are plain functions over a repository root, so each is also run against a deliberately
inconsistent copy: a check that cannot fail proves nothing.
"""

from __future__ import annotations

import datetime
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.version import InvalidVersion, Version

import klag_pipeline
from tests.release import REPO_ROOT, package_version

CHART_YAML = Path("helm/klag-pipeline/Chart.yaml")
CHANGELOG = Path("CHANGELOG.md")
DOCKERFILE = Path("Dockerfile")
RELEASE_WORKFLOW = Path(".github/workflows/release.yml")

_UNRELEASED_HEADING = "## [Unreleased]"
_RELEASE_HEADING = re.compile(r"^## \[(?P<version>[^\]]+)\] - (?P<date>\d{4}-\d{2}-\d{2})$")
_LINK_REFERENCE = re.compile(r"^\[(?P<label>[^\]]+)\]: \S+$")
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
_IMAGE_VERSION_LABEL = "org.opencontainers.image.version"


@dataclass(frozen=True)
class Release:
    version: Version
    date: datetime.date


def changelog_releases(text: str) -> tuple[list[Release], list[str]]:
    """Released entries, newest first, and every way ``text`` departs from Keep a Changelog."""
    problems: list[str] = []
    releases: list[Release] = []
    links = {m["label"] for line in text.splitlines() if (m := _LINK_REFERENCE.match(line))}
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    for index, heading in enumerate(headings):
        if heading == _UNRELEASED_HEADING:
            if index != 0:
                problems.append(f"{heading!r} must be the first section, above every release")
            if "Unreleased" not in links:
                problems.append("no link reference for [Unreleased]")
            continue
        match = _RELEASE_HEADING.match(heading)
        if match is None:
            problems.append(f"{heading!r} is not '## [X.Y.Z] - YYYY-MM-DD' or '## [Unreleased]'")
            continue
        try:
            release = Release(Version(match["version"]), datetime.date.fromisoformat(match["date"]))
        except (InvalidVersion, ValueError) as exc:
            problems.append(f"{heading!r}: {exc}")
            continue
        if match["version"] not in links:
            problems.append(f"no link reference for [{match['version']}]")
        if releases and not release.version < releases[-1].version:
            problems.append(f"{heading!r} is not older than [{releases[-1].version}] above it")
        if releases and release.date > releases[-1].date:
            problems.append(f"{heading!r} is dated after [{releases[-1].version}] above it")
        releases.append(release)
    if not releases:
        problems.append("no released version ('## [X.Y.Z] - YYYY-MM-DD')")
    return releases, problems


def version_disagreements(root: Path) -> list[str]:
    """Every place under ``root`` whose version differs from ``[project].version``."""
    version = package_version(root)
    problems: list[str] = []

    chart_path = root / CHART_YAML
    if not chart_path.is_file():
        problems.append(f"{CHART_YAML} is missing (the Helm chart must carry the version)")
    else:
        chart = yaml.safe_load(chart_path.read_text(encoding="utf-8"))
        for key in ("version", "appVersion"):
            # YAML reads an unquoted 1.0 as a float: compare the text a user would see.
            found = str(chart.get(key))
            if found != version:
                problems.append(f"{CHART_YAML} {key} is {found!r}, the package is {version!r}")

    releases, _ = changelog_releases((root / CHANGELOG).read_text(encoding="utf-8"))
    if releases and str(releases[0].version) != version:
        problems.append(
            f"{CHANGELOG}'s latest release is {str(releases[0].version)!r}, "
            f"the package is {version!r}"
        )
    return problems


def _dockerfile_instructions(text: str) -> list[str]:
    joined = re.sub(r"\\\n", " ", text)
    return [
        line.strip()
        for line in joined.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def dockerfile_version_problems(text: str, version: str, release_build_args: set[str]) -> list[str]:
    """Whether the image's version label is the package version (literally, or via a build arg
    that the release workflow sets from the tag)."""
    instructions = _dockerfile_instructions(text)
    arg_defaults: dict[str, str | None] = {}
    for instruction in instructions:
        if instruction.upper().startswith("ARG "):
            name, _, default = instruction[4:].strip().partition("=")
            arg_defaults[name.strip()] = default.strip().strip("\"'") if default else None
    label_values = [
        match.group(1)
        for instruction in instructions
        if instruction.upper().startswith("LABEL ")
        for match in re.finditer(
            re.escape(_IMAGE_VERSION_LABEL) + r"""=("[^"]*"|'[^']*'|\S+)""", instruction
        )
    ]
    if not label_values:
        return [f"{DOCKERFILE} sets no {_IMAGE_VERSION_LABEL} label"]
    problems: list[str] = []
    for raw in label_values:
        value = raw.strip("\"'")
        reference = re.fullmatch(r"\$\{?(\w+)\}?", value)
        if reference is None:
            if value != version:
                problems.append(
                    f"{DOCKERFILE} labels version {value!r}, the package is {version!r}"
                )
            continue
        arg = reference.group(1)
        if arg not in arg_defaults:
            problems.append(f"{DOCKERFILE} labels the version from ${arg}, which is no ARG")
            continue
        arg_default = arg_defaults[arg]
        if arg_default and re.match(r"\d", arg_default) and arg_default != version:
            problems.append(f"{DOCKERFILE} ARG {arg} defaults to {arg_default!r}, not {version!r}")
        if arg not in release_build_args:
            problems.append(f"{RELEASE_WORKFLOW} does not pass the build arg {arg} to the image")
    return problems


def release_build_args(workflow_text: str) -> set[str]:
    """Names of the build args the release workflow's build-push-action steps pass."""
    workflow = yaml.safe_load(workflow_text)
    names: set[str] = set()
    for job in workflow["jobs"].values():
        for step in job.get("steps", []):
            if str(step.get("uses", "")).startswith("docker/build-push-action@"):
                for line in str(step.get("with", {}).get("build-args", "")).splitlines():
                    if "=" in line:
                        names.add(line.split("=", 1)[0].strip())
    return names


# ----------------------------------------------------------------------------------------------
# The repository as it is


def test_package_version_is_plain_semver() -> None:
    # The image tags X.Y.Z, X.Y, X come from a semver tag; a PEP 440-only form would not parse.
    assert _SEMVER.match(package_version()), package_version()


def test_installed_package_reports_the_pyproject_version() -> None:
    # A stale editable install would report an older version; `make install` reinstalls on change.
    assert klag_pipeline.__version__ == package_version()


def test_chart_changelog_and_package_agree() -> None:
    assert version_disagreements(REPO_ROOT) == []


def test_changelog_follows_keep_a_changelog() -> None:
    releases, problems = changelog_releases((REPO_ROOT / CHANGELOG).read_text(encoding="utf-8"))
    assert problems == []
    assert releases


def test_dockerfile_labels_the_package_version() -> None:
    dockerfile = REPO_ROOT / DOCKERFILE
    assert dockerfile.is_file(), f"{DOCKERFILE} is missing"
    build_args = release_build_args((REPO_ROOT / RELEASE_WORKFLOW).read_text(encoding="utf-8"))
    problems = dockerfile_version_problems(
        dockerfile.read_text(encoding="utf-8"), package_version(), build_args
    )
    assert problems == []


def test_cli_version_prints_the_package_version() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "klag_pipeline", "--version"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert package_version() in completed.stdout.split(), completed.stdout


# ----------------------------------------------------------------------------------------------
# The checks catch what they are for


def _write_release_files(root: Path, *, package: str, chart: str, app: str, changelog: str) -> None:
    (root / "pyproject.toml").write_text(f'[project]\nversion = "{package}"\n', encoding="utf-8")
    (root / CHART_YAML).parent.mkdir(parents=True)
    (root / CHART_YAML).write_text(
        f"apiVersion: v2\nname: klag-pipeline\nversion: {chart}\nappVersion: {app}\n",
        encoding="utf-8",
    )
    (root / CHANGELOG).write_text(
        "# Changelog\n\n## [Unreleased]\n\n"
        f"## [{changelog}] - 2026-02-01\n\n## [0.0.1] - 2026-01-01\n\n"
        f"[Unreleased]: https://example.invalid/compare/v{changelog}...HEAD\n"
        f"[{changelog}]: https://example.invalid/v{changelog}\n"
        "[0.0.1]: https://example.invalid/v0.0.1\n",
        encoding="utf-8",
    )


def test_consistent_copy_has_no_disagreement(tmp_path: Path) -> None:
    _write_release_files(tmp_path, package="1.2.3", chart="1.2.3", app="1.2.3", changelog="1.2.3")
    assert version_disagreements(tmp_path) == []


@pytest.mark.parametrize(
    ("chart", "app", "changelog", "culprit"),
    [
        ("1.2.4", "1.2.3", "1.2.3", "Chart.yaml version"),
        ("1.2.3", "1.2.2", "1.2.3", "Chart.yaml appVersion"),
        ("1.2.3", "1.2.3", "1.2.2", "CHANGELOG.md's latest release is '1.2.2'"),
    ],
)
def test_a_disagreeing_copy_is_reported(
    tmp_path: Path, chart: str, app: str, changelog: str, culprit: str
) -> None:
    _write_release_files(tmp_path, package="1.2.3", chart=chart, app=app, changelog=changelog)
    problems = version_disagreements(tmp_path)
    assert len(problems) == 1
    assert culprit in problems[0]


def test_a_missing_chart_is_reported(tmp_path: Path) -> None:
    _write_release_files(tmp_path, package="1.2.3", chart="1.2.3", app="1.2.3", changelog="1.2.3")
    shutil.rmtree(tmp_path / "helm")
    assert version_disagreements(tmp_path) == [
        f"{CHART_YAML} is missing (the Helm chart must carry the version)"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "## [1.0.0] - 2026-01-01\n## [Unreleased]\n[Unreleased]: u\n[1.0.0]: u\n",
            "'## [Unreleased]' must be the first section",
        ),
        ("## [1.0.0] - 2026-01-01\n## [1.1.0] - 2025-01-01\n[1.0.0]: u\n[1.1.0]: u\n", "older"),
        ("## [1.1.0] - 2025-01-01\n## [1.0.0] - 2026-01-01\n[1.0.0]: u\n[1.1.0]: u\n", "dated"),
        ("## [1.0.0] - 2026-01-01\n", "no link reference for [1.0.0]"),
        ("## 1.0.0 (2026-01-01)\n", "is not '## [X.Y.Z] - YYYY-MM-DD'"),
        ("## [1.0.0] - 2026-13-01\n[1.0.0]: u\n", "month must be in 1..12"),
        ("## [Unreleased]\n[Unreleased]: u\n", "no released version"),
    ],
)
def test_changelog_departures_are_reported(text: str, expected: str) -> None:
    _, problems = changelog_releases(text)
    assert any(expected in problem for problem in problems), problems


_DOCKERFILE_FROM_ARG = """\
FROM python:3.11-slim AS runtime
ARG VERSION
LABEL org.opencontainers.image.title="klag-pipeline" \\
      org.opencontainers.image.version="${VERSION}"
"""


@pytest.mark.parametrize(
    ("text", "build_args", "expected"),
    [
        (_DOCKERFILE_FROM_ARG, {"VERSION"}, []),
        (
            _DOCKERFILE_FROM_ARG,
            set(),
            [f"{RELEASE_WORKFLOW} does not pass the build arg VERSION to the image"],
        ),
        (
            _DOCKERFILE_FROM_ARG.replace("ARG VERSION", "ARG VERSION=0.0.9"),
            {"VERSION"},
            [f"{DOCKERFILE} ARG VERSION defaults to '0.0.9', not '1.2.3'"],
        ),
        (
            _DOCKERFILE_FROM_ARG.replace('"${VERSION}"', "1.2.2"),
            set(),
            [f"{DOCKERFILE} labels version '1.2.2', the package is '1.2.3'"],
        ),
        (
            "FROM scratch\nLABEL a=b\n",
            set(),
            [f"{DOCKERFILE} sets no {_IMAGE_VERSION_LABEL} label"],
        ),
    ],
)
def test_dockerfile_version_label_check(
    text: str, build_args: set[str], expected: list[str]
) -> None:
    assert dockerfile_version_problems(text, "1.2.3", build_args) == expected
