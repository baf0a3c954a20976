"""DescribeConfigs (v1..v4; v4 flexible): one topic setting (``cleanup.policy``) per topic.

Only what the timestamp cache needs is kept: per topic, its error code and the value of each
asked-for configuration key. Synonyms and documentation are never asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from klag_pipeline.kafka.protocol.primitives import Reader, Writer
from klag_pipeline.kafka.protocol.versions import DESCRIBE_CONFIGS

TOPIC_RESOURCE = 2
"""ConfigResource type of a topic."""


@dataclass(frozen=True, slots=True)
class DescribedConfigs:
    resource_name: str
    error_code: int
    values: Mapping[str, str | None]


@dataclass(frozen=True, slots=True)
class DescribeConfigsResponse:
    throttle_ms: int
    results: tuple[DescribedConfigs, ...]
    error_code: int = 0  # none at the top level; errors are per resource


def encode_describe_configs(version: int, topics: Sequence[str], keys: Sequence[str]) -> bytes:
    w = Writer(DESCRIBE_CONFIGS.flexible(version))
    w.array_length(len(topics))
    for topic in topics:
        w.int8(TOPIC_RESOURCE)
        w.string(topic)
        w.strings(list(keys))
        w.tags()
    w.boolean(False)  # include_synonyms (v1+)
    if version >= 3:
        w.boolean(False)  # include_documentation
    w.tags()
    return w.getvalue()


def decode_describe_configs(version: int, data: bytes) -> DescribeConfigsResponse:
    r = Reader(data, DESCRIBE_CONFIGS.flexible(version))
    throttle = r.int32()
    results = []
    for _ in range(r.array_length(8)):
        error_code = r.int16()
        r.nullable_string()  # error message
        r.int8()  # resource type
        name = r.string()
        values: dict[str, str | None] = {}
        for _ in range(r.array_length(5)):
            key, value = r.string(), r.nullable_string()
            r.boolean()  # read only
            r.int8()  # config source (v1+)
            r.boolean()  # is sensitive
            for _ in range(r.array_length(4)):  # synonyms (v1+)
                r.string()
                r.nullable_string()
                r.int8()
                r.skip_tags()
            if version >= 3:
                r.int8()  # config type
                r.nullable_string()  # documentation
            r.skip_tags()
            values[key] = value
        r.skip_tags()
        results.append(DescribedConfigs(name, error_code, values))
    r.skip_tags()
    return DescribeConfigsResponse(throttle, tuple(results))
