"""The one-shot commands: ``once`` (one cycle, printed), ``status`` and ``check --connect``.

They run one short job per cluster concurrently under :func:`progress.run_per_cluster`: a
deadline (``--timeout``), progress on stderr while a step waits, the true outcome of a cluster that
did not answer, and Ctrl-C (the first cancels, the second exits at once). The long-running
exporter is :mod:`klag_pipeline.app`.
"""

from __future__ import annotations

import argparse
from typing import Final

from klag_pipeline.settings.durations import DurationError, format_duration, parse_duration

# Bounds the whole command, per cluster. A healthy cycle of 2,000 groups takes about 1 s cold
# (docs/benchmarks.md), so 30 s only ever cuts off a cluster that is not answering.
DEFAULT_TIMEOUT: Final = 30.0
MIN_TIMEOUT: Final = 0.1
MAX_TIMEOUT: Final = 3600.0
# ``--window`` of ``once`` and ``status``: at least a few cycles, at most what one waits for.
MIN_WINDOW: Final = 1.0
MAX_WINDOW: Final = 3600.0
# The customary status of a process ended by SIGINT (128 + 2).
EXIT_INTERRUPTED: Final = 130


def parse_timeout(text: str) -> float:
    """``--timeout DURATION`` (argparse ``type=``): a duration between 100ms and 1h."""
    return _bounded(text, MIN_TIMEOUT, MAX_TIMEOUT)


def parse_window(text: str) -> float:
    """``--window DURATION`` (argparse ``type=``): a duration between 1s and 1h."""
    return _bounded(text, MIN_WINDOW, MAX_WINDOW)


def _bounded(text: str, least: float, most: float) -> float:
    try:
        seconds = parse_duration(text)
    except DurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if not least <= seconds <= most:
        raise argparse.ArgumentTypeError(
            f"must be between {format_duration(least)} and {format_duration(most)}, got {text!r}"
        )
    return seconds
