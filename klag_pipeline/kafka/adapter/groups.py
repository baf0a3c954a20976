"""Group discovery, description and committed offsets over the transport.

Request plan (PROTOCOL.md): ListGroups on every broker; the broker that lists a group is its
coordinator, so DescribeGroups / ConsumerGroupDescribe / OffsetFetch go straight there, many
groups per request. FindCoordinator is only used, batched, for groups whose coordinator moved.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from types import MappingProxyType
from typing import TypeVar

from klag_pipeline.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaProtocolError,
    KafkaTimeoutError,
)
from klag_pipeline.kafka.adapter.transport import Transport, chunked
from klag_pipeline.kafka.errors import (
    COORDINATOR_MOVED,
    GROUP_ID_NOT_FOUND,
    error_name,
    response_error,
)
from klag_pipeline.kafka.port import CommittedOffsets, GroupDescriptions, GroupListing
from klag_pipeline.kafka.protocol import (
    CONSUMER_GROUP_DESCRIBE,
    DESCRIBE_GROUPS,
    FIND_COORDINATOR,
    LIST_GROUPS,
    OFFSET_FETCH,
    OFFSET_FETCH_SINGLE,
    ConsumerGroupDescription,
    DescribedGroup,
    GroupOffsets,
    ProtocolDecodeError,
    decode_consumer_assignment,
    decode_consumer_group_describe,
    decode_describe_groups,
    decode_find_coordinator,
    decode_list_groups,
    decode_offset_fetch,
    encode_consumer_group_describe,
    encode_describe_groups,
    encode_find_coordinator,
    encode_list_groups,
    encode_offset_fetch,
)
from klag_pipeline.model import (
    Failure,
    GroupDescription,
    GroupMember,
    GroupState,
    ListedGroup,
    TopicPartition,
)
from klag_pipeline.pipeline.paced import paced

DESCRIBE_CHUNK = 10_000
"""Groups per DescribeGroups / ConsumerGroupDescribe / FindCoordinator request: one request per
coordinator up to 10,000 groups, so the request count does not grow with the number of groups
(issue 9). Answers above 64 KiB are decoded in a worker thread."""
OFFSET_FETCH_MAX_GROUPS = 10_000
OFFSET_FETCH_PARTITION_BUDGET = 100_000
"""Committed partitions (as seen last cycle) per OffsetFetch response: ~3 MB of answer, decoded
off the event loop."""

_T = TypeVar("_T")
_DISCOVERY = "discovery"
_OFFSETS = "committed_offsets"


@dataclass
class _Round:
    """Accumulates one call's results; ``retry`` holds groups whose coordinator moved."""

    stage: str
    failures: list[Failure] = field(default_factory=list)
    retry: list[ListedGroup] = field(default_factory=list)
    errors: list[KafkaError] = field(default_factory=list)
    answered: int = 0
    gone: set[str] = field(default_factory=set)

    def request_failed(self, node: int, exc: KafkaError, groups: Sequence[ListedGroup]) -> None:
        self.errors.append(exc)
        self.failures.append(Failure(self.stage, str(node), str(exc)))
        # A broken connection may mean the coordinator moved; a timeout would just cost
        # another full timeout on a retry, and an auth/protocol error would repeat.
        if isinstance(exc, KafkaConnectionError) and not isinstance(exc, KafkaTimeoutError):
            self.retry.extend(groups)

    def nothing_learned(self) -> KafkaError | None:
        return self.errors[0] if self.errors and not self.answered else None


