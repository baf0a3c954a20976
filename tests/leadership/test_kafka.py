"""The ``kafka`` provider in-process on the real broker (through the membership adapter), and
the membership codecs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from aiokafka.protocol.group import JoinGroupRequest_v5, SyncGroupRequest_v3

from klag_pipeline.kafka.adapter.transport import Transport
from klag_pipeline.kafka.factory import default_membership_factory
from klag_pipeline.kafka.protocol import ApiSpec
from klag_pipeline.kafka.protocol.membership import (
    PROTOCOL_NAME,
    PROTOCOL_TYPE,
    encode_join_group,
    encode_sync_group,
)
from klag_pipeline.leadership import LeadershipError
from klag_pipeline.leadership.kafka import KafkaGroupProvider
from klag_pipeline.settings.schema import ClusterSettings, LeadershipSettings, PerformanceSettings
from tests.support.waiting import wait_until


def test_the_non_flexible_encodings_match_an_independent_implementation() -> None:
    ours = encode_join_group(
        5, "g", session_ms=6000, rebalance_ms=7000, member_id="m-1", metadata=b"replica-1"
    )
    theirs = JoinGroupRequest_v5(
        "g", 6000, 7000, "m-1", None, PROTOCOL_TYPE, [(PROTOCOL_NAME, b"replica-1")]
    ).encode()
    assert ours == theirs
    ours = encode_sync_group(
        3, "g", generation=4, member_id="m-1", assignments=[("m-1", b"a"), ("m-2", b"a")]
    )
    theirs = SyncGroupRequest_v3("g", 4, "m-1", None, [("m-1", b"a"), ("m-2", b"a")]).encode()
    assert ours == theirs


class OldestVersions(Transport):
    """Speaks the lowest version this module implements (the non-flexible encodings)."""

    async def choose(self, node: int, spec: ApiSpec) -> int | None:
        chosen = await super().choose(node, spec)
        return None if chosen is None else spec.min_version


def settings(group: str, **overrides: Any) -> LeadershipSettings:
    values: dict[str, Any] = {
        "enabled": True,
        "provider": "kafka",
        "lease_name": group,
        "lease_duration": 6.0,
        "renew_deadline": 4.0,
        "retry_period": 1.0,
    }
    values.update(overrides)
    return LeadershipSettings(**values)


def make(
    bootstrap: str, lease: LeadershipSettings, identity: str, transport: type[Transport]
) -> KafkaGroupProvider:
    cluster = ClusterSettings(name="ha", bootstrap_servers=(bootstrap,))
    return KafkaGroupProvider(
        cluster,
        lease,
        identity,
        performance=PerformanceSettings(),
        membership_factory=partial(default_membership_factory, transport_factory=transport),
    )


class Rounds:
    """A provider's election rounds every 0.5 s in the background, as its elector would."""

    def __init__(self, provider: KafkaGroupProvider) -> None:
        self.provider = provider
        self.answers: list[bool | None] = []
        """One per round: whether it leads, None for a failed round (a fresh broker may still
        be loading the group coordinator)."""
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        for _ in range(200):
            try:
                self.answers.append(await self.provider.acquire_or_renew())
            except LeadershipError:
                self.answers.append(None)
            await asyncio.sleep(0.5)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def until(condition: Callable[[], bool], within: float, what: str) -> None:
    await wait_until(condition, within=within, interval=0.05, message=what)


@pytest.mark.parametrize("transport", [Transport, OldestVersions], ids=["newest", "oldest"])
async def test_one_member_leads_and_a_leave_hands_over(
    kafka_bootstrap: str, unique: Callable[[str], str], transport: type[Transport]
) -> None:
    lease = settings(unique("lease"))
    a = make(kafka_bootstrap, lease, "a", transport)
    b = make(kafka_bootstrap, lease, "b", transport)
    a_rounds = Rounds(a)
    b_rounds: Rounds | None = None
    try:
        await until(lambda: a_rounds.answers[-1:] == [True], 20, "a leading")
        led_from = len(a_rounds.answers) - 1
        b_rounds = Rounds(b)
        # b's join is a rebalance; the coordinator keeps a as the leader.
        await until(lambda: b.holder == "a" and len(b_rounds.answers) >= 3, 15, "b standing by")
        assert True not in b_rounds.answers
        assert all(a_rounds.answers[led_from:]), "leadership moved when a standby joined"
        await a_rounds.stop()
        await a.release()
        await until(lambda: b_rounds.answers[-1:] == [True], 10, "b leading after a left")
        assert b.holder == "b"
    finally:
        await a_rounds.stop()
        if b_rounds is not None:
            await b_rounds.stop()
        for provider in (a, b):
            await provider.release()
            await provider.close()


async def test_a_lease_below_the_brokers_minimum_session_is_explained(
    kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    lease = settings(unique("lease"), lease_duration=2.0, renew_deadline=1.5, retry_period=0.5)
    provider = make(kafka_bootstrap, lease, "a", Transport)
    try:
        with pytest.raises(LeadershipError, match=r"INVALID_SESSION_TIMEOUT.*group\.min\.session"):
            await provider.acquire_or_renew()
    finally:
        await provider.close()


async def test_an_unreachable_cluster_is_an_error(unique: Callable[[str], str]) -> None:
    provider = make("127.0.0.1:1", settings(unique("lease")), "a", Transport)
    try:
        with pytest.raises(LeadershipError, match="cluster ha"):
            await provider.acquire_or_renew()
    finally:
        await provider.close()
