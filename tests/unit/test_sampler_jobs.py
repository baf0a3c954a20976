"""The sampler's state model (kafka/sampler/jobs.py), driven directly: no broker, no asyncio.

Record bytes are real batches from aiokafka's builders (see test_record_batches.py), so every
move is reached the way a Fetch answer reaches it.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from klag_pipeline.kafka.sampler.jobs import (
    MAX_PASSES,
    Job,
    Move,
    Outcome,
    PartitionData,
    State,
    admit,
    advance,
    jobs_for,
    read_offsets,
    unread,
)
from klag_pipeline.model import Failure, TimestampSample, TopicPartition
from tests.unit.test_record_batches import batch, marker

TP = TopicPartition("t", 0)
CAP = 4096


def data(records: bytes, *, log_end: int = -1, starved: bool = False) -> PartitionData:
    return PartitionData(0, records, (), starved, log_end)


def step_of(job: Job, outcome: Outcome, read_at: int | None = None) -> tuple[Move, object]:
    at = job.read_from if read_at is None else read_at
    step = advance(job, outcome, read_at=at, cap=CAP, read_committed=False)
    return step.move, step.result


def test_a_record_at_the_offset_is_sampled() -> None:
    step = advance(
        Job(TP, 5, 5), data(batch(5, [(0, 1_000)])), read_at=5, cap=CAP, read_committed=False
    )
    assert (step.move, step.state) == (Move.FOUND, State.SAMPLED)
    assert step.result == TimestampSample(offset=5, timestamp_ms=1_000)


def test_a_record_found_after_an_unexplained_gap_is_flagged_missing() -> None:
    move, result = step_of(Job(TP, 3, 5, gap_explained=False), data(batch(5, [(0, 1_000)])))
    assert move is Move.FOUND
    assert result == TimestampSample(offset=5, timestamp_ms=1_000, record_missing=True)


def test_only_markers_up_to_the_end_of_the_log_is_the_end_of_the_log() -> None:
    step = advance(
        Job(TP, 5, 5), data(marker(5, 7), log_end=6), read_at=5, cap=CAP, read_committed=False
    )
    assert (step.move, step.state) == (Move.CAUGHT_UP, State.END_OF_LOG)
    assert step.result == TimestampSample(offset=6, timestamp_ms=0, end_of_log=True)


def test_markers_with_more_log_after_them_read_on_past_them_and_count_a_read() -> None:
    step = advance(
        Job(TP, 5, 5, reads=1),
        data(marker(5, 7), log_end=9),
        read_at=5,
        cap=CAP,
        read_committed=False,
    )
    assert (step.move, step.state) == (Move.PAST_MARKERS, State.WANTED)
    assert step.result == Job(TP, 5, 6, gap_explained=True, reads=2)


def test_a_cut_off_batch_is_read_again_with_its_size_learned() -> None:
    whole = batch(5, [(0, 1_000), (1, 1_001)])
    step = advance(Job(TP, 5, 5), data(whole[:40]), read_at=5, cap=CAP, read_committed=False)
    assert (step.move, step.learned_size, step.oversized) == (Move.MORE_BYTES, len(whole), None)
    assert step.result == Job(TP, 5, 5, reads=1)


def test_a_cut_off_batch_over_the_cap_fails_and_is_remembered_as_oversized() -> None:
    whole = batch(5, [(i, 1_000) for i in range(20)])
    step = advance(Job(TP, 5, 5), data(whole[:40]), read_at=5, cap=1_000, read_committed=False)
    assert (step.move, step.oversized, step.learned_size) == (Move.FAILED, (5, len(whole)), None)
    assert isinstance(step.result, Failure)
    assert f"({len(whole)} > 1000 bytes)" in step.result.error


def test_more_bytes_than_the_cap_are_not_read_and_the_offset_is_remembered() -> None:
    whole = batch(5, [(i, 1_000) for i in range(20)])
    step = advance(Job(TP, 5, 5), data(whole), read_at=5, cap=1_000, read_committed=False)
    assert (step.move, step.oversized) == (Move.FAILED, (5, len(whole)))


def test_nothing_returned_for_a_starved_partition_reads_it_again_unchanged() -> None:
    move, result = step_of(Job(TP, 5, 5), data(b"", starved=True))
    assert (move, result) == (Move.STARVED, Job(TP, 5, 5, reads=1))


def test_nothing_returned_otherwise_reads_again_at_the_head_then_fails() -> None:
    move, result = step_of(Job(TP, 5, 5), data(b""))
    assert (move, result) == (Move.AT_HEAD, Job(TP, 5, 5, head=True, reads=1))
    assert isinstance(result, Job)
    move, failed = step_of(result, data(b""))
    assert move is Move.FAILED
    assert failed == Failure("timestamps", "t-0", "offset 5: no records returned")


def test_error_codes_are_named_from_kafkas_table_beyond_aiokafkas() -> None:
    # aiokafka's table stops near code 80: it named this one UNKNOWN.
    _, result = step_of(Job(TP, 5, 5), PartitionData(100, b"", (), False))
    assert result == Failure("timestamps", "t-0", "offset 5: UNKNOWN_TOPIC_ID (error code 100)")


def test_a_failed_read_fails_the_reader_and_every_job_riding_along() -> None:
    for job in (Job(TP, 5, 5), Job(TP, 9, 9)):
        move, result = step_of(job, "Fetch to broker 1 timed out after 2s", read_at=5)
        assert move is Move.FAILED
        assert result == Failure(
            "timestamps", "t-0", f"offset {job.asked}: Fetch to broker 1 timed out after 2s"
        )


def test_unreadable_bytes_fail_the_reader_but_a_job_riding_along_waits() -> None:
    flipped = bytearray(batch(5, [(0, 1_000)]))
    flipped[-1] ^= 0xFF  # a payload byte: the CRC no longer matches
    garbage = bytes(flipped)
    assert step_of(Job(TP, 5, 5), data(garbage))[0] is Move.FAILED
    assert step_of(Job(TP, 9, 9, reads=1), data(garbage), read_at=5) == (
        Move.WAITS,
        Job(TP, 9, 9, reads=1),
    )


def test_a_job_riding_along_is_sampled_from_the_lower_read_without_counting_a_read() -> None:
    bytes_ = batch(5, [(0, 1_000), (1, 1_001), (2, 1_002)])
    assert step_of(Job(TP, 7, 7), data(bytes_), read_at=5) == (
        Move.FOUND,
        TimestampSample(offset=7, timestamp_ms=1_002),
    )
    assert step_of(Job(TP, 20, 20), data(bytes_), read_at=5) == (Move.WAITS, Job(TP, 20, 20))


def test_admit_fails_a_job_out_of_reads_or_at_a_known_oversized_batch() -> None:
    assert admit(Job(TP, 5, 5, reads=MAX_PASSES - 1), None, CAP) is None
    assert admit(Job(TP, 5, 5, reads=MAX_PASSES), None, CAP) == Failure(
        "timestamps", "t-0", f"offset 5: no timestamp after {MAX_PASSES} reads"
    )
    oversized = admit(Job(TP, 5, 5), 9_000, CAP)
    assert oversized is not None
    assert "(9000 > 4096 bytes)" in oversized.error


def test_each_partition_is_read_once_from_its_lowest_offset() -> None:
    other = TopicPartition("t", 1)
    jobs = [Job(TP, 9, 9), Job(TP, 5, 7, head=True), Job(other, 3, 3, head=True), Job(TP, 6, 6)]
    lowest, head_first = read_offsets(jobs)
    assert lowest == {TP: 6, other: 3}
    # TP's head job is not its lowest read: TP goes where the plan puts it.
    assert head_first == {other}


def test_jobs_are_one_per_distinct_offset_in_order() -> None:
    other = TopicPartition("a", 2)
    assert jobs_for({TP: [7, 3, 7], other: [1]}) == [
        Job(other, 1, 1),
        Job(TP, 3, 3),
        Job(TP, 7, 7),
    ]
    assert unread(Job(TP, 3, 3), leaderless=True).error == (
        "offset 3: no leader known for the partition"
    )


# --- The pass loop over a random log, with the broker's answers left to Hypothesis. ---


@dataclass(frozen=True)
class Log:
    """A partition's log: (first offset, last offset, bytes, data timestamps by offset)."""

    batches: tuple[tuple[int, int, bytes], ...]
    timestamps: dict[int, int]
    end: int


