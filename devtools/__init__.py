"""Developer tooling that is not part of the installed ``klag_pipeline`` package."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache(variable: str, name: str) -> Path:
    """Where a heavy artefact is cached: ``$<variable>`` if set, else
    ``~/.cache/klag-pipeline/<name>`` (kept between runs and clones; docs/kafka-local.md)."""
    configured = os.environ.get(variable)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "klag-pipeline" / name
