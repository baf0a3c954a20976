"""Text-exposition helpers shared by the Prometheus sink and the self-metrics: the value and
label spellings of the Prometheus text format 0.0.4 and OpenMetrics 1.0 (identical for gauges)."""

from __future__ import annotations

import math


def escape_label_value(value: str) -> str:
    """Escape per the exposition formats: backslash, double quote and line feed."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def format_value(value: float) -> str:
    """Integers without a decimal point; other floats repr-style; ``+Inf``/``-Inf``/``NaN``."""
    if isinstance(value, int):
        return str(value)
    if value != value:
        return "NaN"
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    # Integral floats print as integers, like Go's strconv; beyond 2**53 repr is exact enough.
    if value.is_integer() and -(2**53) < value < 2**53:
        return str(int(value))
    return repr(value)


__all__ = ["escape_label_value", "format_value"]
