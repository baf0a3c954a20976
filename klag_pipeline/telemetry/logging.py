"""structlog setup: one line per event on stderr, JSON off a TTY, console on a TTY.

Use ``structlog.get_logger()`` anywhere; the process calls :func:`configure_logging` once at
start-up, and before that structlog's defaults apply. Levels: trace (5, below debug, for
per-request detail), debug, info, warning, error. ``log.trace(...)`` exists only once logging is
configured (structlog's default logger has no trace level), so code that also runs unconfigured
(unit tests) should log at debug. Pass ``error=exc`` for a failure (rendered as
``"KafkaTimeoutError: …"``) and ``exc_info=True`` only for a real bug (adds the traceback).

Standard-library logging (aiokafka, aiohttp, asyncio) is rendered by the same renderer to the
same stream, at WARNING and above only, so their DEBUG/INFO chatter never floods the output.
aiokafka is quieter still: below ``-l debug`` it is silent (see :data:`QUIET_LIBRARIES`).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Final, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

TRACE: Final = 5
LEVELS: Final = {"trace": TRACE, "debug": 10, "info": 20, "warning": 30, "error": 40}
FORMATS: Final = ("json", "console")
_LEVEL_NAMES: Final = {v: k for k, v in LEVELS.items()} | {50: "critical"}

_state: dict[str, Any] = {"min_level": LEVELS["info"], "secrets": None}

# While a broker is down aiokafka logs every failed connection attempt and metadata refresh at
# ERROR, about ten lines per cycle, burying the exporter's own line. The exporter translates every
# aiokafka failure it meets into its own errors and logs the transitions with the cause
# (cluster_cycle_failed / cluster_recovered, telemetry/cluster_log.py), so these loggers are shown
# only at ``-l debug`` or ``trace`` (from WARNING up, like every library).
QUIET_LIBRARIES: Final = ("aiokafka",)


class KlagLogger(structlog.BoundLoggerBase):
    """The bound logger every ``structlog.get_logger()`` returns once logging is configured.

    Filters by the configured level before any processor runs, so a disabled ``debug`` call
    costs one comparison. Unlike structlog's built-in filtering loggers it knows ``trace``.
    """

    def _emit(self, level: int, event: str, kw: dict[str, Any]) -> Any:
        if level < _state["min_level"]:
            return None
        kw["level"] = _LEVEL_NAMES.get(level, str(level))
        return self._proxy_to_logger("msg", event, **kw)

    def trace(self, event: str, **kw: Any) -> Any:
        return self._emit(TRACE, event, kw)

    def debug(self, event: str, **kw: Any) -> Any:
        return self._emit(10, event, kw)

    def info(self, event: str, **kw: Any) -> Any:
        return self._emit(20, event, kw)

    msg = info

    def warning(self, event: str, **kw: Any) -> Any:
        return self._emit(30, event, kw)

    warn = warning

    def error(self, event: str, **kw: Any) -> Any:
        return self._emit(40, event, kw)

    def critical(self, event: str, **kw: Any) -> Any:
        return self._emit(50, event, kw)

    fatal = critical

    def exception(self, event: str, **kw: Any) -> Any:
        kw.setdefault("exc_info", True)
        return self._emit(40, event, kw)

    def log(self, level: int, event: str, **kw: Any) -> Any:
        return self._emit(level, event, kw)


def configure_logging(
    level: str = "info", fmt: str | None = None, stream: TextIO | None = None
) -> None:
    """Configure structlog and stdlib logging for the whole process.

    ``fmt`` is ``"json"``, ``"console"`` or None (JSON unless ``stream`` is a TTY). ``stream``
    defaults to the current ``sys.stderr``: logs never go to stdout, which carries data.
    Calling it again replaces the previous configuration (tests do).
    """
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    if fmt not in (None, *FORMATS):
        raise ValueError(f"unknown log format {fmt!r}; expected json or console")
    out = sys.stderr if stream is None else stream
    json = fmt == "json" or (fmt is None and not _is_tty(out))
    renderer: Processor = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if json
        else structlog.dev.ConsoleRenderer(colors=_is_tty(out))
    )
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    tail: list[Processor] = [_describe_error]
    if json:
        tail.append(structlog.processors.format_exc_info)
    tail.append(_scrub_secrets)
    _state["min_level"] = LEVELS[level]

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            timestamper,
            *tail,
            _order_keys,
            renderer,
        ],
        wrapper_class=KlagLogger,
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )

    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                timestamper,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *tail,
                _order_keys,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(logging.WARNING, LEVELS[level]))
    debugging = LEVELS[level] <= LEVELS["debug"]
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.NOTSET if debugging else logging.CRITICAL)
    logging.captureWarnings(True)


def redact_in_logs(secrets: Iterable[str]) -> None:
    """Replace these values with ``***`` wherever they appear in a log line (defence in depth:
    nothing should log a secret, but an exception message from a library might echo one)."""
    values = sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True)
    _state["secrets"] = re.compile("|".join(map(re.escape, values))) if values else None


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def _describe_error(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """``error=exc`` → ``"Type: message"``; an ``exc_info`` without ``error=`` gets one too."""
    error = event_dict.get("error")
    if isinstance(error, BaseException):
        event_dict["error"] = _exception_text(error)
    exc_info = event_dict.get("exc_info")
    if exc_info and "error" not in event_dict:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(exc_info, tuple):
            exc = exc_info[1]
        if exc is not None:
            event_dict["error"] = _exception_text(exc)
    return event_dict


def _exception_text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _scrub_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    pattern: re.Pattern[str] | None = _state["secrets"]
    if pattern is None:
        return event_dict
    for key, value in event_dict.items():
        if key == "exc_info" or isinstance(value, (int, float, bool, type(None))):
            continue
        text = value if isinstance(value, str) else str(value)
        if pattern.search(text):
            event_dict[key] = pattern.sub("***", text)
    return event_dict


def _order_keys(_: WrappedLogger, __: str, event_dict: EventDict) -> MutableMapping[str, Any]:
    """timestamp, level, event first: what a human scanning JSON lines looks for."""
    ordered = {k: event_dict.pop(k) for k in ("timestamp", "level", "event") if k in event_dict}
    ordered.update(event_dict)
    return ordered
