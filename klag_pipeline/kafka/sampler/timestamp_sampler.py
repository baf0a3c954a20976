"""Read the timestamp of the record at each committed offset with batched Fetch requests.

Reads run in passes. A pass reads each partition once, from the lowest offset still wanted
there (:mod:`klag_pipeline.kafka.fetch_plan` batches the reads per leader), sends the requests
concurrently (at most ``max_concurrent_fetches`` in flight, each bounded by ``fetch_timeout``)
and scans each partition's bytes (:mod:`klag_pipeline.kafka.record_batches`) for *every* offset
wanted on it: groups of one partition usually sit close together, so the bytes read for the
lowest offset often hold the records of the others too, and those cost no request of their own.
What becomes of each offset after a read (sampled, end of log, another pass, failed after
:data:`.jobs.MAX_PASSES` reads) is the state model of :mod:`.jobs`; this module does the I/O
and keeps the caches that outlive a call. A slow or failing request costs its own partitions
their sample for this cycle and nothing else.

Payload bytes stay inside this module's local variables: they are scanned for a timestamp and
dropped. (aiokafka's ``aiokafka.conn`` logger prints whole responses at DEBUG level; logging
setup must keep that logger at INFO or above.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Mapping
from functools import partial
from types import MappingProxyType
from typing import Any, Literal, NamedTuple, Protocol

from aiokafka.errors import KafkaConnectionError as AioConnectionError
from aiokafka.errors import KafkaError as AioKafkaError
from aiokafka.errors import NodeNotReadyError, RequestTimedOutError
from aiokafka.protocol.fetch import FetchRequest
from cachetools import LRUCache, TTLCache

from klag_pipeline.kafka.fetch_plan import DEFAULT_REQUEST_BYTES, FetchRequestPlan, plan_fetches
from klag_pipeline.kafka.port import RequestObserver
from klag_pipeline.kafka.sampler.jobs import (
    Job,
    Outcome,
    PartitionData,
    admit,
    advance,
    code_failure,
    jobs_for,
    read_offsets,
    unread,
)
from klag_pipeline.model import Failure, TimestampSample, TopicPartition

IsolationLevel = Literal["read_uncommitted", "read_committed"]

_ISOLATION_CODES: Mapping[str, int] = MappingProxyType({"read_uncommitted": 0, "read_committed": 1})
# Remembered per partition across calls, to size the next read; bounded so a cluster with very
# many partitions cannot grow it without limit.
_LEARNED_SIZES_MAX = 100_000
# A batch over the cap is not re-read for this long: the same offset is the same batch.
_OVERSIZED_MAX = 10_000
_OVERSIZED_TTL = 600.0


class FetchTransport(Protocol):
    """What the sampler needs of ``aiokafka.AIOKafkaClient``: send one request to one node."""

    async def send(self, node_id: int, request: Any) -> Any: ...


class SampleResult(NamedTuple):
    """Samples keyed by (partition, offset asked for), the failures, and requests sent."""

    samples: Mapping[tuple[TopicPartition, int], TimestampSample]
    failures: tuple[Failure, ...]
    requests_sent: int


class TimestampSampler:
    """Timestamps of the records at given offsets, read with Fetch from partition leaders."""

    def __init__(
        self,
        client: FetchTransport,
        *,
        max_bytes_per_partition: int,
        max_concurrent_fetches: int,
        fetch_timeout: float,
        isolation_level: IsolationLevel = "read_uncommitted",
        observer: RequestObserver | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        max_request_bytes: int = DEFAULT_REQUEST_BYTES,
    ) -> None:
        if max_bytes_per_partition <= 0 or max_concurrent_fetches <= 0 or fetch_timeout <= 0:
            raise ValueError("sampler limits must be positive")
        self._client = client
        self._cap = max_bytes_per_partition
        self._request_bytes = max_request_bytes
        self._concurrency = max_concurrent_fetches
        self._timeout = fetch_timeout
        self._isolation = _ISOLATION_CODES[isolation_level]
        self._observer = observer
        self._monotonic = monotonic
        self._learned: LRUCache[TopicPartition, int] = LRUCache(maxsize=_LEARNED_SIZES_MAX)
        self._oversized: TTLCache[tuple[TopicPartition, int], int] = TTLCache(
            maxsize=_OVERSIZED_MAX, ttl=_OVERSIZED_TTL, timer=monotonic
        )

    async def sample(
        self,
        wanted: Mapping[TopicPartition, Collection[int]],
        leaders: Mapping[TopicPartition, int],
    ) -> SampleResult:
        """Read every offset of ``wanted`` from the partition's leader in ``leaders``.

        Every offset asked for ends as a sample or a :class:`Failure` (target "topic-partition",
        the offset in the error text), never both.
        """
        jobs = jobs_for(wanted)
        samples: dict[tuple[TopicPartition, int], TimestampSample] = {}
        failures: list[Failure] = []
        sent = 0
        while jobs:
            runnable: list[Job] = []
            for job in jobs:
                refused = admit(job, self._oversized.get((job.tp, job.read_from)), self._cap)
                if refused is None:
                    runnable.append(job)
                else:
                    failures.append(refused)
            if not runnable:
                break
            lowest, head_first = read_offsets(runnable)
            plan = plan_fetches(
                {tp: (offset,) for tp, offset in lowest.items()},
                leaders,
                max_bytes_per_partition=self._cap,
                learned_sizes=self._learned,
                max_request_bytes=self._request_bytes,
                head_first=head_first,
            )
            by_tp: dict[TopicPartition, list[Job]] = {}
            for job in runnable:
                by_tp.setdefault(job.tp, []).append(job)
            jobs = []

            # Each response is judged as it arrives, so its record bytes are dropped before the
            # next one is read instead of every response of the pass being held at once.
            await self._send_all(
                plan.requests, partial(self._consume, by_tp, samples, failures, jobs)
            )
            sent += len(plan.requests)
            leaderless = set(plan.leaderless)
            for tp, left in by_tp.items():
                failures.extend(unread(job, leaderless=tp in leaderless) for job in left)
        return SampleResult(MappingProxyType(samples), tuple(failures), sent)

    def _consume(
        self,
        by_tp: dict[TopicPartition, list[Job]],
        samples: dict[tuple[TopicPartition, int], TimestampSample],
        failures: list[Failure],
        pending: list[Job],
        outcomes: Mapping[tuple[TopicPartition, int], Outcome],
    ) -> None:
        """Move every job of the partitions in ``outcomes`` on (:func:`.jobs.advance`), and
        remember what the moves learned for later passes and calls."""
        for (tp, read_at), outcome in outcomes.items():
            for job in by_tp.pop(tp, ()):
                step = advance(
                    job,
                    outcome,
                    read_at=read_at,
                    cap=self._cap,
                    read_committed=bool(self._isolation),
                )
                if step.learned_size is not None:
                    self._learned[tp] = step.learned_size
                if step.oversized is not None:
                    self._oversized[(tp, step.oversized[0])] = step.oversized[1]
                if isinstance(step.result, TimestampSample):
                    samples[(job.tp, job.asked)] = step.result
                elif isinstance(step.result, Failure):
                    failures.append(step.result)
                else:
                    pending.append(step.result)

    async def _send_all(
        self,
        requests: tuple[FetchRequestPlan, ...],
        consume: Callable[[Mapping[tuple[TopicPartition, int], Outcome]], None],
    ) -> None:
        """Send ``requests`` concurrently; ``consume`` gets each request's outcomes (one per
        planned partition, whatever happened to the request) as soon as it has them."""
        if not requests:
            return
        # Short-lived structured concurrency inside one call (DESIGN.md allows it; only
        # long-lived tasks belong to the top-level TaskGroup): the group awaits every task
        # before this returns, a cancellation of the call cancels them all, and the semaphore
        # keeps at most max_concurrent_fetches in flight. No task outlives the pass.
        slots = asyncio.Semaphore(self._concurrency)
        async with asyncio.TaskGroup() as group:
            for request in requests:
                group.create_task(self._send_one(request, slots, consume))

    async def _send_one(
        self,
        request: FetchRequestPlan,
        slots: asyncio.Semaphore,
        consume: Callable[[Mapping[tuple[TopicPartition, int], Outcome]], None],
    ) -> None:
        async with slots:
            started = self._monotonic()
            try:
                async with asyncio.timeout(self._timeout):
                    # Throttles (aiokafka ignores them) are honoured by the sender, on the
                    # adapter's one per-broker table (adapter/fetch_sender.py).
                    response = await self._client.send(request.leader, self._build(request))
            except TimeoutError:
                self._observe(request, "timeout", started)
                error = f"Fetch to broker {request.leader} timed out after {self._timeout:g}s"
                consume(_all(request, error))
                return
            # NotImplementedError: aiokafka knows no Fetch version the broker accepts; that
            # broker's partitions fail, the process and the other brokers carry on.
            except (AioKafkaError, OSError, NotImplementedError) as exc:
                self._observe(request, _outcome_class(exc), started)
                consume(_all(request, f"Fetch to broker {request.leader} failed: {exc}"))
                return
        self._observe(request, "ok", started)
        consume(self._read_response(request, response))

    def _build(self, request: FetchRequestPlan) -> FetchRequest:
        topics: list[tuple[str, list[tuple[int, int, int]]]] = []
        for fetch in request.partitions:
            # Consecutive partitions of a topic share an entry; request order is preserved
            # because the head partition must come first.
            if not topics or topics[-1][0] != fetch.tp.topic:
                topics.append((fetch.tp.topic, []))
            topics[-1][1].append((fetch.tp.partition, fetch.offset, fetch.max_bytes))
        return FetchRequest(
            max_wait_time=0,
            min_bytes=1,
            max_bytes=request.max_bytes,
            isolation_level=self._isolation,
            topics=topics,
        )

    def _read_response(
        self, request: FetchRequestPlan, response: Any
    ) -> dict[tuple[TopicPartition, int], Outcome]:
        throttle_ms = int(_field(response, "throttle_time_ms", 0))
        # What a consumer of this isolation level can reach: the high watermark, or the last
        # stable offset under read_committed.
        end_name = "last_stable_offset" if self._isolation else "highwater_offset"
        if throttle_ms > 0 and self._observer is not None:
            self._observer.on_throttle("Fetch", str(request.leader), throttle_ms)
        top_error = int(_field(response, "error_code", 0))
        if top_error:
            return _all(request, f"Fetch failed: {code_failure(top_error)}")
        layout = _partition_layout(response)
        error_at, records_at = layout["error_code"], layout["message_set"]
        aborted_at = layout.get("aborted_transactions")
        end_at = layout.get(end_name)
        received: dict[TopicPartition, tuple[int, bytes, tuple[tuple[int, int], ...], int]] = {}
        total = 0
        for topic, partitions in response.get_item("topics"):
            for part in partitions:
                records = part[records_at] or b""
                total += len(records)
                # (producer id, first offset) pairs; null when there are none.
                aborted = tuple(
                    (int(pid), int(first))
                    for pid, first in (part[aborted_at] if aborted_at is not None else None) or ()
                )
                end = int(part[end_at]) if end_at is not None else -1
                received[TopicPartition(topic, part[0])] = (part[error_at], records, aborted, end)
        starved = total >= request.max_bytes
        outcomes: dict[tuple[TopicPartition, int], Outcome] = {}
        for fetch in request.partitions:
            entry = received.get(fetch.tp)
            if entry is None:
                outcomes[(fetch.tp, fetch.offset)] = "partition missing from the Fetch response"
            else:
                code, records, aborted, end = entry
                outcomes[(fetch.tp, fetch.offset)] = PartitionData(
                    code, records, aborted, starved, end
                )
        return outcomes

    def _observe(self, request: FetchRequestPlan, outcome: str, started: float) -> None:
        if self._observer is not None:
            seconds = self._monotonic() - started
            self._observer.on_request("Fetch", str(request.leader), outcome, seconds)


def _field(response: Any, name: str, default: int) -> Any:
    return response.get_item(name) if name in response.SCHEMA.names else default


def _partition_layout(response: Any) -> dict[str, int]:
    """Field name → position in a partition entry, for the negotiated response version."""
    schema = response.SCHEMA
    topics = schema.fields[schema.names.index("topics")].array_of
    partitions = topics.fields[topics.names.index("partitions")].array_of
    return {name: index for index, name in enumerate(partitions.names)}


def _all(request: FetchRequestPlan, error: str) -> dict[tuple[TopicPartition, int], Outcome]:
    return {(fetch.tp, fetch.offset): error for fetch in request.partitions}


def _outcome_class(exc: BaseException) -> str:
    """The RequestObserver outcome class of a failed request."""
    if isinstance(exc, RequestTimedOutError):
        return "timeout"
    if isinstance(exc, OSError | AioConnectionError | NodeNotReadyError):
        return "connection"
    return "protocol"


__all__ = ["FetchTransport", "IsolationLevel", "SampleResult", "TimestampSampler"]
