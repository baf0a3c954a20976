"""The sharding group's leader assigns buckets to members: sticky, balanced, deterministic.

A work unit is one bucket of one cluster, so the units span every configured cluster. Members
send their identity, their layout (cluster names and bucket count) and the units they own in
their JoinGroup metadata; the leader returns each member's units in SyncGroup. Both are JSON:
small (64 buckets × a few clusters), readable in a packet capture, and versioned by ``"v"``.

The assignment, for the same members and metadata, is always the same:

* each cluster's buckets are balanced on their own (clusters differ in size; so does the work of
  one of their buckets): every member gets ⌊buckets / members⌋ of each cluster, or one more;
* the members that already own the most of a cluster's buckets get its larger quotas (ties:
  member id order, rotated from cluster to cluster so that the extra buckets spread);
* every member keeps the units it owns, up to its quota, and only the rest move, to the
  members with room, in unit order. A member joining takes units only from members over their
  new quota; a member leaving hands only its own units on.

A member whose layout differs from the leader's (a rolling change of ``buckets`` or of the
cluster list) is given nothing, with the reason in its assignment: two layouts cannot split one
set of series without overlap or gaps. It exports nothing until the layouts agree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Unit = tuple[str, int]
"""(cluster name, bucket)."""

_VERSION = 1


class MalformedShardData(ValueError):
    """JoinGroup metadata or a SyncGroup assignment that is not ours or not readable."""


@dataclass(frozen=True, slots=True)
class Layout:
    clusters: tuple[str, ...]
    """Kept sorted: the settings' cluster order must not make two replicas' layouts differ."""
    buckets: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "clusters", tuple(sorted(self.clusters)))

    def units(self) -> list[Unit]:
        return [(cluster, b) for cluster in self.clusters for b in range(self.buckets)]

    def as_json(self) -> dict[str, object]:
        return {"clusters": list(self.clusters), "buckets": self.buckets}


@dataclass(frozen=True, slots=True)
class MemberMetadata:
    identity: str
    layout: Layout
    owned: frozenset[Unit]


@dataclass(frozen=True, slots=True)
class Assignment:
    units: frozenset[Unit]
    buckets: int
    members: int
    leader: str
    """The leader's identity (logs, ``/api/v1``)."""
    refused: str = ""
    """Why this member was given nothing (layout mismatch); empty otherwise."""

    def by_cluster(self) -> dict[str, frozenset[int]]:
        result: dict[str, set[int]] = {}
        for cluster, bucket in self.units:
            result.setdefault(cluster, set()).add(bucket)
        return {cluster: frozenset(buckets) for cluster, buckets in result.items()}


def _units_json(units: frozenset[Unit]) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = {}
    for cluster, bucket in sorted(units):
        grouped.setdefault(cluster, []).append(bucket)
    return grouped


def _units_from(value: object) -> frozenset[Unit]:
    if not isinstance(value, dict):
        raise MalformedShardData("units must be an object of cluster → bucket list")
    units: set[Unit] = set()
    for cluster, buckets in value.items():
        if not isinstance(buckets, list) or not all(
            isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in buckets
        ):
            raise MalformedShardData(f"buckets of {cluster!r} must be non-negative integers")
        units.update((cluster, b) for b in buckets)
    return frozenset(units)


def _load(data: bytes) -> dict[str, object]:
    try:
        value = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedShardData(f"not JSON: {exc}") from None
    if not isinstance(value, dict) or value.get("v") != _VERSION:
        raise MalformedShardData(f"not version {_VERSION} sharding data")
    return value


