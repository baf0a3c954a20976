"""Read the timestamp of the record at each committed offset with batched Fetch requests.

Reads run in passes. A pass reads each partition once, from the lowest offset still wanted
there (:mod:`fetch_plan` batches the reads per leader), sends the requests concurrently (at most
``max_concurrent_fetches`` in flight, each bounded by ``fetch_timeout``) and scans each
partition's bytes (:mod:`record_batches`) for *every* offset wanted on it: groups of one partition
usually sit close together, so the bytes read for the lowest offset often hold the records of
the others too, and those cost no request of their own. Offsets the bytes did not reach, reads
that need more bytes and reads that found only transaction markers go to the next pass; an
offset read :data:`MAX_PASSES` times without a timestamp is a failure. A slow or failing request
costs its own partitions their sample for this cycle and nothing else.

Payload bytes stay inside this module's local variables: they are scanned for a timestamp and
dropped. (aiokafka's ``aiokafka.conn`` logger prints whole responses at DEBUG level; logging
setup must keep that logger at INFO or above.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from functools import partial
from types import MappingProxyType
from typing import Any, Literal, NamedTuple, Protocol

from aiokafka.errors import KafkaConnectionError as AioConnectionError
from aiokafka.errors import KafkaError as AioKafkaError
from aiokafka.errors import NodeNotReadyError, RequestTimedOutError, for_code
from aiokafka.protocol.fetch import FetchRequest
from cachetools import LRUCache, TTLCache

from klag_pipeline.kafka.fetch_plan import DEFAULT_REQUEST_BYTES, FetchRequestPlan, plan_fetches
from klag_pipeline.kafka.port import RequestObserver
from klag_pipeline.kafka.record_batches import (
    Found,
    NeedMoreBytes,
    NoDataRecord,
    Unreadable,
    find_timestamp,
)
from klag_pipeline.model import Failure, TimestampSample, TopicPartition

MAX_PASSES = 4
"""Reads per committed offset per call: the first read, a re-read with the learned batch size
(or at the head of a request), and continuations past transaction markers. Passes in which an
offset only waits for a lower one of its partition do not count."""

STAGE = "timestamps"

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


@dataclass(frozen=True, slots=True)
class _Job:
    """One offset asked for, and where its next read starts."""

    tp: TopicPartition
    asked: int
    read_from: int
    # False once offsets between `asked` and `read_from` were skipped without being markers or
    # aborted records: then whatever is found is not the record at `asked`.
    gap_explained: bool = True
    head: bool = False
    reads: int = 0
    """Reads that started at ``read_from`` or before it for this job."""


@dataclass(frozen=True, slots=True)
class _PartitionData:
    error_code: int
    records: bytes
    aborted: tuple[tuple[int, int], ...]
    # The response used up its byte budget before this partition: empty says nothing about it.
    starved: bool
    # Where the log ends for this isolation level (high watermark, or last stable offset under
    # read_committed), as this response reports it; -1 when unknown.
    log_end: int = -1


_Outcome = _PartitionData | str


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
        jobs = [
            _Job(tp, offset, offset) for tp in sorted(wanted) for offset in sorted(set(wanted[tp]))
        ]
        samples: dict[tuple[TopicPartition, int], TimestampSample] = {}
        failures: list[Failure] = []
        sent = 0
        while jobs:
            runnable: list[_Job] = []
            for job in jobs:
                size = self._oversized.get((job.tp, job.read_from))
                if size is not None:
                    failures.append(_oversized(job, size, self._cap))
                elif job.reads >= MAX_PASSES:
                    failures.append(_failure(job, f"no timestamp after {MAX_PASSES} reads"))
                else:
                    runnable.append(job)
            if not runnable:
                break
            # One read per partition per pass, from its lowest outstanding offset.
            lowest: dict[TopicPartition, int] = {}
            for job in runnable:
                if job.read_from < lowest.get(job.tp, job.read_from + 1):
                    lowest[job.tp] = job.read_from
            plan = plan_fetches(
                {tp: (offset,) for tp, offset in lowest.items()},
                leaders,
                max_bytes_per_partition=self._cap,
                learned_sizes=self._learned,
                max_request_bytes=self._request_bytes,
                head_first={
                    job.tp for job in runnable if job.head and job.read_from == lowest[job.tp]
                },
            )
            by_tp: dict[TopicPartition, list[_Job]] = {}
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
                reason = "no leader known for the partition" if tp in leaderless else "not read"
                failures.extend(_failure(job, reason) for job in left)
        return SampleResult(MappingProxyType(samples), tuple(failures), sent)

    def _consume(
        self,
        by_tp: dict[TopicPartition, list[_Job]],
        samples: dict[tuple[TopicPartition, int], TimestampSample],
        failures: list[Failure],
        pending: list[_Job],
        outcomes: Mapping[tuple[TopicPartition, int], _Outcome],
    ) -> None:
        """Give every job of the partitions in ``outcomes`` its verdict for this pass."""
        for (tp, read_from), outcome in outcomes.items():
            for job in by_tp.pop(tp, ()):
                verdict: TimestampSample | Failure | _Job
                if job.read_from == read_from:
                    verdict = self._judge(job, outcome)
                    if isinstance(verdict, _Job):
                        verdict = replace(verdict, reads=job.reads + 1)
                else:
                    verdict = self._covered(job, outcome)
                if isinstance(verdict, TimestampSample):
                    samples[(job.tp, job.asked)] = verdict
                elif isinstance(verdict, Failure):
                    failures.append(verdict)
                else:
                    pending.append(verdict)

    def _covered(self, job: _Job, outcome: _Outcome) -> TimestampSample | Failure | _Job:
        """A job above the offset its partition was read from: the sample if the bytes hold its
        record in a complete batch, else the job unchanged for a later pass. A read that failed
        fails it too: another read of the partition this cycle would meet the same timeout or
        error, one pass after the other."""
        if isinstance(outcome, str):
            return _failure(job, outcome)
        if outcome.error_code:
            return _failure(job, _error_name(outcome.error_code))
        if len(outcome.records) > self._cap:
            return job
        aborted = outcome.aborted if self._isolation else None
        scan = find_timestamp(outcome.records, job.read_from, aborted=aborted)
        if not isinstance(scan, Found):
            return _caught_up(job, scan, outcome) or job
        return scan.sample if job.gap_explained else replace(scan.sample, record_missing=True)

    def _judge(self, job: _Job, outcome: _Outcome) -> TimestampSample | Failure | _Job:
        if isinstance(outcome, str):
            return _failure(job, outcome)
        if outcome.error_code:
            return _failure(job, _error_name(outcome.error_code))
        if len(outcome.records) > self._cap:
            # Only the head partition of a request can get more than it asked for: Kafka hands
            # it its whole first batch. The cap is a hard limit, so the bytes are not read.
            self._oversized[(job.tp, job.read_from)] = len(outcome.records)
            return _oversized(job, len(outcome.records), self._cap)
        aborted = outcome.aborted if self._isolation else None
        scan = find_timestamp(outcome.records, job.read_from, aborted=aborted)
        if isinstance(scan, Found):
            if job.gap_explained:
                return scan.sample
            return replace(scan.sample, record_missing=True)
        if isinstance(scan, Unreadable):
            return _failure(job, scan.error)
        caught_up = _caught_up(job, scan, outcome)
        if caught_up is not None:
            return caught_up
        explained = job.gap_explained and scan.gap_explained
        if isinstance(scan, NoDataRecord):
            return _Job(job.tp, job.asked, scan.next_offset, explained)
        if isinstance(scan, NeedMoreBytes):
            if scan.batch_size is not None:
                if scan.batch_size > self._cap:
                    self._oversized[(job.tp, scan.next_offset)] = scan.batch_size
                    return _oversized(job, scan.batch_size, self._cap)
                self._learned[job.tp] = scan.batch_size
                return _Job(job.tp, job.asked, scan.next_offset, explained)
            if outcome.starved:
                return job
            if job.head:
                # The head partition gets its first batch whatever its size: nothing is there
                # (e.g. above the last stable offset under read_committed).
                return _failure(job, "no records returned")
            return _Job(job.tp, job.asked, scan.next_offset, explained, head=True)
        raise AssertionError(f"unexpected scan result {scan!r}")

    async def _send_all(
        self,
        requests: tuple[FetchRequestPlan, ...],
        consume: Callable[[Mapping[tuple[TopicPartition, int], _Outcome]], None],
    ) -> None:
        """Send ``requests`` concurrently; ``consume`` gets each request's outcomes (one per
        planned partition, whatever happened to the request) as soon as it has them."""
        if not requests:
            return
        slots = asyncio.Semaphore(self._concurrency)
        async with asyncio.TaskGroup() as group:
            for request in requests:
                group.create_task(self._send_one(request, slots, consume))

    async def _send_one(
        self,
        request: FetchRequestPlan,
        slots: asyncio.Semaphore,
        consume: Callable[[Mapping[tuple[TopicPartition, int], _Outcome]], None],
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
    ) -> dict[tuple[TopicPartition, int], _Outcome]:
        throttle_ms = int(_field(response, "throttle_time_ms", 0))
        # What a consumer of this isolation level can reach: the high watermark, or the last
        # stable offset under read_committed.
        end_name = "last_stable_offset" if self._isolation else "highwater_offset"
        if throttle_ms > 0 and self._observer is not None:
            self._observer.on_throttle("Fetch", str(request.leader), throttle_ms)
        top_error = int(_field(response, "error_code", 0))
        if top_error:
            return _all(request, f"Fetch failed: {_error_name(top_error)}")
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
        outcomes: dict[tuple[TopicPartition, int], _Outcome] = {}
        for fetch in request.partitions:
            entry = received.get(fetch.tp)
            if entry is None:
                outcomes[(fetch.tp, fetch.offset)] = "partition missing from the Fetch response"
            else:
                code, records, aborted, end = entry
                outcomes[(fetch.tp, fetch.offset)] = _PartitionData(
                    code, records, aborted, starved, end
                )
        return outcomes

    def _observe(self, request: FetchRequestPlan, outcome: str, started: float) -> None:
        if self._observer is not None:
            seconds = self._monotonic() - started
            self._observer.on_request("Fetch", str(request.leader), outcome, seconds)


def _caught_up(job: _Job, scan: object, outcome: _PartitionData) -> TimestampSample | None:
    """The end-of-log sample when nothing but transaction markers (and, under read_committed,
    aborted records) lies between the offset asked for and the end of the log: a transactional
    consumer that read everything commits the offset of the trailing marker, and it is caught up
    in time although ``high − committed`` is not 0. A gap that is not all markers (records the
    cleaner removed) is still the end of the log, flagged as a missing record."""
    if not isinstance(scan, NoDataRecord | NeedMoreBytes) or outcome.log_end < 0:
        return None
    if isinstance(scan, NeedMoreBytes) and scan.batch_size is not None:
        return None  # a batch was cut off: there is more to read
    if max(scan.next_offset, job.read_from) < outcome.log_end:
        return None
    explained = job.gap_explained and scan.gap_explained
    return TimestampSample(
        offset=outcome.log_end, timestamp_ms=0, record_missing=not explained, end_of_log=True
    )


def _field(response: Any, name: str, default: int) -> Any:
    return response.get_item(name) if name in response.SCHEMA.names else default


def _partition_layout(response: Any) -> dict[str, int]:
    """Field name → position in a partition entry, for the negotiated response version."""
    schema = response.SCHEMA
    topics = schema.fields[schema.names.index("topics")].array_of
    partitions = topics.fields[topics.names.index("partitions")].array_of
    return {name: index for index, name in enumerate(partitions.names)}


def _all(request: FetchRequestPlan, error: str) -> dict[tuple[TopicPartition, int], _Outcome]:
    return {(fetch.tp, fetch.offset): error for fetch in request.partitions}


def _outcome_class(exc: BaseException) -> str:
    """The RequestObserver outcome class of a failed request."""
    if isinstance(exc, RequestTimedOutError):
        return "timeout"
    if isinstance(exc, OSError | AioConnectionError | NodeNotReadyError):
        return "connection"
    return "protocol"


def _error_name(code: int) -> str:
    return f"{for_code(code).message} (error code {code})"


def _failure(job: _Job, error: str) -> Failure:
    return Failure(
        stage=STAGE,
        target=f"{job.tp.topic}-{job.tp.partition}",
        error=f"offset {job.asked}: {error}",
    )


def _oversized(job: _Job, size: int, cap: int) -> Failure:
    return _failure(job, f"batch larger than max_bytes_per_partition ({size} > {cap} bytes)")


__all__ = ["MAX_PASSES", "FetchTransport", "IsolationLevel", "SampleResult", "TimestampSampler"]
