"""The timestamp sampler's way to send a Fetch: aiokafka's ``send`` behind the guards the
transport applies to its own requests (foreign exceptions, abandoned requests, absurd throttles).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiokafka.errors import KafkaConnectionError as AioConnectionError
from aiokafka.errors import KafkaError as AioKafkaError
from aiokafka.errors import KafkaProtocolError as AioProtocolError

MAX_THROTTLE_MS = 300_000
"""Kafka's quota managers throttle for at most quota window size x samples (11 s by default).
An answer asking for more than 5 minutes is malformed (garbage that still decoded): honouring
up to 2^31 ms would silence the broker for 24 days, so the request fails instead."""


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
    """

    def __init__(self, client: Any, drop_connection: Callable[[int], None]) -> None:
        self._client = client
        self._drop_connection = drop_connection

    async def send(self, node_id: int, request: Any) -> Any:
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
        throttle = response.get_item("throttle_time_ms") if "throttle_time_ms" in names else 0
        if not 0 <= throttle <= MAX_THROTTLE_MS:
            # The sampler would pause this broker's Fetches for that long (see MAX_THROTTLE_MS).
            raise AioProtocolError(f"implausible throttle_time_ms {throttle} from node {node_id}")
        return response