def encode_metadata(metadata: MemberMetadata) -> bytes:
    body = {
        "v": _VERSION,
        "identity": metadata.identity,
        "layout": metadata.layout.as_json(),
        "owned": _units_json(metadata.owned),
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def decode_metadata(data: bytes) -> MemberMetadata:
    value = _load(data)
    layout = value.get("layout")
    identity = value.get("identity")
    if not isinstance(layout, dict) or not isinstance(identity, str):
        raise MalformedShardData("metadata needs an identity and a layout")
    clusters, buckets = layout.get("clusters"), layout.get("buckets")
    if (
        not isinstance(clusters, list)
        or not all(isinstance(c, str) for c in clusters)
        or not isinstance(buckets, int)
        or buckets < 1
    ):
        raise MalformedShardData("layout needs cluster names and a bucket count ≥ 1")
    return MemberMetadata(
        identity, Layout(tuple(clusters), buckets), _units_from(value.get("owned", {}))
    )


def encode_assignment(assignment: Assignment) -> bytes:
    body = {
        "v": _VERSION,
        "units": _units_json(assignment.units),
        "buckets": assignment.buckets,
        "members": assignment.members,
        "leader": assignment.leader,
        "refused": assignment.refused,
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def decode_assignment(data: bytes) -> Assignment:
    value = _load(data)
    buckets, members = value.get("buckets"), value.get("members")
    leader, refused = value.get("leader", ""), value.get("refused", "")
    if not isinstance(buckets, int) or buckets < 1 or not isinstance(members, int):
        raise MalformedShardData("assignment needs a bucket count and a member count")
    if not isinstance(leader, str) or not isinstance(refused, str):
        raise MalformedShardData("leader and refused must be strings")
    units = _units_from(value.get("units", {}))
    if any(b >= buckets for _, b in units):
        raise MalformedShardData(f"a bucket is out of range 0..{buckets - 1}")
    return Assignment(units, buckets, members, leader, refused)


def assign(
    members: Sequence[tuple[str, MemberMetadata]], layout: Layout, leader_identity: str
) -> dict[str, Assignment]:
    """Every member's assignment (see the module docstring); ``layout`` is the leader's."""
    valid = set(layout.units())
    eligible = [(mid, meta) for mid, meta in members if meta.layout == layout]
    refused = f"layout differs from the leader's ({layout.as_json()})"
    result = {
        mid: Assignment(frozenset(), layout.buckets, len(members), leader_identity, refused)
        for mid, meta in members
        if meta.layout != layout
    }
    if not eligible:
        return result
    mine: dict[str, set[Unit]] = {mid: set() for mid, _ in eligible}
    ids = sorted(mid for mid, _ in eligible)
    offset = 0
    for cluster in layout.clusters:
        units = [(cluster, b) for b in range(layout.buckets)]
        previous = {mid: sorted(u for u in meta.owned if u[0] == cluster and u in valid)
                    for mid, meta in eligible}  # fmt: skip
        # Ties (e.g. the first assignment) rotate from cluster to cluster, so the one-more
        # quotas of several clusters go to different members.
        order = sorted(
            ids, key=lambda mid: (-len(previous[mid]), (ids.index(mid) - offset) % len(ids))
        )
        offset += len(units) % len(ids)
        for mid, units_of_member in _balance(units, order, previous).items():
            mine[mid].update(units_of_member)
    for mid, owned in mine.items():
        result[mid] = Assignment(frozenset(owned), layout.buckets, len(members), leader_identity)
    return result


def _balance(
    units: list[Unit], order: list[str], previous: Mapping[str, list[Unit]]
) -> dict[str, list[Unit]]:
    """One cluster's units over ``order``: quotas first to last, kept units first."""
    base, extra = divmod(len(units), len(order))
    quota = {mid: base + (1 if i < extra else 0) for i, mid in enumerate(order)}
    owner: dict[Unit, str] = {}
    mine: dict[str, list[Unit]] = {mid: [] for mid in order}
    for mid in order:
        for unit in previous[mid]:
            if unit not in owner and len(mine[mid]) < quota[mid]:
                owner[unit] = mid
                mine[mid].append(unit)
    free = iter(unit for unit in units if unit not in owner)
    for mid in order:
        while len(mine[mid]) < quota[mid]:
            unit = next(free)
            owner[unit] = mid
            mine[mid].append(unit)
    return mine
