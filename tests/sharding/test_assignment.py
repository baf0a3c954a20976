"""The leader's assignment: balanced, sticky, deterministic; the bytes members exchange."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping

import pytest

from klag_pipeline.sharding.assignment import (
    Assignment,
    Layout,
    MalformedShardData,
    MemberMetadata,
    Unit,
    assign,
    decode_assignment,
    decode_metadata,
    encode_assignment,
    encode_metadata,
)

LAYOUT = Layout(("east", "west"), 64)


def moved(before: Mapping[str, frozenset[Unit]], after: Mapping[str, frozenset[Unit]]) -> int:
    """How many units changed owner between two assignments (members by identity)."""
    owner_before = {unit: who for who, units in before.items() for unit in units}
    owner_after = {unit: who for who, units in after.items() for unit in units}
    return sum(1 for unit, who in owner_after.items() if owner_before.get(unit) != who)


def member(identity: str, owned: frozenset[tuple[str, int]] = frozenset()) -> MemberMetadata:
    return MemberMetadata(identity, LAYOUT, owned)


def owners(plan: dict[str, Assignment]) -> dict[str, frozenset[tuple[str, int]]]:
    return {mid: a.units for mid, a in plan.items()}


def test_every_unit_goes_to_exactly_one_member_and_the_counts_differ_by_at_most_one() -> None:
    for n in (1, 2, 3, 5, 7, 128, 200):
        plan = assign([(f"m{i}", member(f"r{i}")) for i in range(n)], LAYOUT, "r0")
        units = [u for a in plan.values() for u in a.units]
        assert sorted(units) == sorted(LAYOUT.units()), n
        sizes = [len(a.units) for a in plan.values()]
        assert max(sizes) - min(sizes) <= 1, (n, sizes)
        for cluster in LAYOUT.clusters:
            per_cluster = [sum(u[0] == cluster for u in a.units) for a in plan.values()]
            assert max(per_cluster) - min(per_cluster) <= 1, (n, cluster)
        assert all(a.members == n and a.buckets == 64 for a in plan.values())


def test_the_same_members_get_the_same_assignment_in_any_order() -> None:
    members = [(f"m{i}", member(f"r{i}")) for i in range(3)]
    first = owners(assign(members, LAYOUT, "r0"))
    for order in itertools.permutations(members):
        assert owners(assign(list(order), LAYOUT, "r0")) == first


def test_a_joining_member_takes_only_what_the_others_have_over_their_new_quota() -> None:
    two = assign([("a", member("a")), ("b", member("b"))], LAYOUT, "a")
    three = assign(
        [
            ("a", member("a", two["a"].units)),
            ("b", member("b", two["b"].units)),
            ("c", member("c")),
        ],
        LAYOUT,
        "a",
    )
    # 128 units: 64 + 64 before, 43 + 43 + 42 after; only c's 42 or 43 move, all to c.
    assert moved(owners(two), owners(three)) == len(three["c"].units)
    assert three["a"].units <= two["a"].units
    assert three["b"].units <= two["b"].units


def test_a_leaving_member_hands_on_only_its_own_units() -> None:
    three = assign([(m, member(m)) for m in "abc"], LAYOUT, "a")
    two = assign(
        [("a", member("a", three["a"].units)), ("b", member("b", three["b"].units))], LAYOUT, "a"
    )
    assert three["a"].units <= two["a"].units
    assert three["b"].units <= two["b"].units
    assert moved(owners(three), owners(two)) == len(three["c"].units)


def test_two_members_claiming_one_unit_keep_it_once() -> None:
    unit = ("east", 5)
    plan = assign(
        [("a", member("a", frozenset({unit}))), ("b", member("b", frozenset({unit})))],
        LAYOUT,
        "a",
    )
    assert sum(unit in a.units for a in plan.values()) == 1


def test_a_member_with_another_layout_gets_nothing_and_the_reason() -> None:
    other = MemberMetadata("old", Layout(("east", "west"), 32), frozenset())
    plan = assign([("a", member("a")), ("b", other)], LAYOUT, "a")
    assert plan["b"].units == frozenset()
    assert "layout differs" in plan["b"].refused
    assert len(plan["a"].units) == 128


def test_metadata_and_assignment_survive_the_wire() -> None:
    meta = member("r1", frozenset({("east", 1), ("west", 63)}))
    assert decode_metadata(encode_metadata(meta)) == meta
    plan = assign([("a", meta)], LAYOUT, "r1")["a"]
    assert decode_assignment(encode_assignment(plan)) == plan
    assert plan.by_cluster() == {"east": frozenset(range(64)), "west": frozenset(range(64))}


def test_the_cluster_order_of_the_settings_does_not_change_the_layout() -> None:
    # Two replicas listing the same clusters in another order must share the work; a leader
    # once refused itself because its own unsorted layout differed from its decoded metadata.
    mine = MemberMetadata("a", Layout(("west", "east"), 64), frozenset())
    plan = assign(
        [("a", decode_metadata(encode_metadata(mine)))], Layout(("west", "east"), 64), "a"
    )
    assert len(plan["a"].units) == 128
    assert not plan["a"].refused


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff",
        b"[]",
        b'{"v": 2}',
        json.dumps({"v": 1, "identity": "x"}).encode(),
        json.dumps({"v": 1, "identity": "x", "layout": {"clusters": "a", "buckets": 1}}).encode(),
        json.dumps(
            {
                "v": 1,
                "identity": "x",
                "layout": {"clusters": [], "buckets": 2},
                "owned": {"a": [-1]},
            }
        ).encode(),
    ],
)
def test_unreadable_metadata_is_refused_with_a_reason(raw: bytes) -> None:
    with pytest.raises(MalformedShardData):
        decode_metadata(raw)


def test_an_assignment_outside_the_bucket_range_is_refused() -> None:
    raw = json.dumps({"v": 1, "units": {"east": [64]}, "buckets": 64, "members": 1}).encode()
    with pytest.raises(MalformedShardData, match="out of range"):
        decode_assignment(raw)
