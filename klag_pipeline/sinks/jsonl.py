"""The JSON-lines sink: one object per (group, topic, partition) and one per group per cycle,
plus one ``cycle`` summary per cluster per cycle (schema in docs/jsonl.md), to stdout or an
appended, rotated file.

Each cycle's lines are written with one ``write`` of whole lines, never split across a rotation,
from a worker thread so a slow disk or pipe never blocks the event loop. A broken pipe or a full
disk is logged on transition and counted; the exporter keeps running.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import io
import json
import os
import sys
from collections.abc import AsyncIterable, Callable
from pathlib import Path

import structlog

from klag_pipeline.records import SCHEMA_VERSION, rfc3339, snapshot_records
from klag_pipeline.settings.schema import JsonlSettings
from klag_pipeline.snapshot import ClusterSnapshot, ClusterWithdrawn, SinkUpdate

log = structlog.get_logger("klag_pipeline.sinks.jsonl")


def snapshot_lines(snapshot: ClusterSnapshot, *, only_lagging: bool) -> bytes:
    records = snapshot_records(snapshot, only_lagging=only_lagging)
    return b"".join(
        json.dumps(r, separators=(",", ":"), ensure_ascii=False).encode() + b"\n" for r in records
    )


def withdrawn_line(update: ClusterWithdrawn, now: float) -> bytes:
    record = {
        "type": "withdrawn",
        "schema_version": SCHEMA_VERSION,
        "timestamp": rfc3339(now),
        "cluster_name": update.cluster,
        "reason": update.reason,
    }
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def _is_sequence_number(text: str) -> bool:
    """``1``, ``2``, … as RotatingFile writes them (not ``0``, ``007``, ``bak`` or ``²``)."""
    return text.isascii() and text.isdigit() and not text.startswith("0")


class RotatingFile:
    """Append-only file ``path`` with size rotation to ``path.1``, ``path.2``, … (oldest first).

    A rotation renames the live file once, to the next number of the sequence (one more than the
    highest already on disk, so a restart continues it), and deletes the oldest numbered files
    beyond ``keep_files``: one rename and, in a steady state, one unlink per rotation, whatever
    ``keep_files`` is. ``logging.handlers.RotatingFileHandler`` is not used: it renames every kept
    file on every rotation (``path.1`` → ``path.2`` …, ``keep_files`` renames each time), and it
    writes through a buffered text stream, which gives up the guarantee below.

    Unbuffered: a write either lands whole or, when the disk fills up half-way, is truncated
    back, so the file always ends on a whole line and nothing is left in a buffer to fail later.
    """

    def __init__(self, path: Path, *, rotate_bytes: int, keep_files: int) -> None:
        self._path = path
        self._rotate_bytes = rotate_bytes
        self._keep = keep_files
        self._file: io.FileIO | None = None
        # Numbers of the rotated files on disk, oldest first; read from the directory at the
        # first rotation (in the worker thread, and only when the file does rotate).
        self._rotated: collections.deque[int] | None = None

    def _open(self) -> io.FileIO:
        if self._file is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = io.FileIO(self._path, "ab")
        return self._file

    def _numbered(self, number: int) -> Path:
        return self._path.with_name(f"{self._path.name}.{number}")

    def _rotated_on_disk(self) -> collections.deque[int]:
        if self._rotated is None:
            prefix = f"{self._path.name}."
            numbers = []
            with os.scandir(self._path.parent) as entries:
                for entry in entries:
                    suffix = entry.name.removeprefix(prefix)
                    # Only names this class writes: other files next to it are not ours.
                    if entry.name.startswith(prefix) and _is_sequence_number(suffix):
                        numbers.append(int(suffix))
            self._rotated = collections.deque(sorted(numbers))
        return self._rotated

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._keep <= 0:
            self._path.unlink(missing_ok=True)
            return
        rotated = self._rotated_on_disk()
        if self._path.exists():
            number = rotated[-1] + 1 if rotated else 1
            os.replace(self._path, self._numbered(number))
            rotated.append(number)
        # More than one only after keep_files was lowered since the files were written.
        while len(rotated) > self._keep:
            self._numbered(rotated[0]).unlink(missing_ok=True)
            rotated.popleft()

    def write(self, data: bytes) -> None:
        handle = self._open()
        # The size, not tell(): after a truncation the descriptor's offset can be past the end.
        size = os.fstat(handle.fileno()).st_size
        # Rotate before a write that would cross the limit, so no cycle's lines are split.
        if self._rotate_bytes and size > 0 and size + len(data) > self._rotate_bytes:
            self._rotate()
            handle = self._open()
            size = 0
        start = size
        view = memoryview(data)
        try:
            # A regular file takes a short write only when it is about to fail (ENOSPC, EFBIG):
            # the next call raises. Every pass consumes at least one byte, so the loop ends.
            while view:
                written = handle.write(view)
                if not written:
                    raise OSError(errno.EIO, "the file accepted no bytes")
                view = view[written:]
        except OSError:
            with contextlib.suppress(OSError):
                handle.truncate(start)
            raise

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class StdoutWriter:
    def __init__(self) -> None:
        self._out = sys.stdout.buffer

    def write(self, data: bytes) -> None:
        self._out.write(data)
        self._out.flush()

    def close(self) -> None:
        """stdout belongs to the process; flushing is all we do."""


class JsonlSink:
    name = "jsonl"

    def __init__(
        self,
        settings: JsonlSettings,
        *,
        on_error: Callable[[str], None] | None = None,
        time_fn: Callable[[], float] | None = None,
    ) -> None:
        import time

        self._settings = settings
        self._on_error = on_error
        self._time = time_fn or time.time
        self._writer: RotatingFile | StdoutWriter = (
            StdoutWriter()
            if settings.path == "-"
            else RotatingFile(
                Path(settings.path),
                rotate_bytes=settings.rotate_bytes,
                keep_files=settings.keep_files,
            )
        )
        self._failing = False
        self.lines_written = 0

    async def run(self, inbox: AsyncIterable[SinkUpdate]) -> None:
        try:
            async for update in inbox:
                if isinstance(update, ClusterSnapshot):
                    data = snapshot_lines(update, only_lagging=self._settings.only_lagging)
                else:
                    data = withdrawn_line(update, self._time())
                await self._write(data)
        finally:
            try:
                await asyncio.to_thread(self._writer.close)
            except OSError as exc:
                log.error("jsonl_close_failed", path=self._settings.path, error=str(exc))

    async def _write(self, data: bytes) -> None:
        try:
            await asyncio.to_thread(self._writer.write, data)
        except OSError as exc:  # BrokenPipeError, ENOSPC, EACCES, ...
            if self._on_error is not None:
                self._on_error(self.name)
            if not self._failing:
                log.error("jsonl_write_failed", path=self._settings.path, error=str(exc))
            self._failing = True
            return
        self.lines_written += data.count(b"\n")
        if self._failing:
            log.info("jsonl_write_recovered", path=self._settings.path)
            self._failing = False
