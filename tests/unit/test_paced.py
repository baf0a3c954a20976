"""paced(): every item in order, and other tasks get the loop between slices."""

from __future__ import annotations

import asyncio

import pytest

from klag_pipeline.pipeline.paced import paced


async def test_every_item_in_order_and_the_loop_runs_between_slices() -> None:
    ran_at: list[int] = []
    seen: list[int] = []

    async def other() -> None:
        while True:
            ran_at.append(len(seen))
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    await asyncio.sleep(0)  # `other` runs once before the walk starts
    async for item in paced(range(10), every=3):
        seen.append(item)
    task.cancel()
    assert seen == list(range(10))
    # The other task ran after items 3, 6 and 9 had been taken, never inside a slice.
    assert ran_at == [0, 3, 6, 9]


async def test_every_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        async for _ in paced([1], every=0):
            pass
