"""The CI and release workflows: actionlint-clean, and shaped the way the release process needs.

actionlint (with its shellcheck integration) is a pinned tool that ``make tools`` installs; see
devtools/tools.py. The release workflow's shell steps that decide something (does the tag match
the package version, which changelog entry becomes the release notes) are run here as GitHub would
run them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools import tools
from tests.release import REPO_ROOT, package_version

WORKFLOWS = REPO_ROOT / ".github" / "workflows"
CI = WORKFLOWS / "ci.yml"
RELEASE = WORKFLOWS / "release.yml"

_PINNED_REF = re.compile(r"^(v\d+|[0-9a-f]{40}|release/v\d+)$")
"""A major version tag, a full commit SHA, or pypa's documented major-version branch."""

_TOOL_TIMEOUT_SECONDS = 60


def _find_tool(name: str) -> Path | None:
    installed = tools.bin_dir() / name
    if installed.is_file() and os.access(installed, os.X_OK):
        return installed
    found = shutil.which(name)
    return Path(found) if found else None


@pytest.fixture(scope="module")
def actionlint() -> Path:
    path = _find_tool("actionlint")
    if path is None:
        pytest.fail(
            f"actionlint is not installed in {tools.bin_dir()} nor on PATH: run `make tools`",
            pytrace=False,
        )
    return path


