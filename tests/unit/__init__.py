"""Unit tests: no Kafka, no network."""
