"""klag-pipeline: Kafka consumer-group lag exporter (offset lag, exact time lag, data loss)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("klag-pipeline")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
