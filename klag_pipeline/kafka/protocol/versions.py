"""API keys, the version range implemented for each API, and the first flexible version.

The one table of supported versions: every request's version is chosen from here against the
broker's ApiVersions answer (:func:`choose_version`); nothing else hard-codes a version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class ApiSpec:
    name: str
    key: int
    min_version: int
    max_version: int
    first_flexible: int

    def flexible(self, version: int) -> bool:
        return version >= self.first_flexible


API_VERSIONS: Final = ApiSpec("ApiVersions", 18, 0, 2, 3)
METADATA: Final = ApiSpec("Metadata", 3, 4, 12, 9)
LIST_OFFSETS: Final = ApiSpec("ListOffsets", 2, 1, 7, 6)
# OffsetFetch is split: v8+ carries many groups per request, v2..v7 one group (v2: null topics).
OFFSET_FETCH: Final = ApiSpec("OffsetFetch", 9, 8, 9, 6)
OFFSET_FETCH_SINGLE: Final = ApiSpec("OffsetFetch", 9, 2, 7, 6)
FIND_COORDINATOR: Final = ApiSpec("FindCoordinator", 10, 1, 4, 3)
DESCRIBE_GROUPS: Final = ApiSpec("DescribeGroups", 15, 0, 6, 5)
LIST_GROUPS: Final = ApiSpec("ListGroups", 16, 0, 5, 3)
CONSUMER_GROUP_DESCRIBE: Final = ApiSpec("ConsumerGroupDescribe", 69, 0, 0, 0)
# Leader election's group membership (Kafka 2.3+; 4.x removed JoinGroup v0-v1 only).
JOIN_GROUP: Final = ApiSpec("JoinGroup", 11, 5, 9, 6)
HEARTBEAT: Final = ApiSpec("Heartbeat", 12, 3, 4, 4)
LEAVE_GROUP: Final = ApiSpec("LeaveGroup", 13, 3, 5, 4)
SYNC_GROUP: Final = ApiSpec("SyncGroup", 14, 3, 5, 4)
# A topic's cleanup.policy, for how long a timestamp sample may be trusted (Kafka 4.x: v1..v4).
DESCRIBE_CONFIGS: Final = ApiSpec("DescribeConfigs", 32, 1, 4, 4)
FETCH_KEY: Final = 1  # reported by ``overview`` only; the Fetch codec lives with timestamp sampling

REPORTED_APIS: Final[Mapping[str, int]] = {
    "ApiVersions": API_VERSIONS.key,
    "Metadata": METADATA.key,
    "ListGroups": LIST_GROUPS.key,
    "DescribeGroups": DESCRIBE_GROUPS.key,
    "ConsumerGroupDescribe": CONSUMER_GROUP_DESCRIBE.key,
    "FindCoordinator": FIND_COORDINATOR.key,
    "OffsetFetch": OFFSET_FETCH.key,
    "ListOffsets": LIST_OFFSETS.key,
    "DescribeConfigs": DESCRIBE_CONFIGS.key,
    "Fetch": FETCH_KEY,
}


def choose_version(spec: ApiSpec, broker: Mapping[int, tuple[int, int]]) -> int | None:
    """Highest version both this module and the broker support, or None."""
    span = broker.get(spec.key)
    if span is None:
        return None
    low, high = max(span[0], spec.min_version), min(span[1], spec.max_version)
    return high if low <= high else None