@st.composite
def logs(draw: st.DrawFn) -> Log:
    offset = draw(st.integers(0, 3))
    batches: list[tuple[int, int, bytes]] = []
    timestamps: dict[int, int] = {}
    for kind in draw(st.lists(st.sampled_from(["data", "marker", "gap"]), max_size=8)):
        if kind == "gap":
            offset += draw(st.integers(1, 3))  # records the cleaner removed
        elif kind == "marker":
            batches.append((offset, offset, marker(offset, 7)))
            offset += 1
        else:
            count = draw(st.integers(1, 4))
            records = [(i, 1_000 + offset + i) for i in range(count)]
            batches.append((offset, offset + count - 1, batch(offset, records)))
            timestamps.update({offset + i: 1_000 + offset + i for i in range(count)})
            offset += count
    return Log(tuple(batches), timestamps, offset)


def answer(log: Log, read_at: int, budget: int, head: bool, starved: bool) -> PartitionData:
    """What a broker sends for a read from ``read_at``: the bytes from the batch holding it,
    cut at ``budget``; a head partition always gets its whole first batch (KIP-74)."""
    tail = [raw for _, last, raw in log.batches if last >= read_at]
    records = b"".join(tail)
    limit = max(budget, len(tail[0])) if head and tail else budget
    return PartitionData(0, records[:limit], (), starved and limit < len(records), log.end)


