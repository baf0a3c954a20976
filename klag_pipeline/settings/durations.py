"""Human durations ("500ms", "30s", "1m 30s") ↔ float seconds.

The unit names are those of Rust's ``humantime`` crate (which klag-exporter uses), minus months
and years, so every duration a klag-exporter config contains parses here too.
"""

from __future__ import annotations

import math
import re

_UNIT_SECONDS: dict[str, float] = {}
for _names, _seconds in (
    (("ns", "nsec", "nanos", "nanosecond", "nanoseconds"), 1e-9),
    (("us", "µs", "usec", "micros", "microsecond", "microseconds"), 1e-6),
    (("ms", "msec", "millis", "millisecond", "milliseconds"), 1e-3),
    (("s", "sec", "secs", "second", "seconds"), 1.0),
    (("m", "min", "mins", "minute", "minutes"), 60.0),
    (("h", "hr", "hrs", "hour", "hours"), 3600.0),
    (("d", "day", "days"), 86400.0),
    (("w", "week", "weeks"), 604800.0),
):
    for _name in _names:
        _UNIT_SECONDS[_name] = _seconds

_TERM = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zµ]+)", re.IGNORECASE)
_BARE_NUMBER = re.compile(r"\s*\d+(?:\.\d+)?\s*")

EXAMPLES = "'500ms', '30s', '5m', '1h' or '1m 30s'"


class DurationError(ValueError):
    """A value that is not a duration; the message says what was expected."""


def parse_duration(value: object) -> float:
    """Return ``value`` (a string such as ``"1m 30s"``) as float seconds.

    A bare number is rejected: ``30`` could mean seconds or milliseconds, and guessing wrong is
    a silent 1000× error. Negative durations do not exist. A value too long for a float comes
    back as ``inf``: check the result against a range before using it.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DurationError(f"must be a duration such as {EXAMPLES}")
    if not isinstance(value, str) or _BARE_NUMBER.fullmatch(value):
        shown = value if not isinstance(value, str) else repr(value)
        raise DurationError(f"must be a duration with a unit such as '30s', got {shown}")
    text = value.strip()
    total = 0.0
    position = 0
    while position < len(text):
        match = _TERM.match(text, position)
        if match is None or match.group(2) not in _UNIT_SECONDS:
            raise DurationError(f"must be a duration such as {EXAMPLES}, got {value!r}")
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if not text:
        raise DurationError(f"must be a duration such as {EXAMPLES}, got ''")
    # "9999…9w" with hundreds of digits overflows float to inf: returned as such, for the
    # caller's range check to reject (the loader checks every duration against its range).
    return total


def format_duration(seconds: float) -> str:
    """Render float seconds the way a human writes them in the settings file."""
    if not math.isfinite(seconds) or seconds >= 1e12:
        return f"{seconds:g}s"
    if seconds < 1 and seconds != 0:
        return f"{seconds * 1000:g}ms"
    whole = int(seconds)
    if whole != seconds:
        return f"{seconds:g}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    return " ".join(parts) or "0s"
