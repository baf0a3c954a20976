"""The project's error hierarchy.

Foreign exceptions (aiokafka, aiohttp, OS errors, dynaconf) are translated into these at the
boundary where the foreign library lives, with ``raise ... from exc``.
"""

from __future__ import annotations


class KlagError(Exception):
    """Base class of every error klag-pipeline raises on purpose."""


class ConfigError(KlagError):
    """Invalid settings. Carries every problem found, each with its dotted path."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems: tuple[tuple[str, str], ...] = tuple(problems)
        super().__init__("\n".join(f"{path}: {message}" for path, message in self.problems))


class KafkaError(KlagError):
    """A failure talking to a Kafka cluster."""

    def __init__(self, message: str, *, broker: str | None = None, retriable: bool = True) -> None:
        self.broker = broker
        self.retriable = retriable
        super().__init__(message)


class KafkaConnectionError(KafkaError):
    """A broker could not be reached (DNS, refused, TLS handshake, timeout)."""


class KafkaAuthError(KafkaError):
    """Authentication or authorization failed (wrong credentials, unknown mechanism, ACLs)."""

    def __init__(self, message: str, *, broker: str | None = None, mechanism: str = "") -> None:
        self.mechanism = mechanism
        super().__init__(message, broker=broker, retriable=False)


class KafkaTimeoutError(KafkaError):
    """A request did not get an answer within its deadline."""


class KafkaProtocolError(KafkaError):
    """A broker answered with something we cannot decode or that violates the protocol."""


class KafkaResponseError(KafkaError):
    """A broker answered a whole request with a Kafka error code."""

    def __init__(self, message: str, *, code: int, broker: str | None = None) -> None:
        self.code = code
        super().__init__(message, broker=broker)


class SinkError(KlagError):
    """A sink could not deliver (OTLP receiver down, broken pipe, disk full)."""
