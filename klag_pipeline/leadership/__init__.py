"""Active-passive high availability (SPEC §8).

* :mod:`~klag_pipeline.leadership.provider`: the provider port and the errors (what providers
  import);
* :mod:`~klag_pipeline.leadership.elector`: the election loop and its timing contract;
* :mod:`~klag_pipeline.leadership.gate`: the standby gate in front of the pipeline;
* :mod:`~klag_pipeline.leadership.kubernetes` and :mod:`~klag_pipeline.leadership.kafka`: the
  two providers, built by :func:`build_provider`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping

from klag_pipeline.leadership.elector import LeaderElector, LeadershipObserver, Transition
from klag_pipeline.leadership.gate import StandbyGate
from klag_pipeline.leadership.provider import LeadershipError, LeadershipProvider, NotLeader
from klag_pipeline.settings.schema import LeadershipSettings, Settings, ShardingSettings

__all__ = [
    "LeaderElector",
    "LeadershipError",
    "LeadershipObserver",
    "LeadershipProvider",
    "NotLeader",
    "StandbyGate",
    "Transition",
    "build_provider",
    "resolve_identity",
]


def resolve_identity(
    settings: LeadershipSettings | ShardingSettings, env: Mapping[str, str] = os.environ
) -> str:
    """``identity`` if configured, else ``POD_NAME``, ``HOSTNAME``, or a random name.

    Two instances with the same identity would both believe they hold a Kubernetes Lease: set
    ``identity`` when several instances share a host name.
    """
    for candidate in (settings.identity, env.get("POD_NAME"), env.get("HOSTNAME")):
        if candidate:
            return candidate
    return f"klag-pipeline-{secrets.token_hex(4)}"


def build_provider(settings: Settings, identity: str) -> LeadershipProvider:
    """The provider ``[exporter.leadership] provider`` names, configured but not connected."""
    # Imported here: only the configured provider's dependencies are loaded.
    leadership = settings.exporter.leadership
    if leadership.provider == "kafka":
        from klag_pipeline.leadership.kafka import KafkaGroupProvider

        name = leadership.cluster or settings.clusters[0].name
        cluster = next(c for c in settings.clusters if c.name == name)
        return KafkaGroupProvider(
            cluster, leadership, identity, performance=settings.exporter.performance
        )
    from klag_pipeline.leadership.kubernetes import KubernetesLeaseProvider

    return KubernetesLeaseProvider(leadership, identity)
