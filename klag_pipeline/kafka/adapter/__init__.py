"""The aiokafka implementation of :class:`klag_pipeline.kafka.port.ClusterClient`."""

from klag_pipeline.kafka.adapter.client import AiokafkaClusterClient

__all__ = ["AiokafkaClusterClient"]
