"""Fan-out: a stalled sink only loses its own oldest snapshots; closing reaches every inbox."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from klag_pipeline.pipeline.channel import Channel, DroppingChannel
from klag_pipeline.pipeline.fanout import FanOut
from klag_pipeline.snapshot import ClusterWithdrawn, SinkUpdate
from tests.unit.test_prometheus_sink import golden_snapshot


def update(n: int) -> SinkUpdate:
    return ClusterWithdrawn(cluster=f"c{n}", reason="test")


async def test_stalled_inbox_drops_oldest_while_the_other_gets_everything() -> None:
    dropped: list[SinkUpdate] = []
    stalled = DroppingChannel[SinkUpdate](2, "stalled", on_drop=dropped.append)
    # Room for every update, so any loss on this side would be the stalled sink's fault.
    live = DroppingChannel[SinkUpdate](16, "live")
    source = Channel[SinkUpdate](1, "snapshots")
    fanout = FanOut({"stalled": stalled, "live": live})
    received: list[SinkUpdate] = []

    async def live_sink() -> None:
        async for item in live:
            received.append(item)

    async def produce() -> None:
        # The source has capacity 1: every send completing proves the fan-out kept taking items
        # even though one sink never reads.
        for n in range(10):
            await source.send(update(n))
        source.close()

    async with asyncio.timeout(5), asyncio.TaskGroup() as group:
        group.create_task(fanout.run(source))
        group.create_task(live_sink())
        group.create_task(produce())

    assert received == [update(n) for n in range(10)]
    assert live.dropped == 0
    assert stalled.dropped == 8
    assert dropped == [update(n) for n in range(8)]
    assert fanout.forwarded == 10
    assert [item async for item in stalled] == [update(8), update(9)]


async def test_closing_the_source_closes_every_inbox_after_delivery() -> None:
    inboxes = {name: DroppingChannel[SinkUpdate](4, name) for name in ("a", "b", "c")}
    source = Channel[SinkUpdate](4, "snapshots")
    await source.send(update(1))
    source.close()
    await asyncio.wait_for(FanOut(inboxes).run(source), timeout=5)
    for inbox in inboxes.values():
        assert inbox.closed
        assert [item async for item in inbox] == [update(1)]


async def test_an_inbox_closed_by_its_sink_is_skipped() -> None:
    gone = DroppingChannel[SinkUpdate](1, "gone")
    gone.close()
    live = DroppingChannel[SinkUpdate](4, "live")
    source = Channel[SinkUpdate](4, "snapshots")
    await source.send(update(1))
    source.close()
    await asyncio.wait_for(FanOut({"gone": gone, "live": live}).run(source), timeout=5)
    assert [item async for item in live] == [update(1)]


async def test_cancelled_fanout_still_closes_inboxes() -> None:
    inbox = DroppingChannel[SinkUpdate](1, "inbox")
    source = Channel[SinkUpdate](1, "snapshots")
    task = asyncio.create_task(FanOut({"inbox": inbox}).run(source))
    for _ in range(10):
        await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert inbox.closed


async def test_a_partial_snapshot_reaches_only_the_sinks_that_take_it() -> None:
    """A first cycle's early offsets (ClusterSnapshot.partial) are for /metrics only; the
    complete snapshot and withdrawals reach every sink."""
    complete = golden_snapshot()
    early = replace(complete, partial=True)
    inboxes = {name: DroppingChannel[SinkUpdate](8, name) for name in ("prometheus", "jsonl")}
    source = Channel[SinkUpdate](8, "snapshots")
    for item in (early, complete, update(1)):
        await source.send(item)
    source.close()
    await asyncio.wait_for(FanOut(inboxes, partial_to=("prometheus",)).run(source), timeout=5)
    assert [item async for item in inboxes["prometheus"]] == [early, complete, update(1)]
    assert [item async for item in inboxes["jsonl"]] == [complete, update(1)]
