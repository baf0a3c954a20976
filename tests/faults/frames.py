"""What each fault does to a response frame, the proxy's plan and its counters (pure: no I/O).

See :mod:`tests.faults.proxy` for the faults themselves."""

from __future__ import annotations

import ipaddress
import random
import struct
from collections import Counter
from dataclasses import dataclass, field

KINDS: tuple[str, ...] = ("garble", "truncate", "cut", "bad_length", "swap", "reorder")
MAX_FRAME_BYTES = 64 * 1024 * 1024
API_VERSIONS_KEY = 18
_SIZE = struct.Struct(">i")


@dataclass
class FaultPlan:
    """What the proxy does to responses from now on (mutable at run time)."""

    latency: float = 0.0
    fuzz_rate: float = 0.0
    kinds: tuple[str, ...] = KINDS
    apis: frozenset[int] | None = None
    """Only responses to these API keys are fuzzed (None: every API)."""

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(KINDS)
        if unknown or not self.kinds:
            raise ValueError(f"fault kinds must be a non-empty subset of {KINDS}, got {unknown}")
        if not 0.0 <= self.fuzz_rate <= 1.0 or self.latency < 0:
            raise ValueError("fuzz_rate must be in [0, 1] and latency >= 0")


@dataclass
class FaultStats:
    responses: int = 0
    connections: int = 0
    responses_by_api: Counter[str] = field(default_factory=Counter)
    delayed_now: int = 0
    """Responses held back by ``latency`` at this moment (a request is in flight)."""
    faults: Counter[str] = field(default_factory=Counter)
    """kind → count of faults actually applied."""
    by_api: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(kind, API name) → count."""

    @property
    def total_faults(self) -> int:
        return sum(self.faults.values())


def damage(kind: str, frame: bytes, rng: random.Random) -> bytes:
    """``frame`` (size prefix + body) after one single-frame fault of ``kind``."""
    body = frame[4:]
    if kind == "garble":
        return frame[:8] + rng.randbytes(len(body) - 4)
    if kind == "truncate":
        keep = rng.randrange(4, len(body)) if len(body) > 4 else 4
        return _SIZE.pack(keep) + body[:keep]
    if kind == "bad_length":
        choice = rng.randrange(3)
        if choice == 0:
            size = -rng.randrange(1, 1 << 20)
        elif choice == 1:
            size = rng.randrange(0, len(body))
        else:
            size = len(body) + rng.randrange(1, 1 << 16)
        return _SIZE.pack(size) + body
    raise AssertionError(f"not a single-frame fault: {kind}")


def invert_first_range(frame: bytes) -> bytes:
    """An ApiVersions response (v0..v2 layout: error code, [api key, min, max], ...) whose first
    entry has min and max exchanged; unchanged when there is no entry with min < max."""
    # size (4), correlation id (4), error code (2), entry count (4), entries of 6 bytes.
    (count,) = _SIZE.unpack_from(frame, 10)
    out = bytearray(frame)
    for index in range(max(0, min(count, (len(frame) - 14) // 6))):
        at = 14 + 6 * index
        low, high = struct.unpack_from(">hh", frame, at + 2)
        if low < high:
            struct.pack_into(">hh", out, at + 2, high, low)
            break
    return bytes(out)


def require_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"{host!r} is not a loopback address: the fault proxy is for tests")
