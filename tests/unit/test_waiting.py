"""The suite's one polling helper: what it returns and how it fails."""

from __future__ import annotations

import pytest

from tests.support.waiting import wait_until


async def test_returns_the_first_truthy_result_of_a_plain_or_an_async_condition() -> None:
    results = iter([0, [], "ready", "later"])
    assert await wait_until(lambda: next(results), within=5, interval=0) == "ready"
    calls = []

    async def third_call() -> int | None:
        calls.append(1)
        return 7 if len(calls) == 3 else None

    assert await wait_until(third_call, within=5, interval=0) == 7


async def test_fails_after_within_naming_what_and_the_details_of_then() -> None:
    state = ["before"]

    def never() -> list[int]:
        state[0] = "at the deadline"
        return []

    expected = r"^the thing not reached within 0.05s \(last: \[\]\)\nstate: at the deadline$"
    with pytest.raises(AssertionError, match=expected):
        await wait_until(
            never,
            within=0.05,
            interval=0.01,
            message="the thing",
            details=lambda: f"state: {state[0]}",
        )
