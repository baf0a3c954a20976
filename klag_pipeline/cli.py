"""The ``klag-pipeline`` command (SPEC §1); the only place that calls ``sys.exit``.

Exit codes: 0 clean, 2 invalid configuration (every problem on stderr as ``path: message``, no
traceback), 1 anything else fatal (a :class:`KlagError` is logged as one line without a
traceback, e.g. ``cannot listen on 0.0.0.0:8000: address already in use``; any other exception
is a bug and is logged with one; for ``once``, ``status`` and ``check --connect``: a cluster that
failed), 130 interrupted by Ctrl-C. ``status`` adds 3 (no such group or cluster) and, when it
answered, 0 for an OK group and 10 + the status code otherwise (9 UNKNOWN, 11 LAGGING,
12 REWOUND, 13 STALLED, 14 STOPPED): codes no other outcome uses, so a script can tell "the group
is STALLED" from "the command failed" (:mod:`klag_pipeline.commands.status`).

Without a subcommand ``run`` is assumed, so klag-exporter's ``--config FILE -l debug`` command
line (Docker images, Helm charts) keeps working.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final

import structlog

from klag_pipeline import package_version
from klag_pipeline.commands import DEFAULT_TIMEOUT, parse_timeout, parse_window
from klag_pipeline.errors import ConfigError, KlagError
from klag_pipeline.settings.durations import format_duration
from klag_pipeline.settings.loader import LoadedSettings
from klag_pipeline.settings.redaction import redact_settings, secret_values
from klag_pipeline.settings.schema import Settings
from klag_pipeline.startup import load as load_for_startup
from klag_pipeline.telemetry.logging import FORMATS, LEVELS, configure_logging, redact_in_logs

DEFAULT_SETTINGS: Final = "./settings.toml"
EXIT_OK: Final = 0
EXIT_FATAL: Final = 1
EXIT_CONFIG: Final = 2
ONCE_FORMATS: Final = ("table", "json", "jsonl", "prometheus")
# Long enough for rates over several cycles of a short poll_interval, short enough to wait for.
DEFAULT_STATUS_WINDOW: Final = 30.0

log = structlog.get_logger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the console script and of ``python -m klag_pipeline``."""
    sys.exit(run_command(argv))


