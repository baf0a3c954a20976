"""Text-exposition helpers shared by the Prometheus sink and the self-metrics: the value and
label spellings of the Prometheus text format 0.0.4 and OpenMetrics 1.0 (identical for gauges),
and the choice of format and encoding from a scrape's ``Accept`` headers."""

from __future__ import annotations

import math
from collections.abc import Iterator

from klag_pipeline.metrics_catalog import Family


def header(family: Family) -> str:
    """The ``# HELP`` and ``# TYPE`` lines of a catalog family rendered by hand (the same in both
    formats for the gauges rendered this way)."""
    return f"# HELP {family.name} {family.help}\n# TYPE {family.name} {family.kind}\n"


def escape_label_value(value: str) -> str:
    """Escape per the exposition formats: backslash, double quote and line feed."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


_EXACT = float(2**53)


def format_value(value: float) -> str:
    """Integers without a decimal point (bools and IntEnums as their number); other floats
    repr-style; ``+Inf``/``-Inf``/``NaN``. Called per float sample: the common case (a finite
    float) is decided first."""
    if type(value) is float:
        if value.is_integer():
            # Integral floats print as integers, like Go's strconv; beyond 2**53 repr is exact
            # enough.
            return str(int(value)) if -_EXACT < value < _EXACT else repr(value)
        if -math.inf < value < math.inf:
            return repr(value)
        if value != value:
            return "NaN"
        return "+Inf" if value > 0 else "-Inf"
    if isinstance(value, int):
        return str(int(value))
    return format_value(float(value))


def _weighted(header: str) -> Iterator[tuple[str, float]]:
    """``(lower-cased token, q)`` for each element of an Accept-style header."""
    for element in header.split(","):
        token, *params = (part.strip() for part in element.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        yield token.lower(), q


def wants_openmetrics(accept: str | None) -> bool:
    """Whether an ``Accept`` header prefers OpenMetrics over the text format (q-values honoured).

    Prometheus sends ``application/openmetrics-text;version=1.0.0,…,text/plain;…;q=0.5,…``.
    """
    # Not prometheus_client.exposition.choose_encoder: it takes the first openmetrics or
    # text/plain element and ignores q-values (``application/openmetrics-text;q=0`` would still
    # get OpenMetrics), and it answers with other Content-Type strings (``escaping=…``, the
    # requested version echoed), which would change the responses SPEC §6 pins. Its encoders are
    # no use either: the compatibility body is pre-rendered by hand (docs/metrics.md).
    best_om = best_text = 0.0
    for media_type, q in _weighted(accept or ""):
        if media_type == "application/openmetrics-text":
            best_om = max(best_om, q)
        elif media_type in ("text/plain", "text/*", "*/*"):
            best_text = max(best_text, q)
    return best_om > 0 and best_om >= best_text


def wants_gzip(accept_encoding: str | None) -> bool:
    """Whether ``Accept-Encoding`` allows gzip; an explicit ``gzip`` entry overrides ``*``."""
    # Not prometheus_client.exposition.gzip_accepted: it ignores ``q=0`` and ``*``.
    explicit: float | None = None
    wildcard = 0.0
    for coding, q in _weighted(accept_encoding or ""):
        if coding in ("gzip", "x-gzip"):
            explicit = max(explicit or 0.0, q)
        elif coding == "*":
            wildcard = max(wildcard, q)
    return (wildcard if explicit is None else explicit) > 0


__all__ = ["escape_label_value", "format_value", "header", "wants_gzip", "wants_openmetrics"]
