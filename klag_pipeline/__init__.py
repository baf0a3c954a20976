"""klag-pipeline: Kafka consumer-group lag exporter (offset lag, exact time lag, data loss)."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    __version__: str

__all__ = ["__version__", "package_version"]


@cache
def package_version() -> str:
    """The installed distribution's version (``[project].version`` of pyproject.toml).

    Read on first use, not at import: ``importlib.metadata`` (with the ``email`` and ``zipfile``
    packages it imports) is ~40-60 ms of imports on its own, which ``check`` and ``once`` never
    need; ``run`` reads it for the build info once aiohttp (which shares ``email``) is loaded,
    where it costs ~9 ms."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("klag-pipeline")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0+unknown"


def __getattr__(name: str) -> str:
    # ``klag_pipeline.__version__`` stays the public spelling; it is computed when first read.
    if name == "__version__":
        return package_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
