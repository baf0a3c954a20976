"""Release engineering checks: one version everywhere, buildable packages, valid workflows."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def package_version(root: Path = REPO_ROOT) -> str:
    """``[project].version`` of ``pyproject.toml``: the single source of truth for the version."""
    with (root / "pyproject.toml").open("rb") as handle:
        version = tomllib.load(handle)["project"]["version"]
    assert isinstance(version, str)
    return version
