"""The channel contract: backpressure, close semantics, cancellation safety, drop-oldest."""

from __future__ import annotations

import asyncio

import pytest

from klag_pipeline.pipeline.channel import Channel, ChannelClosed, DroppingChannel


async def spin(iterations: int = 20) -> None:
    """Let every runnable task run until it blocks (a bounded number of loop turns, no sleep)."""
    for _ in range(iterations):
        await asyncio.sleep(0)


@pytest.mark.parametrize("capacity", [0, -1])
def test_capacity_must_be_positive(capacity: int) -> None:
    with pytest.raises(ValueError, match="capacity"):
        Channel[int](capacity, "bad")


async def test_fifo_and_properties() -> None:
    channel = Channel[int](3, "numbers")
    for n in (1, 2, 3):
        await channel.send(n)
    assert (channel.name, channel.capacity, channel.qsize(), channel.closed) == (
        "numbers",
        3,
        3,
        False,
    )
    assert [await channel.receive() for _ in range(3)] == [1, 2, 3]
    assert channel.qsize() == 0


async def test_sender_blocks_while_full_and_proceeds_when_receiver_takes_one() -> None:
    channel = Channel[str](1, "one")
    await channel.send("a")
    blocked = asyncio.create_task(channel.send("b"))
    await spin()
    assert not blocked.done()
    assert channel.qsize() == 1

    assert await channel.receive() == "a"
    await asyncio.wait_for(blocked, timeout=5)
    assert await channel.receive() == "b"


async def test_blocked_senders_are_served_in_order() -> None:
    channel = Channel[int](1, "order")
    await channel.send(0)
    senders = [asyncio.create_task(channel.send(n)) for n in (1, 2, 3)]
    await spin()
    received = [await channel.receive() for _ in range(4)]
    await asyncio.gather(*senders)
    assert received == [0, 1, 2, 3]


async def test_receiver_waits_for_an_item() -> None:
    channel = Channel[int](2, "wait")
    receiver = asyncio.create_task(channel.receive())
    await spin()
    assert not receiver.done()
    await channel.send(7)
    assert await asyncio.wait_for(receiver, timeout=5) == 7


async def test_close_drains_then_raises() -> None:
    channel = Channel[int](4, "drain")
    await channel.send(1)
    await channel.send(2)
    channel.close()
    channel.close()  # idempotent
    assert channel.closed
    assert await channel.receive() == 1
    assert await channel.receive() == 2
    with pytest.raises(ChannelClosed):
        await channel.receive()


async def test_async_for_ends_when_closed_and_drained() -> None:
    channel = Channel[int](4, "iter")
    for n in range(3):
        await channel.send(n)
    channel.close()
    assert [n async for n in channel] == [0, 1, 2]


async def test_send_to_closed_channel_raises() -> None:
    channel = Channel[int](1, "closed")
    channel.close()
    with pytest.raises(ChannelClosed):
        await channel.send(1)


async def test_close_wakes_blocked_sender_with_channel_closed() -> None:
    channel = Channel[int](1, "full")
    await channel.send(1)
    blocked = asyncio.create_task(channel.send(2))
    await spin()
    channel.close()
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(blocked, timeout=5)
    # The item that was in before close is still delivered; the refused one is not.
    assert [n async for n in channel] == [1]


async def test_close_wakes_blocked_receivers() -> None:
    channel = Channel[int](1, "empty")
    receivers = [asyncio.create_task(channel.receive()) for _ in range(3)]
    await spin()
    channel.close()
    results = await asyncio.wait_for(asyncio.gather(*receivers, return_exceptions=True), timeout=5)
    assert all(isinstance(result, ChannelClosed) for result in results)


async def test_cancelled_receive_loses_nothing() -> None:
    channel = Channel[int](2, "cancel-receive")
    receiver = asyncio.create_task(channel.receive())
    await spin()
    receiver.cancel()
    with pytest.raises(asyncio.CancelledError):
        await receiver
    await channel.send(1)
    assert await channel.receive() == 1


async def test_receive_cancelled_after_wakeup_passes_the_item_on() -> None:
    # The first receiver is woken for the item and cancelled before it runs: the item must stay
    # in the channel and the second receiver must be woken for it.
    channel = Channel[int](2, "handoff")
    first = asyncio.create_task(channel.receive())
    second = asyncio.create_task(channel.receive())
    await spin()
    await channel.send(1)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, timeout=5) == 1
    assert channel.qsize() == 0


async def test_cancelled_send_does_not_deliver() -> None:
    channel = Channel[int](1, "cancel-send")
    await channel.send(1)
    sender = asyncio.create_task(channel.send(2))
    await spin()
    sender.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sender
    channel.close()
    assert [n async for n in channel] == [1]


async def test_send_cancelled_after_wakeup_passes_the_slot_on() -> None:
    channel = Channel[int](1, "slot")
    await channel.send(0)
    first = asyncio.create_task(channel.send(1))
    second = asyncio.create_task(channel.send(2))
    await spin()
    assert await channel.receive() == 0  # wakes `first` for the free slot
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, timeout=5)
    channel.close()
    assert [n async for n in channel] == [2]


async def test_nothing_lost_or_duplicated_under_random_cancellation() -> None:
    channel = Channel[int](2, "stress")
    delivered: list[int] = []
    sent: list[int] = []

    async def produce(start: int) -> None:
        for n in range(start, start + 50):
            await channel.send(n)
            sent.append(n)

    async def consume() -> None:
        async for n in channel:
            delivered.append(n)

    producers = [asyncio.create_task(produce(k * 1000)) for k in range(3)]
    consumers = [asyncio.create_task(consume()) for _ in range(2)]
    # Cancel some producers and a consumer mid-flight, at deterministic points.
    for round_number in range(30):
        await asyncio.sleep(0)
        if round_number == 5:
            producers[1].cancel()
        if round_number == 9:
            consumers[0].cancel()
    await asyncio.wait_for(asyncio.gather(*producers, return_exceptions=True), timeout=5)
    channel.close()
    await asyncio.wait_for(asyncio.gather(*consumers, return_exceptions=True), timeout=5)
    assert sorted(delivered) == sorted(sent)
    assert len(set(delivered)) == len(delivered)


async def test_dropping_channel_drops_oldest_and_counts() -> None:
    dropped_items: list[int] = []
    inbox = DroppingChannel[int](2, "inbox", on_drop=dropped_items.append)
    assert inbox.send_nowait(1) is True
    assert inbox.send_nowait(2) is True
    assert inbox.send_nowait(3) is False
    await inbox.send(4)  # never blocks either
    assert inbox.dropped == 2
    assert dropped_items == [1, 2]
    inbox.close()
    assert [n async for n in inbox] == [3, 4]


async def test_dropping_channel_without_callback_still_counts() -> None:
    inbox = DroppingChannel[int](1, "inbox")
    for n in range(5):
        inbox.send_nowait(n)
    assert inbox.dropped == 4
    assert await inbox.receive() == 4


async def test_dropping_channel_wakes_waiting_receiver() -> None:
    inbox = DroppingChannel[int](1, "inbox")
    receiver = asyncio.create_task(inbox.receive())
    await spin()
    inbox.send_nowait(9)
    assert await asyncio.wait_for(receiver, timeout=5) == 9


async def test_send_to_closed_dropping_channel_raises() -> None:
    inbox = DroppingChannel[int](1, "inbox")
    inbox.close()
    with pytest.raises(ChannelClosed):
        inbox.send_nowait(1)
    with pytest.raises(ChannelClosed):
        await inbox.send(1)
