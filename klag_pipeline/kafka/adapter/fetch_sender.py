"""The timestamp sampler's way to send a Fetch: aiokafka's ``send`` behind the guards the
transport applies to its own requests (foreign exceptions, abandoned requests, absurd throttles).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiokafka.errors import KafkaConnectionError as AioConnectionError
from aiokafka.errors import KafkaError as AioKafkaError
from aiokafka.errors import KafkaProtocolError as AioProtocolError

from klag_pipeline.kafka.port import RequestObserver

MAX_THROTTLE_MS = 300_000
"""Kafka's quota managers throttle for at most quota window size x samples (11 s by default).
An answer asking for more than 5 minutes is malformed (garbage that still decoded): honouring
up to 2^31 ms would silence the broker for 24 days, so the request fails instead."""


class Throttles:
    """The adapter's one per-broker "not before" table: aiokafka ignores throttle_time_ms.

    The broker mutes the whole connection for that long (KIP-219), whichever of our components
    sent the request, so the transport and the sampler's sender share one table."""

    def __init__(self) -> None:
        self._not_before: dict[int, float] = {}

    async def wait_throttle(self, node: int) -> None:
        """Sleep until ``node``'s last throttle_time_ms has passed, including throttles that
        answers to other requests announce meanwhile."""
        # A time that can move later, not a condition to be signalled: sleep until it holds.
        while (wait := self._not_before.get(node, 0.0) - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(wait)

    def note_throttle(self, node: int, throttle_ms: int) -> None:
        """A response from ``node`` asked for a pause: no request goes there before it ends."""
        if throttle_ms > 0:
            until = time.monotonic() + throttle_ms / 1000
            self._not_before[node] = max(self._not_before.get(node, 0.0), until)

    def clear(self) -> None:
        self._not_before.clear()


class FetchSender:
    """aiokafka's ``send``, for the timestamp sampler, which speaks aiokafka's Fetch directly and
    handles aiokafka's errors (plus OSError and NotImplementedError).

    Opening a connection runs aiokafka's own version lookup, which *asserts* on a malformed
    ApiVersions answer (min > max) instead of raising one of its errors. Any such foreign
    exception becomes an aiokafka ``KafkaConnectionError`` here: the connection was not made,
    the Fetch's partitions fail for this cycle, and the process carries on.

    An answer with an implausible ``throttle_time_ms`` (see :data:`MAX_THROTTLE_MS`) is an aiokafka
    ``KafkaProtocolError``: the sampler never pauses a broker for it.

    A Fetch abandoned by the sampler's ``fetch_timeout`` (a cancellation, which aiokafka does not
    act on) closes its connection, as :meth:`Transport.call` does: see there.

    With ``throttles``, every Fetch waits for and feeds the adapter's per-broker throttle table:
    a broker mutes a connection after a throttled answer, whichever part of the adapter sent the
    request. A broker over a client's quota answers a Fetch with throttle_time_ms and no
    partitions at all ("come back later", not an answer): that is raised as an error naming the
    quota, so those partitions' time lag fails for this cycle with a true reason; the next cycle
    asks again after the throttle time (waiting it out inside the cycle can cost the cycle).
    """

    def __init__(
        self,
        client: Any,
        drop_connection: Callable[[int], None],
        throttles: Throttles | None = None,
        observer: RequestObserver | None = None,
    ) -> None:
        self._client = client
        self._drop_connection = drop_connection
        self._throttles = throttles
        self._observer = observer

    async def send(self, node_id: int, request: Any) -> Any:
        if self._throttles is not None:
            await self._throttles.wait_throttle(node_id)
        try:
            response = await self._client.send(node_id, request)
        except asyncio.CancelledError:
            self._drop_connection(node_id)
            raise
        except (AioKafkaError, OSError, NotImplementedError):
            raise
        except Exception as exc:  # a foreign exception from inside aiokafka
            raise AioConnectionError(
                f"connection to node {node_id} failed: unexpected {type(exc).__name__}: {exc}"
            ) from exc
        names = getattr(getattr(response, "SCHEMA", None), "names", ())
        throttle = int(response.get_item("throttle_time_ms")) if "throttle_time_ms" in names else 0
        if not 0 <= throttle <= MAX_THROTTLE_MS:
            # The sampler would pause this broker's Fetches for that long (see MAX_THROTTLE_MS).
            raise AioProtocolError(f"implausible throttle_time_ms {throttle} from node {node_id}")
        if self._throttles is not None:
            self._throttles.note_throttle(node_id, throttle)
        if throttle > 0 and _withheld(request, response, names):
            # The sampler reports the throttles of answers it reads; this one it never reads.
            if self._observer is not None:
                self._observer.on_throttle("Fetch", str(node_id), throttle)
            raise AioKafkaError(
                f"broker {node_id} withheld the data: client quota exceeded "
                f"(throttle_time_ms {throttle})"
            )
        return response


def _withheld(request: Any, response: Any, names: Any) -> bool:
    """A Fetch answered with no topics although it asked for some."""
    asked = getattr(request, "topics", None)
    return bool(asked) and "topics" in names and not response.get_item("topics")