@settings(max_examples=300, deadline=None)
@given(
    log=logs(),
    asked=st.lists(st.integers(0, 40), min_size=1, max_size=5),
    budgets=st.lists(st.integers(0, 3_000), min_size=1),
    starved=st.lists(st.booleans(), min_size=1),
    cap=st.integers(200, 4_000),
)
def test_every_offset_is_settled_once_within_its_reads(
    log: Log, asked: list[int], budgets: list[int], starved: list[bool], cap: int
) -> None:
    wanted = sorted({offset % (log.end + 1) for offset in asked} | {log.end})
    jobs = jobs_for({TP: wanted})
    settled: dict[int, TimestampSample | Failure] = {}
    oversized: dict[int, int] = {}
    learned = 0
    passes = 0
    while jobs:
        passes += 1
        assert passes <= len(wanted) * (MAX_PASSES + 1), "a job never settles"
        runnable: list[Job] = []
        for job in jobs:
            refused = admit(job, oversized.get(job.read_from), cap)
            if refused is None:
                runnable.append(job)
            else:
                settled.setdefault(job.asked, refused)
                assert settled[job.asked] is refused, f"offset {job.asked} settled twice"
        if not runnable:
            break
        lowest, head_first = read_offsets(runnable)
        read_at = lowest[TP]
        budget = max(budgets[passes % len(budgets)], learned)
        outcome = answer(log, read_at, budget, TP in head_first, starved[passes % len(starved)])
        jobs = []
        for job in runnable:
            step = advance(job, outcome, read_at=read_at, cap=cap, read_committed=False)
            if step.learned_size is not None:
                learned = step.learned_size
            if step.oversized is not None:
                oversized[step.oversized[0]] = step.oversized[1]
            if isinstance(step.result, Job):
                assert step.result.reads <= MAX_PASSES
                jobs.append(step.result)
            else:
                assert job.asked not in settled, f"offset {job.asked} settled twice"
                settled[job.asked] = step.result

    assert sorted(settled) == wanted
    # Committed at the end of the log: caught up, whatever the reads brought (issue 18's rule).
    assert settled[log.end] == TimestampSample(offset=log.end, timestamp_ms=0, end_of_log=True)
    for offset, result in settled.items():
        if isinstance(result, TimestampSample) and not result.end_of_log:
            # The first data record at or after the offset, with the log's own timestamp.
            first = min(o for o in log.timestamps if o >= offset)
            assert (result.offset, result.timestamp_ms) == (first, log.timestamps[first])
            assert result.record_missing == (
                offset not in log.timestamps and _gap_unexplained(log, offset, first)
            )
        elif isinstance(result, TimestampSample):
            assert result.offset == log.end
            assert not any(o >= offset for o in log.timestamps)


def _gap_unexplained(log: Log, start: int, stop: int) -> bool:
    """Some offset in [start, stop) is neither a marker nor in a batch (the cleaner took it)."""
    markers = {
        first for first, last, raw in log.batches if first == last and raw == marker(first, 7)
    }
    return any(o not in markers for o in range(start, stop))
