"""Process tuning: the allocator calls reach glibc, the GC freeze and the switch interval."""

from __future__ import annotations

import gc
import platform
import sys
import weakref
from collections.abc import Iterator

import pytest

from klag_pipeline.telemetry import runtime

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.fixture
def restore_interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


@pytest.mark.usefixtures("restore_interval")
def test_tune_process_sets_the_switch_interval_and_caps_arenas_on_glibc() -> None:
    sys.setswitchinterval(0.005)
    assert runtime.tune_process() is GLIBC
    assert sys.getswitchinterval() == pytest.approx(runtime.SWITCH_INTERVAL_SECONDS)


def test_release_free_memory_returns_pages_after_a_large_transient() -> None:
    if not GLIBC:
        pytest.fail("these tests run on glibc Linux; musl or other platforms need their own")
    # 80 MB in 4 KiB blocks: above pymalloc's 512-byte limit and below any mmap threshold, so
    # they come from the malloc heap, and freeing them leaves whole free pages there.
    garbage = [bytearray(4096) for _ in range(20_000)]
    del garbage
    assert runtime.release_free_memory()


def test_settle_heap_freezes_what_exists_and_collects_the_young_less_often() -> None:
    before = gc.get_threshold()
    try:
        runtime.settle_heap()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (runtime.GC_YOUNG_THRESHOLD, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_settle_heap_collects_young_garbage_instead_of_freezing_it() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self  # a reference cycle: only the cyclic GC frees it

    before = gc.get_threshold()
    gc.disable()  # no automatic collection in between: only settle_heap can free it
    try:
        garbage = Node()
        gone = weakref.ref(garbage)
        del garbage
        runtime.settle_heap()
        assert gone() is None
    finally:
        gc.enable()
        gc.unfreeze()
        gc.set_threshold(*before)
