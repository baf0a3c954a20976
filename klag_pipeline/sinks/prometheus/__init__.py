"""The Prometheus sink (``/metrics``): :mod:`.render` spells the compatibility families from the
metric catalog, :mod:`.sink` keeps the pre-rendered body and answers scrapes. The names below are
this package's public surface (``app``, ``http``, ``output`` and the tests import them from here).
"""

from klag_pipeline.exposition import (
    escape_label_value,
    format_value,
    wants_gzip,
    wants_openmetrics,
)
from klag_pipeline.sinks.prometheus.render import render_cluster, render_snapshots
from klag_pipeline.sinks.prometheus.sink import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    PrometheusSink,
)

__all__ = [
    "OPENMETRICS_CONTENT_TYPE",
    "TEXT_CONTENT_TYPE",
    "PrometheusSink",
    "escape_label_value",
    "format_value",
    "render_cluster",
    "render_snapshots",
    "wants_gzip",
    "wants_openmetrics",
]
