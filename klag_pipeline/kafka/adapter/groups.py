"""Group discovery, description and committed offsets over the transport.

Request plan (PROTOCOL.md): ListGroups on every broker; the broker that lists a group is its
coordinator, so DescribeGroups / ConsumerGroupDescribe / OffsetFetch go straight there, many
groups per request. FindCoordinator is only used, batched, for groups whose coordinator moved
(:mod:`.coordinators`); committed offsets are fetched by :mod:`.offsets`.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from functools import partial
from types import MappingProxyType

from klag_pipeline.errors import KafkaConnectionError, KafkaError
from klag_pipeline.kafka.adapter.coordinators import DESCRIBE_CHUNK, Coordinators, Round
from klag_pipeline.kafka.adapter.offsets import OffsetFetcher
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
    LIST_GROUPS,
    ConsumerGroupDescription,
    DescribedGroup,
    ProtocolDecodeError,
    decode_consumer_assignment,
    decode_consumer_group_describe,
    decode_describe_groups,
    decode_list_groups,
    encode_consumer_group_describe,
    encode_describe_groups,
    encode_list_groups,
)
from klag_pipeline.model import (
    Failure,
    GroupDescription,
    GroupMember,
    GroupState,
    ListedGroup,
    TopicPartition,
)

_DISCOVERY = "discovery"


class GroupOps:
    def __init__(self, transport: Transport) -> None:
        self._t = transport
        self._listed: dict[int, tuple[ListedGroup, ...]] = {}
        self._sem = asyncio.Semaphore(max(1, transport.performance.max_concurrent_groups))
        self._coordinators = Coordinators(transport, self._sem)
        self._offsets = OffsetFetcher(transport, self._sem, self._coordinators)

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
            version = await self._t.require(node, LIST_GROUPS)
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

        async def run(batch: Sequence[ListedGroup], rnd: Round) -> None:
            await self._describe_round(batch, out, rnd)

        merged = await self._coordinators.with_retry(_DISCOVERY, groups, run)
        return GroupDescriptions(
            MappingProxyType(out), tuple(merged.failures), frozenset(merged.gone)
        )

    async def _describe_round(
        self, groups: Sequence[ListedGroup], out: dict[str, GroupDescription], rnd: Round
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
        rnd: Round,
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
                    version = await self._t.require(node, DESCRIBE_GROUPS)
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
        rnd: Round,
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

    # ------------------------------------------------------------------ coordinators, offsets

    async def find_coordinators(
        self, group_ids: Sequence[str], failures: list[Failure], stage: str
    ) -> dict[str, int]:
        """group id → coordinator node; groups that cannot be located get a Failure."""
        return await self._coordinators.find(group_ids, failures, stage)

    async def fetch_committed_offsets(self, groups: Sequence[ListedGroup]) -> CommittedOffsets:
        return await self._offsets.fetch(groups)
