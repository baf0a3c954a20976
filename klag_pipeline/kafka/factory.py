"""How a cluster's :class:`~klag_pipeline.kafka.port.ClusterClient` is built.

Shared by the exporter (``klag_pipeline.app``) and the one-shot commands
(``klag_pipeline.commands``); tests pass their own factory to either.
"""

from __future__ import annotations

from collections.abc import Callable

from klag_pipeline.kafka.port import ClusterClient, RequestObserver
from klag_pipeline.settings.schema import ClusterSettings, ExporterSettings

ClientFactory = Callable[[ClusterSettings, ExporterSettings, RequestObserver], ClusterClient]


def default_client_factory(
    cluster: ClusterSettings, exporter: ExporterSettings, observer: RequestObserver
) -> ClusterClient:
    # Imported here: aiokafka is a heavy import that ``check`` without ``--connect`` never needs.
    from klag_pipeline.kafka.adapter import AiokafkaClusterClient

    return AiokafkaClusterClient(
        cluster, exporter.performance, observer, sampling=exporter.timestamp_sampling
    )