class GroupOps:
    def __init__(self, transport: Transport) -> None:
        self._t = transport
        self._listed: dict[int, tuple[ListedGroup, ...]] = {}
        self._partition_counts: dict[str, int] = {}
        self._sem = asyncio.Semaphore(max(1, transport.performance.max_concurrent_groups))

    # ------------------------------------------------------------------ ListGroups

    async def list_groups(self) -> GroupListing:
        nodes = self._t.nodes()
        if not nodes:
            raise KafkaConnectionError("no brokers known: metadata lists none")
        answers = await asyncio.gather(*(self._list_on(node) for node in nodes))
        failures: list[Failure] = []
        errors: list[KafkaError] = []
        for node, groups, error in answers:
            if groups is not None:
                self._listed[node] = groups
            else:
                assert error is not None
                errors.append(error)
                # Keep the node's previous answer: its groups did not vanish because their
                # coordinator is loading or briefly unreachable.
                failures.append(Failure(_DISCOVERY, str(node), str(error)))
        for gone in set(self._listed) - set(nodes):
            del self._listed[gone]
        if len(errors) == len(nodes) and not self._listed:
            raise errors[0]
        seen: dict[str, ListedGroup] = {}
        for node in sorted(self._listed):
            for group in self._listed[node]:
                seen.setdefault(group.group_id, group)
        return GroupListing(tuple(seen.values()), tuple(failures))

    async def _list_on(
        self, node: int
    ) -> tuple[int, tuple[ListedGroup, ...] | None, KafkaError | None]:
        try:
            version = await self._t.choose(node, LIST_GROUPS)
            if version is None:
                raise KafkaProtocolError(f"broker {node} does not support ListGroups")
            response = await self._t.call(
                node,
                LIST_GROUPS,
                version,
                encode_list_groups(version),
                partial(decode_list_groups, version),
            )
        except KafkaError as exc:
            return node, None, exc
        if response.error_code:
            error = response_error(response.error_code, what="ListGroups", broker=str(node))
            return node, None, error
        groups = tuple(
            ListedGroup(g.group_id, g.protocol_type, g.state, g.group_type, node)
            for g in response.groups
        )
        return node, groups, None

    # ------------------------------------------------------------------ describe

    async def describe_groups(self, groups: Sequence[ListedGroup]) -> GroupDescriptions:
        out: dict[str, GroupDescription] = {}
        first = _Round(_DISCOVERY)
        await self._describe_round(groups, out, first)
        failures = first.failures
        errors = list(first.errors)
        answered = first.answered
        second = _Round(_DISCOVERY)
        if first.retry:
            moved = await self._relocate(first.retry, failures, _DISCOVERY)
            await self._describe_round(moved, out, second)
            failures += second.failures
            errors += second.errors
            answered += second.answered
            failures += _gave_up(second.retry, _DISCOVERY)
        if groups and errors and not answered:
            raise errors[0]
        gone = frozenset(first.gone | second.gone)
        return GroupDescriptions(MappingProxyType(out), tuple(failures), gone)

    async def _describe_round(
        self, groups: Sequence[ListedGroup], out: dict[str, GroupDescription], rnd: _Round
    ) -> None:
        by_target: dict[tuple[int, bool], list[ListedGroup]] = defaultdict(list)
        for group in groups:
            by_target[(group.coordinator, group.group_type == "consumer")].append(group)
        jobs = [
            self._describe_chunk(node, consumer, chunk, out, rnd)
            for (node, consumer), members in sorted(by_target.items())
            for chunk in chunked(members, DESCRIBE_CHUNK)
        ]
        await asyncio.gather(*jobs)

    async def _describe_chunk(
        self,
        node: int,
        consumer_type: bool,
        chunk: Sequence[ListedGroup],
        out: dict[str, GroupDescription],
        rnd: _Round,
    ) -> None:
        ids = [g.group_id for g in chunk]
        async with self._sem:
            try:
                cgd_version = (
                    await self._t.choose(node, CONSUMER_GROUP_DESCRIBE) if consumer_type else None
                )
                if cgd_version is not None:
                    cgd = await self._t.call(
                        node,
                        CONSUMER_GROUP_DESCRIBE,
                        cgd_version,
                        encode_consumer_group_describe(cgd_version, ids),
                        partial(decode_consumer_group_describe, cgd_version),
                    )
                    entries: Sequence[DescribedGroup | ConsumerGroupDescription] = cgd.groups
                else:
                    version = await self._t.choose(node, DESCRIBE_GROUPS)
                    if version is None:
                        raise KafkaProtocolError(f"broker {node} does not support DescribeGroups")
                    classic = await self._t.call(
                        node,
                        DESCRIBE_GROUPS,
                        version,
                        encode_describe_groups(version, ids),
                        partial(decode_describe_groups, version),
                    )
                    entries = classic.groups
            except KafkaError as exc:
                rnd.request_failed(node, exc, chunk)
                return
        rnd.answered += 1
        wanted = {g.group_id: g for g in chunk}
        for entry in entries:
            listed = wanted.pop(entry.group_id, None)
            if listed is None:
                continue
            code = entry.error_code
            if code == 0:
                out[listed.group_id] = self._description(listed, node, entry, rnd)
            elif code in COORDINATOR_MOVED:
                rnd.retry.append(listed)
            elif code == GROUP_ID_NOT_FOUND:  # deleted since it was listed
                rnd.gone.add(listed.group_id)
            else:
                message = f": {entry.error_message}" if entry.error_message else ""
                rnd.failures.append(
                    Failure(rnd.stage, listed.group_id, f"describe: {error_name(code)}{message}")
                )
        for missing in wanted:
            rnd.failures.append(Failure(rnd.stage, missing, "describe: group missing in answer"))

    @staticmethod
    def _description(
        listed: ListedGroup,
        node: int,
        entry: DescribedGroup | ConsumerGroupDescription,
        rnd: _Round,
    ) -> GroupDescription:
        members: list[GroupMember] = []
        if isinstance(entry, ConsumerGroupDescription):
            for m in entry.members:
                assignment = frozenset(
                    TopicPartition(topic, p) for _, topic, parts in m.assignment for p in parts
                )
                members.append(GroupMember(m.member_id, m.client_id, m.client_host, assignment))
            return GroupDescription(
                listed.group_id,
                GroupState.parse(entry.state),
                listed.protocol_type or "consumer",
                listed.group_type or "consumer",
                tuple(members),
                node,
            )
        for member in entry.members:
            parts: frozenset[TopicPartition] = frozenset()
            # Only the "consumer" protocol's assignment is ConsumerProtocol bytes; Connect and
            # other protocol types use their own formats.
            if entry.protocol_type == "consumer" and member.assignment:
                try:
                    parts = decode_consumer_assignment(member.assignment)
                except ProtocolDecodeError as exc:
                    rnd.failures.append(
                        Failure(
                            rnd.stage,
                            listed.group_id,
                            f"member {member.member_id}: malformed assignment: {exc}",
                        )
                    )
            members.append(
                GroupMember(member.member_id, member.client_id, member.client_host, parts)
            )
        return GroupDescription(
            listed.group_id,
            GroupState.parse(entry.state),
            entry.protocol_type,
            listed.group_type,
            tuple(members),
            node,
        )

    # ------------------------------------------------------------------ FindCoordinator

    async def _relocate(
        self, groups: Sequence[ListedGroup], failures: list[Failure], stage: str
    ) -> list[ListedGroup]:
        """The same groups with their current coordinator (one batched FindCoordinator)."""
        found = await self.find_coordinators([g.group_id for g in groups], failures, stage)
        moved = []
        for group in groups:
            node = found.get(group.group_id)
            if node is None:
                continue
            moved.append(replace(group, coordinator=node))
        return moved

    async def find_coordinators(
        self, group_ids: Sequence[str], failures: list[Failure], stage: str
    ) -> dict[str, int]:
        """group id → coordinator node; groups that cannot be located get a Failure."""
        found: dict[str, int] = {}
        unique = sorted(set(group_ids))
        last_error: KafkaError | None = None
        for node in self._t.nodes():
            try:
                version = await self._t.choose(node, FIND_COORDINATOR)
                if version is None:
                    raise KafkaProtocolError(f"broker {node} does not support FindCoordinator")
                if version >= 4:
                    calls = [
                        self._t.call(
                            node,
                            FIND_COORDINATOR,
                            version,
                            encode_find_coordinator(version, chunk),
                            partial(decode_find_coordinator, version),
                        )
                        for chunk in chunked(unique, DESCRIBE_CHUNK)
                    ]
                else:
                    calls = [
                        self._bounded(
                            partial(
                                self._t.call,
                                node,
                                FIND_COORDINATOR,
                                version,
                                encode_find_coordinator(version, [key]),
                                partial(decode_find_coordinator, version, key=key),
                            )
                        )
                        for key in unique
                    ]
                responses = await asyncio.gather(*calls)
            except KafkaError as exc:
                last_error = exc
                continue
            for response in responses:
                for c in response.coordinators:
                    if c.error_code == 0 and c.node_id >= 0:
                        found[c.key] = c.node_id
                    else:
                        failures.append(
                            Failure(stage, c.key, f"FindCoordinator: {error_name(c.error_code)}")
                        )
            break
        else:
            reason = str(last_error) if last_error else "no broker answered"
            failures.extend(Failure(stage, g, f"FindCoordinator: {reason}") for g in unique)
        if any(node not in self._t.nodes() for node in found.values()):
            self._t.request_metadata_refresh()
        return found

    async def _bounded(self, call: Callable[[], Awaitable[_T]]) -> _T:
        async with self._sem:
            return await call()

    # ------------------------------------------------------------------ OffsetFetch

    async def fetch_committed_offsets(self, groups: Sequence[ListedGroup]) -> CommittedOffsets:
        out: dict[str, Mapping[TopicPartition, int]] = {}
        first = _Round(_OFFSETS)
        await self._offsets_round(groups, out, first)
        failures = first.failures
        errors = list(first.errors)
        answered = first.answered
        if first.retry:
            moved = await self._relocate(first.retry, failures, _OFFSETS)
            second = _Round(_OFFSETS)
            await self._offsets_round(moved, out, second)
            failures += second.failures
            errors += second.errors
            answered += second.answered
            failures += _gave_up(second.retry, _OFFSETS)
        requested = {g.group_id for g in groups}
        self._partition_counts = {g: n for g, n in self._partition_counts.items() if g in requested}
        if groups and errors and not answered:
            raise errors[0]
        return CommittedOffsets(MappingProxyType(out), tuple(failures))

    async def _offsets_round(
        self,
        groups: Sequence[ListedGroup],
        out: dict[str, Mapping[TopicPartition, int]],
        rnd: _Round,
    ) -> None:
        by_node: dict[int, list[ListedGroup]] = defaultdict(list)
        for group in groups:
            by_node[group.coordinator].append(group)
        await asyncio.gather(
            *(self._offsets_on(node, members, out, rnd) for node, members in by_node.items())
        )

    async def _offsets_on(
        self,
        node: int,
        groups: Sequence[ListedGroup],
        out: dict[str, Mapping[TopicPartition, int]],
        rnd: _Round,
    ) -> None:
        try:
            batched = await self._t.choose(node, OFFSET_FETCH)
            single = (
                None if batched is not None else await self._t.choose(node, OFFSET_FETCH_SINGLE)
            )
        except KafkaError as exc:
            rnd.request_failed(node, exc, groups)
            return
        if batched is not None:
            jobs = [
                self._offsets_batch(node, batched, chunk, out, rnd) for chunk in self._pack(groups)
            ]
        elif single is not None:
            # Brokers without OffsetFetch v8 (Kafka < 3.0, some Kafka-compatible servers): one
            # request per group, pipelined on the coordinator connection.
            jobs = [self._offsets_batch(node, single, [g], out, rnd) for g in groups]
        else:
            error = KafkaProtocolError(f"broker {node} supports no usable OffsetFetch version")
            rnd.request_failed(node, error, ())
            return
        await asyncio.gather(*jobs)

    def _pack(self, groups: Sequence[ListedGroup]) -> list[list[ListedGroup]]:
        """Chunks whose expected answer stays under the partition budget."""
        chunks: list[list[ListedGroup]] = []
        current: list[ListedGroup] = []
        weight = 0
        for group in groups:
            cost = max(1, self._partition_counts.get(group.group_id, 1))
            if current and (
                weight + cost > OFFSET_FETCH_PARTITION_BUDGET
                or len(current) >= OFFSET_FETCH_MAX_GROUPS
            ):
                chunks.append(current)
                current, weight = [], 0
            current.append(group)
            weight += cost
        if current:
            chunks.append(current)
        return chunks

    async def _offsets_batch(
        self,
        node: int,
        version: int,
        chunk: Sequence[ListedGroup],
        out: dict[str, Mapping[TopicPartition, int]],
        rnd: _Round,
    ) -> None:
        ids = [g.group_id for g in chunk]
        spec = OFFSET_FETCH if version >= 8 else OFFSET_FETCH_SINGLE
        async with self._sem:
            try:
                response = await self._t.call(
                    node,
                    spec,
                    version,
                    encode_offset_fetch(version, ids),
                    partial(decode_offset_fetch, version, group=ids[0]),
                    seconds=self._t.performance.offset_fetch_timeout,
                )
            except KafkaError as exc:
                rnd.request_failed(node, exc, chunk)
                return
        rnd.answered += 1
        wanted = {g.group_id: g for g in chunk}
        async for entry in paced(response.groups):
            listed = wanted.pop(entry.group_id, None)
            if listed is not None:
                self._take_offsets(listed, entry, out, rnd)
        for missing in wanted:
            rnd.failures.append(Failure(rnd.stage, missing, "OffsetFetch: group missing in answer"))

    def _take_offsets(
        self,
        listed: ListedGroup,
        entry: GroupOffsets,
        out: dict[str, Mapping[TopicPartition, int]],
        rnd: _Round,
    ) -> None:
        code = entry.error_code
        if code in COORDINATOR_MOVED:
            rnd.retry.append(listed)
            return
        if code == GROUP_ID_NOT_FOUND:
            # The coordinator answered: the group has no offsets (it is gone).
            out[listed.group_id] = MappingProxyType({})
            return
        if code:
            rnd.failures.append(
                Failure(rnd.stage, listed.group_id, f"OffsetFetch: {error_name(code)}")
            )
            return
        offsets: dict[TopicPartition, int] = {}
        bad: list[str] = []
        for p in entry.partitions:
            if p.error_code:
                bad.append(f"{p.topic}-{p.partition}: {error_name(p.error_code)}")
            elif p.offset >= 0:  # -1: no commit for this partition
                offsets[TopicPartition(p.topic, p.partition)] = p.offset
        if bad:
            shown = ", ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
            rnd.failures.append(Failure(rnd.stage, listed.group_id, f"OffsetFetch: {shown}"))
        self._partition_counts[listed.group_id] = len(entry.partitions)
        out[listed.group_id] = MappingProxyType(offsets)


def _gave_up(groups: Iterable[ListedGroup], stage: str) -> list[Failure]:
    return [Failure(stage, g.group_id, "coordinator moved twice; retry next cycle") for g in groups]
