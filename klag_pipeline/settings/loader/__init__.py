"""Settings file → frozen :class:`Settings` (SPEC §2.1), reporting every problem at once.

Steps: read the text; substitute ``${NAME}`` (:mod:`.substitution`); parse TOML; apply
``KLAG_``-prefixed environment overrides (:mod:`.overrides`, values parsed by dynaconf); convert
and validate into the dataclasses of :mod:`klag_pipeline.settings.schema` (:mod:`.rules`).
Problems are collected with their dotted path (``clusters[1].bootstrap_servers``) and raised
together as one :class:`~klag_pipeline.errors.ConfigError`; secret values never appear in it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from klag_pipeline.errors import ConfigError
from klag_pipeline.settings.loader.overrides import ENV_PREFIX, apply_env_overrides
from klag_pipeline.settings.loader.rules import BUILTIN_LABELS, convert
from klag_pipeline.settings.loader.sections import Context, SettingsWarning
from klag_pipeline.settings.loader.substitution import substitute
from klag_pipeline.settings.redaction import scrub, secret_values_in
from klag_pipeline.settings.schema import Settings

__all__ = [
    "BUILTIN_LABELS",
    "ENV_PREFIX",
    "Checks",
    "LoadedSettings",
    "SettingsWarning",
    "load_settings",
    "parse_settings",
]


Checks = Callable[[Settings, Callable[[str, str], None]], None]
"""Further validation run on the converted settings: ``checks(settings, problem)`` reports with
``problem(dotted_path, message)``. Its problems are listed with the loader's own."""


@dataclass(frozen=True, slots=True)
class LoadedSettings:
    """The validated settings plus the warnings to log once logging is configured."""

    settings: Settings
    warnings: tuple[SettingsWarning, ...] = ()


def load_settings(
    path: str | Path, environ: Mapping[str, str] | None = None, *, checks: Checks | None = None
) -> LoadedSettings:
    """Load, override and validate the settings file at ``path``.

    ``environ`` supplies both ``${NAME}`` values and ``KLAG_*`` overrides (default: the process
    environment; tests pass their own mapping to stay hermetic). Raises ``ConfigError`` listing
    every problem found, those of ``checks`` included.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([(source, f"cannot read the settings file: {reason}")]) from exc
    return parse_settings(
        text, os.environ if environ is None else environ, source=source, checks=checks
    )


def parse_settings(
    text: str,
    environ: Mapping[str, str],
    *,
    source: str = "<settings>",
    checks: Checks | None = None,
) -> LoadedSettings:
    """Like :func:`load_settings`, for settings already read into ``text``."""
    text, problems = substitute(text, environ, source)
    if problems:
        raise ConfigError(problems)
    try:
        tree = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([(source, f"not valid TOML: {exc}")]) from exc
    ctx = Context()
    apply_env_overrides(tree, environ, ctx)
    settings = convert(tree, ctx, source)
    if checks is not None:
        # Run even when conversion found problems, so one pass lists everything: an invalid
        # value was replaced by its default, and settings.clusters[i] is clusters[i] of the file
        # even when that cluster has problems of its own.
        checks(settings, ctx.problem)
    if ctx.problems:
        secrets = secret_values_in(tree)
        raise ConfigError([(path, scrub(message, secrets)) for path, message in ctx.problems])
    return LoadedSettings(settings, tuple(ctx.warnings))