def _run_actionlint(actionlint: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    shellcheck = _find_tool("shellcheck")
    return subprocess.run(
        [
            str(actionlint),
            "-no-color",
            f"-shellcheck={shellcheck or ''}",
            # pyflakes only matters for `shell: python` steps, which we do not have; disabling it
            # keeps the result independent of what happens to be on PATH.
            "-pyflakes=",
            *(str(f) for f in files),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=_TOOL_TIMEOUT_SECONDS,
        check=False,
    )


def _load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    # YAML 1.1 reads the key `on` as the boolean True.
    if True in document:
        document["on"] = document.pop(True)
    return document


def _steps(workflow: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for job_id, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            yield job_id, step


def _uses(step: dict[str, Any], action: str) -> bool:
    return str(step.get("uses", "")).startswith(f"{action}@")


def _jobs_using(workflow: dict[str, Any], action: str) -> list[str]:
    return sorted({job_id for job_id, step in _steps(workflow) if _uses(step, action)})


def _step_with_id(workflow: dict[str, Any], step_id: str) -> dict[str, Any]:
    matches = [step for _, step in _steps(workflow) if step.get("id") == step_id]
    assert len(matches) == 1, f"expected one step with id {step_id!r}"
    return matches[0]


def _run_step(
    step: dict[str, Any], cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    # How GitHub runs a `run:` step on Linux; python3 is the interpreter running this test (≥3.11).
    script = cwd / "step.sh"
    script.write_text(step["run"], encoding="utf-8")
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
        cwd=cwd,
        env={"PATH": path, "HOME": str(cwd), **env},
        capture_output=True,
        text=True,
        timeout=_TOOL_TIMEOUT_SECONDS,
        check=False,
    )


# ----------------------------------------------------------------------------------------------
# actionlint


def test_workflows_pass_actionlint(actionlint: Path) -> None:
    completed = _run_actionlint(actionlint, CI, RELEASE)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_actionlint_reports_expression_and_shell_mistakes(actionlint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\n"
        "jobs:\n"
        "  build:\n"
        "    runs-on: ubuntu-24.04\n"
        "    steps:\n"
        "      - run: echo '${{ steps.missing.outputs.value }}'\n"
        "      - run: rm -rf $TARGET/*\n",
        encoding="utf-8",
    )
    completed = _run_actionlint(actionlint, broken)
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert 'property "missing" is not defined' in completed.stdout
    if _find_tool("shellcheck") is not None:
        assert "SC2115" in completed.stdout, completed.stdout


# ----------------------------------------------------------------------------------------------
# Both workflows


@pytest.mark.parametrize("path", [CI, RELEASE], ids=lambda p: p.name)
def test_actions_are_pinned_to_a_major_version_or_a_sha(path: Path) -> None:
    workflow = _load(path)
    refs = [str(step["uses"]) for _, step in _steps(workflow) if "uses" in step]
    refs += [str(job["uses"]) for job in workflow["jobs"].values() if "uses" in job]
    unpinned = [
        ref for ref in refs if not ref.startswith("./") and not _PINNED_REF.match(ref.split("@")[1])
    ]
    assert refs
    assert unpinned == []


# ----------------------------------------------------------------------------------------------
# CI


def test_ci_runs_on_push_and_pull_request_and_can_be_called() -> None:
    triggers = _load(CI)["on"]
    assert {"push", "pull_request", "workflow_call"} <= set(triggers)


def test_ci_runs_the_readme_commands() -> None:
    runs = [str(step.get("run", "")) for _, step in _steps(_load(CI))]
    assert any(re.search(r"^make test$", run, re.MULTILINE) for run in runs), runs
    assert any(re.search(r"python -m build\b", run) for run in runs), runs
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert "make test" in readme


def test_ci_caches_kafka_jars_tools_and_pip() -> None:
    workflow = _load(CI)
    cached_paths = {
        line.strip()
        for _, step in _steps(workflow)
        if _uses(step, "actions/cache")
        for line in str(step["with"]["path"]).splitlines()
    }
    assert "~/.cache/klag-pipeline" in cached_paths
    pip_by_setup_python = any(
        _uses(step, "actions/setup-python") and step.get("with", {}).get("cache") == "pip"
        for _, step in _steps(workflow)
    )
    assert pip_by_setup_python or "~/.cache/pip" in cached_paths


# ----------------------------------------------------------------------------------------------
# Release


def test_release_runs_on_version_tags_only() -> None:
    assert _load(RELEASE)["on"] == {"push": {"tags": ["v*"]}}


def test_release_runs_the_whole_ci_before_publishing() -> None:
    jobs = _load(RELEASE)["jobs"]
    assert jobs["ci"]["uses"] == "./.github/workflows/ci.yml"
    assert jobs["ci"]["needs"] == "version"

    def ancestors(job_id: str) -> set[str]:
        needs = jobs[job_id].get("needs", [])
        direct = {needs} if isinstance(needs, str) else set(needs)
        return direct.union(*(ancestors(n) for n in direct))

    for job_id in ("image", "chart", "pypi", "github-release"):
        assert {"version", "ci"} <= ancestors(job_id), job_id
    # PyPI never takes a version twice: it goes after everything that can be retried.
    assert {"image", "chart"} <= ancestors("pypi")


def test_pypi_uses_trusted_publishing_of_the_ci_artifacts() -> None:
    release, ci = _load(RELEASE), _load(CI)
    [job_id] = _jobs_using(release, "pypa/gh-action-pypi-publish")
    job = release["jobs"][job_id]
    assert job["permissions"] == {"id-token": "write"}
    publish = next(s for s in job["steps"] if _uses(s, "pypa/gh-action-pypi-publish"))
    assert "password" not in publish.get("with", {})
    uploaded = {
        step["with"]["name"] for _, step in _steps(ci) if _uses(step, "actions/upload-artifact")
    }
    downloaded = [
        step["with"]["name"] for step in job["steps"] if _uses(step, "actions/download-artifact")
    ]
    assert downloaded
    assert set(downloaded) <= uploaded


def test_image_is_multi_arch_with_semver_tags() -> None:
    release = _load(RELEASE)
    [job_id] = _jobs_using(release, "docker/build-push-action")
    job = release["jobs"][job_id]
    assert job["permissions"]["packages"] == "write"
    for action in ("docker/setup-qemu-action", "docker/setup-buildx-action", "docker/login-action"):
        assert any(_uses(step, action) for step in job["steps"]), action
    login = next(s for s in job["steps"] if _uses(s, "docker/login-action"))
    assert login["with"]["registry"] == "ghcr.io"
    meta = next(s for s in job["steps"] if _uses(s, "docker/metadata-action"))
    tags = {line.strip() for line in meta["with"]["tags"].splitlines() if line.strip()}
    assert tags == {
        "type=semver,pattern={{version}}",
        "type=semver,pattern={{major}}.{{minor}}",
        "type=semver,pattern={{major}}",
    }
    assert "latest=auto" in meta["with"]["flavor"]
    assert str(meta["with"]["images"]).startswith("ghcr.io/")
    build = next(s for s in job["steps"] if _uses(s, "docker/build-push-action"))
    assert set(build["with"]["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert build["with"]["push"] is True
    assert build["with"]["tags"] == "${{ steps.meta.outputs.tags }}"


def test_chart_is_packaged_with_the_tag_version_and_pushed_to_oci() -> None:
    release = _load(RELEASE)
    job = release["jobs"]["chart"]
    assert job["permissions"]["packages"] == "write"
    assert job["env"]["VERSION"] == "${{ needs.version.outputs.version }}"
    script = "\n".join(str(step.get("run", "")) for step in job["steps"])
    package = re.search(r"^helm package .*$", script, re.MULTILINE)
    assert package is not None, script
    assert '--version "${VERSION}"' in package.group(0)
    assert '--app-version "${VERSION}"' in package.group(0)
    assert re.search(r'^\s*helm push "\S+" "oci://ghcr\.io/', script, re.MULTILINE), script


def test_release_helm_is_the_helm_the_tests_use() -> None:
    [setup] = [s for _, s in _steps(_load(RELEASE)) if _uses(s, "azure/setup-helm")]
    assert setup["with"]["version"] == tools.HELM_VERSION


def test_github_release_attaches_packages_and_chart() -> None:
    job = _load(RELEASE)["jobs"]["github-release"]
    assert job["permissions"] == {"contents": "write"}
    script = "\n".join(str(step.get("run", "")) for step in job["steps"])
    assert "gh release create" in script
    assert "dist/*" in script
    assert "chart/*.tgz" in script


def test_tag_check_accepts_the_package_version(tmp_path: Path) -> None:
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path)
    output = tmp_path / "github_output"
    step = _step_with_id(_load(RELEASE), "check")
    completed = _run_step(
        step,
        tmp_path,
        {"GITHUB_REF_NAME": f"v{package_version()}", "GITHUB_OUTPUT": str(output)},
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert output.read_text(encoding="utf-8") == f"version={package_version()}\n"


@pytest.mark.parametrize("tag", ["v99.0.0", "v0.1", "0.1.0-rc.1"])
def test_tag_check_rejects_any_other_tag(tmp_path: Path, tag: str) -> None:
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path)
    output = tmp_path / "github_output"
    step = _step_with_id(_load(RELEASE), "check")
    completed = _run_step(step, tmp_path, {"GITHUB_REF_NAME": tag, "GITHUB_OUTPUT": str(output)})
    assert completed.returncode == 1
    assert completed.stdout.startswith("::error file=pyproject.toml::"), completed.stdout
    assert not output.exists()


def test_release_notes_are_the_changelog_entry(tmp_path: Path) -> None:
    (tmp_path / "CHANGELOG.md").write_text(
        "# Changelog\n\n## [Unreleased]\n\n- not yet\n\n"
        "## [1.1.0] - 2026-02-01\n\n### Fixed\n\n- the thing\n\n"
        "## [1.0.0] - 2026-01-01\n\n- first\n\n"
        "[Unreleased]: https://example.invalid/compare/v1.1.0...HEAD\n"
        "[1.1.0]: https://example.invalid/v1.1.0\n",
        encoding="utf-8",
    )
    step = _step_with_id(_load(RELEASE), "notes")

    newest = _run_step(step, tmp_path, {"VERSION": "1.1.0"})
    assert newest.returncode == 0, newest.stdout + newest.stderr
    assert (tmp_path / "release-notes.md").read_text(encoding="utf-8").strip() == (
        "### Fixed\n\n- the thing"
    )

    oldest = _run_step(step, tmp_path, {"VERSION": "1.0.0"})
    assert oldest.returncode == 0, oldest.stdout + oldest.stderr
    assert (tmp_path / "release-notes.md").read_text(encoding="utf-8").strip() == "- first"

    missing = _run_step(step, tmp_path, {"VERSION": "1.0"})
    assert missing.returncode == 1
    assert "::error file=CHANGELOG.md::no entry for 1.0" in missing.stdout


def test_release_notes_of_the_current_version_are_not_empty(tmp_path: Path) -> None:
    shutil.copy(REPO_ROOT / "CHANGELOG.md", tmp_path)
    step = _step_with_id(_load(RELEASE), "notes")
    completed = _run_step(step, tmp_path, {"VERSION": package_version()})
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert (tmp_path / "release-notes.md").read_text(encoding="utf-8").strip()