def run_command(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the subcommand and return its exit code."""
    args = _parse(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    except KlagError as exc:
        log.error("fatal_error", error=exc)
        return EXIT_FATAL
    except KeyboardInterrupt:
        log.warning("interrupted")
        return 130
    except Exception:
        log.exception("unexpected_error")
        return EXIT_FATAL


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS keeps a flag given before the subcommand from being reset by the subparser.
    common.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help=f"settings file (same as SETTINGS; default {DEFAULT_SETTINGS})",
    )
    common.add_argument(
        "-l",
        "--log-level",
        choices=list(LEVELS),
        default=argparse.SUPPRESS,
        help="log level (default info)",
    )
    common.add_argument(
        "--log-format",
        choices=FORMATS,
        default=argparse.SUPPRESS,
        help="log format (default: console on a TTY, json otherwise); logs go to stderr",
    )

    parser = argparse.ArgumentParser(
        prog="klag-pipeline",
        description="Kafka consumer-group lag exporter: offset lag, time lag, data loss.",
        parents=[common],
    )
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str, *, group: bool = False) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, parents=[common])
        if group:
            sub.add_argument("group", metavar="GROUP", help="consumer group id")
        sub.add_argument(
            "settings",
            nargs="?",
            metavar="SETTINGS",
            default=argparse.SUPPRESS,
            help=f"settings file (default {DEFAULT_SETTINGS})",
        )
        return sub

    command("run", "run the exporter until SIGTERM/SIGINT")
    check = command("check", "validate the settings and print a summary")
    check.add_argument(
        "--connect", action="store_true", help="also connect to every configured cluster"
    )
    once = command("once", "collect one cycle, print it and exit")
    once.add_argument("--format", choices=ONCE_FORMATS, default="table", help="output format")
    once.add_argument(
        "--window",
        type=parse_window,
        default=None,
        metavar="DURATION",
        help="collect for DURATION (1s to 1h) instead of one cycle, evaluating health over it,"
        " and print the last cycle (the table adds STATUS, CATCH-UP, CONSUME/S, REASON);"
        " cycles at most poll_interval apart, at least three",
    )
    status = command(
        "status",
        "evaluate one consumer group over a window and print its health; exit 0 when OK,"
        " 10 + status code otherwise (9 UNKNOWN, 11 LAGGING, 12 REWOUND, 13 STALLED,"
        " 14 STOPPED), 3 unknown group, 1 a cluster failed",
        group=True,
    )
    status.add_argument(
        "--cluster", metavar="NAME", default=None, help="only this cluster (default: every one)"
    )
    status.add_argument(
        "--window",
        type=parse_window,
        default=DEFAULT_STATUS_WINDOW,
        metavar="DURATION",
        help="collect and evaluate for DURATION (1s to 1h;"
        f" default {format_duration(DEFAULT_STATUS_WINDOW)})",
    )
    for sub in (check, once, status):
        sub.add_argument(
            "--timeout",
            type=parse_timeout,
            default=DEFAULT_TIMEOUT,
            metavar="DURATION",
            help="give up on a cluster that has not answered within DURATION "
            f"(default {format_duration(DEFAULT_TIMEOUT)}; 100ms to 1h; check: with --connect;"
            " with --window: each cycle)",
        )
    return parser


class _VersionAction(argparse.Action):
    """``--version``: argparse's own action wants the version string when the parser is built,
    which would read the package metadata on every start (see :func:`package_version`)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.update(nargs=0, default=argparse.SUPPRESS, help="show the version and exit")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        sys.stdout.write(f"klag-pipeline {package_version()}\n")
        sys.stdout.flush()
        parser.exit()


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    positional = getattr(args, "settings", None)
    flag = getattr(args, "config", None)
    if positional is not None and flag is not None and positional != flag:
        parser.error(f"settings given twice: {positional!r} and --config {flag!r}")
    args.settings = positional or flag or DEFAULT_SETTINGS
    args.command = args.command or "run"
    args.log_level = getattr(args, "log_level", "info")
    args.log_format = getattr(args, "log_format", None)
    return args


def _dispatch(args: argparse.Namespace) -> int:
    loaded = _load(args.settings)
    settings = loaded.settings
    if args.command == "check":
        sys.stdout.write(render_summary(settings))
        sys.stdout.flush()
        if not args.connect:
            return EXIT_OK
        return _call("klag_pipeline.commands.check", "check_connect", settings, args.timeout)
    if args.command == "once":
        # The window only when given: without it ``once`` is the one-cycle command it always was.
        window = () if args.window is None else (args.window,)
        return _call(
            "klag_pipeline.commands.once", "once", settings, args.format, args.timeout, *window
        )
    if args.command == "status":
        return _call(
            "klag_pipeline.commands.status",
            "status",
            settings,
            args.group,
            args.cluster,
            args.window,
            args.timeout,
        )
    return _call("klag_pipeline.app", "run", settings)


def _load(path: str) -> LoadedSettings:
    # One validation for run, once and check alike, so check rejects exactly what run would
    # reject at start-up (files included); every problem is listed at once.
    loaded, ignored = load_for_startup(path, os.environ)
    redact_in_logs(secret_values(loaded.settings))
    for warning in loaded.warnings:
        log.warning("setting_ignored", path=warning.path, reason=warning.message)
    # Reported here, once per process (SPEC §2.2: never dropped silently).
    for where, reason in ignored:
        log.warning("consumer_property_ignored", path=where, reason=reason)
    return loaded


def _call(module_name: str, name: str, *args: Any) -> int:
    """Call ``<module_name>.<name>`` (sync or async) and turn its result into an exit code."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        log.error("command_unavailable", command=name, reason="not available in this build")
        return EXIT_FATAL
    function: Callable[..., Any] = getattr(module, name)
    result = function(*args)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    return EXIT_OK if result is None else int(result)


def _print_problems(exc: ConfigError) -> None:
    for path, message in exc.problems:
        print(f"{path}: {message}", file=sys.stderr)
    sys.stderr.flush()


def render_summary(settings: Settings) -> str:
    """The human summary ``check`` prints: what will run, secrets shown as ``***``."""
    view = redact_settings(settings)
    exporter = settings.exporter
    lines = [f"settings OK: {settings.source or '<settings>'}"]
    lines.append(
        f"exporter: poll every {format_duration(exporter.poll_interval)}, "
        f"http {exporter.http_host}:{exporter.http_port}, "
        f"granularity {exporter.granularity}, "
        f"stale after {format_duration(exporter.staleness_threshold)}"
    )
    sampling = exporter.timestamp_sampling
    lines.append(
        "time lag: "
        + (
            f"on (cache {format_duration(sampling.cache_ttl)}, "
            f"{sampling.max_concurrent_fetches} concurrent fetches, "
            f"{sampling.max_bytes_per_partition} bytes max per partition)"
            if sampling.enabled
            else "off"
        )
    )
    otel, jsonl, leadership = exporter.otel, exporter.jsonl, exporter.leadership
    lines.append(
        "sinks: prometheus /metrics"
        + (
            f", otlp {view['exporter']['otel']['endpoint']} ({otel.protocol})"
            if otel.enabled
            else ""
        )
        + (f", jsonl {jsonl.path}" if jsonl.enabled else "")
    )
    lines.append(
        f"leadership: {leadership.provider} lease {leadership.lease_name}"
        if leadership.enabled
        else "leadership: off (single instance)"
    )
    lines.append(f"clusters: {len(settings.clusters)}")
    for cluster, shown in zip(settings.clusters, view["clusters"], strict=True):
        lines.append(f"  {cluster.name}: {','.join(cluster.bootstrap_servers)}")
        lines.append(
            f"    groups: keep {_patterns(shown['group_whitelist'])}"
            f" drop {_patterns(shown['group_blacklist'])}"
        )
        lines.append(
            f"    topics: keep {_patterns(shown['topic_whitelist'])}"
            f" drop {_patterns(shown['topic_blacklist'])}"
        )
        for title in ("consumer_properties", "labels"):
            if shown[title]:
                pairs = " ".join(f"{k}={v}" for k, v in sorted(shown[title].items()))
                lines.append(f"    {title}: {pairs}")
    return "\n".join(lines) + "\n"


def _patterns(patterns: list[str]) -> str:
    return "[" + ", ".join(repr(p) for p in patterns) + "]" if patterns else "nothing"
