"""How a cluster's :class:`~klag_pipeline.kafka.port.ClusterClient` is built.

Shared by the exporter (``klag_pipeline.app``) and the one-shot commands
(``klag_pipeline.commands``); tests pass their own factory to either. Likewise the
:class:`~klag_pipeline.kafka.membership.GroupMembership` the ``kafka`` leadership provider and
sharding use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from klag_pipeline.kafka.membership import GroupMembership, MembershipTiming
from klag_pipeline.kafka.port import ClusterClient, RequestObserver
from klag_pipeline.kafka.protocol.membership import LEADER_PROTOCOL, GroupProtocol
from klag_pipeline.settings.schema import ClusterSettings, ExporterSettings, PerformanceSettings

ClientFactory = Callable[[ClusterSettings, ExporterSettings, RequestObserver], ClusterClient]
MembershipFactory = Callable[
    [ClusterSettings, str, MembershipTiming, PerformanceSettings, GroupProtocol], GroupMembership
]


def default_client_factory(
    cluster: ClusterSettings, exporter: ExporterSettings, observer: RequestObserver
) -> ClusterClient:
    # Imported here: aiokafka is a heavy import that ``check`` without ``--connect`` never needs.
    from klag_pipeline.kafka.adapter import AiokafkaClusterClient

    return AiokafkaClusterClient(
        cluster, exporter.performance, observer, sampling=exporter.timestamp_sampling
    )


def default_membership_factory(
    cluster: ClusterSettings,
    group: str,
    timing: MembershipTiming,
    performance: PerformanceSettings,
    protocol: GroupProtocol = LEADER_PROTOCOL,
    *,
    transport_factory: Callable[..., Any] | None = None,
) -> GroupMembership:
    """Membership of ``group`` over the adapter's Transport (tests may pass a Transport
    subclass as ``transport_factory``)."""
    from klag_pipeline.kafka.adapter.membership import KafkaGroupMembership
    from klag_pipeline.kafka.adapter.transport import Transport

    return KafkaGroupMembership(
        cluster,
        group,
        timing,
        performance,
        protocol,
        transport_factory=transport_factory or Transport,
    )
